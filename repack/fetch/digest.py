"""Digests of files on disk, several at once (indexes and channels ask for more than sha256).

Each digest is taken on its own thread with ``os.pread`` from one descriptor (no shared offset):
hashlib releases the GIL over large buffers, so sha256 and blake2b of a 268 MB wheel take the
time of the slower one, not of both.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


_MAKERS: dict[str, Callable[[], _Hash]] = {
    "sha256": hashlib.sha256,
    "md5": lambda: hashlib.md5(usedforsecurity=False),
    "blake2_256": lambda: hashlib.blake2b(digest_size=32),
}


class ShorterThanItWas(EOFError):
    """The file ended before the size it had when its hashing began: it was cut or rewritten meanwhile."""


def fd_digests(fd: int, size: int, names: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """``{name: hexdigest}`` of the first ``size`` bytes of ``fd`` (:class:`ShorterThanItWas` if it holds fewer)."""
    wanted = list(dict.fromkeys(names))
    if len(wanted) <= 1:
        return {name: _digest(fd, size, name) for name in wanted}
    with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
        found = {name: pool.submit(_digest, fd, size, name) for name in wanted}
        return {name: future.result() for name, future in found.items()}


def _digest(fd: int, size: int, name: str) -> str:
    h, offset = _MAKERS[name](), 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise ShorterThanItWas(f"the file ends at {offset} bytes, {size} expected")
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def file_digests(path: Path, names: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """``{name: hexdigest}`` for each of ``names`` (sha256, md5, blake2_256) of the whole regular file.

    NotRegularFileError for anything else (a FIFO is never waited on); IntegrityError for a file cut
    or rewritten while it is read (its bytes are no single version of it).
    """
    from repack.errors import IntegrityError
    from repack.fs import identity, open_regular

    with open_regular(path) as fh:
        before = identity(fh.fileno())
        try:
            found = fd_digests(fh.fileno(), before[1], names)
        except ShorterThanItWas as exc:
            raise IntegrityError(f"{path} changed while it was being read ({exc})",
                                 "run again once nothing writes to it") from None
        if identity(fh.fileno()) != before:  # written to meanwhile: the digests are of no one version
            raise IntegrityError(f"{path} changed while it was being read (written to meanwhile)",
                                 "run again once nothing writes to it")
        return found


def file_sha256(path: Path) -> str:
    return file_digests(path)["sha256"]
