"""Where the header bytes come from.  Every source answers one question:

    ``read(paths) -> {path: bytes}``

for paths relative to the artifactory root (``<artifact>/checksums.txt``,
``<artifact>/include/trtllmGen_bmm_export/Enums.h``).  Sources do not verify;
``fetch.py`` does, before anything is used.  The flashinfer-cubin wheel keeps
the same tree under ``flashinfer_cubin/cubins/``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from repack.errors import FetchError, SourceError
from repack.fetch.archive import LocalBytes, read_members
from repack.fetch.cache import Cache
from repack.fetch.index import IndexFile, find_wheel, project_files
from repack.fetch.transport import FILE_LIMIT, RangesIgnored, Transport, parse_content_range
from repack.fetch.urlpolicy import redact
from repack.fs import (
    NotRegularFileError,
    check_filename,
    is_safe_relpath,
    read_regular,
    safe_join,
)

log = logging.getLogger(__name__)

CUBIN_PROJECT = "flashinfer-cubin"
WHEEL_ROOT = "flashinfer_cubin/cubins/"
NVIDIA_ARTIFACTORY = "https://edge.urm.nvidia.com/artifactory/sw-kernelinferencelibrary-public-generic-local/"


class Source(Protocol):
    """Where header bytes come from: the contract every source below satisfies (and a test fake may)."""

    @property
    def label(self) -> str:
        """What the source is, for messages and the report ("wheel PATH", "index URL")."""

    def read(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Raw bytes for each path; FetchError or SourceError when it cannot."""


def _checked(paths: Sequence[str]) -> Sequence[str]:
    for p in paths:
        if not is_safe_relpath(p.replace("//", "/")):
            raise SourceError(f"refusing the unsafe path {p!r}", "a path must stay inside the source")
    return paths


@dataclass
class WheelFile:
    """A flashinfer-cubin wheel on disk."""

    path: Path

    @property
    def label(self) -> str:
        return f"wheel {self.path}"

    def read(self, paths: Sequence[str]) -> dict[str, bytes]:
        return _by_artifact_path(paths, lambda members: read_local_wheel(self.path, members))


class HTTPBytes:
    """A remote file read with Range requests.  Size comes from the index or a first suffix read."""

    def __init__(self, transport: Transport, url: str, size: int | None, label: str) -> None:
        self.transport, self.url, self.label = transport, url, label
        self._tail: tuple[int, bytes] | None = None
        if size is None:
            from repack.fetch.archive import EOCD_SEARCH
            resp = transport.get_range_response(url, -EOCD_SEARCH)
            parsed = parse_content_range(resp.header("Content-Range"))
            if parsed is None:
                raise FetchError(f"{redact(url)} gave no file size", "the server must answer Range requests")
            first, _, size = parsed
            self._tail = (first, resp.body)
        self.size = size

    def read(self, start: int, end: int) -> bytes:
        if self._tail and start >= self._tail[0]:
            base, data = self._tail
            return data[start - base: end - base]
        return self.transport.get_range(self.url, start, end)


@dataclass
class IndexWheel:
    """The flashinfer-cubin wheel of ``version`` on a package index, read by ranges.

    A server that ignores ranges gets the whole wheel streamed once into the
    cache and checked against the index's sha256.
    """

    transport: Transport
    index_url: str
    version: str
    cache: Cache
    #: the index's entry for the wheel last read (its file name and sha256 go into the provenance)
    found: IndexFile | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"index {redact(self.index_url)}"

    def locate(self) -> IndexFile:
        files = project_files(self.transport, self.index_url, CUBIN_PROJECT)
        return find_wheel(files, CUBIN_PROJECT, self.version, redact(self.index_url))

    def read(self, paths: Sequence[str]) -> dict[str, bytes]:
        found = self.found = self.locate()
        return _by_artifact_path(paths, lambda members: read_remote_wheel(self.transport, self.cache, found, members))


@dataclass
class RemoteWheel:
    """A wheel at a plain URL (no index): read by ranges, or streamed whole."""

    transport: Transport
    url: str
    cache: Cache

    @property
    def label(self) -> str:
        return f"wheel {redact(self.url)}"

    def read(self, paths: Sequence[str]) -> dict[str, bytes]:
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])
        return _by_artifact_path(paths, lambda members: read_remote_wheel(
            self.transport, self.cache, IndexFile(name, self.url), members))


