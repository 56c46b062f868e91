"""Publish wheels to a package index through the upload API that twine uses.

The "legacy" upload API (a multipart/form-data POST with ``:action=file_upload``)
is what pypiserver, devpi, Artifactory, Nexus and PyPI itself accept.  Before
each upload the index's simple page for the project is read: the same file
name with the same sha256 is skipped (publishing twice is a no-op); the same
name with other bytes is refused, since an index must never serve two
different files under one name.

Credentials travel only in the ``Authorization`` header.  Messages name the
server with its userinfo removed and never quote a password, even when a
server echoes one back.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from repack.errors import FetchError, InputError, IntegrityError, PublishError, RepackError
from repack.fetch.index import ACCEPT, IndexFile, parse_html_page, parse_json_page
from repack.fetch.transport import (
    PAGE_LIMIT,
    ConnectionFailed,
    Response,
    Transport,
)
from repack.fetch.urlpolicy import redact, scrub, secret_forms
from repack.fs import open_regular
from repack.publish.distfile import DistFile

log = logging.getLogger(__name__)

#: ``progress(label, done_bytes, total_bytes)``
Progress = Callable[[str, int, "int | None"], None]
#: Gateways answering these were not reached by the upload: trying again is safe.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Core-metadata headers sent as upload form fields (twine's names); the second set repeats.
SINGLE_FIELDS = {"Summary": "summary", "Home-page": "home_page", "Author": "author", "Author-email": "author_email",
                 "Maintainer": "maintainer", "Maintainer-email": "maintainer_email", "License": "license",
                 "License-Expression": "license_expression", "Keywords": "keywords",
                 "Download-URL": "download_url", "Requires-Python": "requires_python",
                 "Description-Content-Type": "description_content_type"}
MULTI_FIELDS = {"Classifier": "classifiers", "Platform": "platform", "Supported-Platform": "supported_platform",
                "Requires-Dist": "requires_dist", "Provides-Dist": "provides_dist",
                "Obsoletes-Dist": "obsoletes_dist", "Requires-External": "requires_external",
                "Project-URL": "project_urls", "Provides-Extra": "provides_extras", "Dynamic": "dynamic",
                "License-File": "license_file"}
#: bytes of the file per chunk sent
CHUNK = 1 << 20
ENV_PAIRS = (("FLASHINFER_REPACK_USERNAME", "FLASHINFER_REPACK_PASSWORD"), ("TWINE_USERNAME", "TWINE_PASSWORD"))


@dataclass(frozen=True)
class Credentials:
    """A username and password, and where they came from (for messages: never the values)."""

    username: str
    password: str = field(repr=False)
    origin: str = ""

    def __repr__(self) -> str:
        return f"Credentials(origin={self.origin!r})"

    def secrets(self) -> list[str]:
        """Every form in which these could leak into text, to scrub from server messages."""
        return secret_forms(self.username, self.password)


@dataclass(frozen=True)
class UploadResult:
    filename: str
    action: str            # "uploaded" or "skipped" (already there, identical bytes)
    sha256: str
    verified: bool         # the index lists the file with our sha256 afterwards

    def to_json(self) -> dict[str, str | bool]:
        return {"filename": self.filename, "action": self.action, "sha256": self.sha256, "verified": self.verified}


# -- credentials -----------------------------------------------------------------------

def find_credentials(url: str, *, username: str | None, password: str | None, env: Mapping[str, str],
                     netrc_file: Path | None, given_as: str = "the username and password given",
                     repository: tuple[str | None, str | None, str] | None = None,
                     keyring: Callable[[str], str | None] | None = None) -> Credentials | None:
    """Credentials for ``url``, the username and the password each from the first source that has one
    (twine's order): those given, the URL's userinfo, the environment, then ``repository`` (a ~/.pypirc
    section's username, password and name); a username still without a password asks ``keyring``, then netrc.

    ``given_as`` is how the caller names where ``username`` and ``password`` came from (shown as the origin).
    The environment means FLASHINFER_REPACK_USERNAME/PASSWORD, then TWINE_USERNAME/PASSWORD.  A pypirc
    password goes only with its own username (or a section naming none): never another user's.
    """
    parts = urllib.parse.urlsplit(url)
    candidates = [(username, password, given_as),
                  (_unquote(parts.username), _unquote(parts.password), "the URL")]
    candidates += [(env.get(u), env.get(p), f"{u}/{p}") for u, p in ENV_PAIRS]
    user = next(((u, o) for u, _, o in candidates if u), None)
    if repository is not None:
        user = user or ((repository[0], repository[2]) if repository[0] else None)
        if repository[1] and (not repository[0] or user is None or repository[0] == user[0]):
            candidates.append(repository)
    secret = next(((p, o) for _, p, o in candidates if p), None)
    if user and not secret and keyring is not None and (found := keyring(user[0])):
        secret = (found, "keyring")
    from_netrc = _netrc_entry(parts.hostname or "", netrc_file)
    if user and secret:
        origin = user[1] if user[1] == secret[1] else f"{user[1]} and {secret[1]}"
        return Credentials(user[0], secret[0], origin)
    if user and from_netrc and from_netrc[0] in (user[0], ""):
        return Credentials(user[0], from_netrc[1], f"{user[1]} and {netrc_file}")
    given = user or secret
    if given is not None:
        missing = "password" if user else "username"
        raise InputError(f"a {'username' if user else 'password'} was given ({given[1]}) but no {missing}",
                         "give both, e.g. FLASHINFER_REPACK_USERNAME and FLASHINFER_REPACK_PASSWORD")
    if from_netrc:
        return Credentials(from_netrc[0], from_netrc[1], str(netrc_file))
    return None


def _unquote(value: str | None) -> str | None:
    return urllib.parse.unquote(value) if value else None


def _netrc_entry(host: str, path: Path | None) -> tuple[str, str] | None:
    if path is None or not host or not Path(path).is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        # the parse error quotes the offending line, which may hold a password
        raise InputError(f"cannot read {path}: it is not a valid netrc file (line {getattr(exc, 'lineno', '?')})",
                         "fix the file, or give the username and password", path=str(path),
                         line=getattr(exc, "lineno", None)) from None
    if not entry or entry[2] is None:
        return None
    return entry[0] or "", entry[2]


# -- the form --------------------------------------------------------------------------

def form_fields(dist: DistFile, *, checking: bool = False) -> list[tuple[str, str]]:
    """The upload form as twine sends it, from the wheel's own METADATA.

    Only a wheel checked against its RECORD, with both digests, may be sent (fail closed: a
    caller that deferred those steps and then sends anyway is refused here); ``checking`` says that
    the check runs while it is sent, and the body cannot end before it passes (:class:`MultipartBody`).
    """
    if not ((dist.record_checked or checking) and dist.sha256 and dist.blake2_256):
        raise PublishError(f"{dist.filename} was not checked against its RECORD and hashed before sending",
                           "this is a bug in the caller; nothing was sent")
    meta = dist.headers()
    python_tag = parse_wheel_filename(dist.filename)[3]
    fields = [(":action", "file_upload"), ("protocol_version", "1"),
              ("name", dist.name), ("version", dist.version), ("filetype", "bdist_wheel"),
              ("pyversion", sorted({t.interpreter for t in python_tag})[0]),
              ("metadata_version", meta.get("Metadata-Version", "2.1")),
              ("sha256_digest", dist.sha256), ("blake2_256_digest", dist.blake2_256)]  # no md5: as twine 7
    for header, name in SINGLE_FIELDS.items():
        if meta.get(header):
            fields.append((name, meta[header]))
    for header, name in MULTI_FIELDS.items():
        fields += [(name, v) for v in meta.get_all(header) or []]
    body = meta.get_payload()
    fields.append(("description", meta.get("Description") or (body if isinstance(body, str) else "")))
    return fields


class MultipartBody:
    """A multipart/form-data body streamed from disk, so a 300 MB wheel is never held in memory.

    An iterable of chunks with a length (no ``read``): requests sends it with that Content-Length,
    one ``sendall`` per 1 MiB chunk.

    The file is hashed as it is sent and its last chunk (the zip's end-of-central-directory record
    among it: without it no tool can read the rest) held back until the hash is known: bytes that are
    not ``sha256`` (the file changed since it was checked) raise IntegrityError before the body is
    complete, so the connection drops and the index never receives a whole upload.  ``gate`` is called
    then too, before that last chunk: the RECORD check running beside the upload (it may raise).
    """

    def __init__(self, fields: Sequence[tuple[str, str]], path: Path, progress: Progress | None = None,
                 sha256: str | None = None, gate: Callable[[], None] | None = None, size: int | None = None) -> None:
        self.boundary = uuid.uuid4().hex
        head = b"".join(self._part(name, value.encode("utf-8")) for name, value in fields)
        head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="content"; filename="{path.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        self._segments: list[bytes | Path] = [head, path, f"\r\n--{self.boundary}--\r\n".encode()]
        self._size = path.stat().st_size if size is None else size  # the file's size as it was checked
        self._length = len(head) + self._size + len(f"\r\n--{self.boundary}--\r\n".encode())
        self._chunks = self._iterate()
        self._done, self._progress, self._label = 0, progress, path.name
        self._sha256, self._gate = sha256, gate

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _part(self, name: str, value: bytes) -> bytes:
        return (f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                + value + b"\r\n")

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def _iterate(self) -> Iterator[bytes]:
        for segment in self._segments:
            if isinstance(segment, bytes):
                yield segment
            else:
                yield from self._file(segment)
        self.complete = True  # the sender asked for more after the last chunk: it sent every byte

    #: every chunk was taken and sent (a sender that stopped early, its error swallowed, never gets here)
    complete = False

    def _file(self, path: Path) -> Iterator[bytes]:
        digest, held = hashlib.sha256(), b""
        sent = 0
        with open_regular(path) as fh:  # never a FIFO's endless wait
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                sent += len(chunk)
                if sent > self._size:  # grown since it was checked: not one byte past the declared length
                    raise IntegrityError(f"{path.name} changed while it was being sent (it grew past the "
                                         f"{self._size} bytes checked); the upload was broken off before its end",
                                         "publish it again once nothing writes to it")
                digest.update(chunk)
                if held:
                    yield held
                held = chunk
                self._done += len(chunk)
                if self._progress:
                    self._progress(f"upload {self._label}", self._done, self._size)  # bytes of the file, as done
        if self._sha256 is not None and digest.hexdigest() != self._sha256:
            raise IntegrityError(f"{path.name} changed while it was being sent (sha256 {digest.hexdigest()}, "
                                 f"checked as {self._sha256}); the upload was broken off before its end",
                                 "publish it again once nothing writes to it")
        if self._gate is not None:
            self._gate()
        yield held


# -- the uploader ----------------------------------------------------------------------

class Uploader:
    """One keep-alive session to one index.  ``sleep`` is injectable for tests of the backoff."""

    def __init__(self, url: str, credentials: Credentials | None, *, simple_url: str | None = None,
                 timeout: float = 60.0, retries: int = 3, sleep: Callable[[float], None] = time.sleep,
                 progress: Progress | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InputError(f"the upload URL {redact(url)} is not an http(s) URL",
                             "give the upload URL, e.g. http://host:8080/ (pypiserver) "
                             "or http://host/user/index/ (devpi)", value=redact(url), setting="upload_url")
        try:
            base = urllib.parse.urlunsplit(parts._replace(netloc=_host_port(parts)))
        except ValueError as exc:  # a port out of range
            raise InputError(f"the upload URL {redact(url)} is not a valid URL: {exc}", "check the host and port",
                             value=redact(url), setting="upload_url") from None
        self.url = base if base.endswith("/") else base + "/"
        self.server = redact(self.url)
        self.simple_urls = [simple_url] if simple_url else [self.url + "simple/", self.url + "+simple/"]
        self.credentials, self.timeout, self.retries = credentials, timeout, retries
        self.sleep, self.progress = sleep, progress
        # every byte goes through the one transport: its timeouts, size caps and credential policy
        self.transport = Transport(timeout=timeout, retries=0)
        if credentials is not None:
            try:
                self.transport.add_credentials(self.url, credentials.username, credentials.password)
            except FetchError as exc:
                raise InputError(f"{exc} (credentials from {credentials.origin})", exc.hint) from None

    def publish(self, dists: Sequence[DistFile], listings: Sequence[IndexFile | None] | None = None,
                ready: Callable[[], Sequence[DistFile]] | None = None) -> list[UploadResult]:
        """Each of ``dists`` sent, or skipped when the index has it with the same sha256 (results in order).

        ``listings`` are the index's entries read for these files just before (:meth:`listed`; read here
        when not given), so that the page is not read twice; a file listed since is caught by the index's 409.
        ``ready`` (:meth:`repack.publish.distfile.RecordCheck.wait`) gives the files to be sent, those
        listed as None, checked against their RECORD: the largest is sent first while they are checked,
        and its body ends only once ``ready`` has answered.  Without it every file sent must be checked.
        """
        try:
            if listings is None:
                listings = [self.listed(d) for d in dists]
            # a file the index has is skipped, or refused (other bytes, no sha256) before any byte is sent
            results = {i: self._already_there(dists[i], listed) for i, listed in enumerate(listings)
                       if listed is not None}
            sending = [i for i, listed in enumerate(listings) if listed is None]
            checked: dict[int, DistFile] = {}

            def gate() -> None:
                if ready is not None and not checked:
                    sound = list(ready())
                    if [d.filename for d in sound] != [dists[i].filename for i in sending]:
                        raise PublishError("the checked files are not the files to be sent",
                                           "this is a bug in the caller; nothing was sent")
                    checked.update(zip(sending, sound, strict=True))

            for i in sorted(sending, key=lambda i: -dists[i].size):
                dist = checked.get(i, dists[i])
                results[i] = self._send(dist, gate if ready is not None and not checked else None)
            return [results[i] for i in range(len(dists))]
        finally:
            self.close()

    def _send(self, dist: DistFile, gate: Callable[[], None] | None = None) -> UploadResult:
        """``dist`` sent (the index did not list it); ``gate`` is called before the body's last bytes (it may raise)."""
        resp = self._post(dist, gate)
        if resp.status == 409:  # the index has it although its simple page did not say so
            listed = self.listed(dist)
            if listed is None:
                raise self._refusal(resp, dist)
            return self._already_there(dist, listed)
        after = self.listed(dist)
        if after is not None and after.sha256 and after.sha256 != dist.sha256:
            raise PublishError(f"{self.server} now serves {dist.filename} with sha256 {after.sha256}, "
                               f"not the uploaded {dist.sha256}", "the index altered the file; do not use it")
        return UploadResult(dist.filename, "uploaded", dist.sha256, after is not None and after.sha256 == dist.sha256)

    def _already_there(self, dist: DistFile, listed: IndexFile) -> UploadResult:
        if listed.sha256 is None:
            raise PublishError(f"{self.server} already has {dist.filename} and lists no sha256 for it, so it "
                               "cannot be compared with the local file", "compare the two files by hand")
        if listed.sha256 != dist.sha256:
            raise PublishError(f"{self.server} already has {dist.filename} with sha256 {listed.sha256}; the local "
                               f"file {dist.path} has sha256 {dist.sha256}",
                               "an index must never serve two files under one name: publish a new version, "
                               "or find out why the bytes differ")
        return UploadResult(dist.filename, "skipped", dist.sha256, True)

    def close(self) -> None:
        self.transport.close()

    # -- reading the simple page ---------------------------------------------------------

    def listed(self, dist: DistFile) -> IndexFile | None:
        """The index's entry for this file, or None (the project page is read fresh each time)."""
        return self.listed_file(dist.project, dist.filename)

    def listed_file(self, project: str, filename: str) -> IndexFile | None:
        """The index's entry for ``filename`` on ``project``'s page, or None.

        The simple root that answered last is asked first (pypiserver's ``simple/``, devpi's ``+simple/``).
        """
        for simple in self.simple_urls:
            page = simple.rstrip("/") + "/" + canonicalize_name(project) + "/"
            files = self._read_page(page)
            if files is not None:
                self.simple_urls = [simple] + [u for u in self.simple_urls if u != simple]
                return next((f for f in files if f.filename == filename), None)
        return None

    def _read_page(self, url: str) -> list[IndexFile] | None:
        resp = self._request("GET", url, headers={"Accept": ACCEPT, "Cache-Control": "no-cache"}, what=url,
                             limit=PAGE_LIMIT)
        if resp.status != 200:
            # 404: no such project (or not a simple root); a redirect elsewhere (pypiserver's fallback to
            # PyPI) says nothing about this index either
            return None
        ctype = resp.header("Content-Type").split(";")[0].strip().lower()
        parse = parse_json_page if ctype.endswith("json") else parse_html_page
        try:
            return parse(resp.body, url)
        except RepackError as exc:  # a page we cannot parse is not this index's simple API
            log.info("%s: not a simple page (%s)", redact(url), exc)
            return None

    # -- posting ---------------------------------------------------------------------------

    def _post(self, dist: DistFile, gate: Callable[[], None] | None = None) -> Response:
        fields = form_fields(dist, checking=gate is not None)
        for number in range(self.retries + 1):
            body = MultipartBody(fields, dist.path, self.progress, dist.sha256, gate, dist.size)
            resp = self._request("POST", self.url, data=body, what=dist.filename,
                                 headers={"Content-Type": body.content_type})
            if resp.status not in RETRY_STATUSES or number == self.retries:
                break
            log.info("%s answered %s; retrying", self.server, resp.status)
            self.sleep(0.5 * 2 ** number)
        if resp.status in (200, 201, 204, 409) and not body.complete:
            # the index (or a proxy) answered before the body's end: whatever it holds is not this file, and
            # the body's end is where a RECORD check running beside it is waited for
            raise PublishError(f"{self.server} answered HTTP {resp.status} to the upload of {dist.filename} "
                               "before it had received the whole file",
                               "the index or a proxy before it stops reading uploads early: see its logs and "
                               "its size and time limits; nothing whole was sent")
        if resp.status in (200, 201, 204, 409):
            return resp
        raise self._refusal(resp, dist)

    def _refusal(self, resp: Response, dist: DistFile) -> PublishError:
        status = f"HTTP {resp.status} {resp.reason or ''}".strip()
        said = _first_line(resp, self._secrets())  # scrubbed before it is cut
        where = f"{self.server} answered {status} to the upload of {dist.filename}" + (f": {said}" if said else "")
        if resp.status == 401:
            hint = ("check the username and password (" + self.credentials.origin + ")" if self.credentials else
                    "no credentials were found: give a username and password, set FLASHINFER_REPACK_USERNAME and "
                    "FLASHINFER_REPACK_PASSWORD, or add the host to ~/.netrc")
        elif resp.status == 409:
            where += " (a file of that name exists there, and the index's simple page could not be read to compare)"
            hint = ("give the index's simple URL so that the two files can be compared, "
                    "or remove the file from the index")
        elif resp.status == 403:
            hint = ("the index refused this user: check the credentials (" + (self.credentials.origin if
                    self.credentials else "none were found") + ") and that the user may upload here "
                    "(pypiserver: its password file; devpi: acl_upload)")
        elif 300 <= resp.status < 400:
            where += f" (redirect to {redact(resp.header('Location', '?'))})"
            hint = "give the exact upload URL; an upload is never sent on through a redirect"
        elif resp.status == 413:
            hint = "the file is larger than the server (or a proxy in front of it) accepts"
        elif resp.status >= 500:
            hint = "the index failed; see its logs, then publish again (files already there are skipped)"
        else:
            hint = "the index refused the file; see its message"
        return PublishError(self._scrub(where), hint)

    def _secrets(self) -> list[str]:
        return self.credentials.secrets() if self.credentials else []

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets())

    def _request(self, method: str, url: str, *, what: str, headers: Mapping[str, str],
                 data: object = None, limit: int | None = None) -> Response:
        try:
            return self.transport.send(method, url, headers=headers, data=data,
                                       **({"limit": limit} if limit else {}))
        except ConnectionFailed as exc:
            raise PublishError(f"cannot reach {self.server} ({method} for {Path(what).name}): {exc.reason}",
                               "check the index URL, the network and the proxy settings") from None
        except FetchError as exc:
            raise PublishError(f"{method} for {Path(what).name}: {exc}", exc.hint) from None


def _host_port(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{parts.port}" if parts.port else "")


def _first_line(resp: Response, secrets: Sequence[str]) -> str:
    """The server's message on one line, secrets scrubbed first: a cut must never fall inside one."""
    ctype = resp.header("Content-Type")
    if not ctype.startswith(("text/", "application/json")):
        return ""
    text = resp.body.decode("utf-8", "replace")
    if "html" in ctype:
        import html
        import re
        text = html.unescape(re.sub(r"(?is)<(head|script|style)\b.*?</\1>|<[^>]+>", " ", text))
    line = scrub(" ".join(text.split()), secrets)
    return line[:200] + ("..." if len(line) > 200 else "")


def netrc_path(env: Mapping[str, str]) -> Path:
    """The netrc file that curl, pip and requests read: $NETRC, else ~/.netrc."""
    return Path(env["NETRC"]) if env.get("NETRC") else Path(os.path.expanduser("~/.netrc"))
