"""A wheel about to be published: its identity, digests and core metadata.

Publishing (to an index, a static simple tree, a bundle) starts from a
:class:`DistFile`, made only by :func:`read_distfile`, which checks the wheel
before anything leaves the machine: a readable zip, a file name that parses,
METADATA whose name and version agree with it, and every RECORD entry matching
its bytes.  A wheel altered after it was built is refused here.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import BinaryIO

from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from repack.errors import InputError, IntegrityError
from repack.fetch.digest import fd_digests, file_digests
from repack.fs import NotRegularFileError, identity, open_regular
from repack.publish.checked import CheckedWheels
from repack.publish.members import DamagedMember, check_layout, member_chunks
from repack.wheelfile import RecordRow, dist_info_dir, read_member, read_record, urlsafe_b64

log = logging.getLogger(__name__)

#: ``progress(label, done_bytes, total_bytes)``
Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class DistFile:
    path: Path
    project: str          # canonical (PEP 503) name
    name: str             # as METADATA spells it
    version: str
    sha256: str           # empty until hashed (read_distfile with digests=())
    blake2_256: str
    size: int
    metadata: bytes       # the .dist-info/METADATA file, byte for byte (PEP 658)
    record_checked: bool = False  # every member matched RECORD (read_distfile, or check_record later)

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def metadata_sha256(self) -> str:
        return hashlib.sha256(self.metadata).hexdigest()

    def headers(self) -> Message:
        """METADATA parsed as RFC 822 headers."""
        return HeaderParser().parsestr(self.metadata.decode("utf-8", "replace"))

    @property
    def requires_python(self) -> str | None:
        value = self.headers().get("Requires-Python")
        return None if value is None else str(value)


#: What the upload form carries, as twine 7 sends it (no md5_digest: PyPI deprecated it, and no index needs it)
UPLOAD_DIGESTS = ("sha256", "blake2_256")


def wheel_identity(path: Path) -> tuple[str, Version]:
    """The project (PEP 503 name) and version a wheel's file name gives; InputError unless it is a wheel file.

    What :func:`read_distfile` checks before it reads the file, for callers that ask an index about
    the file while it is hashed.
    """
    path = Path(path)
    if not path.name.endswith(".whl"):
        raise InputError(f"{path} is not a wheel (.whl)", "only wheels can be published to a Python index")
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise InputError(f"{path.name} is not a valid wheel file name: {exc}", "keep the name the builder gave",
                         value=path.name, path=str(path)) from exc
    if not path.is_file():
        raise InputError(f"{path}: no such file", "give the path of a built wheel")
    return str(name), version


def read_distfile(path: Path, *, check_record: bool = True, digests: tuple[str, ...] = UPLOAD_DIGESTS,
                  progress: Progress | None = None) -> DistFile:
    """Check the wheel at ``path`` and describe it; IntegrityError if it was altered.

    ``check_record`` False leaves the RECORD check (a read of every member: seconds for a 268 MB
    wheel) to :func:`check_record`, for the callers that learn first whether the file will be sent.
    ``digests`` names the hashes computed in the one pass over the file (others are left empty; none at
    all for a caller that hashes the bytes it publishes itself, as :func:`repack.publish.simple.publish_simple`
    hashes its staged copy).
    """
    path = Path(path)
    name, version = wheel_identity(path)
    metadata, found, size = _check_wheel(path, str(name), check_record, progress, digests=digests)
    headers = HeaderParser().parsestr(metadata.decode("utf-8", "replace"))
    meta_name = headers.get("Name", "")
    try:
        same_version = Version(headers.get("Version", "")) == version
    except InvalidVersion:
        same_version = False
    if not same_version:
        raise IntegrityError(f"{path.name}: METADATA says version {headers.get('Version')!r}, the file name {version}",
                             "the wheel was renamed or altered; rebuild it")
    return DistFile(path, str(name), meta_name or str(name), str(version), found.get("sha256", ""),
                    found.get("blake2_256", ""), size, metadata, check_record)


def check_record(dist: DistFile, progress: Progress | None = None, checked: CheckedWheels | None = None,
                 at: Path | None = None) -> DistFile:
    """``dist``, marked checked; IntegrityError unless every member matches its RECORD (the deferred check).

    ``at`` reads a copy of the wheel (staged where it is published, ``dist.sha256`` its hash) in place of
    ``dist.path``, so that the bytes checked are the bytes published.  A wheel whose sha256 passed before
    (``checked``) is not inflated again: the verdict is the same for the same bytes.
    """
    if dist.record_checked:
        return dist
    return _verified(dist, at or dist.path, progress, checked, ("sha256",) if dist.sha256 else ())[0]


def ready_to_upload(dist: DistFile, progress: Progress | None = None,
                    checked: CheckedWheels | None = None) -> DistFile:
    """``dist`` checked against its RECORD and with the upload digests: what a file to be sent needs.

    The upload form's blake2_256 (and the sha256 again, so that a file rewritten since it was
    first hashed is caught) come from one pass over the descriptor the RECORD check reads, beside
    the check.  :class:`RecordCheck` runs the same check while the file is sent.
    """
    sound, found = _verified(dist, dist.path, progress, checked, UPLOAD_DIGESTS)
    return replace(sound, blake2_256=found["blake2_256"])


class RecordCheck:
    """The RECORD checks of the wheels to be sent, run while the first is sent: an upload is mostly the index's time.

    The checks run one after the other on a thread of their own from the start.  The first upload
    sends all but its file's last chunk (the zip's end-of-central-directory record in it), then calls
    :meth:`wait`, and only when every wheel passed does that body end: a failure raises
    IntegrityError there, the connection drops mid-body, and the index never holds a whole request,
    let alone a readable wheel; nothing at all is published.  While the upload waits, the check's
    progress is shown.  The caller waits for the verdict once more after the uploads (whatever the
    index answered); when the upload failed first, :meth:`failure` says whether a wheel fails too (the
    error to show before the network's), and :meth:`cancel` stops the checks on an interrupt.
    """

    def __init__(self, dists: Sequence[DistFile], checked: CheckedWheels | None, progress: Progress | None) -> None:
        self.dists, self._progress = list(dists), progress
        self._state: tuple[str, int, int | None] = ("RECORD check", 0, None)
        self._cancelled = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="record-check")
        self._future = pool.submit(self._run, checked)
        pool.shutdown(wait=False)

    def _run(self, checked: CheckedWheels | None) -> list[DistFile]:
        return [self._check(d, checked) for d in self.dists]

    def _check(self, dist: DistFile, checked: CheckedWheels | None) -> DistFile:
        if checked is not None and checked.passed(dist.sha256, dist.size):
            # the upload hashes the bytes it sends and refuses any but ``dist.sha256``: no need to hash here
            log.info("%s: RECORD checked before (sha256 %s): not inflated again", dist.filename, dist.sha256)
            return replace(dist, record_checked=True)
        return _verified(dist, dist.path, self._note, checked, ("sha256",))[0]

    def _note(self, label: str, done: int, total: int | None) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        self._state = (label, done, total)

    def wait(self) -> list[DistFile]:
        """The wheels, each checked (IntegrityError for the first that failed); progress shown meanwhile."""
        while True:
            try:
                sound = self._future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                if self._progress is not None:
                    self._progress(*self._state)
                continue
            for before, after in zip(self.dists, sound, strict=True):
                if not after.record_checked or after.sha256 != before.sha256:
                    raise IntegrityError(f"{before.filename} changed while it was being checked",
                                         "publish it again once nothing writes to it")
            return sound

    def cancel(self) -> None:
        """Stop the checks (at their next progress step) and wait for their thread to end."""
        self._cancelled.set()
        concurrent.futures.wait([self._future])

    def failure(self, wait: bool = False) -> IntegrityError | None:
        """The check's IntegrityError, if it ended with one (``wait``: once every check has run)."""
        if wait:
            concurrent.futures.wait([self._future])
        if not self._future.done():
            return None
        exc = self._future.exception()
        return exc if isinstance(exc, IntegrityError) else None


class _Cancelled(Exception):
    """The check was stopped: its upload ended first."""


def _verified(dist: DistFile, path: Path, progress: Progress | None, checked: CheckedWheels | None,
              digests: tuple[str, ...]) -> tuple[DistFile, dict[str, str]]:
    """``dist`` checked, and ``digests`` of the bytes at ``path``, which must be ``dist``'s bytes.

    A pass is remembered only when the sha256 was taken from the descriptor the check read, the file
    unchanged throughout (:func:`_check_wheel`): never for bytes other than the ones checked.
    """
    if checked is not None and dist.sha256 and checked.passed(dist.sha256, dist.size):
        log.info("%s: RECORD checked before (sha256 %s): not inflated again", dist.filename, dist.sha256)
        found = file_digests(path, digests) if digests else {}
        _same_bytes(dist, found, dist.size)
        return replace(dist, record_checked=True), found
    metadata, found, size = _check_wheel(path, dist.project, True, progress, dist.filename, digests)
    if metadata != dist.metadata:
        raise IntegrityError(f"{dist.filename} changed while it was being published (its METADATA differs)",
                             "publish it again once nothing writes to it")
    _same_bytes(dist, found, size)
    if checked is not None and found.get("sha256"):
        checked.remember(dist.sha256, dist.size, dist.filename)
    return replace(dist, record_checked=True), found


def _same_bytes(dist: DistFile, found: dict[str, str], size: int) -> None:
    sha256 = found.get("sha256", dist.sha256)
    if sha256 != dist.sha256 or size != dist.size:
        raise IntegrityError(f"{dist.filename} changed while it was being published (sha256 {sha256}, "
                             f"{size} bytes; was {dist.sha256}, {dist.size} bytes)",
                             "publish it again once nothing writes to it")


def _check_wheel(path: Path, project: str, check_record: bool, progress: Progress | None = None,
                 label: str | None = None, digests: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str], int]:
    """METADATA, the ``digests`` and the size of the bytes checked: all read from one descriptor.

    The digests are taken on a second thread with ``pread`` beside the check; the file's identity
    (inode, size, mtime, ctime) must be the same at the end as at the start, so that the digests name
    exactly the bytes that were checked (a writer in between makes it IntegrityError).
    """
    name = label or path.name  # a staged copy is read, the wheel's own name is reported
    try:
        with open_regular(path) as fh, concurrent.futures.ThreadPoolExecutor(1) as pool:  # never a FIFO's wait
            before = identity(fh.fileno())
            hashing = pool.submit(fd_digests, fh.fileno(), before[1], digests)
            metadata = _check_open(fh, path, project, check_record, progress, name)
            found = hashing.result()
            if identity(fh.fileno()) != before:
                raise IntegrityError(f"{name} changed while it was being published (written to during its check)",
                                     "publish it again once nothing writes to it")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise IntegrityError(f"{name} is not a readable wheel: {exc}",
                             "the file is damaged or truncated; rebuild or download it again") from exc
    except NotRegularFileError as exc:
        raise IntegrityError(f"{name} is not a readable wheel: {exc}", "give the wheel file itself") from exc
    except DamagedMember as exc:
        raise IntegrityError(f"{name} is not a sound zip: {exc}", "the file is damaged or was crafted to "
                             "read differently in different tools; rebuild or download it again") from exc
    return metadata, found, before[1]