#: A wheel streamed whole (the server ignores ranges) is kept in the cache only up to this size:
#: a flashinfer-python wheel (8-9 MB) is read again by later plans, while what a build needs of the
#: 268 MB flashinfer-cubin wheel is cached as verified blobs, so keeping the whole file buys nothing.
KEEP_WHOLE_WHEEL_UP_TO = 32 << 20


def read_remote_wheel(transport: Transport, cache: Cache, found: IndexFile,
                      members: Sequence[str] | Callable[[str], bool]) -> dict[str, bytes]:
    """Members of a remote wheel: from a whole copy already in the cache (checked first), else by Range
    requests, else (the server ignores ranges) streamed whole once, checked against the index's sha256."""
    cached = cache.get_wheel(found.filename, found.sha256)
    if cached is not None:
        return read_local_wheel(cached, members)
    try:
        return read_members(HTTPBytes(transport, found.url, found.size, found.filename), members)
    except RangesIgnored:
        pass
    small = (found.size or KEEP_WHOLE_WHEEL_UP_TO + 1) <= KEEP_WHOLE_WHEEL_UP_TO
    dest = _cache_destination(cache, found.filename) if small else None
    if dest is not None:
        try:
            cache.record_wheel(dest, _download(transport, found, dest))
            return read_local_wheel(dest, members)
        except OSError as exc:  # a read-only or full cache: stream into a temporary instead
            cache.disable(exc)
    with tempfile.TemporaryDirectory(prefix="flashinfer-repack-") as tmp:
        dest = Path(tmp) / check_filename(found.filename, "wheel file name")
        try:
            _download(transport, found, dest)
        except OSError as exc:
            raise SourceError(f"cannot keep a temporary copy of {found.filename} in {tmp}: {exc.strerror}",
                              "free some space in the temporary directory (TMPDIR)") from exc
        return read_local_wheel(dest, members)


def _cache_destination(cache: Cache, filename: str) -> Path | None:
    # an unsafe name from the index (UnsafePathError) is a hostile answer, not a missing file: it propagates,
    # and the payload's loop names it with a warning before it tries the next source
    return cache.wheel_path(filename)


def _download(transport: Transport, found: IndexFile, dest: Path) -> str:
    return transport.download(found.url, dest, size=found.size, sha256=found.sha256, label=found.filename)


@dataclass
class ArtifactoryURL:
    """A server in the artifactory layout (NVIDIA's, or a mirror of it)."""

    transport: Transport
    base_url: str

    @property
    def label(self) -> str:
        return f"artifactory {redact(self.base_url)}"

    def read(self, paths: Sequence[str]) -> dict[str, bytes]:
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return {p: self.transport.get(urllib.parse.urljoin(base, p.replace("//", "/")), limit=FILE_LIMIT).body
                for p in _checked(paths)}


@dataclass
class ArtifactoryDir:
    """A local directory in the artifactory layout (a mirror, a cubin cache, flashinfer_cubin/cubins)."""

    root: Path

    @property
    def label(self) -> str:
        return f"directory {self.root}"

    def read(self, paths: Sequence[str]) -> dict[str, bytes]:
        if not self.root.is_dir():
            raise SourceError(f"{self.root} is not a directory", "give an artifactory-layout directory")
        out = {}
        for p in _checked(paths):
            # a link that leads out (UnsafePathError) or a file that is no regular file (NotRegularFileError)
            # is what the directory serves, not what it lacks: both propagate to the payload's warning
            path = safe_join(self.root, p.replace("//", "/"), "artifact path")
            if not os.path.lexists(path):
                raise SourceError(f"{self.root} lacks {p}",
                                  "is this an artifactory-layout directory "
                                  "(e.g. site-packages/flashinfer_cubin/cubins)?")
            out[p] = read_regular(path, FILE_LIMIT)
        return out


def read_local_wheel(path: Path, members: Sequence[str] | Callable[[str], bool]) -> dict[str, bytes]:
    """Members of a wheel on disk (exact names, or a predicate over every name)."""
    try:
        source = LocalBytes(path)
    except NotRegularFileError as exc:
        raise SourceError(str(exc), "check the path to the wheel") from exc
    try:
        return read_members(source, members)
    finally:
        source.close()


def _by_artifact_path(paths: Sequence[str], read: Callable[[list[str]], dict[str, bytes]]) -> dict[str, bytes]:
    """Artifact-relative paths -> members under flashinfer_cubin/cubins/ -> bytes by artifact path."""
    members = {WHEEL_ROOT + p.replace("//", "/"): p for p in _checked(paths)}
    return {members[m]: b for m, b in read(list(members)).items()}
