"""Digests of files on disk, several at once in one read (indexes and channels ask for more than sha256)."""

from __future__ import annotations

import hashlib
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


def file_digests(path: Path, names: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """``{name: hexdigest}`` for each of ``names`` (sha256, md5, blake2_256), in one pass over the file."""
    hashes = {name: _MAKERS[name]() for name in names}
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def file_sha256(path: Path) -> str:
    return file_digests(path)["sha256"]
