"""A real HTTP server on 127.0.0.1 for tests, with misbehaviour on request.

One :class:`FileServer` (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive)
serves, at once:

* an artifactory layout from a directory (``serve_tree``), with ``//`` in
  request paths collapsed the way NVIDIA's artifactory does (flashinfer asks
  for ``<artifact>//include/...``);
* a PEP 691 JSON / PEP 503 HTML simple index for wheel files
  (``serve_project``), and the files themselves, with HTTP Range (suffix
  ranges included) switchable per server (``ranges``);
* any single file or bytes (``serve_file``).

``misbehave(pattern, kind, ...)`` makes matching paths answer an HTTP status,
reset the connection mid-body, truncate the body (Content-Length larger than
what is sent), flip a byte, or stall past the client's timeout; ``times``
makes it transient.  Every request is logged with the bytes of body sent, so
tests can count what crossed the wire.
"""

from __future__ import annotations

import fnmatch
import hashlib
import html
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from packaging.utils import canonicalize_name

CHUNK = 1 << 20
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
KINDS = ("status", "reset", "truncate", "tamper", "slow")


@dataclass
class Misbehaviour:
    """What a matching request gets instead of the right answer.

    ``times``: misbehave on that many matching requests, then serve normally
    (None: every time).  ``offset``: the file offset whose byte ``tamper`` flips.
    """

    pattern: str
    kind: str
    status: int = 500
    times: int | None = None
    delay: float = 5.0
    offset: int = 0
    hits: int = 0

    def fires(self) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Logged:
    """One request, logged when it arrives; ``status`` and ``sent`` are filled in as it is answered."""

    path: str
    range: str | None
    status: int = 0
    sent: int = 0
    #: set once the answer is written: a client may hold every byte before the handler has counted them
    answered: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


