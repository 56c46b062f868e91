"""The conda package container: written byte for byte reproducibly, and read back.

``.tar.bz2`` is one bzip2-compressed tar, ``info/`` first so that readers
find the metadata early.  ``.conda`` is an uncompressed zip holding
``metadata.json``, ``pkg-<stem>.tar.zst`` and ``info-<stem>.tar.zst``, in
the order rattler-build writes them.  Every tar is sorted, PAX, with one
mtime, uid/gid 0, empty owner names and modes 0644/0755, and compression
levels are fixed: the same members and mtime give the same bytes.

``zstandard`` is imported only where ``.conda`` is written or read.
"""

from __future__ import annotations

import bz2
import io
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from repack.build.artifact import DEFAULT_EPOCH
from repack.errors import BuildError, SourceError
from repack.fs import is_safe_relpath

SUFFIXES = (".conda", ".tar.bz2")
FORMAT_METADATA = b'{"conda_pkg_format_version": 2}'
ZSTD_LEVEL = 19
BZ2_LEVEL = 9
CHUNK = 1 << 20
#: A member larger than this is refused when reading (a guard against bombs).
MAX_MEMBER = 4 << 30


@dataclass(frozen=True)
class Member:
    """One file of a package: a path relative to the prefix (or ``info/...``) and its bytes."""

    path: str
    data: bytes
    executable: bool = False


