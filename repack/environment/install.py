"""Place a verified Payload straight into a FLASHINFER_CUBIN_DIR, without a package.

For environments where a package cannot go: no flashinfer-cubin (so
FLASHINFER_CUBIN_DIR is the variable or ``~/.cache/flashinfer/cubins``), a
Docker build step, a shared cubin cache.  Every file is written into a staging
directory beside the target (same filesystem), read back and checked, then
moved into place with ``os.replace``: each file appears whole or not at all,
the headers before the marker that vouches for them, and a file already
holding the right bytes is left alone (so a read-only, already-correct tree
needs no write).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from repack.errors import BuildError
from repack.fetch.verify import Payload, PayloadFile
from repack.fs import NotRegularFileError, locked, read_regular, safe_join


def install(payload: Payload, cubin_dir: Path) -> list[Path]:
    """Install ``payload`` (headers, marker, extras) under ``cubin_dir``; return the paths written."""
    cubin_dir = Path(cubin_dir)
    _refuse_symlinked_dest(payload, cubin_dir)
    # every path comes from flashinfer's code and checksums.txt: through the gate, never joined blindly
    targets = [(safe_join(cubin_dir, f.path, "payload path"), f) for f in _ordered(payload)]
    if all(_holds(dest, f.sha256) for dest, f in targets):
        return []  # a read-only, already-correct tree needs no write (not even a lock file)
    stage = _make_stage(cubin_dir)
    try:
        with locked(cubin_dir):  # two installs into one tree: one at a time
            pending = [(dest, f) for dest, f in targets if not _holds(dest, f.sha256)]
            staged = [(_stage_file(stage, f), dest, f) for dest, f in pending]
            for path, dest, _f in staged:
                _place(path, dest)
            return [dest for _path, dest, _f in staged]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _ordered(payload: Payload) -> list[PayloadFile]:
    """Extras and headers first, the marker last: a marker never vouches for headers not yet there."""
    marker = payload.plan.dest_path(payload.plan.marker_name)
    files = list(payload.extras) + [f for f in payload.files if f.path != marker]
    return files + [f for f in payload.files if f.path == marker]


def _holds(path: Path, sha256: str) -> bool:
    try:  # bounded: a header is small, and a FIFO or device in its place is simply "not there"
        return not path.is_symlink() and hashlib.sha256(read_regular(path, HOLD_LIMIT)).hexdigest() == sha256
    except (NotRegularFileError, OSError):
        return False


#: The payload's largest file (checksums.txt) is 321 KB: a larger file in its place is not it.
HOLD_LIMIT = 16 << 20


def _refuse_symlinked_dest(payload: Payload, cubin_dir: Path) -> None:
    """flashinfer >= 0.6.7.post1 leaves dest_dir as a symlink into the artifact tree; writing through it would
    put the marker among another version's files."""
    dest = cubin_dir / payload.plan.dest_dir
    if dest.is_symlink():
        raise BuildError(f"{dest} is a symlink to {os.path.realpath(dest)} (made by flashinfer >= 0.6.7.post1)",
                         f"remove it (rm {dest}) and run install again")


def _make_stage(cubin_dir: Path) -> Path:
    try:
        cubin_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".flashinfer-repack-", dir=cubin_dir))
    except OSError as exc:
        raise BuildError(f"cannot write in {cubin_dir}: {exc.strerror}",
                         "check the permissions, or choose another target directory",
                         path=str(cubin_dir), setting="target") from exc


def _stage_file(stage: Path, f: PayloadFile) -> Path:
    """Write one file in the stage and read it back: what is moved into place is what was verified."""
    path = safe_join(stage, f.path, "payload path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(f.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, 0o644)
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise BuildError(f"cannot write {path}: {exc.strerror}", "check free space and permissions") from exc
    if actual != f.sha256:
        raise BuildError(f"{path} reads back with sha256 {actual}, not {f.sha256}",
                         "the disk or filesystem is damaging writes; nothing was installed")
    return path


def _place(staged: Path, dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest)
    except OSError as exc:
        raise BuildError(f"cannot place {dest}: {exc.strerror}", "check the permissions of the target") from exc
