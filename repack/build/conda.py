"""Payload -> the ``flashinfer-cubin-headers`` conda package (``noarch: python``).

One pure function per metadata file, as rattler-build makes them; the
archive itself is written by :mod:`repack.build.conda_archive`.  Payload paths lie
under ``site-packages/``, which conda and rattler relocate to
``lib/pythonX.Y/site-packages/`` at install time, so one package serves
every Python.  Never ``flashinfer_cubin/__init__.py`` (it would shadow
flashinfer-cubin), and by default the package requires flashinfer-python and
flashinfer-cubin of exactly its version: without flashinfer-cubin, a
``flashinfer_cubin/`` folder with no ``__init__.py`` breaks ``import flashinfer``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from repack import __version__
from repack.build.artifact import DEFAULT_EPOCH, DIST_NAME, SUMMARY, Artifact
from repack.build.conda_archive import Member, conda_bytes, tar_bz2_bytes
from repack.build.sbom import SBOM_DIR, SBOM_NAME, sbom_bytes
from repack.build.wheel import PACKAGE_ROOT
from repack.errors import BuildError, InputError
from repack.fetch.verify import Payload
from repack.fs import atomic_write
from repack.rules.plan import Plan

SITE_PACKAGES = "site-packages/"
FLASHINFER_DEPENDENCIES = ("flashinfer-python", "flashinfer-cubin")
ARCHIVES = {"conda": (".conda", "conda"), "tar.bz2": (".tar.bz2", "conda-bz2")}
LICENSE = "Apache-2.0"
HOME = "https://github.com/flashinfer-ai/flashinfer"
#: conda's package-name rule (lowercase; letters, digits, ``_``, ``.``, ``-``).
CONDA_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")
CONDA_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")


# -- metadata, one pure function per file ----------------------------------------------

def python_spec(requires_python: str | None) -> str:
    """flashinfer-python's Requires-Python as a conda match spec (``python >=3.10,<4.0``)."""
    try:
        specs = sorted(SpecifierSet(requires_python or ">=3.10"), key=str, reverse=True)
    except InvalidSpecifier as exc:
        raise BuildError(f"Requires-Python {requires_python!r} is not a valid specifier",
                         "the plan is damaged; report it") from exc
    bad = [str(s) for s in specs if s.operator not in CONDA_OPERATORS]
    if bad:
        raise BuildError(f"Requires-Python {requires_python!r} uses {bad[0]!r}, which has no conda equivalent here",
                         "report it: the conda builder needs to learn that operator")
    return "python " + ",".join(f"{s.operator}{s.version}" for s in specs)


def depends(plan: Plan, dependency_names: Mapping[str, str] | None = None,
            with_flashinfer_deps: bool = True) -> list[str]:
    """The run requirements: python, and flashinfer-python/-cubin pinned exactly (under their channel's names)."""
    out = [python_spec(plan.requires_python)]
    if with_flashinfer_deps:
        names = {**{n: n for n in FLASHINFER_DEPENDENCIES}, **(dependency_names or {})}
        out += [f"{names[n]} =={plan.version}" for n in FLASHINFER_DEPENDENCIES]
    return out


def hash_input_json(requirements: list[str]) -> dict[str, Any]:
    """What distinguishes variants of one version: the build string hashes it."""
    return {"depends": list(requirements), "noarch": "python"}


def build_string(hash_input: dict[str, Any], build_number: int) -> str:
    """``pyh<7 hex>_<n>``: the noarch-python convention, from the variant's hash input."""
    digest = hashlib.sha256(json_bytes(hash_input)).hexdigest()[:7]
    return f"pyh{digest}_{build_number}"


def index_json(plan: Plan, build: str, build_number: int, requirements: list[str], timestamp_ms: int) -> dict[str, Any]:
    return {
        "build": build,
        "build_number": build_number,
        "depends": list(requirements),
        "license": LICENSE,
        "license_family": "APACHE",
        "name": DIST_NAME,
        "noarch": "python",
        "subdir": "noarch",
        "timestamp": timestamp_ms,
        "version": plan.version,
    }


def about_json(plan: Plan) -> dict[str, Any]:
    return {
        "summary": SUMMARY.format(version=plan.version),
        "description": (f"The {len(plan.headers)} TRT-LLM BMM export headers of flashinfer-cubin {plan.version} and "
                        f"the exact {plan.marker_name} marker, verified against the checksums flashinfer-python "
                        f"pins, at site-packages/{PACKAGE_ROOT}{plan.dest_dir}/."),
        "home": HOME,
        "license": LICENSE,
        "extra": {"artifact_path": plan.artifact_path, "checksums_sha256": plan.checksums_sha256,
                  "built_by": f"flashinfer-repack {__version__}"},
    }


def link_json(entry_points: list[str] | None = None) -> dict[str, Any]:
    """noarch: python, with the console scripts conda creates at link time (``name = module:function``)."""
    noarch: dict[str, Any] = {"type": "python"}
    if entry_points:
        noarch["entry_points"] = list(entry_points)
    return {"noarch": noarch, "package_metadata_version": 1}


@dataclass(frozen=True)
class PathRecord:
    """One payload file as ``paths.json`` lists it (a regular file: conda's ``hardlink``)."""

    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, member: Member) -> PathRecord:
        return cls(member.path, hashlib.sha256(member.data).hexdigest(), len(member.data))


