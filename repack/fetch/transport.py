"""HTTP transfers: the one client for every byte on the network, and the one owner of its policy.

The only module that imports ``requests``.  It decides, for every caller (fetch, index, upload):

* **sizes**: every body has an expected size (the index's, a range's, ``Content-Length``) or a
  documented cap (:data:`PAGE_LIMIT`, :data:`FILE_LIMIT`, :data:`WHEEL_LIMIT`, :data:`REPLY_LIMIT`),
  and a body that would pass it is cut off, never held or written beyond it;
* **time**: ``timeout`` bounds the connection and each read, and a whole transfer must also keep
  pace: its first bytes within ``timeout``, then :data:`MIN_RATE` on average (a server that trickles
  a byte every half second fails after ``timeout`` seconds, not never); the reply's headers are bounded
  the same way (a status line, then a header byte every half second, fails), directly and through an
  HTTP proxy (a SOCKS proxy, or https tunnelled in an https proxy, has the per-read bound only);
* **schemes and redirects**: http(s) only on the wire, redirects followed by hand and an
  https -> http one refused; ``file://`` read only when it names a regular file;
* **credentials**: sent only to the host they were given for (userinfo in a URL, ``~/.netrc``,
  :meth:`Transport.add_credentials`), and only over https or to a loopback address;
* **redaction**: through :mod:`repack.fetch.urlpolicy` (:func:`redact` for a URL, :func:`scrub` for any
  text), which also holds the scheme, redirect and credential rules as pure functions.

Proxies (``HTTPS_PROXY``, ``NO_PROXY``) are honoured through ``requests``' own environment handling,
the way pip users expect.  Every failure becomes a :class:`FetchError`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from repack import __version__
from repack.errors import FetchError, IntegrityError
from repack.fetch.urlpolicy import (
    check_credentials_allowed,
    check_redirect,
    check_scheme,
    may_carry_credentials,
    redact,
)
from repack.fs import NotRegularFileError, open_regular

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: ``progress(label, done_bytes, total_bytes_or_None)``
Progress = Callable[[str, int, "int | None"], None]
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
CHUNK = 1 << 16

#: A simple-API project page (PyPI's largest are a few MB).
PAGE_LIMIT = 32 << 20
#: One file of an artifactory layout (checksums.txt is 321 KB, a header under 100 KB).
FILE_LIMIT = 16 << 20
#: A whole wheel whose size nobody announced (flashinfer-cubin wheels are under 300 MB).
WHEEL_LIMIT = 1 << 30
#: What an upload's answer may carry (only its first line is ever shown).
REPLY_LIMIT = 1 << 20
#: Bytes per second a transfer must keep on average once its first ``timeout`` seconds are over.
MIN_RATE = 16 << 10
#: the reply's status line and headers: the first byte within ``timeout`` (the socket's read timeout),
#: all of them within ``HEADER_FACTOR * timeout`` (a server sends them in one packet; http.client would
#: otherwise read up to 100 lines of 64 KiB, a byte at a time)
HEADER_FACTOR = 3


class RangesIgnored(Exception):
    """The server answered a Range request with the whole body (200)."""


class ConnectionFailed(FetchError):
    """No answer at all (refused, reset, timed out); ``reason`` says which, in a few words."""

    def __init__(self, message: str, hint: str = "", reason: str = "") -> None:
        super().__init__(message, hint)
        self.reason = reason


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
    reason: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class _Pace:
    """The deadline of one transfer: first bytes within ``timeout``, then :data:`MIN_RATE` on average."""

    timeout: float
    start: float = field(default_factory=time.monotonic)
    done: int = 0
    expired: bool = False

    def deadline(self) -> float:
        return self.start + self.timeout + self.done / MIN_RATE

    def check(self) -> None:
        if self.expired or time.monotonic() > self.deadline():
            raise _Retryable(_TooSlow(f"too slow: {self.done} bytes in {time.monotonic() - self.start:.1f} s"))


class Transport:
    """One keep-alive session with the retry, size, time and credential policy of this project.

    ``sleep`` is injectable so that tests of the backoff need no real waiting.
    """

    def __init__(self, *, timeout: float = 20.0, retries: int = 3, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep, progress: Progress | None = None,
                 trust_env: bool = True, keyring_provider: str = "auto", keyring_prompts: bool = False) -> None:
        self.timeout = timeout
        self.keyring_provider = keyring_provider
        self.keyring_prompts = keyring_prompts  # a person may answer keyring's prompt: no time bound on it
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.progress = progress
        self.trust_env = trust_env
        self.stats = Stats()
        self._session: Any = None
        self._credentials: dict[str, tuple[str, str]] = {}
        self._index_urls: list[str] = []

    # -- public calls ---------------------------------------------------------

    def add_credentials(self, url: str, username: str, password: str) -> None:
        """Send ``username:password`` to ``url``'s host (and only there, only over https or loopback)."""
        check_credentials_allowed(url, self._proxied(url))
        self._credentials[_host_key(url)] = (username, password)

    def _proxied(self, url: str) -> bool:
        """Whether requests would send ``url`` through a proxy (HTTP_PROXY and NO_PROXY, as requests reads them)."""
        if not self.trust_env:
            return False
        from requests.utils import get_environ_proxies, select_proxy

        return select_proxy(url, get_environ_proxies(url, no_proxy=None)) is not None

    def add_index(self, index_url: str) -> None:
        """Note an index URL: keyring is asked for its username's password under it first (as pip asks)."""
        plain = redact(index_url).rstrip("/") + "/"
        if plain not in self._index_urls:
            self._index_urls.append(plain)

    def get(self, url: str, headers: Mapping[str, str] | None = None, *, limit: int = PAGE_LIMIT) -> Response:
        """GET the whole body (at most ``limit`` bytes), checked against Content-Length."""
        url = self._take_userinfo(url)
        return self._with_retries(url, lambda: self._get_once(url, dict(headers or {}), None, limit))

    def get_range(self, url: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive); ``start < 0`` asks for a suffix.

        Raises :class:`RangesIgnored` when the server does not honour ranges.
        """
        return self.get_range_response(url, start, end).body

    def get_range_response(self, url: str, start: int, end: int | None = None) -> Response:
        url = self._take_userinfo(url)
        spec = f"bytes={start}" if start < 0 else f"bytes={start}-{'' if end is None else end - 1}"
        want = -start if start < 0 else (None if end is None else end - start)
        limit = FILE_LIMIT if want is None else want
        return self._with_retries(url, lambda: self._get_once(url, {"Range": spec}, want, limit))

    def download(self, url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
                 label: str = "") -> str:
        """Stream ``url`` to ``dest`` atomically; verify size and sha256; return the sha256.

        At most ``size`` bytes (else the announced length, else :data:`WHEEL_LIMIT`) are written.
        """
        url = self._take_userinfo(url)
        return self._with_retries(url, lambda: self._download_once(url, dest, size, sha256, label or url))

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, data: Any = None,
             limit: int = REPLY_LIMIT) -> Response:
        """One request, no retry, no redirect followed, any status returned; the body cut at ``limit``.

        For callers with their own policy on statuses (the upload API): a connection that fails
        raises :class:`ConnectionFailed`.
        """
        url = self._take_userinfo(url)
        check_scheme(url)
        try:
            resp = self._request(method, url, dict(headers or {}), data=data)
        except _CONNECTION_ERRORS() as exc:
            reason = _describe(exc)
            raise ConnectionFailed(f"cannot reach {redact(url)}: {reason}", _hint_for(exc), reason) from None
        with resp:
            pace = _Pace(self.timeout)
            body = b"".join(self._stream(resp, pace, limit, cut=True))
        return Response(url, resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, body,
                        resp.reason or "")

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- requests -------------------------------------------------------------------

    def _open(self) -> Any:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = self.trust_env  # proxies; netrc is read by _HostAuth, not requests
            self._session.headers["User-Agent"] = f"flashinfer-repack/{__version__}"
            self._session.headers["Accept-Encoding"] = "identity"
            adapter = _header_bounded_adapter()
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        return self._session

    def _request(self, method: str, url: str, headers: dict[str, str], data: Any = None) -> Any:
        self.stats.requests += 1
        _HEADERS.seconds = HEADER_FACTOR * self.timeout
        try:
            return self._open().request(method, url, headers=headers, data=data, stream=True,
                                        timeout=(self.timeout, self.timeout), allow_redirects=False,
                                        auth=_HostAuth(self))
        finally:
            _HEADERS.seconds = None

    def _get_following(self, url: str, headers: dict[str, str]) -> Any:
        """GET, following redirects by hand so that each hop is checked against the policy."""
        for _ in range(MAX_REDIRECTS + 1):
            check_scheme(url)
            resp = self._request("GET", url, headers)
            location = resp.headers.get("Location")
            if resp.status_code not in REDIRECT_STATUSES or not location:
                return resp
            resp.close()
            target = urllib.parse.urljoin(url, location)
            check_redirect(url, target)
            url = target
        raise FetchError(f"cannot fetch {redact(url)}: the server redirects in a loop "
                         f"(more than {MAX_REDIRECTS} redirects)",
                         "the server (or a proxy before it) is misconfigured: tell its administrator, "
                         "or use another source")

    def _take_userinfo(self, url: str) -> str:
        """Credentials in a URL become credentials for its host; the URL goes on without them.

        A username without a password is completed as pip completes it: ``~/.netrc``, then keyring.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        username = urllib.parse.unquote(parts.username or "")
        if parts.password is not None:
            self.add_credentials(url, username, urllib.parse.unquote(parts.password))
        elif self._credentials.get(_host_key(url), (None, ""))[0] != username:  # once per host and username
            self.add_credentials(url, *self._complete(url, username))
        return redact(url)

    def _complete(self, url: str, username: str) -> tuple[str, str]:
        found = _netrc_for(url) if self.trust_env else None
        if found is not None:
            return found
        plain = redact(url)
        host = urllib.parse.urlsplit(plain).netloc
        services = [u for u in self._index_urls if plain.startswith(u)] + [host]  # the index first, as pip
        from repack.fetch.keyringauth import keyring_password

        return username, keyring_password(services, username, self.keyring_provider,
                                          None if self.keyring_prompts else self.timeout) or ""

    def _with_retries(self, url: str, attempt: Callable[[], _T]) -> _T:
        last: BaseException | None = None
        for number in range(self.retries + 1):
            if number:
                delay = self.backoff * (2 ** (number - 1))
                log.info("retrying %s in %.1f s (%s)", redact(url), delay, last)
                self.sleep(delay)
            try:
                return attempt()
            except _Retryable as exc:
                last = exc.cause
            except _CONNECTION_ERRORS() as exc:
                last = exc
            except _REQUEST_ERRORS() as exc:
                # a URL that cannot be requested at all (no scheme, bad port): no retry;
                # the exception's own text may carry credentials, so it is not shown
                raise FetchError(f"cannot request {redact(url)}: {type(exc).__name__}",
                                 "check the source or index URL (an http(s):// or file:// URL)") from None
        raise FetchError(f"cannot fetch {redact(url)}: {_describe(last)} (after {self.retries + 1} attempts)",
                         _hint_for(last)) from last

    # -- bodies ---------------------------------------------------------------------

    def _get_once(self, url: str, headers: dict[str, str], want: int | None, limit: int) -> Response:
        if url.startswith("file:"):
            return self._read_file_url(url, headers, limit)
        with self._get_following(url, headers) as resp:
            _raise_for_status(resp, url)
            _refuse_encoding(resp, url)
            if "Range" in headers and resp.status_code == 200:
                raise RangesIgnored(url)
            pace = _Pace(self.timeout)
            body = b"".join(self._stream(resp, pace, limit, label=_label(url)))
            _check_length(resp, body)
            if "Range" in headers:
                _check_content_range(resp, url, headers["Range"], body, want)
            return Response(resp.url, resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, body)

    def _stream(self, resp: Any, pace: _Pace, limit: int, *, label: str = "", cut: bool = False) -> Iterator[bytes]:
        """The body in chunks, at most ``limit`` bytes, under ``pace``'s deadline.

        ``cut``: stop quietly at ``limit`` (a reply whose first line is all we show) rather than fail.
        """
        announced = _content_length(resp)
        if announced is not None and announced > limit and not cut:
            raise FetchError(f"{redact(resp.url)} announces {announced} bytes, more than the {limit} expected",
                             "the server sends something other than what was asked for; use another source")
        with _Watchdog(pace, _socket_of(resp)):
            try:
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    pace.check()
                    if pace.done + len(chunk) > limit:
                        if cut:
                            yield chunk[: limit - pace.done]
                            return
                        raise FetchError(f"{redact(resp.url)} sent more than the {limit} bytes expected",
                                         "the server sends something other than what was asked for; "
                                         "use another source")
                    pace.done += len(chunk)
                    self.stats.bytes += len(chunk)
                    if self.progress and label:
                        self.progress(label, pace.done, announced)
                    yield chunk
            except _CONNECTION_ERRORS():
                pace.check()  # the watchdog closed the socket: say "too slow", not "reset"
                raise
        pace.check()

    def _download_once(self, url: str, dest: Path, size: int | None, sha256: str | None, label: str) -> str:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as out:
                digest, done, expected = self._stream_to(url, out, size, label)
            if expected is not None and done != expected:
                raise _Retryable(_Truncated(f"truncated body: {done} of {expected} bytes"))
            if sha256 and digest != sha256.lower():
                raise IntegrityError(f"{label}: sha256 {digest} does not match the index's {sha256.lower()}",
                                     "the file was altered in transit or on the server; do not use it")
            os.replace(tmp, dest)
            return digest
        finally:
            tmp.unlink(missing_ok=True)

    def _stream_to(self, url: str, out: Any, size: int | None, label: str) -> tuple[str, int, int | None]:
        digest, done, expected = hashlib.sha256(), 0, size
        for chunk, expected in self._whole_body(url, size):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if self.progress:
                self.progress(label, done, expected)
        return digest.hexdigest(), done, expected

    def _whole_body(self, url: str, size: int | None) -> Iterator[tuple[bytes, int | None]]:
        """Chunks of a whole file and its expected size (the index's, else the announced one);
        never more than that, nor more than :data:`WHEEL_LIMIT` when nobody said."""
        if url.startswith("file:"):
            with _open_file_url(_file_path(url)) as fh:
                total = os.fstat(fh.fileno()).st_size
                if size is not None and total != size:
                    raise FetchError(f"{redact(url)} is {total} bytes, the index says {size}",
                                     "the file is not the one the index lists")
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    yield chunk, total
            return
        with self._get_following(url, {}) as resp:
            _raise_for_status(resp, url)
            _refuse_encoding(resp, url)
            expected = size if size is not None else _content_length(resp)
            for chunk in self._stream(resp, _Pace(self.timeout), WHEEL_LIMIT if expected is None else expected):
                yield chunk, expected

    def _read_file_url(self, url: str, headers: Mapping[str, str], limit: int) -> Response:
        spec = headers.get("Range")
        self.stats.requests += 1
        path = _file_path(url)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        with _open_file_url(path) as fh:
            total = os.fstat(fh.fileno()).st_size
            if not spec:
                if total > limit:
                    raise FetchError(f"{redact(url)} is {total} bytes, more than the {limit} expected",
                                     "the file is not what was asked for")
                return Response(url, 200, {"content-type": _guess_type(path)}, fh.read(limit))
            first, _, last = spec[len("bytes="):].partition("-")
            start = max(0, total - int(last)) if not first else int(first)
            stop = min(total, int(last) + 1) if first and last else total
            data = os.pread(fh.fileno(), min(limit, max(0, stop - start)), start)
        return Response(url, 206, {"content-range": f"bytes {start}-{stop - 1}/{total}"}, data)


