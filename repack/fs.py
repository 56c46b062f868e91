"""Local files: the one gate for names from outside, atomic writes, locks, bounded reads, stale temporaries.

Every module that turns a name it did not choose (an index's file name, a zip member, a line of
``checksums.txt``, a path derived from flashinfer's code, a ``paths.json`` entry) into a path goes
through :func:`check_relpath` / :func:`check_filename` / :func:`safe_join`; this check is ours,
independent of the installed ``packaging`` (whose file-name parser, 23.2 to 26.0, accepts tag
components with ``/`` and ``..``).  Files that must be regular and small (a header, a cache entry, a
``file://`` URL) are opened with :func:`open_regular` / :func:`read_regular`, never blindly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from repack.errors import RepackError


class UnsafePathError(RepackError):
    """A name from outside would leave its directory, or is not a plain relative path."""


def is_safe_relpath(name: str) -> bool:
    """True for a relative POSIX path with no ``..``, no drive, no backslash, no control character."""
    if not name or name.startswith("/") or "\\" in name or ":" in name.split("/")[0]:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(name) == name


def check_relpath(name: str, what: str = "name") -> str:
    """``name`` itself if it is a safe relative POSIX path, else :class:`UnsafePathError`."""
    if not is_safe_relpath(name):
        raise UnsafePathError(f"refusing the {what} {name!r}: not a plain relative path",
                              "the source is damaged or hostile; use another source")
    return name


def check_filename(name: str, what: str = "file name") -> str:
    """A single path component (no ``/`` at all), as index and channel file names must be."""
    check_relpath(name, what)
    if "/" in name:
        raise UnsafePathError(f"refusing the {what} {name!r}: it names a directory",
                              "the index or channel is damaged or hostile; use another source")
    return name


def safe_join(root: Path, name: str, what: str = "name") -> Path:
    """``root / name`` for a checked ``name``; the result never lies outside ``root``."""
    path = Path(root).joinpath(*check_relpath(name, what).split("/"))
    # why: a link inside root could still lead out; compare real paths of what exists so far
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(f"refusing the {what} {name!r}: it resolves outside {root}",
                              "remove the link that leads out of the directory")
    return path


def identity(file: int | Path) -> tuple[int, int, int, int]:
    """What changes when a file is written to or replaced: inode, size, mtime and ctime (ns).

    ``file`` is an open descriptor (fstat: that file, wherever its name now points) or a path (stat: what the
    name names now; a rename changes the ctime too).  An in-place rewrite can restore the mtime (os.utime),
    never the ctime.
    """
    st = os.fstat(file) if isinstance(file, int) else os.stat(file)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def blocking_file(path: Path) -> Path | None:
    """The first of ``path``'s parents (then ``path`` itself) that exists and is not a directory: what makes
    creating a folder at ``path``, or a file in it, fail with "Not a directory"."""
    path = Path(path)
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def not_a_folder_hint(path: Path, exc: OSError) -> str | None:
    """``"X is a file, not a folder"`` when ``exc`` is ENOTDIR/EEXIST on the way to ``path``, else None."""
    import errno

    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := blocking_file(path)) is not None:
        return f"{blocker} is a file, not a folder"
    return None


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write beside the target, flush, then rename over it: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block.

    A directory is locked itself, so that no lock file is left among its contents (a bundle's
    ``wheels/`` is a pip ``--find-links`` folder; a cubin directory is flashinfer's).
    """
    if lock_file.is_dir():
        fd = os.open(lock_file, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    else:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class NotRegularFileError(RepackError):
    """A file that should be a regular file of a sane size is not."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file.

    Opened without blocking (a FIFO must not hang us) and checked on the open descriptor, so a
    link to ``/dev/zero`` or a file swapped after a check is refused, never read without bound.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise NotRegularFileError(f"cannot open {path}: {exc.strerror}", "check the file") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFileError(f"{path} is not a regular file", "replace it with the real file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise NotRegularFileError(f"{path} is {size} bytes, more than the {limit} expected",
                                      "replace it with the real file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise NotRegularFileError(f"{path} grew past {limit} bytes while being read", "replace it with the real file")
    return data


#: A temporary of another run older than this is abandoned even if its process id is alive again.
STALE_AFTER = 24 * 3600
#: an atomic_write temporary this old belongs to no live write (they take seconds)
TMP_STALE_AFTER = 3600


def temporary_name(target: Path) -> Path:
    """The private temporary beside ``target`` for this process: ``.<name>.<pid>.part``."""
    return target.with_name(f".{target.name}.{os.getpid()}.part")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.<name>.<pid>.part`` files left by runs that were killed (their process is gone,
    or they are a day old); a live run's temporary is left alone.  Returns what was removed."""
    removed = []
    for path in sorted(folder.glob(".*.part")) + sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        try:
            age = time.time() - path.lstat().st_mtime
        except OSError:
            continue
        if path.name.endswith(".tmp"):  # atomic_write's: no pid in the name, and written in seconds
            stale = age > TMP_STALE_AFTER
        else:
            pid = path.name[: -len(".part")].rpartition(".")[2]
            stale = pid.isdigit() and int(pid) != os.getpid() and (not _alive(int(pid)) or age > STALE_AFTER)
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True
