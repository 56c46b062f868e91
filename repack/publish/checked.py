"""Wheels that passed their RECORD check, remembered by the sha256 of the whole file.

The RECORD check's verdict depends on the wheel's bytes alone, and the sha256 of the file names those
bytes: a wheel with the sha256 of one that passed passes again.  So the check (seconds for the 268 MB
flashinfer-cubin wheel: 1.1 GB inflated and hashed) is done once per wheel, not once per publish
(build, then ``--simple``, then ``--index``).  The bytes published are still hashed each time, and
must have that sha256: the copy into a tree is hashed as it is written, an upload is hashed for its form.

Only passes are remembered (a failure is checked again, and says why, each time).  An entry is a small
JSON file named by the sha256, holding that sha256 and the size; an entry that is anything else is
ignored and the wheel is checked again.  A directory that cannot be written remembers nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from repack.fs import NotRegularFileError, atomic_write, read_regular

log = logging.getLogger(__name__)

ENTRY_LIMIT = 4096


class CheckedWheels:
    """The passes remembered under ``root``; ``root`` None remembers nothing."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root else None

    def _entry(self, sha256: str) -> Path | None:
        if self.root is None or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        return self.root / f"{sha256}.json"

    def passed(self, sha256: str, size: int) -> bool:
        """A wheel of this sha256 and size passed its RECORD check before."""
        entry = self._entry(sha256)
        if entry is None:
            return False
        try:
            data = json.loads(read_regular(entry, ENTRY_LIMIT))
        except (OSError, ValueError, NotRegularFileError):
            return False
        return isinstance(data, dict) and data.get("sha256") == sha256 and data.get("size") == size

    def remember(self, sha256: str, size: int, filename: str) -> None:
        entry = self._entry(sha256)
        if entry is None:
            return
        record = {"sha256": sha256, "size": size, "filename": filename, "record": "every member matched"}
        try:
            atomic_write(entry, (json.dumps(record, sort_keys=True) + "\n").encode())
        except OSError as exc:  # a read-only or full cache: the next publish checks again, nothing worse
            log.info("cannot remember the RECORD check of %s in %s (%s)", filename, self.root, exc.strerror)