# -- policy ---------------------------------------------------------------------------------

class _HostAuth:
    """requests' auth hook: credentials for exactly this request's host, under the transport's policy.

    Given for every request, so that requests never applies ``~/.netrc`` on its own (it would do so
    again after a redirect to another scheme or host).
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def __call__(self, request: Any) -> Any:
        url = request.url
        found = self.transport._credentials.get(_host_key(url))
        if found is None and self.transport.trust_env:
            found = _netrc_for(url)
        if found is not None and may_carry_credentials(url, self.transport._proxied(url)):
            token = base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        return request


def _netrc_for(url: str) -> tuple[str, str] | None:
    from requests.utils import get_netrc_auth

    # without userinfo: requests < 2.32 takes the netloc up to its first ':' as the host ("bob@host")
    found = get_netrc_auth(redact(url))
    return (found[0], found[1]) if found else None


def _host_key(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)
    except ValueError:
        port = 0
    return f"{(parts.hostname or '').lower()}:{port}"


# -- watchdog and small readers ------------------------------------------------------------------

class _Watchdog:
    """Shuts the socket of a transfer that falls behind its pace, so a blocked read returns at once."""

    def __init__(self, pace: _Pace, sock: socket.socket | None) -> None:
        self.pace, self.sock = pace, sock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Watchdog:
        if self.sock is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.2, max(0.0, self.pace.deadline() - time.monotonic()))):
            if time.monotonic() > self.pace.deadline():
                self.pace.expired = True
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
                except OSError:
                    pass
                return


#: per thread: how long the reply now awaited may take to send its headers (set around each request)
_HEADERS = threading.local()


def _bounded_headers(conn: Any, getresponse: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``getresponse()`` under a watchdog: headers that trickle in a byte at a time end in a timeout."""
    seconds = getattr(_HEADERS, "seconds", None)
    sock = getattr(conn, "sock", None)
    if seconds is None or not isinstance(sock, socket.socket):
        return getresponse(*args, **kwargs)
    pace = _Pace(seconds)
    with _Watchdog(pace, sock):
        try:
            response = getresponse(*args, **kwargs)
        except Exception:
            response = None
            if not pace.expired:
                raise
    if pace.expired:  # a cut may also parse as short headers: never a reply. urllib3 makes this a ReadTimeout
        if response is not None:
            response.close()
        raise TimeoutError(f"the reply's headers did not arrive within {seconds:.0f} s (timed out)")
    return response


