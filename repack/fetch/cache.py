"""A content-addressed cache of verified files, and of whole downloaded wheels.

Blobs are stored under their sha256 and checked again on every read, so a
damaged cache entry is dropped, never trusted.  Writes are atomic.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from repack.fs import atomic_write


class Cache:
    """``root`` None disables caching (every call is a miss, puts are dropped)."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root else None

    def blob_path(self, digest: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / "sha256" / digest[:2] / digest

    def get(self, digest: str) -> bytes | None:
        path = self.blob_path(digest)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            path.unlink(missing_ok=True)
            return None
        return data

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path is not None and not path.exists():
            try:
                atomic_write(path, data)
            except OSError:
                pass  # a read-only cache must not fail a build
        return digest

    def wheel_path(self, filename: str) -> Path | None:
        """Where a whole downloaded wheel is kept (verified by the caller)."""
        return None if self.root is None else self.root / "wheels" / filename

    def provenance_path(self, checksums_sha256: str) -> Path | None:
        return None if self.root is None else self.root / "provenance" / f"{checksums_sha256}.json"

    def put_provenance(self, checksums_sha256: str, record: bytes) -> None:
        """Where the blobs of one checksums.txt first came from; the first record stays."""
        path = self.provenance_path(checksums_sha256)
        if path is not None and not path.exists():
            try:
                atomic_write(path, record)
            except OSError:
                pass  # a read-only cache must not fail a build

    def get_provenance(self, checksums_sha256: str) -> bytes | None:
        path = self.provenance_path(checksums_sha256)
        try:
            return None if path is None else path.read_bytes()[:65536]
        except OSError:
            return None