def _check_open(fh: BinaryIO, path: Path, project: str, check_record: bool, progress: Progress | None,
                name: str) -> bytes:
    with zipfile.ZipFile(fh) as zf:
        dist_info = dist_info_dir(zf.namelist(), name)
        metadata = read_member(zf, dist_info + "METADATA", name)
        if check_record:
            problems = _record_problems(zf, fh.fileno(), dist_info, _Counter(zf, name, progress), name)
            if problems:
                raise IntegrityError(f"{name} does not match its own RECORD: {problems[0]}"
                                     + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                     "the wheel was altered after it was built; rebuild it, do not publish it",
                                     problems=tuple(problems))
    meta_name = HeaderParser().parsestr(metadata.decode("utf-8", "replace")).get("Name", "")
    if canonicalize_name(meta_name) != canonicalize_name(project):
        raise IntegrityError(f"{name}: METADATA names the project {meta_name!r}, the file name {project!r}",
                             "the wheel was renamed or altered; rebuild it")
    return metadata


class _Counter:
    """Progress over the RECORD check, in uncompressed bytes of the whole wheel."""

    def __init__(self, zf: zipfile.ZipFile, name: str, progress: Progress | None) -> None:
        self.label, self.progress, self.done = f"RECORD check {name}", progress, 0
        self.total = sum(i.file_size for i in zf.infolist()) if progress else 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:  # members are checked on several threads
            self.done += n
            if self.progress is not None:
                self.progress(self.label, self.done, self.total)


