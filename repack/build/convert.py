"""A pure-Python wheel -> a ``noarch: python`` ``.conda`` package, streamed.

For air-gapped conda sites that have no flashinfer-python or flashinfer-cubin
packages of their own (conda-forge has no flashinfer-cubin).  The wheel's
files go where pip would put them, relative to the prefix the conda way:
``site-packages/`` (relocated by conda and rattler to the env's Python),
scripts under ``python-scripts/``, ``.data/data`` at the prefix root.  The
``.dist-info`` directory stays (so ``importlib.metadata`` sees the
distribution, which flashinfer and ``doctor`` rely on), with ``INSTALLER``
set to ``conda`` so that pip will not uninstall conda's files.

Requirements become conda match specs under the names of a table generated
from grayskull's PyPI -> conda-forge map (``condamap.json``, see
scripts/update_condamap.py; overridable).  A noarch package serves every
platform of the channel and every Python it allows, so a marker is evaluated
for each of them (linux-64 and linux-aarch64, CPython 3.10 to 3.14 within
Requires-Python), never for the Python running the converter: a requirement
whose marker is true for some and false for others is refused, naming the
marker; ``extra`` requirements are dropped.  The wheel's own Requires-Dist
lines move under an extra named ``original`` in the packaged METADATA (as
whl2conda does), so that ``pip check`` in a conda environment does not look
for conda-provided requirements under their PyPI names.  Every file is hashed while it streams from
the wheel into the package and checked against the wheel's RECORD: the 1.1 GB
of flashinfer-cubin never sits in memory.  Same wheel, table and epoch give
the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import IO, Any, BinaryIO

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from repack import __version__
from repack.build.artifact import DEFAULT_EPOCH, Artifact
from repack.build.conda import PathRecord, build_string, hash_input_json, info_members, link_json, python_spec
from repack.build.conda_archive import info_tar_zst, open_tar, tar_info, write_conda_container, zstd_compressor
from repack.errors import BuildError, InputError, IntegrityError
from repack.fetch.transport import Progress
from repack.fs import check_relpath
from repack.wheelfile import dist_info_dir, read_member, read_record, urlsafe_b64

MAP_FILE = Path(__file__).with_name("condamap.json")
#: zstd level of the payload tar: 3 turns flashinfer-cubin's 1.1 GB into a package in seconds,
#: at about the size of the wheel (level 19 would take minutes for a few percent).
PAYLOAD_LEVEL = 3
#: What a noarch package may meet: conda's Linux platforms (machine names) and CPython versions.
TARGET_MACHINES = {"linux-64": "x86_64", "linux-aarch64": "aarch64"}
TARGET_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
#: pip metadata: the extra the wheel's own requirements move under (whl2conda's name for it).
ORIGINAL_EXTRA = "original"
CONDA_OPS = ("==", "!=", ">=", "<=", ">", "<", "~=")
DATA_DIRS = {"purelib": "site-packages/", "platlib": "site-packages/", "scripts": "python-scripts/", "data": ""}
#: The most a converted wheel may declare in all (flashinfer-cubin 0.6.7, the largest converted, inflates
#: to about 1.3 GB); the payload is streamed, so this bounds the disk a hostile wheel can make us write.
PAYLOAD_LIMIT = 4 << 30


# -- the name table ------------------------------------------------------------------------

def load_name_map(override: Path | None = None) -> dict[str, str | None]:
    """The shipped PyPI -> conda name table, with ``override``'s entries on top."""
    names = _read_map(MAP_FILE)
    if override is not None:
        names.update(_read_map(Path(override)))
    return names


def _read_map(path: Path) -> dict[str, str | None]:
    try:
        data = json.loads(path.read_text("utf-8"))
        names = data["names"] if isinstance(data, dict) and "names" in data else data
        return {canonicalize_name(k): (None if v is None else str(v)) for k, v in dict(names).items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"cannot read the conda name map {path}: {exc}",
                         'give a JSON file like {"names": {"torch": "pytorch", "some-project": null}}') from exc


