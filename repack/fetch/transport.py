"""HTTP transfers: keep-alive, explicit timeouts, retries with backoff, ranges.

The only module that imports ``requests``.  Proxies (``HTTPS_PROXY``,
``NO_PROXY``...) and ``~/.netrc`` credentials are honoured through
``requests``' own environment handling, the way pip users expect.  ``file://``
URLs are read from disk so that a static index or artifactory mirror on a
shared filesystem works too.  Every failure becomes a :class:`FetchError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from repack import __version__
from repack.errors import FetchError

log = logging.getLogger(__name__)

#: ``progress(label, done_bytes, total_bytes_or_None)``
Progress = Callable[[str, int, "int | None"], None]
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK = 1 << 16


class RangesIgnored(Exception):
    """The server answered a Range request with the whole body (200)."""


@dataclass
class Stats:
    """What crossed the wire: counted by every call, reported by the CLI."""

    requests: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    headers: Mapping[str, str]  # keys lower-cased
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


class Transport:
    """One keep-alive session with the retry policy of this project.

    ``sleep`` is injectable so that tests of the backoff need no real waiting.
    """

    def __init__(self, *, timeout: float = 20.0, retries: int = 3, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep, progress: Progress | None = None,
                 trust_env: bool = True) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.progress = progress
        self.trust_env = trust_env
        self.stats = Stats()
        self._session = None

    # -- public calls ---------------------------------------------------------

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Response:
        """GET the whole body, checked against Content-Length."""
        return self._with_retries(url, lambda: self._get_once(url, dict(headers or {}), None))

    def get_range(self, url: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive); ``start < 0`` asks for a suffix.

        Raises :class:`RangesIgnored` when the server does not honour ranges.
        """
        return self.get_range_response(url, start, end).body

    def get_range_response(self, url: str, start: int, end: int | None = None) -> Response:
        spec = f"bytes={start}" if start < 0 else f"bytes={start}-{'' if end is None else end - 1}"
        want = -start if start < 0 else (None if end is None else end - start)
        return self._with_retries(url, lambda: self._get_once(url, {"Range": spec}, want))

    def download(self, url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
                 label: str = "") -> str:
        """Stream ``url`` to ``dest`` atomically; verify size and sha256; return the sha256."""
        return self._with_retries(url, lambda: self._download_once(url, dest, size, sha256, label or url))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- internals --------------------------------------------------------------

    def _session_get(self, url: str, headers: dict, stream: bool):
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = self.trust_env
            self._session.headers["User-Agent"] = f"flashinfer-repack/{__version__}"
            self._session.headers["Accept-Encoding"] = "identity"
        self.stats.requests += 1
        return self._session.get(url, headers=headers, stream=stream,
                                 timeout=(self.timeout, self.timeout), allow_redirects=True)

    def _with_retries(self, url: str, attempt: Callable):
        import requests
        import urllib3

        last: Exception | None = None
        for number in range(self.retries + 1):
            if number:
                delay = self.backoff * (2 ** (number - 1))
                log.info("retrying %s in %.1f s (%s)", redact(url), delay, last)
                self.sleep(delay)
            try:
                return attempt()
            except _Retryable as exc:
                last = exc.cause
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                    urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                last = exc
            except requests.exceptions.TooManyRedirects:
                raise FetchError(f"cannot fetch {redact(url)}: the server redirects in a loop",
                                 "the server (or a proxy before it) is misconfigured: tell its administrator, "
                                 "or use another source") from None
            except (requests.exceptions.RequestException, ValueError) as exc:
                # a URL that cannot be requested at all (no scheme, ftp://, bad port): no retry;
                # the exception's own text may carry credentials, so it is not shown
                raise FetchError(f"cannot request {redact(url)}: {type(exc).__name__}",
                                 "check the --from / --index-url value (an http(s):// or file:// URL)") from None
        raise FetchError(f"cannot fetch {redact(url)}: {_describe(last)} (after {self.retries + 1} attempts)",
                         _hint_for(last)) from last

    def _get_once(self, url: str, headers: dict, want: int | None) -> Response:
        if url.startswith("file:"):
            return self._read_file_url(url, headers)
        with self._session_get(url, headers, stream=True) as resp:
            _raise_for_status(resp, url)
            _refuse_encoding(resp, url)
            if "Range" in headers and resp.status_code == 200:
                raise RangesIgnored(url)
            body = self._read_body(resp, url)
            if "Range" in headers:
                _check_content_range(resp, url, headers["Range"], body, want)
            return Response(resp.url, resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, body)

    def _read_body(self, resp, url: str) -> bytes:
        expected = resp.headers.get("Content-Length")
        total = int(expected) if expected and expected.isdigit() else None
        label = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
        chunks, done = [], 0
        for chunk in resp.raw.stream(CHUNK, decode_content=False):
            chunks.append(chunk)
            done += len(chunk)
            self.stats.bytes += len(chunk)
            if self.progress:
                self.progress(label, done, total)
        body = b"".join(chunks)
        if expected is not None and expected.isdigit() and len(body) != int(expected):
            raise _Retryable(_Truncated(f"truncated body: {len(body)} of {expected} bytes"))
        return body

    def _download_once(self, url: str, dest: Path, size: int | None, sha256: str | None, label: str) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        done = 0
        try:
            if url.startswith("file:"):
                resp_ctx = None
                src = open(_file_path(url), "rb")
                total = os.fstat(src.fileno()).st_size
                chunks = iter(lambda: src.read(CHUNK), b"")
            else:
                resp_ctx = self._session_get(url, {}, stream=True)
                _raise_for_status(resp_ctx, url)
                header = resp_ctx.headers.get("Content-Length")
                total = int(header) if header and header.isdigit() else size
                chunks = resp_ctx.raw.stream(CHUNK, decode_content=False)
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if resp_ctx is not None:
                        self.stats.bytes += len(chunk)
                    if self.progress:
                        self.progress(label, done, total)
            if resp_ctx is not None:
                resp_ctx.close()
            else:
                src.close()
            expected = size if size is not None else total
            if expected is not None and done != expected:
                raise _Retryable(_Truncated(f"truncated body: {done} of {expected} bytes"))
            if sha256 and digest.hexdigest() != sha256:
                from repack.errors import IntegrityError
                raise IntegrityError(f"{label}: sha256 {digest.hexdigest()} does not match the index's {sha256}",
                                     "the file was altered in transit or on the server; do not use it")
            os.replace(tmp, dest)
            return digest.hexdigest()
        finally:
            tmp.unlink(missing_ok=True)

    def _read_file_url(self, url: str, headers: Mapping[str, str]) -> Response:
        path = _file_path(url)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        spec = headers.get("Range")
        self.stats.requests += 1
        try:
            with open(path, "rb") as fh:
                if not spec:
                    return Response(url, 200, {"content-type": _guess_type(path)}, fh.read())
                total = os.fstat(fh.fileno()).st_size
                first, _, last = spec[len("bytes="):].partition("-")
                start = max(0, total - int(last)) if not first else int(first)
                stop = min(total, int(last) + 1) if first and last else total
                data = os.pread(fh.fileno(), max(0, stop - start), start)
        except OSError as exc:
            raise FetchError(f"cannot read {url}: {exc.strerror}", "check the path") from exc
        return Response(url, 206, {"content-range": f"bytes {start}-{stop - 1}/{total}"}, data)


