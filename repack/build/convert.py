"""A pure-Python wheel -> a ``noarch: python`` ``.conda`` package, streamed.

For air-gapped conda sites that have no flashinfer-python or flashinfer-cubin
packages of their own (conda-forge has no flashinfer-cubin).  The wheel's
files go where pip would put them, relative to the prefix the conda way:
``site-packages/`` (relocated by conda and rattler to the env's Python),
scripts under ``python-scripts/``, ``.data/data`` at the prefix root.  The
``.dist-info`` directory stays (so ``importlib.metadata`` sees the
distribution, which flashinfer and ``doctor`` rely on), with ``INSTALLER``
set to ``conda`` so that pip will not uninstall conda's files.

Requirements become conda match specs under the names of a documented table
(``condamap.json``, overridable); markers are evaluated for Linux and
``extra`` requirements dropped.  Every file is hashed while it streams from
the wheel into the package and checked against the wheel's RECORD: the 1.1 GB
of flashinfer-cubin never sits in memory.  Same wheel, table and epoch give
the same bytes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Mapping

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from repack import __version__
from repack.build.artifact import DEFAULT_EPOCH, Artifact
from repack.build.conda import build_string, hash_input_json, json_bytes, python_spec
from repack.build.conda_archive import FORMAT_METADATA, ZSTD_LEVEL, Member, tar_bytes
from repack.errors import BuildError, IntegrityError, UsageError

MAP_FILE = Path(__file__).with_name("condamap.json")
#: zstd level of the payload tar: 3 turns flashinfer-cubin's 1.1 GB into a package in seconds,
#: at about the size of the wheel (level 19 would take minutes for a few percent).
PAYLOAD_LEVEL = 3
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "extra": ""}
CONDA_OPS = ("==", "!=", ">=", "<=", ">", "<", "~=")
DATA_DIRS = {"purelib": "site-packages/", "platlib": "site-packages/", "scripts": "python-scripts/", "data": ""}
CHUNK = 1 << 20


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
        raise UsageError(f"cannot read the conda name map {path}: {exc}",
                         'give a JSON file like {"names": {"torch": "pytorch", "some-project": null}}') from exc


def conda_name(project: str, names: Mapping[str, str | None]) -> str | None:
    key = canonicalize_name(project)
    return names[key] if key in names else key


# -- requirements ------------------------------------------------------------------------------

def conda_depends(meta, names: Mapping[str, str | None]) -> list[str]:
    """python first, then every Requires-Dist that applies on Linux, as conda match specs."""
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise BuildError(f"Requires-Dist {line!r} is not a valid requirement: {exc}",
                             "the wheel's metadata is damaged") from exc
        if req.marker is not None and not req.marker.evaluate({**default_environment(), **LINUX}):
            continue
        name = conda_name(req.name, names)
        if name is not None:
            out.append(f"{name} {conda_spec(req)}".strip())
    return [python_spec(meta.get("Requires-Python"))] + sorted(set(out))


def conda_spec(req: Requirement) -> str:
    """A PEP 440 specifier set as a conda version spec (``>=0.1.6,<0.2,!=0.1.8``)."""
    parts = []
    for s in sorted(req.specifier, key=str):
        if s.operator not in CONDA_OPS:
            raise BuildError(f"{req}: the operator {s.operator!r} has no conda equivalent",
                             "map the project to a conda package by hand (--conda-map), or drop it with null")
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


@dataclass(frozen=True)
class Written:
    path: str
    sha256: str
    size: int


def convert_wheel(wheel: Path, out_dir: Path, *, names: Mapping[str, str | None] | None = None,
                  epoch: int | None = None, build_number: int = 0, progress=None) -> Artifact:
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


def _describe(zf: zipfile.ZipFile, wheel: Path, names: Mapping[str, str | None], build_number: int):
    """(dist-info dir, METADATA, conda name, depends, build string) of a pure wheel."""
    dist_info, meta = _read_wheel_info(zf, wheel)
    name = conda_name(meta["Name"], names)
    if name is None:
        raise UsageError(f"the conda name map drops {meta['Name']}, so {wheel.name} cannot be converted",
                         "map it to a name in --conda-map")
    depends = conda_depends(meta, names)
    return dist_info, meta, name, depends, build_string(hash_input_json(depends), build_number)


def _read_wheel_info(zf: zipfile.ZipFile, wheel: Path):
    dist_infos = {n.split("/", 1)[0] for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        raise BuildError(f"{wheel.name} has {len(dist_infos)} .dist-info directories", "is this a wheel?")
    dist_info = dist_infos.pop() + "/"
    wheel_meta = HeaderParser().parsestr(zf.read(dist_info + "WHEEL").decode("utf-8"))
    tags = wheel_meta.get_all("Tag") or []
    if wheel_meta.get("Root-Is-Purelib", "").strip().lower() != "true" or not all(t.endswith("-none-any") for t in tags):
        raise BuildError(f"{wheel.name} is not a pure-Python wheel (tags {', '.join(tags)})",
                         "only py3-none-any wheels can become noarch: python conda packages")
    meta = HeaderParser().parsestr(zf.read(dist_info + "METADATA").decode("utf-8"))
    return dist_info, meta


def _layout(zf: zipfile.ZipFile, dist_info: str) -> list[Placed]:
    """Where each wheel member goes, sorted; RECORD is rewritten and INSTALLER added by us."""
    data_dir = dist_info[: -len(".dist-info/")] + ".data/"
    placed = []
    for info in zf.infolist():
        n = info.filename
        if n.endswith("/") or n in (dist_info + "RECORD", dist_info + "INSTALLER"):
            continue
        if n.startswith(data_dir):
            kind, _, rest = n[len(data_dir):].partition("/")
            if kind not in DATA_DIRS:
                raise BuildError(f"{n}: the wheel data directory {kind!r} has no noarch: python place",
                                 "convert only wheels whose .data holds purelib, platlib, scripts or data")
            target = DATA_DIRS[kind] + rest
        else:
            target = "site-packages/" + n
        placed.append(Placed(target, n, bool((info.external_attr >> 16) & 0o111)))
    return sorted(placed, key=lambda p: p.path)


def _info(zf, dist_info, meta, name, build, build_number, depends, epoch, wheel) -> dict:
    return {"name": name, "version": str(Version(meta["Version"])), "build": build, "build_number": build_number,
            "depends": depends, "license": _license(meta), "noarch": "python", "subdir": "noarch",
            "timestamp": epoch * 1000, "entry_points": _entry_points(zf, dist_info), "summary": meta.get("Summary", ""),
            "home": _homepage(meta), "source": wheel.name, "dist_info": dist_info}


def _license(meta) -> str:
    text = meta.get("License-Expression") or meta.get("License") or ""
    return text.strip().splitlines()[0][:100] if text.strip() else ""


def _homepage(meta) -> str:
    for url in meta.get_all("Project-URL") or []:
        label, _, value = url.partition(",")
        if label.strip().lower() in ("homepage", "home"):
            return value.strip()
    return meta.get("Home-page", "")


def _entry_points(zf: zipfile.ZipFile, dist_info: str) -> list[str]:
    """console_scripts and gui_scripts, for conda to create at link time (``name = module:function``)."""
    import configparser

    try:
        text = zf.read(dist_info + "entry_points.txt").decode("utf-8")
    except KeyError:
        return []
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return [f"{k} = {v.strip()}" for section in ("console_scripts", "gui_scripts") if parser.has_section(section)
            for k, v in sorted(parser.items(section))]


# -- writing -----------------------------------------------------------------------------------------

def _write_package(zf, wheel: Path, out_dir: Path, stem: str, layout: list[Placed], info: dict,
                   epoch: int, progress=None) -> Artifact:
    import zstandard

    target = out_dir / f"{stem}.conda"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out_dir) as tmp:
        pkg = Path(tmp) / "pkg.tar.zst"
        with open(pkg, "wb") as fh:
            writer = zstandard.ZstdCompressor(level=PAYLOAD_LEVEL, write_checksum=True).stream_writer(fh, closefd=False)
            written = _write_payload(zf, wheel, layout, info["dist_info"], writer, epoch, progress)
            writer.close()
        info_tar = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(
            tar_bytes(sorted(_info_members(info, written), key=lambda m: m.path), epoch))
        partial = Path(tmp) / target.name
        _write_conda_zip(partial, stem, pkg, info_tar, epoch)
        os.replace(partial, target)
    return Artifact.of("conda", target)


def _write_payload(zf, wheel: Path, layout: list[Placed], dist_info: str, writer, epoch: int,
                   progress=None) -> list[Written]:
    record = _record(zf, dist_info)
    written, problems = [], []
    total, done = sum(zf.getinfo(p.member).file_size for p in layout), 0
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for p in layout:
            info = zf.getinfo(p.member)
            with zf.open(info) as raw:
                source = _Hashing(raw)
                tar.addfile(_tar_info(p.path, info.file_size, p.executable, epoch), source)
            want = record.get(p.member)
            if want is None or want != source.record_hash():
                problems.append(f"{p.member}: " + ("not in RECORD" if want is None else "sha256 differs from RECORD"))
            written.append(Written(p.path, source.sha256.hexdigest(), source.size))
            done += source.size
            if progress is not None:
                progress(f"convert {wheel.name}", done, total)
        for path, data in _dist_info_additions(zf, dist_info):
            tar.addfile(_tar_info(path, len(data), False, epoch), io.BytesIO(data))
            written.append(Written(path, hashlib.sha256(data).hexdigest(), len(data)))
    if problems:
        raise IntegrityError(f"{wheel.name} does not match its own RECORD: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                             "the wheel was altered after it was built; download it again", problems=tuple(problems))
    return sorted(written, key=lambda w: w.path)


def _dist_info_additions(zf, dist_info: str) -> list[tuple[str, bytes]]:
    """INSTALLER says conda; RECORD lists it too, so that tools reading RECORD stay consistent."""
    installer = b"conda\n"
    record = zf.read(dist_info + "RECORD").decode("utf-8")
    rows = [r for r in csv.reader(io.StringIO(record)) if r and r[0] != dist_info + "INSTALLER"]
    rows.insert(len(rows) - 1 if rows and rows[-1][0] == dist_info + "RECORD" else len(rows),
                [dist_info + "INSTALLER", f"sha256={_b64(hashlib.sha256(installer).digest())}", str(len(installer))])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    site = "site-packages/" + dist_info
    return sorted([(site + "INSTALLER", installer), (site + "RECORD", buf.getvalue().encode("utf-8"))])


def _record(zf, dist_info: str) -> dict[str, str]:
    rows = csv.reader(io.StringIO(zf.read(dist_info + "RECORD").decode("utf-8")))
    return {r[0]: r[1] for r in rows if len(r) >= 2 and r[1]}


def _tar_info(path: str, size: int, executable: bool, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mtime = size, epoch
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _info_members(info: dict, written: list[Written]) -> list[Member]:
    index = {k: info[k] for k in ("name", "version", "build", "build_number", "depends", "license", "noarch",
                                  "subdir", "timestamp")}
    link = {"noarch": {"type": "python"}, "package_metadata_version": 1}
    if info["entry_points"]:
        link["noarch"]["entry_points"] = info["entry_points"]
    about = {"summary": info["summary"], "home": info["home"], "license": info["license"],
             "extra": {"converted_from": info["source"], "converted_by": f"flashinfer-repack {__version__}"}}
    paths = {"paths": [{"_path": w.path, "path_type": "hardlink", "sha256": w.sha256, "size_in_bytes": w.size}
                       for w in written], "paths_version": 1}
    return [Member("info/index.json", json_bytes(index)), Member("info/link.json", json_bytes(link)),
            Member("info/about.json", json_bytes(about)), Member("info/paths.json", json_bytes(paths)),
            Member("info/files", "".join(w.path + "\n" for w in written).encode("utf-8")),
            Member("info/hash_input.json", json_bytes(hash_input_json(info["depends"])))]


def _write_conda_zip(path: Path, stem: str, pkg: Path, info_tar: bytes, epoch: int) -> None:
    """The .conda container as conda_archive writes it, with the payload copied in, not loaded."""
    import time

    date_time = time.gmtime(max(epoch, DEFAULT_EPOCH))[:6]

    def entry(name: str, size: int) -> zipfile.ZipInfo:
        e = zipfile.ZipInfo(name, date_time=date_time)
        e.external_attr, e.create_system, e.file_size = 0o100644 << 16, 3, size
        return e

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(entry("metadata.json", len(FORMAT_METADATA)), FORMAT_METADATA)
        size = pkg.stat().st_size
        with open(pkg, "rb") as src, z.open(entry(f"pkg-{stem}.tar.zst", size), "w",
                                             force_zip64=size >= zipfile.ZIP64_LIMIT) as dst:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                dst.write(chunk)
        z.writestr(entry(f"info-{stem}.tar.zst", len(info_tar)), info_tar)


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, fh) -> None:
        self.fh, self.sha256, self.size = fh, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def record_hash(self) -> str:
        return "sha256=" + _b64(self.sha256.digest())


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