def _header_bounded_adapter() -> Any:
    """requests' adapter, whose connections read each reply's headers under :func:`_bounded_headers`."""
    import requests.adapters
    from urllib3 import connection, connectionpool

    class _Http(connection.HTTPConnection):
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            return _bounded_headers(self, super().getresponse, *args, **kwargs)

    class _Https(connection.HTTPSConnection):
        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            return _bounded_headers(self, super().getresponse, *args, **kwargs)

    class _HttpPool(connectionpool.HTTPConnectionPool):
        ConnectionCls = _Http

    class _HttpsPool(connectionpool.HTTPSConnectionPool):
        ConnectionCls = _Https

    pools = {"http": _HttpPool, "https": _HttpsPool}

    class _Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = dict(pools)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes: per-read bound only
                manager.pool_classes_by_scheme = dict(pools)
            return manager

    return _Adapter()


def _socket_of(resp: Any) -> socket.socket | None:
    connection = getattr(resp.raw, "_connection", None) or getattr(resp.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _content_length(resp: Any) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _check_length(resp: Any, body: bytes) -> None:
    announced = _content_length(resp)
    if announced is not None and len(body) != announced:
        raise _Retryable(_Truncated(f"truncated body: {len(body)} of {announced} bytes"))


def _label(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


def _open_file_url(path: str) -> Any:
    """A local file opened only if it is a regular file (never a device, FIFO or directory)."""
    try:
        return open_regular(Path(path))
    except NotRegularFileError as exc:
        raise FetchError(str(exc), "give a regular file") from exc


class _Retryable(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Truncated(Exception):
    pass


class _TooSlow(Exception):
    pass


class _HTTPStatus(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


def _CONNECTION_ERRORS() -> tuple[type[BaseException], ...]:
    import requests
    import urllib3

    return (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
            urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _REQUEST_ERRORS() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.exceptions.RequestException, ValueError)


def _raise_for_status(resp: Any, url: str) -> None:
    if resp.status_code < 400:
        return
    err = _HTTPStatus(resp.status_code, resp.reason or "")
    resp.close()
    if resp.status_code in RETRY_STATUSES:
        raise _Retryable(err)
    raise HTTPStatusError(f"cannot fetch {redact(url)}: {err}", _hint_for(err), resp.status_code)


class HTTPStatusError(FetchError):
    """The server answered with an HTTP error status (``status``)."""

    def __init__(self, message: str, hint: str = "", status: int = 0) -> None:
        super().__init__(message, hint)
        self.status = status


def _refuse_encoding(resp: Any, url: str) -> None:
    """We ask for identity: a compressed answer cannot be checked against sizes, ranges or sha256."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        resp.close()
        raise FetchError(f"cannot fetch {redact(url)}: the server answered with Content-Encoding: {encoding} "
                         "although only identity was accepted",
                         "a proxy or server compresses the file, so its bytes cannot be checked; have it serve "
                         "the file as it is, or use another source")


def _check_content_range(resp: Any, url: str, spec: str, body: bytes, want: int | None) -> None:
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
                         "the server answers ranges wrongly; use another source")


def parse_content_range(value: str) -> tuple[int, int, int] | None:
    """``bytes A-B/TOTAL`` -> (A, B, TOTAL), or None."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()) or int(last) < int(first):
        return None
    return int(first), int(last), int(total)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, _TooSlow):
        return str(exc)
    text = str(exc) if exc else "unknown error"
    for marker in ("Connection refused", "Connection reset", "timed out", "Name or service not known",
                   "Temporary failure in name resolution", "Connection aborted", "IncompleteRead",
                   "Remote end closed connection"):
        if marker in text:
            return marker.lower() if marker != "IncompleteRead" else "truncated body"
    return text if len(text) < 200 else text[:200] + "..."


def _hint_for(exc: BaseException | None) -> str:
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return "the server refused access: check the credentials (~/.netrc) or use another source"
    if status == 404:
        return "the server has no such file: check the URL, the version and the source"
    if isinstance(exc, _Truncated):
        return "the connection dropped mid-transfer; retry, or use another source"
    if isinstance(exc, _TooSlow):
        return f"the server sends too slowly (under {MIN_RATE // 1024} KiB/s); retry later or use another source"
    return "check the network, the proxy settings (HTTPS_PROXY, NO_PROXY), or use another source"


# -- redaction: the one place secrets leave text -------------------------------------------------

def _file_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


def _guess_type(path: str) -> str:
    if path.endswith(".json"):
        return "application/vnd.pypi.simple.v1+json"
    if path.endswith(".html"):
        return "text/html"
    return "application/octet-stream"