class _Body:
    """A file on disk or bytes in memory, read by spans."""

    def __init__(self, source: Path | bytes, content_type: str = "application/octet-stream") -> None:
        self.source = source
        self.content_type = content_type
        self.size = len(source) if isinstance(source, bytes) else os.path.getsize(source)

    def chunks(self, start: int, end: int):
        if isinstance(self.source, bytes):
            for pos in range(start, end, CHUNK):
                yield self.source[pos: min(end, pos + CHUNK)]
            return
        with open(self.source, "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < end:
                data = fh.read(min(CHUNK, end - pos))
                if not data:
                    return
                pos += len(data)
                yield data


class FileServer:
    """Start with :meth:`start` (or as a context manager); stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.ranges = True
        self.max_range = 0  # > 0: answer every Range request with at most this many bytes
        self.index_format = "auto"  # "auto" (by Accept), "json" or "html"
        self.rules: list[Misbehaviour] = []
        self.log: list[Logged] = []
        self._files: dict[str, _Body] = {}
        self._trees: list[tuple[str, Path]] = []
        self._projects: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FileServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # -- content --------------------------------------------------------------------

    def serve_tree(self, prefix: str, root: Path) -> str:
        """Serve the files under ``root`` at ``/<prefix>/``; return that base URL."""
        prefix = "/" + prefix.strip("/") + "/"
        self._trees.append((prefix, Path(root)))
        return self.url + prefix.lstrip("/")

    def serve_file(self, path: str, source: Path | bytes) -> str:
        path = "/" + path.lstrip("/")
        self._files[path] = _Body(source)
        return self.url + path.lstrip("/")

    def serve_project(self, project: str, files: list[Path]) -> str:
        """List ``files`` on the simple index at ``/simple/<project>/``, served from ``/files/``."""
        entries = self._projects.setdefault(canonicalize_name(project), [])
        for path in files:
            url = self.serve_file(f"files/{path.name}", Path(path))
            entries.append({"filename": path.name, "url": url, "size": path.stat().st_size,
                            "hashes": {"sha256": file_sha256(Path(path))}, "requires-python": ">=3.10"})
        return self.index_url

    @property
    def index_url(self) -> str:
        return self.url + "simple/"

    # -- misbehaviour and counters ------------------------------------------------------

    def misbehave(self, pattern: str, kind: str, **options) -> Misbehaviour:
        """Misbehave on request paths matching the glob ``pattern`` (``*`` crosses ``/``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown misbehaviour {kind!r}; choose from {KINDS}")
        rule = Misbehaviour(pattern, kind, **options)
        self.rules.append(rule)
        return rule

    def requests(self, pattern: str = "*") -> int:
        return sum(1 for entry in self.log if fnmatch.fnmatchcase(entry.path, pattern))

    def bytes_sent(self, pattern: str = "*") -> int:
        entries = [entry for entry in self.log if fnmatch.fnmatchcase(entry.path, pattern)]
        deadline = time.monotonic() + 5
        for entry in entries:  # a dropped connection may never be answered: wait, but not forever
            entry.answered.wait(max(0.0, deadline - time.monotonic()))
        return sum(entry.sent for entry in entries)

    # -- used by the handler -------------------------------------------------------

    def _rule_for(self, path: str) -> Misbehaviour | None:
        with self._lock:
            for rule in self.rules:
                if fnmatch.fnmatchcase(path, rule.pattern) and rule.fires():
                    return rule
        return None

    def _arrived(self, path: str, range_header: str | None) -> Logged:
        entry = Logged(path, range_header)
        with self._lock:
            self.log.append(entry)
        return entry

    def _resolve(self, path: str, accept: str) -> _Body | None:
        if path in self._files:
            return self._files[path]
        if path.startswith("/simple/"):
            return self._index_page(path, accept)
        for prefix, root in self._trees:
            if path.startswith(prefix):
                target = (root / path[len(prefix):]).resolve()
                if target.is_file() and target.is_relative_to(root.resolve()):
                    return _Body(target)
        return None

    def _index_page(self, path: str, accept: str) -> _Body | None:
        project = path[len("/simple/"):].strip("/")
        if project not in self._projects:
            return None
        files = self._projects[project]
        use_json = self.index_format == "json" or (self.index_format == "auto" and JSON_TYPE in accept)
        if use_json:
            page = {"meta": {"api-version": "1.1"}, "name": project, "files": files}
            return _Body(json.dumps(page).encode(), JSON_TYPE)
        return _Body(html_page(project, files).encode(), "text/html")


def html_page(project: str, files: list[dict]) -> str:
    """A PEP 503 page with relative hrefs, as most static mirrors write them."""
    anchors = "".join(
        f'<a href="../../files/{html.escape(f["filename"])}#sha256={f["hashes"]["sha256"]}" '
        f'data-requires-python="{html.escape(f["requires-python"])}">{html.escape(f["filename"])}</a><br/>\n'
        for f in files)
    return f"<!DOCTYPE html><html><head><title>Links for {project}</title></head><body>\n{anchors}</body></html>\n"


_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): the real wheels are large."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) half-open; None to ignore the header; "unsatisfiable" for a 416."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or not (match[1] or match[2]):
        return None
    if not match[1]:
        suffix = int(match[2])
        return (max(0, size - suffix), size) if suffix else "unsatisfiable"
    start = int(match[1])
    end = min(size, int(match[2]) + 1) if match[2] else size
    return (start, end) if start < size and start < end else "unsatisfiable"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer

    def handle_error(self, request, client_address) -> None:
        pass  # resets and clients that gave up are part of the tests, not noise


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # as production servers do: without it, headers and body leave in two segments and
        # the client's delayed ACK adds 40 ms to every keep-alive request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        owner = self.server.owner
        path = re.sub("/{2,}", "/", urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        self._entry = owner._arrived(path, self.headers.get("Range"))
        rule = owner._rule_for(path)
        if rule is not None and rule.kind == "slow":
            owner._stopping.wait(rule.delay)
        if rule is not None and rule.kind == "status":
            return self._finish(path, self._send_bytes(rule.status, f"HTTP {rule.status}\n".encode(), "text/plain"))
        body = owner._resolve(path, self.headers.get("Accept", ""))
        if body is None:
            return self._finish(path, self._send_bytes(404, b"not found\n", "text/plain"))
        start, end, status = 0, body.size, 200
        spec = self.headers.get("Range") if owner.ranges and not path.startswith("/simple/") else None
        span = parse_range(spec, body.size) if spec else None
        if span == "unsatisfiable":
            return self._finish(path, self._send_bytes(416, b"", "text/plain",
                                                       {"Content-Range": f"bytes */{body.size}"}))
        if span is not None:
            (start, end), status = span, 206
            if owner.max_range:  # a broken server: a consistent 206, shorter than asked
                end = min(end, start + owner.max_range)
        self._finish(path, self._send_body(status, body, start, end, rule))

    def _finish(self, path: str, result: tuple[int, int]) -> None:
        self._entry.status, self._entry.sent = result
        self._entry.answered.set()

    def _send_bytes(self, status: int, data: bytes, ctype: str, extra: dict | None = None) -> tuple[int, int]:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        return status, self._write(data)

    def _send_body(self, status: int, body: _Body, start: int, end: int, rule: Misbehaviour | None):
        self.send_response(status)
        self.send_header("Content-Type", body.content_type)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes" if self.server.owner.ranges else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{body.size}")
        self.end_headers()
        cut = start + (end - start) // 2 if rule is not None and rule.kind in ("reset", "truncate") else end
        sent, pos = 0, start
        for chunk in body.chunks(start, cut):
            if rule is not None and rule.kind == "tamper" and pos <= rule.offset < pos + len(chunk):
                i = rule.offset - pos
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
            pos += len(chunk)
            written = self._write(chunk)
            sent += written
            if written < len(chunk):
                break
        if cut < end:
            self._drop(reset=rule.kind == "reset")
        return status, sent

    def _write(self, data: bytes) -> int:
        """Send ``data``; return how much the kernel took, so a client that hangs up is counted honestly."""
        view, done = memoryview(data), 0
        try:
            while done < len(view):
                done += self.connection.send(view[done:])
        except OSError:
            self.close_connection = True
        return done

    def _drop(self, reset: bool) -> None:
        """End the connection mid-body: with a RST (reset) or a plain FIN (truncate)."""
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_WR)
            self.connection.close()
        except OSError:
            pass


# -- what the tests serve, made at test time from the real flashinfer-cubin wheel ---------------

CUBIN_ROOT = "flashinfer_cubin/cubins/"


def artifact_members(plan, extras: tuple[str, ...] = ()) -> list[str]:
    """Artifact-relative paths of checksums.txt, the headers (and ``extras``) of ``plan``."""
    return ([plan.checksums_path] + [plan.source_path(h) for h in plan.headers]
            + [plan.artifact_path + e for e in extras])


def extract_tree(wheel: Path, paths: list[str], dest: Path) -> Path:
    """Copy ``flashinfer_cubin/cubins/<path>`` of ``wheel`` to ``dest/<path>``: an artifactory layout."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        for rel in paths:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(CUBIN_ROOT + rel))
    return dest


def copy_members(wheel: Path, names: list[str], dest: Path) -> Path:
    """A new small zip at ``dest`` with exactly ``names`` of ``wheel`` (same bytes, deflated)."""
    import zipfile

    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for name in names:
            out.writestr(src.getinfo(name), src.read(name))
    return dest


def member_data_offset(wheel: Path, name: str) -> int:
    """File offset of the first byte of ``name``'s (compressed) data, for tampering."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(name)
        with open(wheel, "rb") as fh:
            fh.seek(info.header_offset)
            header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len
