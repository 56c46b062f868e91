"""Read a few members out of a zip (a wheel) without reading the whole file.

A :class:`ByteSource` gives random access (a local file, or HTTP Range
requests).  :func:`read_members` fetches the end records and the central
directory, then only the spans of the wanted members, coalesced into as few
reads as possible, and lets :mod:`zipfile` parse and CRC-check them.  The
declared sizes are checked against documented caps before anything is fetched
or inflated, and every member name passes the path gate of :mod:`repack.fs`.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from repack.errors import SourceError
from repack.fs import is_safe_relpath, open_regular

EOCD_SEARCH = 64 * 1024 + 22   # the end record plus the largest possible comment
LOCAL_HEADER_SLACK = 30 + 1024  # fixed local header + room for name and extra field
COALESCE_GAP = 512 * 1024       # read a gap this small rather than make another request
#: Caps checked on the declared sizes before anything is fetched or inflated (a zip bomb's member that
#: inflates to 2 GiB is refused from its directory entry).  flashinfer-cubin 0.6.6: a 2.37 MB central
#: directory; its largest wanted member, checksums.txt, is 321 KB; flashinfer-python's code files are smaller.
DIRECTORY_LIMIT = 8 << 20
MEMBER_LIMIT = 16 << 20
TOTAL_LIMIT = 64 << 20


class ByteSource(Protocol):
    """Random access to an archive's bytes.  ``read(start, end)`` is half-open."""

    label: str
    size: int

    def read(self, start: int, end: int) -> bytes: ...


class LocalBytes:
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        self._fh = open_regular(path)  # a FIFO or a device is not a wheel
        self.size = os.fstat(self._fh.fileno()).st_size

    def read(self, start: int, end: int) -> bytes:
        return os.pread(self._fh.fileno(), end - start, start)

    def close(self) -> None:
        self._fh.close()


class SpanCache:
    """Fetched spans of a remote file, so that zipfile's small reads hit memory."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self._starts: list[int] = []
        self._spans: dict[int, bytes] = {}

    def prefetch(self, spans: Iterable[tuple[int, int]]) -> None:
        size = self.source.size
        for start, end in _coalesce((max(0, a), min(b, size)) for a, b in spans):
            missing = self._missing(start, end)
            for a, b in missing:
                self._add(a, self.source.read(a, b))

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.source.size)
        if start >= end:
            return b""
        self.prefetch([(start, end)])
        out = bytearray()
        pos = start
        while pos < end:
            i = bisect_right(self._starts, pos) - 1
            s = self._starts[i]
            chunk = self._spans[s]
            take = chunk[pos - s: end - s]
            if not take:  # a source that returned less than asked: fail, never spin
                raise SourceError(f"{self.source.label}: no bytes at offset {pos}", "the source is truncated")
            out += take
            pos += len(take)
        return bytes(out)

    def _missing(self, start: int, end: int) -> list[tuple[int, int]]:
        gaps, pos = [], start
        for s in self._starts:
            e = s + len(self._spans[s])
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def _add(self, start: int, data: bytes) -> None:
        self._spans[start] = data
        self._starts = sorted(self._spans)


class _CachedFile(io.RawIOBase):
    """A seekable file over a SpanCache, for zipfile."""

    def __init__(self, cache: SpanCache) -> None:
        self._cache = cache
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._cache.source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._cache.source.size if n is None or n < 0 else self._pos + n
        data = self._cache.read(self._pos, end)
        self._pos += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def read_members(source: ByteSource, names: Iterable[str] | Callable[[str], bool],
                 on_member: Callable[[str, int], None] | None = None) -> dict[str, bytes]:
    """Return ``{name: bytes}`` for every wanted member; CRC-checked by zipfile.

    ``names`` is a list of exact names, or a predicate over every name.
    Raises :class:`SourceError` if the file is not a zip, a wanted member is
    missing or duplicated, or any member name escapes the archive root.
    """
    cache = SpanCache(source)
    archive = _open(cache)
    infos = _index(archive, source.label)
    wanted = [n for n in infos if names(n)] if callable(names) else list(dict.fromkeys(names))
    missing = [n for n in wanted if n not in infos]
    if missing:
        raise SourceError(f"{source.label} lacks {len(missing)} expected member(s), e.g. {missing[0]}",
                          "is this the flashinfer-cubin wheel of the same version?")
    _check_declared_sizes(source, [infos[n] for n in wanted])
    cache.prefetch((infos[n].header_offset, infos[n].header_offset + LOCAL_HEADER_SLACK
                    + len(n.encode()) + infos[n].compress_size) for n in wanted)
    out = {}
    for name in wanted:
        try:
            out[name] = archive.read(infos[name])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, zlib.error,
                NotImplementedError) as exc:
            raise SourceError(f"{source.label}: member {name} is damaged: {exc}",
                              "the archive is corrupt or was truncated; fetch it again") from exc
        if on_member:
            on_member(name, len(out[name]))
    return out


def _check_declared_sizes(source: ByteSource, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse, before inflating or fetching, members whose declared sizes are absurd: zipfile never
    inflates past a member's declared size, so capping the declaration caps the memory."""
    for info in infos:
        if info.file_size > MEMBER_LIMIT or info.compress_size > MEMBER_LIMIT + 1024:
            raise SourceError(f"{source.label}: member {info.filename} declares {info.file_size} bytes "
                              f"({info.compress_size} compressed), more than the {MEMBER_LIMIT} expected",
                              "the archive is not a flashinfer wheel (or is a zip bomb); use another source")
        if info.header_offset + info.compress_size > source.size:
            raise SourceError(f"{source.label}: member {info.filename} lies past the end of the file",
                              "the file is truncated or malformed")
    total = sum(info.file_size for info in infos)
    if total > TOTAL_LIMIT:
        raise SourceError(f"{source.label}: the wanted members declare {total} bytes, more than the "
                          f"{TOTAL_LIMIT} expected", "the archive is not a flashinfer wheel; use another source")


