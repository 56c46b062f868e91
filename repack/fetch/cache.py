"""A content-addressed cache of verified files, and of whole downloaded wheels.

Every entry is checked on read against the digest recorded when it was written: blobs are stored
under their sha256, a whole wheel beside a ``<name>.sha256`` written only after the wheel verified.
A damaged or tampered entry is dropped with a warning naming it, and the caller goes on to its next
source, as if the entry had never been there.  Writes are atomic; temporaries left by killed runs are
removed.  A cache that cannot be written (read-only, full) degrades to no cache, with one warning.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from repack.fetch.digest import file_sha256
from repack.fs import (
    NotRegularFileError,
    UnsafePathError,
    atomic_write,
    check_filename,
    read_regular,
    remove_stale_temporaries,
    safe_join,
)

log = logging.getLogger(__name__)

#: A blob is one header or checksums.txt (321 KB): anything larger is not ours.
BLOB_LIMIT = 16 << 20


class Cache:
    """``root`` None disables caching (every call is a miss, puts are dropped)."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root else None
        self._swept = False

    def blob_path(self, digest: str) -> Path | None:
        if self.root is None or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            return None
        return self.root / "sha256" / digest[:2] / digest

    def _sweep(self) -> None:
        """Once per run: remove what killed runs left in every folder of the cache."""
        if self._swept or self.root is None:
            return
        self._swept = True
        sha = self.root / "sha256"
        folders = [self.root / "wheels", self.root / "provenance", self.root / "plans",
                   *(sorted(p for p in sha.iterdir() if p.is_dir()) if sha.is_dir() else [])]
        for folder in folders:
            for path in remove_stale_temporaries(folder):
                log.info("removed %s, left by a run that was stopped", path)

    def get(self, digest: str) -> bytes | None:
        self._sweep()
        path = self.blob_path(digest)
        if path is None or not path.exists():
            return None
        try:
            data = read_regular(path, BLOB_LIMIT)
        except NotRegularFileError as exc:
            self._drop(path, str(exc))
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            self._drop(path, "its content does not match its sha256")
            return None
        return data

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path is not None and not path.is_file():
            try:
                atomic_write(path, data)
            except OSError as exc:
                self.disable(exc)
        return digest

    def disable(self, exc: OSError) -> None:
        """Go on without the cache (read-only, full, gone): one warning, then no more attempts."""
        if self.root is not None:
            log.warning("the cache %s cannot be written (%s): going on without it", self.root,
                        exc.strerror or type(exc).__name__)
            self.root = None

    # -- whole wheels ---------------------------------------------------------------------

    def wheel_path(self, filename: str) -> Path | None:
        """Where a whole downloaded wheel is kept; ``filename`` comes from an index, so it is checked."""
        if self.root is None:
            return None
        folder = self.root / "wheels"
        self._sweep()
        return safe_join(folder, check_filename(filename, "wheel file name"), "wheel file name")

    def get_wheel(self, filename: str, sha256: str | None) -> Path | None:
        """The cached wheel, if its bytes still have the digest recorded when it was written (and the
        index's, when known); a damaged entry is removed with a warning and None returned."""
        try:
            path = self.wheel_path(filename)
        except UnsafePathError:
            return None
        if path is None or not path.exists():
            return None
        record = path.with_name(path.name + ".sha256")
        if not record.exists() and not record.is_symlink():
            # why not dropped: another run may have just placed it and not yet recorded it; unrecorded, it is
            # never used, and the next download that records it replaces it
            log.info("not using %s: no digest was recorded for it", path)
            return None
        try:
            recorded = read_regular(record, 64).decode("ascii")
            actual = file_sha256(path) if path.is_file() and not path.is_symlink() else ""
        except (NotRegularFileError, OSError, UnicodeDecodeError):
            recorded, actual = "", ""
        if not actual or actual != recorded or (sha256 and actual != sha256.lower()):
            self._drop(path, "its bytes are not the ones recorded when it was written")
            return None
        return path

    def record_wheel(self, path: Path, digest: str) -> None:
        """Vouch for a wheel just verified and placed at ``path`` (a :meth:`wheel_path`)."""
        try:
            atomic_write(path.with_name(path.name + ".sha256"), digest.encode("ascii"))
        except OSError as exc:
            path.unlink(missing_ok=True)
            self.disable(exc)

    def _drop(self, path: Path, why: str) -> None:
        log.warning("dropping the damaged cache entry %s: %s", path, why)
        for stale in (path, path.with_name(path.name + ".sha256")):
            try:
                stale.unlink(missing_ok=True)
            except OSError:
                pass

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
            return None if path is None else read_regular(path, 65536)
        except (OSError, NotRegularFileError):
            return None
