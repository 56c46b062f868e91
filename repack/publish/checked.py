"""Wheels that passed their RECORD check, remembered by the sha256 of the whole file.

The RECORD check's verdict depends on the wheel's bytes alone, and the sha256 of the file names those
bytes: a wheel with the sha256 of one that passed passes again.  So the check (seconds for the 268 MB
flashinfer-cubin wheel: 1.1 GB inflated and hashed) is done once per wheel, not once per publish
(build, then ``--simple``, then ``--index``).  The bytes published are still hashed each time, and
must have that sha256: the copy into a tree is hashed as it is written, an upload is hashed for its form.

Only passes are remembered (a failure is checked again, and says why, each time).  An entry is a small
JSON file named by the sha256, holding that sha256 and the size; an entry that is anything else is
ignored and the wheel is checked again.  A directory that cannot be written remembers nothing.

A verdict cannot verify itself: whoever can write an entry can switch the check off.  So an entry is
trusted only as ssh and pip trust private state: the folder is created 0700, and it and the entry must
be owned by this user and writable by no one else, the entry a regular file opened without following a
link.  Anything else counts for nothing (said at debug level) and the wheel is checked in full.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from repack.fs import atomic_write

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
        """A wheel of this sha256 and size passed its RECORD check before (and the entry is private)."""
        entry = self._entry(sha256)
        if entry is None or not _private_folder(entry.parent):
            return False
        try:
            data = json.loads(_read_private(entry))
        except (OSError, ValueError) as exc:
            log.debug("RECORD verdict %s counts for nothing: %s", entry, exc)
            return False
        return isinstance(data, dict) and data.get("sha256") == sha256 and data.get("size") == size

    def remember(self, sha256: str, size: int, filename: str) -> None:
        entry = self._entry(sha256)
        if entry is None:
            return
        record = {"sha256": sha256, "size": size, "filename": filename, "record": "every member matched"}
        try:
            entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(entry.parent)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.chmod(entry.parent, 0o700)  # ours, made under a looser umask (0o002): made private
            if not _private_folder(entry.parent):  # a verdict written there could be replaced by another user
                return
            atomic_write(entry, (json.dumps(record, sort_keys=True) + "\n").encode(), mode=0o600)
        except OSError as exc:  # a read-only or full cache: the next publish checks again, nothing worse
            log.info("cannot remember the RECORD check of %s in %s (%s)", filename, self.root, exc.strerror)


def _private_folder(folder: Path) -> bool:
    """``folder`` is a real directory (not a link) of this user that no one else can write."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    problem = _not_private(st, "directory", stat.S_ISDIR)
    if problem:
        log.debug("RECORD verdicts in %s count for nothing: %s", folder, problem)
    return not problem


def _not_private(st: os.stat_result, kind: str, is_kind: Callable[[int], bool]) -> str:
    """Why ``st`` is not private state of this user ('' when it is)."""
    if not is_kind(st.st_mode):
        return f"not a {kind}"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def _read_private(entry: Path) -> bytes:
    """The entry's bytes: opened without following a link, a private regular file of at most ENTRY_LIMIT bytes."""
    fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        problem = _not_private(os.fstat(fd), "regular file", stat.S_ISREG)
        if problem:
            raise OSError(problem)
        data = fh.read(ENTRY_LIMIT + 1)
    if len(data) > ENTRY_LIMIT:
        raise ValueError(f"more than {ENTRY_LIMIT} bytes")
    return data