#: RECORD cannot hash itself, nor the signatures made of it; every other row must have a hash (as pypa/installer)
UNHASHED = ("RECORD", "RECORD.jws", "RECORD.p7s")


def _record_problems(zf: zipfile.ZipFile, fd: int, dist_info: str, counter: _Counter, label: str) -> list[str]:
    """Every RECORD entry whose hash or size disagrees or is missing, and every file RECORD omits.

    Members are inflated and hashed on one thread per core from one descriptor (see
    :mod:`repack.publish.members`): a 268 MB wheel of 9,764 members is the slow step of a publish.
    """
    check_layout(fd, zf.infolist(), zf.start_dir)  # DamagedMember: a name twice, overlapping data
    listed, entries, unhashed = set(), [], []
    for row in read_record(read_member(zf, dist_info + "RECORD", label), dist_info + "RECORD"):
        listed.add(row.name)
        if row.algorithm:
            if row.name != dist_info + "RECORD":
                entries.append(row)
        elif row.name not in {dist_info + n for n in UNHASHED}:
            unhashed.append(f"{row.name}: RECORD gives it no hash")
    infos = {i.filename: i for i in zf.infolist()}
    unhashed += _unhashed_damage(fd, [infos[dist_info + n] for n in UNHASHED[1:] if dist_info + n in infos])
    workers = max(1, min(8, os.cpu_count() or 1, len(entries) // 64 or 1))
    shares = [entries[i::workers] for i in range(workers)]  # interleaved: big and small members spread evenly
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        found = pool.map(lambda share: [(row.name, text) for row in share
                                        for text in _entry_problem(fd, infos.get(row.name), row, counter)],
                         shares)
        order = {row.name: i for i, row in enumerate(entries)}
        problems = sorted((p for share in found for p in share), key=lambda p: order.get(p[0], -1))
    return unhashed + [text for _, text in problems] + [
        f"{n} is not in RECORD" for n in zf.namelist() if not n.endswith("/") and n not in listed]


def _unhashed_damage(fd: int, infos: list[zipfile.ZipInfo]) -> list[str]:
    """RECORD's signatures have no hash to check, but pip still reads them whole: their CRC-32 must hold."""
    problems = []
    for info in infos:
        try:
            for _ in member_chunks(fd, info):
                pass
        except DamagedMember as exc:
            problems.append(f"{exc} (damaged)")
    return problems


def _entry_problem(fd: int, info: zipfile.ZipInfo | None, row: RecordRow, counter: _Counter) -> list[str]:
    if row.algorithm not in ("sha256", "sha384", "sha512"):
        return [f"{row.name}: RECORD uses the weak or unknown hash {row.algorithm!r}"]
    if info is None:
        return [f"{row.name} is in RECORD but not in the wheel"]
    h, n = hashlib.new(row.algorithm), 0
    try:
        for chunk in member_chunks(fd, info):
            h.update(chunk)
            n += len(chunk)
            counter.add(len(chunk))
    except DamagedMember as exc:
        return [f"{exc} (damaged)"]
    got = urlsafe_b64(h.digest())
    if got != row.digest:
        return [f"{row.name}: {row.algorithm} {got}, RECORD says {row.digest}"]
    if row.size is not None and row.size != n:
        return [f"{row.name}: {n} bytes, RECORD says {row.size}"]
    return []
