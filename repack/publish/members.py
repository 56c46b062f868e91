"""A wheel's members inflated straight from the file, for the RECORD check of a publish.

The RECORD check of the 268 MB flashinfer-cubin wheel inflates 1.1 GB in 9,764 members: it is the
slow step of a publish.  ``zipfile`` adds a CRC pass and a Python-level read loop per member and needs
one handle (and one seek position) per thread; here every member is read with ``os.pread`` from one
descriptor shared by the threads, and inflated by ISA-L (``isal``, 2-3x zlib's speed) when installed,
else zlib.  Both release the GIL, so members are inflated and hashed on as many threads as there are
cores.  Each member's CRC-32 is kept as it is read (ISA-L's or zlib's, both fast) and compared with
the central directory's: pip's installer (zipfile) refuses a wheel whose CRC is wrong, so it is not published.

The local header is checked as ``zipfile`` checks it (signature, name equal to the central directory's),
no member inflates past its declared size, and a stream that ends early or not at all is damaged.  The
layout is checked as Python 3.13's zipfile checks it: no name twice in the central directory, and no
member's data reaching into the next local header or the central directory ("Overlapped entries").
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from types import ModuleType


def _inflate_module() -> ModuleType:
    """ISA-L's zlib-compatible module when installed (an optional accelerator, the same results), else zlib."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - depends on what is installed
        return zlib
    return isal_zlib


_inflate = _inflate_module()

CHUNK = 1 << 20
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (versions, flags, method, times, crc, sizes), name, extra
_DEFLATE_ERRORS = (zlib.error, getattr(_inflate, "error", zlib.error), ValueError)


class DamagedMember(Exception):
    """The member cannot be read as its central directory entry says."""


def check_layout(fd: int, infos: list[zipfile.ZipInfo], central_start: int) -> None:
    """DamagedMember for a name the central directory gives twice, or data that overlap (as zipfile 3.13).

    Every member counts, those RECORD lists and those it does not: each member's data must end before
    the next local header, the last one's before the central directory.  Which of two entries of one
    name is installed, or what overlapping members hold, depends on the reader.
    """
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            raise DamagedMember(f"{info.filename} is in the central directory twice")
        seen.add(info.filename)
    ordered = sorted(infos, key=lambda i: i.header_offset)
    bounds = [i.header_offset for i in ordered[1:]] + [central_start]
    for info, end in zip(ordered, bounds, strict=True):
        start = _data_offset(fd, info)
        if start + info.compress_size > end:  # zipfile (3.13) says "Overlapped entries"
            raise DamagedMember(f"{info.filename}: its data ({start}+{info.compress_size}) overlaps what "
                                f"follows at {end}")


def member_chunks(fd: int, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes in chunks, never more than its declared ``file_size`` (DamagedMember otherwise).

    Its CRC-32 must be the central directory's.  The layout is :func:`check_layout`'s to check.
    """
    crc32 = getattr(_inflate, "crc32", zlib.crc32)
    crc = 0
    for chunk in _chunks(fd, info):
        crc = crc32(chunk, crc)
        yield chunk
    if crc != info.CRC:
        raise DamagedMember(f"{info.filename}: CRC-32 {crc:08x}, the central directory says {info.CRC:08x}")


def _chunks(fd: int, info: zipfile.ZipInfo) -> Iterator[bytes]:
    start = _data_offset(fd, info)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise DamagedMember(f"{info.filename}: stored, yet {info.compress_size} bytes hold {info.file_size}")
        yield from _raw(fd, start, info.compress_size, info.filename)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        yield from _inflated(fd, start, info)
    else:  # bzip2, lzma...: no wheel builder writes them, and pip's installer refuses them as well
        raise DamagedMember(f"{info.filename}: compression method {info.compress_type} is not deflate or stored")


def _data_offset(fd: int, info: zipfile.ZipInfo) -> int:
    header = os.pread(fd, LOCAL_HEADER.size, info.header_offset)
    if len(header) != LOCAL_HEADER.size:
        raise DamagedMember(f"{info.filename}: the file ends inside its local header")
    signature, name_len, extra_len = LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise DamagedMember(f"{info.filename}: no local header at offset {info.header_offset}")
    if info.flag_bits & 0x1:
        raise DamagedMember(f"{info.filename} is encrypted")
    name = os.pread(fd, name_len, info.header_offset + LOCAL_HEADER.size)
    expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    if name != expected:  # zipfile refuses this too: two names for one member
        raise DamagedMember(f"{info.filename}: its local header names {name!r}")
    return int(info.header_offset + LOCAL_HEADER.size + name_len + extra_len)


def _raw(fd: int, start: int, size: int, name: str) -> Iterator[bytes]:
    end = start
    while end < start + size:
        data = os.pread(fd, min(CHUNK, start + size - end), end)
        if not data:
            raise DamagedMember(f"{name}: the file ends inside the member")
        end += len(data)
        yield data


def _inflated(fd: int, start: int, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """Inflate at most ``file_size + 1`` bytes, output bounded per step: a bomb is stopped, not inflated."""
    inflater, produced = _inflate.decompressobj(-15), 0
    try:
        for data in _raw(fd, start, info.compress_size, info.filename):
            while not inflater.eof:  # an empty input still drains output held back by the bound
                before = len(data)
                out = inflater.decompress(data, CHUNK)
                data = inflater.unconsumed_tail
                if not out and (not data or len(data) == before):
                    break
                produced += len(out)
                if produced > info.file_size:
                    raise DamagedMember(f"{info.filename} inflates past its declared {info.file_size} bytes")
                yield out
    except _DEFLATE_ERRORS as exc:
        raise DamagedMember(f"{info.filename}: not a valid deflate stream ({exc})") from None
    if not inflater.eof or produced != info.file_size:
        raise DamagedMember(f"{info.filename}: inflates to {produced} bytes, declared {info.file_size}")
