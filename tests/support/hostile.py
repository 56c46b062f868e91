"""One hostile HTTP(S) server on 127.0.0.1: every way a server can misbehave at the trust boundary.

Routes are exact request paths.  Each answer is one of the behaviours below; every request is
logged with its method, path and ``Authorization`` header so that tests can see where
credentials went.  Endless and trickling answers stop when the client hangs up or the server stops.

* :meth:`HostileServer.page`      a PEP 691 JSON or PEP 503 HTML page with any entries (names, links, hashes)
* :meth:`HostileServer.file`      bytes, with or without Range support and Content-Length
* :meth:`HostileServer.trickle`   a body announced whole, then sent one byte every ``interval`` seconds
* :meth:`HostileServer.trickle_headers` a status line, then header bytes one every ``interval`` seconds, forever
* :meth:`HostileServer.endless`   200 to everything (Range ignored), zeros forever, no length
* :meth:`HostileServer.redirect`  a 30x to any URL (another scheme, plain http)
* :meth:`HostileServer.answer`    any status, content type, reason phrase and body (for uploads)
"""

from __future__ import annotations

import html
import json
import re
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

JSON_TYPE = "application/vnd.pypi.simple.v1+json"


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class HostileServer:
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls
        self.routes: dict[str, Callable[[_Handler], None]] = {}
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    def __enter__(self) -> HostileServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, self.tls))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}/"

    def authorizations(self, path_prefix: str = "/") -> list[str | None]:
        return [s.authorization for s in self.seen if s.path.startswith(path_prefix)]

    # -- behaviours ---------------------------------------------------------------------

    def page(self, project: str, entries: list[dict], fmt: str = "json") -> str:
        """Serve ``entries`` (PEP 691 file dicts, taken as given) at /simple/<project>/."""
        if fmt == "json":
            body, ctype = json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": entries}).encode(), \
                JSON_TYPE
        else:
            anchors = "".join(f'<a href="{html.escape(e["url"])}#sha256={e["hashes"]["sha256"]}">x</a>\n'
                              for e in entries)
            body, ctype = f"<html><body>{anchors}</body></html>".encode(), "text/html"
        return self.file(f"simple/{project}/", body, ctype=ctype)

    def file(self, path: str, data: bytes, *, ranges: bool = True, length: bool = True,
             ctype: str = "application/octet-stream", delay: float = 0.0) -> str:
        self.routes["/" + path] = lambda h: h.send_data(data, ranges, length, ctype, delay)
        return self.url + path

    def trickle(self, path: str, size: int, interval: float = 0.5) -> str:
        self.routes["/" + path] = lambda h: h.send_trickle(size, interval)
        return self.url + path

    def trickle_headers(self, path: str, interval: float = 0.5) -> str:
        self.routes["/" + path] = lambda h: h.send_trickled_headers(interval)
        return self.url + path

    def endless(self, path: str) -> str:
        self.routes["/" + path] = lambda h: h.send_endless()
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes["/" + path] = lambda h: h.send_plain(status, b"", "text/plain", {"Location": location})
        return self.url + path

    def answer(self, path: str, status: int, body: bytes, ctype: str = "text/plain", reason: str | None = None,
               delay: float = 0.0) -> str:
        self.routes["/" + path] = lambda h: (self.stopping.wait(delay), h.send_plain(status, body, ctype, reason=reason))
        return self.url + path


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up on a hostile answer are the point, not noise


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def owner(self) -> HostileServer:
        return self.server.owner  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:  # read the upload, so that the answer is not a reset
            length -= len(self.rfile.read(min(length, 1 << 16)) or b"x" * length)
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self.owner.seen.append(Seen(method, path, self.headers.get("Authorization")))
        route = self.owner.routes.get(path)
        if route is None:
            return self.send_plain(404, b"not found\n", "text/plain")
        route(self)

    def send_plain(self, status: int, body: bytes, ctype: str, extra: dict | None = None,
                   reason: str | None = None) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self._write(body)

    def send_data(self, data: bytes, ranges: bool, length: bool, ctype: str, delay: float) -> None:
        if delay:
            self.owner.stopping.wait(delay)
        start, end, status = 0, len(data), 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if ranges and match and (match[1] or match[2]):
            if match[1]:
                start, end = int(match[1]), min(len(data), int(match[2]) + 1) if match[2] else len(data)
            else:
                start = max(0, len(data) - int(match[2]))
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if length:
            self.send_header("Content-Length", str(end - start))
        else:
            self.close_connection = True
        self.end_headers()
        self._write(data[start:end])

    def send_trickle(self, size: int, interval: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for _ in range(size):
            if self.owner.stopping.wait(interval) or not self._write(b" "):
                return

    def send_trickled_headers(self, interval: float) -> None:
        """Headers that never end: each byte in time for a per-read timeout, the whole never."""
        self.close_connection = True
        if not self._write(b"HTTP/1.1 200 OK\r\n"):
            return
        while not self.owner.stopping.wait(interval) and self._write(b"X"):
            pass

    def send_endless(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.close_connection = True
        block = bytes(1 << 16)
        while not self.owner.stopping.is_set() and self._write(block):
            pass

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            return False