def split_filename(filename: str) -> tuple[str, str, str, str]:
    """``name-version-build.suffix`` -> (name, version, build, suffix); ValueError otherwise."""
    suffix = next((s for s in SUFFIXES if filename.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{filename!r} ends in neither {' nor '.join(SUFFIXES)}")
    parts = filename[: -len(suffix)].rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{filename!r} is not NAME-VERSION-BUILD{suffix}")
    return parts[0], parts[1], parts[2], suffix


# -- writing -------------------------------------------------------------------------

def tar_info(path: str, size: int, executable: bool, mtime: int) -> tarfile.TarInfo:
    """The one header rule of every tar in a conda package: one mtime, root, no names, 0644/0755."""
    info = tarfile.TarInfo(path)
    info.size, info.mtime = size, mtime
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def open_tar(fileobj: BinaryIO) -> tarfile.TarFile:
    """A streaming PAX tar writer on ``fileobj`` (the format of every tar here)."""
    return tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)


def tar_bytes(members: list[Member], mtime: int) -> bytes:
    """An uncompressed tar of ``members`` in the order given, with normalised metadata."""
    buf = io.BytesIO()
    with open_tar(buf) as tar:
        for m in members:
            tar.addfile(tar_info(m.path, len(m.data), m.executable, mtime), io.BytesIO(m.data))
    return buf.getvalue()


def zstd_compressor(level: int = ZSTD_LEVEL) -> Any:  # zstandard ships no types
    return _zstd().ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def info_tar_zst(info: list[Member], epoch: int) -> bytes:
    return bytes(zstd_compressor().compress(tar_bytes(_sorted(info), epoch)))


def conda_bytes(stem: str, info: list[Member], pkg: list[Member], epoch: int) -> bytes:
    """A ``.conda`` archive in memory: stored zip of metadata.json and two zstd-compressed tars."""
    buf = io.BytesIO()
    pkg_zst = zstd_compressor().compress(tar_bytes(_sorted(pkg), epoch))
    write_conda_container(buf, stem, io.BytesIO(pkg_zst), len(pkg_zst), info_tar_zst(info, epoch), epoch)
    return buf.getvalue()


def write_conda_container(out: BinaryIO, stem: str, pkg_zst: BinaryIO, pkg_size: int, info_zst: bytes,
                          epoch: int) -> None:
    """The ``.conda`` zip on ``out`` (seekable): metadata.json, the payload copied from ``pkg_zst`` in
    chunks (so that a package of gigabytes never sits in memory), then the info tar, as rattler-build orders them."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_zip_entry("metadata.json", len(FORMAT_METADATA), epoch), FORMAT_METADATA)
        entry = _zip_entry(f"pkg-{stem}.tar.zst", pkg_size, epoch)
        with zf.open(entry, "w", force_zip64=pkg_size >= zipfile.ZIP64_LIMIT) as dst:
            for chunk in iter(lambda: pkg_zst.read(CHUNK), b""):
                dst.write(chunk)
        zf.writestr(_zip_entry(f"info-{stem}.tar.zst", len(info_zst), epoch), info_zst)


def _zip_entry(name: str, size: int, epoch: int) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=time.gmtime(max(epoch, DEFAULT_EPOCH))[:6])
    entry.external_attr, entry.create_system, entry.file_size = 0o100644 << 16, 3, size
    return entry


def tar_bz2_bytes(info: list[Member], pkg: list[Member], epoch: int) -> bytes:
    """A ``.tar.bz2`` archive: ``info/`` members first, then the payload."""
    return bz2.compress(tar_bytes(_sorted(info) + _sorted(pkg), epoch), BZ2_LEVEL)


def _sorted(members: list[Member]) -> list[Member]:
    paths = [m.path for m in members]
    if len(set(paths)) != len(paths):
        raise BuildError(f"duplicate paths in a conda package: {sorted(p for p in paths if paths.count(p) > 1)}",
                         "this is a bug in flashinfer-repack; report it")
    return sorted(members, key=lambda m: m.path)


# -- reading -------------------------------------------------------------------------

def read_members(path: Path, info_only: bool = False) -> dict[str, bytes]:
    """Every regular file of a conda package (or only ``info/...``), by path; see iter_members."""
    return dict(iter_members(path, info_only))


def iter_members(path: Path, info_only: bool = False) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of each file (a link: its target), streamed: one member in memory at a time."""
    for name, _kind, data in iter_entries(path, info_only):
        yield name, data


def iter_entries(path: Path, info_only: bool = False) -> Iterator[tuple[str, str, bytes]]:
    """(path, kind, bytes) of each member: kind ``file`` (its bytes) or ``symlink``/``hardlink`` (its target).

    Directories are skipped.  Raises SourceError for anything unreadable: a
    truncated or damaged archive, a failed checksum, an unsafe member name, a
    member too large, a device or fifo.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIXES):
        raise SourceError(f"{path.name} is not a conda package (expected {' or '.join(SUFFIXES)})",
                          "give a conda package built by flashinfer-repack, conda-build or rattler-build",
                          value=path.name, expected=" or ".join(SUFFIXES))
    try:
        if path.name.endswith(".conda"):
            yield from _conda_members(path, info_only)
        else:
            with tarfile.open(path, mode="r|bz2") as tar:
                yield from _tar_members(tar, path.name, info_only)
    except SourceError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, ValueError, KeyError) as exc:
        raise SourceError(f"{path.name} is not a readable conda package: {exc}",
                          "the file is truncated or damaged; build or download it again") from exc


def _conda_members(path: Path, info_only: bool) -> Iterator[tuple[str, str, bytes]]:
    zstd = _zstd()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        inner = sorted((n for n in names if n.endswith(".tar.zst") and (n.startswith("info-") or not info_only)),
                       key=lambda n: not n.startswith("info-"))  # metadata first
        has_info, has_pkg = (any(n.startswith(p) for n in inner) for p in ("info-", "pkg-"))
        if not has_info or (not info_only and not has_pkg):
            raise SourceError(f"{path.name} lacks its info-*.tar.zst or pkg-*.tar.zst member (has {names})",
                              "the file is not a .conda package or is damaged")
        for name in inner:
            with zf.open(name) as raw:
                reader = zstd.ZstdDecompressor().stream_reader(raw)
                try:
                    with tarfile.open(fileobj=reader, mode="r|") as tar:
                        yield from _tar_members(tar, f"{path.name}:{name}", info_only)
                    while reader.read(1 << 20):  # to the end, so that zstd's and the zip's checksums are checked
                        pass
                except zstd.ZstdError as exc:
                    raise SourceError(f"{path.name}: {name} does not decompress: {exc}",
                                      "the file is damaged; build or download it again") from exc


def _tar_members(tar: tarfile.TarFile, label: str, info_only: bool) -> Iterator[tuple[str, str, bytes]]:
    for m in tar:
        if not is_safe_relpath(m.name):
            raise SourceError(f"{label}: unsafe member name {m.name!r}",
                              "refusing a package that writes outside its prefix")
        if info_only and not m.name.startswith("info/"):
            continue
        if m.size > MAX_MEMBER:
            raise SourceError(f"{label}: {m.name} is {m.size} bytes, more than {MAX_MEMBER}",
                              "refusing it: no file of a conda package of this kind is that large")
        if m.isfile():
            fh = tar.extractfile(m)
            yield m.name, "file", fh.read() if fh is not None else b""
        elif m.issym() or m.islnk():
            yield m.name, "symlink" if m.issym() else "hardlink", m.linkname.encode("utf-8")
        elif not m.isdir():
            raise SourceError(f"{label}: {m.name} is neither a file, a link nor a directory",
                              "refusing a package with devices or fifos")


def _zstd() -> Any:  # the zstandard module, untyped
    try:
        import zstandard
    except ImportError as exc:  # a dependency, but say what to do if it was left out
        raise BuildError("the .conda format needs the 'zstandard' module, which is not installed",
                         "pip install zstandard, or build the .tar.bz2 format instead") from exc
    return zstandard