def conda_name(project: str, names: Mapping[str, str | None]) -> str | None:
    key = canonicalize_name(project)
    return names.get(key, key)


# -- requirements ------------------------------------------------------------------------------

def conda_depends(meta: Message, names: Mapping[str, str | None]) -> list[str]:
    """python first, then every Requires-Dist that applies on the channel's targets, as conda match specs."""
    targets = target_environments(meta.get("Requires-Python"))
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise BuildError(f"Requires-Dist {line!r} is not a valid requirement: {exc}",
                             "the wheel's metadata is damaged") from exc
        if not applies(req, line, targets):
            continue
        name = conda_name(req.name, names)
        if name is not None:
            out.append(f"{name} {conda_spec(req)}".strip())
    return [python_spec(meta.get("Requires-Python")), *sorted(set(out))]


def target_environments(requires_python: str | None) -> list[dict[str, str]]:
    """A complete marker environment for each platform and Python the noarch package may meet.

    Every key is given, so nothing of the converting interpreter leaks in;
    platform_release and platform_version (unknowable) take two values each,
    so that a marker reading them cannot agree by accident.
    """
    try:
        allowed = SpecifierSet(requires_python or "")
    except InvalidSpecifier as exc:
        raise BuildError(f"Requires-Python {requires_python!r} is not a valid specifier",
                         "the wheel's metadata is damaged") from exc
    pythons = [v for v in TARGET_PYTHONS if allowed.contains(f"{v}.0", prereleases=True)]
    if not pythons:
        raise BuildError(f"Requires-Python {requires_python!r} allows none of CPython {', '.join(TARGET_PYTHONS)}",
                         "this wheel cannot become a package for the channel's Pythons")
    return [{"implementation_name": "cpython", "implementation_version": f"{py}.0", "os_name": "posix",
             "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": release,
             "platform_system": "Linux", "platform_version": release, "python_full_version": f"{py}.0",
             "python_version": py, "sys_platform": "linux", "extra": ""}
            for machine in TARGET_MACHINES.values() for py in pythons for release in ("", "6.8.0")]


def applies(req: Requirement, line: str, targets: list[dict[str, str]]) -> bool:
    """Whether ``req`` holds on every target; BuildError, naming the marker, if only on some."""
    if req.marker is None:
        return True
    try:
        results = {req.marker.evaluate(env) for env in targets}
    except InvalidVersion:  # packaging < 24 raises where later ones compare as strings: cannot tell, so refuse
        results = {True, False}
    if len(results) > 1:
        raise BuildError(f"Requires-Dist {line!r}: the marker '{req.marker}' holds on some of the channel's "
                         f"platforms and Pythons ({', '.join(TARGET_MACHINES)}; Python "
                         f"{targets[0]['python_version']}-{targets[-1]['python_version']}) and not on others, "
                         "so one noarch package cannot carry it",
                         "map the project in the conda name map (null drops it), "
                         "or convert a wheel without that marker")
    return results.pop()


def conda_spec(req: Requirement) -> str:
    """A PEP 440 specifier set as a conda version spec (``>=0.1.6,<0.2,!=0.1.8``)."""
    parts = []
    for s in sorted(req.specifier, key=str):
        if s.operator not in CONDA_OPS:
            raise BuildError(f"{req}: the operator {s.operator!r} has no conda equivalent",
                             "map the project to a conda package by hand in the conda name map, or drop it with null")
        if s.operator == "==" and s.version.endswith(".*"):
            parts.append(s.version)
        else:
            parts.append(f"{s.operator}{s.version}")
    return ",".join(parts)


# -- the package ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    """One wheel member at its place in the conda package."""

    path: str           # relative to the prefix
    member: str         # the wheel member it comes from ("" for a file we add)
    executable: bool