def _open(cache: SpanCache) -> zipfile.ZipFile:
    _prefetch_directory(cache)
    try:
        return zipfile.ZipFile(_CachedFile(cache))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error, NotImplementedError, EOFError,
            OverflowError) as exc:  # NotImplementedError: a version or feature zipfile refuses, e.g. multi-disk
        raise SourceError(f"{cache.source.label} is not a readable zip archive: {exc}",
                          "the download is damaged or the file is not a wheel") from exc


def _prefetch_directory(cache: SpanCache) -> None:
    """Fetch the end records, then exactly the central directory before them."""
    size = cache.source.size
    if size < 22:
        raise SourceError(f"{cache.source.label} is not a zip archive ({size} bytes)",
                          "the file is empty or truncated")
    tail_start = max(0, size - EOCD_SEARCH)
    cache.prefetch([(tail_start, size)])
    tail = cache.read(tail_start, size)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        raise SourceError(f"{cache.source.label} is not a zip archive (no end-of-central-directory record)",
                          "the file is truncated or is not a wheel")
    cd_size, cd_offset = struct.unpack("<II", tail[pos + 12: pos + 20])
    if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        loc = tail.rfind(b"PK\x06\x07", 0, pos)
        if loc >= 0 and len(tail) - loc >= 20:
            (z64_offset,) = struct.unpack("<Q", tail[loc + 8: loc + 16])
            if z64_offset + 56 > size:
                raise SourceError(f"{cache.source.label}: its zip64 end record lies past the end of the file",
                                  "the file is truncated or malformed")
            rec = cache.read(z64_offset, z64_offset + 56)
            cd_size, cd_offset = struct.unpack("<QQ", rec[40:56])
    if cd_offset + cd_size > size:
        raise SourceError(f"{cache.source.label}: central directory lies past the end of the file",
                          "the file is truncated")
    if cd_size > DIRECTORY_LIMIT or tail_start + pos - cd_offset > DIRECTORY_LIMIT:
        raise SourceError(f"{cache.source.label}: central directory of {cd_size} bytes, more than the "
                          f"{DIRECTORY_LIMIT} expected", "the archive is not a flashinfer wheel; use another source")
    cache.prefetch([(cd_offset, tail_start + pos)])


def _index(archive: zipfile.ZipFile, label: str) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        if not is_safe_relpath(name.rstrip("/")):
            raise SourceError(f"{label} holds a member whose name escapes the archive: {name!r}",
                              "refusing to use an archive with unsafe paths; get the file from a trusted source")
        if name in infos:
            raise SourceError(f"{label} holds two members named {name!r}", "the archive is malformed")
        infos[name] = info
    return infos


def _coalesce(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + COALESCE_GAP:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]
