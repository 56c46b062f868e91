"""A wheel about to be published: its identity, digests and core metadata.

Publishing (to an index, a static simple tree, a bundle) starts from a
:class:`DistFile`, made only by :func:`read_distfile`, which checks the wheel
before anything leaves the machine: a readable zip, a file name that parses,
METADATA whose name and version agree with it, and every RECORD entry matching
its bytes.  A wheel altered after it was built is refused here.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from repack.errors import IntegrityError, UsageError
from repack.fetch.digest import file_digests
from repack.wheelfile import RecordRow, dist_info_dir, read_record, urlsafe_b64

CHUNK = 1 << 20


@dataclass(frozen=True)
class DistFile:
    path: Path
    project: str          # canonical (PEP 503) name
    name: str             # as METADATA spells it
    version: str
    sha256: str
    md5: str
    blake2_256: str
    size: int
    metadata: bytes       # the .dist-info/METADATA file, byte for byte (PEP 658)

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


def read_distfile(path: Path, *, check_record: bool = True) -> DistFile:
    """Check the wheel at ``path`` and describe it; IntegrityError if it was altered."""
    path = Path(path)
    if not path.name.endswith(".whl"):
        raise UsageError(f"{path} is not a wheel (.whl)", "only wheels can be published to a Python index")
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise UsageError(f"{path.name} is not a valid wheel file name: {exc}", "keep the name the builder gave") from exc
    if not path.is_file():
        raise UsageError(f"{path}: no such file", "give the path of a built wheel")
    digests = file_digests(path, ("sha256", "md5", "blake2_256"))  # the upload API asks for all three
    metadata = _check_wheel(path, str(name), check_record)
    headers = HeaderParser().parsestr(metadata.decode("utf-8", "replace"))
    meta_name = headers.get("Name", "")
    try:
        same_version = Version(headers.get("Version", "")) == version
    except InvalidVersion:
        same_version = False
    if not same_version:
        raise IntegrityError(f"{path.name}: METADATA says version {headers.get('Version')!r}, the file name {version}",
                             "the wheel was renamed or altered; rebuild it")
    return DistFile(path, str(name), meta_name or str(name), str(version), digests["sha256"], digests["md5"],
                    digests["blake2_256"], path.stat().st_size, metadata)


def _check_wheel(path: Path, project: str, check_record: bool) -> bytes:
    try:
        with zipfile.ZipFile(path) as zf:
            dist_info = dist_info_dir(zf.namelist(), path.name)
            metadata = zf.read(dist_info + "METADATA")
            if check_record:
                problems = _record_problems(zf, dist_info)
                if problems:
                    raise IntegrityError(f"{path.name} does not match its own RECORD: {problems[0]}"
                                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                         "the wheel was altered after it was built; rebuild it, do not publish it",
                                         problems=tuple(problems))
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise IntegrityError(f"{path.name} is not a readable wheel: {exc}",
                             "the file is damaged or truncated; rebuild or download it again") from exc
    meta_name = HeaderParser().parsestr(metadata.decode("utf-8", "replace")).get("Name", "")
    if canonicalize_name(meta_name) != canonicalize_name(project):
        raise IntegrityError(f"{path.name}: METADATA names the project {meta_name!r}, the file name {project!r}",
                             "the wheel was renamed or altered; rebuild it")
    return metadata


def _record_problems(zf: zipfile.ZipFile, dist_info: str) -> list[str]:
    """Every RECORD entry whose hash or size disagrees, and every file RECORD omits."""
    listed, problems = set(), []
    for row in read_record(zf.read(dist_info + "RECORD"), dist_info + "RECORD"):
        listed.add(row.name)
        if row.name == dist_info + "RECORD" or not row.algorithm:
            continue
        problems += _entry_problem(zf, row)
    problems += [f"{n} is not in RECORD" for n in zf.namelist() if not n.endswith("/") and n not in listed]
    return problems


def _entry_problem(zf: zipfile.ZipFile, row: RecordRow) -> list[str]:
    if row.algorithm not in ("sha256", "sha384", "sha512"):
        return [f"{row.name}: RECORD uses the weak or unknown hash {row.algorithm!r}"]
    try:
        h, n = hashlib.new(row.algorithm), 0
        with zf.open(row.name) as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
                n += len(chunk)
    except KeyError:
        return [f"{row.name} is in RECORD but not in the wheel"]
    got = urlsafe_b64(h.digest())
    if got != row.digest:
        return [f"{row.name}: {row.algorithm} {got}, RECORD says {row.digest}"]
    if row.size is not None and row.size != n:
        return [f"{row.name}: {n} bytes, RECORD says {row.size}"]
    return []