def convert_wheel(wheel: Path, out_dir: Path, *, names: Mapping[str, str | None] | None = None,
                  epoch: int | None = None, build_number: int = 0, progress: Progress | None = None) -> Artifact:
    """Write ``<name>-<version>-<build>.conda`` for the pure wheel ``wheel`` into ``out_dir``.

    ``progress(label, done_bytes, total_bytes)``, if given, follows the payload (uncompressed bytes).
    """
    names = load_name_map() if names is None else names
    epoch = DEFAULT_EPOCH if epoch is None else epoch
    wheel, out_dir = Path(wheel), Path(out_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            dist_info, meta, name, depends, build = _describe(zf, wheel, names, build_number)
            stem = f"{name}-{Version(meta['Version'])}-{build}"
            return _write_package(zf, wheel, out_dir, stem, _layout(zf, dist_info),
                                  _info(zf, dist_info, meta, name, build, build_number, depends, epoch, wheel), epoch,
                                  progress)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BuildError(f"cannot convert {wheel.name}: {exc}", "check that the wheel is complete") from exc


def package_filename(wheel: Path, names: Mapping[str, str | None], build_number: int = 0) -> str:
    """The file name :func:`convert_wheel` gives the package of ``wheel`` (reads METADATA only)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            _, meta, name, _, build = _describe(zf, Path(wheel), names, build_number)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BuildError(f"cannot read {Path(wheel).name}: {exc}", "check that the wheel is complete") from exc
    return f"{name}-{Version(meta['Version'])}-{build}.conda"


def _describe(zf: zipfile.ZipFile, wheel: Path, names: Mapping[str, str | None],
              build_number: int) -> tuple[str, Message, str, list[str], str]:
    """(dist-info dir, METADATA, conda name, depends, build string) of a pure wheel."""
    dist_info, meta = _read_wheel_info(zf, wheel)
    name = conda_name(meta["Name"], names)
    if name is None:
        raise InputError(f"the conda name map drops {meta['Name']}, so {wheel.name} cannot be converted",
                         "map it to a name in the conda name map", setting="conda_map")
    depends = conda_depends(meta, names)
    return dist_info, meta, name, depends, build_string(hash_input_json(depends), build_number)


def _read_wheel_info(zf: zipfile.ZipFile, wheel: Path) -> tuple[str, Message]:
    dist_info = dist_info_dir(zf.namelist(), wheel.name)
    wheel_meta = HeaderParser().parsestr(read_member(zf, dist_info + "WHEEL", wheel.name).decode("utf-8"))
    tags = wheel_meta.get_all("Tag") or []
    purelib = wheel_meta.get("Root-Is-Purelib", "").strip().lower() == "true"
    if not purelib or not all(t.endswith("-none-any") for t in tags):
        raise BuildError(f"{wheel.name} is not a pure-Python wheel (tags {', '.join(tags)})",
                         "only py3-none-any wheels can become noarch: python conda packages")
    meta = HeaderParser().parsestr(read_member(zf, dist_info + "METADATA", wheel.name).decode("utf-8"))
    return dist_info, meta


def _layout(zf: zipfile.ZipFile, dist_info: str) -> list[Placed]:
    """Where each wheel member goes, sorted; RECORD is rewritten and INSTALLER added by us."""
    data_dir = dist_info[: -len(".dist-info/")] + ".data/"
    placed, total = [], 0
    for info in zf.infolist():
        n = info.filename
        if n.endswith("/") or n in (dist_info + "RECORD", dist_info + "INSTALLER", dist_info + "METADATA"):
            continue
        check_relpath(n, "wheel member name")  # a name from outside becomes a path in the package
        total += info.file_size
        if total > PAYLOAD_LIMIT:
            raise BuildError(f"the wheel's members declare more than {PAYLOAD_LIMIT} bytes in all",
                             "the wheel is damaged or hostile; do not convert it", value=total, expected=PAYLOAD_LIMIT)
        if n.startswith(data_dir):
            kind, _, rest = n[len(data_dir):].partition("/")
            if kind not in DATA_DIRS:
                raise BuildError(f"{n}: the wheel data directory {kind!r} has no noarch: python place",
                                 "convert only wheels whose .data holds purelib, platlib, scripts or data")
            target = DATA_DIRS[kind] + check_relpath(rest, "wheel data member name")
        else:
            target = "site-packages/" + n
        placed.append(Placed(target, n, bool((info.external_attr >> 16) & 0o111)))
    return sorted(placed, key=lambda p: p.path)


def _info(zf: zipfile.ZipFile, dist_info: str, meta: Message, name: str, build: str, build_number: int,
          depends: list[str], epoch: int, wheel: Path) -> dict[str, Any]:
    return {"name": name, "version": str(Version(meta["Version"])), "build": build, "build_number": build_number,
            "depends": depends, "license": _license(meta), "noarch": "python", "subdir": "noarch",
            "timestamp": epoch * 1000, "entry_points": _entry_points(zf, dist_info), "summary": meta.get("Summary", ""),
            "home": _homepage(meta), "source": wheel.name, "dist_info": dist_info}


def _license(meta: Message) -> str:
    text = meta.get("License-Expression") or meta.get("License") or ""
    return text.strip().splitlines()[0][:100] if text.strip() else ""


def _homepage(meta: Message) -> str:
    for url in meta.get_all("Project-URL") or []:
        label, _, value = url.partition(",")
        if label.strip().lower() in ("homepage", "home"):
            return str(value).strip()
    return str(meta.get("Home-page", ""))


def _entry_points(zf: zipfile.ZipFile, dist_info: str) -> list[str]:
    """console_scripts and gui_scripts, for conda to create at link time (``name = module:function``)."""
    import configparser

    if dist_info + "entry_points.txt" not in zf.namelist():
        return []
    text = read_member(zf, dist_info + "entry_points.txt", dist_info).decode("utf-8")
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the entry points' case, as configparser documents
    parser.read_string(text)
    return [f"{k} = {v.strip()}" for section in ("console_scripts", "gui_scripts") if parser.has_section(section)
            for k, v in sorted(parser.items(section))]


# -- writing -----------------------------------------------------------------------------------------

def _write_package(zf: zipfile.ZipFile, wheel: Path, out_dir: Path, stem: str, layout: list[Placed],
                   info: dict[str, Any], epoch: int, progress: Progress | None = None) -> Artifact:
    """The payload is compressed to a file as it streams from the wheel, then copied into the container."""
    target = out_dir / f"{stem}.conda"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out_dir) as tmp:
        pkg = Path(tmp) / "pkg.tar.zst"
        with open(pkg, "wb") as fh:
            writer = zstd_compressor(PAYLOAD_LEVEL).stream_writer(fh, closefd=False)
            written = _write_payload(zf, wheel, layout, info["dist_info"], writer, epoch, progress)
            writer.close()
        partial = Path(tmp) / target.name
        with open(pkg, "rb") as payload, open(partial, "wb") as out:
            write_conda_container(out, stem, payload, pkg.stat().st_size,
                                  info_tar_zst(_info_members(info, written), epoch), epoch)
        os.replace(partial, target)
    return Artifact.of("conda", target)


def _write_payload(zf: zipfile.ZipFile, wheel: Path, layout: list[Placed], dist_info: str, writer: BinaryIO,
                   epoch: int, progress: Progress | None = None) -> list[PathRecord]:
    record = _record(zf, dist_info)
    written, problems = [], []
    total, done = sum(zf.getinfo(p.member).file_size for p in layout), 0
    with open_tar(writer) as tar:
        for p in layout:
            info = zf.getinfo(p.member)
            with zf.open(info) as raw:
                source = _Hashing(raw)
                tar.addfile(tar_info(p.path, info.file_size, p.executable, epoch), source)
            want = record.get(p.member)
            if want is None or want != source.record_hash():
                problems.append(f"{p.member}: " + ("not in RECORD" if want is None else "sha256 differs from RECORD"))
            written.append(PathRecord(p.path, source.sha256.hexdigest(), source.size))
            done += source.size
            if progress is not None:
                progress(f"convert {wheel.name}", done, total)
        metadata = read_member(zf, dist_info + "METADATA", dist_info)
        if record.get(dist_info + "METADATA") != "sha256=" + urlsafe_b64(hashlib.sha256(metadata).digest()):
            problems.append(f"{dist_info}METADATA: not in RECORD or sha256 differs from RECORD")
        for path, data in _dist_info_additions(zf, dist_info, pip_metadata(metadata)):
            tar.addfile(tar_info(path, len(data), False, epoch), io.BytesIO(data))
            written.append(PathRecord(path, hashlib.sha256(data).hexdigest(), len(data)))
    if problems:
        raise IntegrityError(f"{wheel.name} does not match its own RECORD: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                             "the wheel was altered after it was built; download it again", problems=tuple(problems))
    return sorted(written, key=lambda w: w.path)


def _dist_info_additions(zf: zipfile.ZipFile, dist_info: str, metadata: bytes) -> list[tuple[str, bytes]]:
    """METADATA (requirements under the ``original`` extra) and INSTALLER ("conda"), and RECORD saying so."""
    added = {dist_info + "INSTALLER": b"conda\n", dist_info + "METADATA": metadata}
    record = read_member(zf, dist_info + "RECORD", dist_info).decode("utf-8")
    rows = [r for r in csv.reader(io.StringIO(record)) if r and r[0] not in added and r[0] != dist_info + "RECORD"]
    rows += [[name, f"sha256={urlsafe_b64(hashlib.sha256(data).digest())}", str(len(data))]
             for name, data in added.items()]
    rows = [*sorted(rows), [dist_info + "RECORD", "", ""]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    added[dist_info + "RECORD"] = buf.getvalue().encode("utf-8")
    return sorted(("site-packages/" + name, data) for name, data in added.items())


def pip_metadata(metadata: bytes) -> bytes:
    """METADATA with each Requires-Dist under ``extra == "original"`` (and ``Provides-Extra: original``).

    conda provides the requirements, under conda names; left as they are,
    ``pip check`` would report them missing (whl2conda's reasoning).  The
    lines stay, so that the original requirements can still be read.
    """
    text = metadata.decode("utf-8")
    head, sep, body = text.partition("\n\n")
    if not sep:  # headers only
        head, sep = text.rstrip("\n"), "\n"
    lines, moved = [], False
    for line in head.split("\n"):
        if line.lower().startswith("requires-dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            marker = f"({req.marker}) and " if req.marker else ""
            req.marker = None
            line = f'Requires-Dist: {req}; {marker}extra == "{ORIGINAL_EXTRA}"'
            moved = True
        lines.append(line)
    if moved and f"Provides-Extra: {ORIGINAL_EXTRA}" not in lines:
        lines.append(f"Provides-Extra: {ORIGINAL_EXTRA}")
    return ("\n".join(lines) + sep + body).encode("utf-8")


def _record(zf: zipfile.ZipFile, dist_info: str) -> dict[str, str]:
    rows = read_record(read_member(zf, dist_info + "RECORD", dist_info), dist_info + "RECORD")
    return {r.name: f"{r.algorithm}={r.digest}" for r in rows if r.algorithm}


def _info_members(info: dict[str, Any], written: list[PathRecord]) -> list[Any]:
    index = {k: info[k] for k in ("name", "version", "build", "build_number", "depends", "license", "noarch",
                                  "subdir", "timestamp")}
    about = {"summary": info["summary"], "home": info["home"], "license": info["license"],
             "extra": {"converted_from": info["source"], "converted_by": f"flashinfer-repack {__version__}"}}
    return info_members(index, about, link_json(info["entry_points"]), written)


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, fh: BinaryIO | IO[bytes]) -> None:
        self.fh, self.sha256, self.size = fh, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.fh.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def record_hash(self) -> str:
        return "sha256=" + urlsafe_b64(self.sha256.digest())