def paths_json(records: list[PathRecord]) -> dict[str, Any]:
    entries = [{"_path": r.path, "path_type": "hardlink", "sha256": r.sha256, "size_in_bytes": r.size}
               for r in sorted(records, key=lambda r: r.path)]
    return {"paths": entries, "paths_version": 1}


def files_text(records: list[PathRecord]) -> str:
    return "".join(f"{r.path}\n" for r in sorted(records, key=lambda r: r.path))


def info_members(index: dict[str, Any], about: dict[str, Any], link: dict[str, Any],
                 records: list[PathRecord]) -> list[Member]:
    """The ``info/`` files of a noarch: python package: the one place both writers get them from."""
    return [
        Member("info/index.json", json_bytes(index)),
        Member("info/paths.json", json_bytes(paths_json(records))),
        Member("info/files", files_text(records).encode("utf-8")),
        Member("info/link.json", json_bytes(link)),
        Member("info/about.json", json_bytes(about)),
        Member("info/hash_input.json", json_bytes(hash_input_json(index["depends"]))),
    ]


def json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


# -- the package ---------------------------------------------------------------------

def payload_members(payload: Payload) -> list[Member]:
    """The payload at its noarch-python paths; refuses a ``flashinfer_cubin/__init__.py``."""
    members = [Member(SITE_PACKAGES + PACKAGE_ROOT + f.path, f.data) for f in payload.files]
    if any(m.path.startswith(SITE_PACKAGES + "flashinfer_cubin/__init__") for m in members):
        raise BuildError("refusing to ship flashinfer_cubin/__init__.py", "it would shadow flashinfer-cubin")
    return members


def package_members(payload: Payload, epoch: int, requirements: list[str],
                    build_number: int) -> tuple[str, list[Member], list[Member]]:
    """(stem ``name-version-build``, info members, payload members)."""
    plan = payload.plan
    files = payload_members(payload)
    build = build_string(hash_input_json(requirements), build_number)
    index = index_json(plan, build, build_number, requirements, epoch * 1000)
    info = info_members(index, about_json(plan), link_json(), [PathRecord.of(f) for f in files])
    info.append(Member("info/" + SBOM_DIR + SBOM_NAME, sbom_bytes(payload, PACKAGE_ROOT)))  # the wheel's document
    return f"{DIST_NAME}-{plan.version}-{build}", info, files


def build_conda(payload: Payload, out_dir: Path, epoch: int | None = None, archive: str = "conda", *,
                dependency_names: Mapping[str, str] | None = None, with_flashinfer_deps: bool = True,
                build_number: int = 0) -> Artifact:
    """Write the conda package (``archive`` "conda" or "tar.bz2") into ``out_dir`` and return it."""
    if archive not in ARCHIVES:
        raise InputError(f"unknown conda archive format {archive!r}", f"choose from {', '.join(ARCHIVES)}",
                         value=archive, expected=", ".join(ARCHIVES), setting="format")
    epoch = DEFAULT_EPOCH if epoch is None else epoch
    requirements = depends(payload.plan, dependency_names, with_flashinfer_deps)
    stem, info, files = package_members(payload, epoch, requirements, build_number)
    suffix, kind = ARCHIVES[archive]
    data = conda_bytes(stem, info, files, epoch) if archive == "conda" else tar_bz2_bytes(info, files, epoch)
    path = Path(out_dir) / (stem + suffix)
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise BuildError(f"cannot write {path}: {exc.strerror}", "choose a writable output directory",
                         path=str(path), setting="output") from exc
    return Artifact(kind, path, hashlib.sha256(data).hexdigest(), len(data))


def conda_options(build_number: int = 0, dependency_names: list[str] | tuple[str, ...] = (),
                  with_flashinfer_deps: bool = True) -> dict[str, Any]:
    """build_conda's keyword arguments, checked (InputError when malformed) before anything is fetched."""
    if build_number < 0:
        raise InputError(f"build number {build_number} is negative", "give 0, 1, 2...",
                         value=build_number, expected="0, 1, 2...", setting="build_number")
    return {"dependency_names": parse_dependency_names(list(dependency_names)),
            "with_flashinfer_deps": with_flashinfer_deps, "build_number": build_number}


def parse_dependency_names(specs: list[str]) -> dict[str, str]:
    """``["flashinfer-python=fi-python", ...]`` -> {"flashinfer-python": "fi-python"}."""
    out: dict[str, str] = {}
    for spec in specs:
        key, sep, name = (part.strip() for part in spec.partition("="))
        expected = " or ".join(d + "=NAME" for d in FLASHINFER_DEPENDENCIES)
        if not sep or key not in FLASHINFER_DEPENDENCIES:
            raise InputError(f"conda dependency name {spec!r} is not {expected}", "e.g. flashinfer-python=flashinfer",
                             value=spec, expected=expected, setting="conda_dep_name")
        if not CONDA_NAME.match(name):
            raise InputError(f"conda dependency name {spec!r}: {name!r} is not a conda package name",
                             "conda names are lowercase letters, digits, '_', '.' and '-'",
                             value=name, setting="conda_dep_name")
        out[key] = name
    return out