class _Retryable(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Truncated(Exception):
    pass


class _HTTPStatus(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


def _raise_for_status(resp, url: str) -> None:
    if resp.status_code < 400:
        return
    err = _HTTPStatus(resp.status_code, resp.reason or "")
    resp.close()
    if resp.status_code in RETRY_STATUSES:
        raise _Retryable(err)
    raise FetchError(f"cannot fetch {redact(url)}: {err}", _hint_for(err))


def _refuse_encoding(resp, url: str) -> None:
    """We ask for identity: a compressed answer cannot be checked against sizes, ranges or sha256."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        resp.close()
        raise FetchError(f"cannot fetch {redact(url)}: the server answered with Content-Encoding: {encoding} "
                         "although only identity was accepted",
                         "a proxy or server compresses the file, so its bytes cannot be checked; have it serve "
                         "the file as it is, or use another source")


def _check_content_range(resp, url: str, spec: str, body: bytes, want: int | None) -> None:
    """The 206 must hold exactly the bytes asked for (clipped only at the end of the file)."""
    if resp.status_code != 206:
        raise FetchError(f"cannot fetch {redact(url)}: expected 206 Partial Content, got {resp.status_code}")
    parsed = parse_content_range(resp.headers.get("Content-Range", ""))
    if parsed is None:
        raise FetchError(f"cannot fetch {redact(url)}: 206 without a valid Content-Range header")
    first, last, total = parsed
    if len(body) != last - first + 1:
        raise _Retryable(_Truncated(f"truncated range: {len(body)} of {last - first + 1} bytes"))
    asked_first, _, asked_last = spec[len("bytes="):].partition("-")
    if asked_first:  # bytes=S-E or bytes=S-
        end = min(int(asked_last), total - 1) if asked_last else total - 1
        exact = first == int(asked_first) and last == end
    else:  # bytes=-N
        exact = last == total - 1 and len(body) == min(int(asked_last), total)
    if not exact:
        raise FetchError(f"cannot fetch {redact(url)}: asked for {spec}, the server sent bytes {first}-{last}/{total}",
                         "the server answers ranges wrongly; use another --from source")


def parse_content_range(value: str) -> tuple[int, int, int] | None:
    """``bytes A-B/TOTAL`` -> (A, B, TOTAL), or None."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()) or int(last) < int(first):
        return None
    return int(first), int(last), int(total)


def _describe(exc: Exception | None) -> str:
    text = str(exc) if exc else "unknown error"
    for marker in ("Connection refused", "Connection reset", "timed out", "Name or service not known",
                   "Temporary failure in name resolution", "Connection aborted", "IncompleteRead",
                   "Remote end closed connection"):
        if marker in text:
            return marker.lower() if marker != "IncompleteRead" else "truncated body"
    return text if len(text) < 200 else text[:200] + "..."


def _hint_for(exc: Exception | None) -> str:
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return "the server refused access: check credentials (~/.netrc) or use another --from source"
    if status == 404:
        return "the server has no such file: check the URL, the version, and the --from source"
    if isinstance(exc, _Truncated):
        return "the connection dropped mid-transfer; retry, or use another --from source"
    return "check the network, the proxy settings (HTTPS_PROXY, NO_PROXY), or use another --from source"


def redact(url: str) -> str:
    """Drop userinfo so that credentials never reach a message or a log (even from a malformed URL)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _file_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


def _guess_type(path: str) -> str:
    if path.endswith(".json"):
        return "application/vnd.pypi.simple.v1+json"
    if path.endswith(".html"):
        return "text/html"
    return "application/octet-stream"

