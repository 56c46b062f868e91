"""The pipeline that build, install and bundle share: version -> checked plan -> sources -> verified payload.

Each stage is a function of the previous stage's output and of :class:`SourceSettings` (what the caller
chose, with the environment already read by the caller): :func:`checked_plan_for`, :func:`make_sources`,
:func:`verified_payload`; :func:`build` runs them all and writes the artifacts.  ``install`` places the
payload instead of packaging it (it chooses its destination between plan and fetch); ``bundle`` takes
flashinfer's whole wheels and builds from the one it verified (:mod:`repack.publish.bundle`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repack.build.artifact import Artifact
from repack.errors import InputError
from repack.fetch.cache import Cache
from repack.fetch.index import PYPI
from repack.fetch.payload import FetchReport, fetch_payload
from repack.fetch.sources import NVIDIA_ARTIFACTORY, Source
from repack.fetch.sourcespec import SourceSpec
from repack.fetch.transport import Transport
from repack.fetch.urlpolicy import check_url, redact
from repack.fetch.verify import Payload
from repack.rules.plan import Plan, shipped_plan
from repack.rules.resolve import CodeReader, PlanCheck

log = logging.getLogger(__name__)

#: The artifact formats :func:`build_artifacts` writes.
FORMATS = ("wheel", "conda", "conda-bz2")


def _pypi() -> str:
    return PYPI


@dataclass(frozen=True)
class SourceSettings:
    """Where the headers may come from, as the caller chose (the environment read by the caller).

    ``pip_index_url`` is asked only when the index is needed and none was given: it reads pip's
    configuration, which a build from a local wheel never needs.  ``cubins_repository`` is
    ``$FLASHINFER_CUBINS_REPOSITORY`` as set (None when unset: NVIDIA's artifactory).
    """

    sources: tuple[SourceSpec, ...] = (SourceSpec("auto"),)
    index_url: str | None = None
    pip_index_url: Callable[[], str] = field(default=_pypi, compare=False)
    cubins_repository: str | None = None
    cache_dir: Path | None = None

    def default_index(self) -> str:
        """The index given, else the one pip would use."""
        return check_url(self.index_url or self.pip_index_url(), "index_url")

    def artifactory(self) -> str:
        """The artifactory root: a URL, or a directory that must exist (a typo is not a URL to try)."""
        value = self.cubins_repository or NVIDIA_ARTIFACTORY
        if "://" not in value and not os.path.isdir(value):
            raise InputError(f"FLASHINFER_CUBINS_REPOSITORY={value!r} is neither a URL nor an existing directory",
                             "set it to an http(s) URL in artifactory layout or to a directory that exists, "
                             "or unset it", value=value, expected="a URL or a directory")
        return value


@dataclass(frozen=True)
class Built:
    """What :func:`build` made, and how."""

    check: PlanCheck
    report: FetchReport
    artifacts: tuple[Artifact, ...]


def build(version: str, settings: SourceSettings, transport: Transport | None, *, out_dir: Path,
          formats: Sequence[str], epoch: int | None, conda: dict[str, Any] | None = None) -> Built:
    """The whole pipeline: the checked plan of ``version``, its verified payload, the artifacts in ``out_dir``."""
    check = checked_plan_for(version, settings, transport)
    payload, report = verified_payload(check.plan, settings, transport)
    payload = dataclasses.replace(payload, pins_checked=check.checked)  # the SBOM says where the pins came from
    artifacts = build_artifacts(payload, formats, out_dir, epoch, conda or {})
    return Built(check, report, tuple(artifacts))


def checked_plan_for(version: str, settings: SourceSettings, transport: Transport | None) -> PlanCheck:
    """The plan of ``version``, checked against its code: installed here, else on the indexes the build reads."""
    from repack.rules import resolve

    readers: list[CodeReader] = [(f"flashinfer-python installed in {sys.executable}",
                                  lambda: resolve.plan_from_installed(version))]
    urls = code_indexes(settings, transport)
    if not urls and transport is not None and shipped_plan(version) is None:
        urls = [settings.default_index()]  # no plan ships for it: its code is needed, and the index has it
    for url in urls:
        readers.append(_index_reader(transport, url, version))
    return resolve.checked_plan(version, readers)


def _index_reader(transport: Transport | None, url: str, version: str) -> CodeReader:
    from repack.rules import resolve

    return f"flashinfer-python {version} on {redact(url)}", lambda: resolve.plan_from_index(transport, url, version)


def code_indexes(settings: SourceSettings, transport: Transport | None) -> list[str]:
    """The indexes asked for flashinfer-python's code: the index given, and the one auto/index/pypi read.

    ``index+URL`` names where the flashinfer-cubin wheel is, not flashinfer-python: it is not asked
    (give the index URL as well to have the plan checked there).  A build from a local wheel or
    directory talks to no server it was not pointed at.
    """
    if transport is None:
        return []
    urls = [settings.default_index()] if settings.index_url else []
    for spec in settings.sources:
        if spec.kind in ("auto", "index") and spec.location is None:
            urls.append(settings.default_index())
        elif spec.kind == "pypi":
            urls.append(settings.index_url or PYPI)
    return list(dict.fromkeys(urls))


def verified_payload(plan: Plan, settings: SourceSettings, transport: Transport | None,
                     with_extras: bool = False) -> tuple[Payload, FetchReport]:
    """The verified payload of ``plan`` from the sources (cache first), and how it was got."""
    cache = Cache(settings.cache_dir)
    sources = make_sources(settings, plan.version, transport, cache)
    report = FetchReport()
    return fetch_payload(plan, sources, cache, with_extras=with_extras, report=report), report


def build_artifacts(payload: Payload, formats: Sequence[str], out_dir: Path, epoch: int | None,
                    conda: dict[str, Any]) -> list[Artifact]:
    """One artifact per format, in the order given (``conda`` holds build_conda's options)."""
    from repack.build.wheel import build_wheel

    out = []
    for fmt in formats:
        if fmt == "wheel":
            out.append(build_wheel(payload, out_dir, epoch))
        else:
            from repack.build.conda import build_conda
            out.append(build_conda(payload, out_dir, epoch, archive="tar.bz2" if fmt == "conda-bz2" else "conda",
                                   **conda))
    return out


def make_sources(settings: SourceSettings, version: str, transport: Transport | None, cache: Cache) -> list[Source]:
    """The sources the specs name, opened for ``version``, in the order given."""
    out: list[Source] = []
    for spec in settings.sources:
        out.extend(_open(spec, settings, version, transport, cache))
    return out


def _open(spec: SourceSpec, settings: SourceSettings, version: str, transport: Transport | None,
          cache: Cache) -> list[Source]:
    from repack.fetch import sources as s

    if spec.is_url:
        check_url(spec.location or "", "source")
    if spec.kind == "auto":
        return _auto(settings, version, transport, cache)
    if spec.kind == "cache":
        return []
    if spec.kind == "installed":
        return [s.ArtifactoryDir(_installed(version))]
    if spec.kind in ("pypi", "index"):
        url = spec.location or (PYPI if spec.kind == "pypi" and not settings.index_url else settings.default_index())
        return [s.IndexWheel(_online(spec, transport), url, version, cache)]
    if spec.kind == "artifactory":
        return [_artifactory(spec, settings, transport)]
    if spec.kind == "wheel":
        return [_wheel(spec, transport, cache)]
    if spec.location is not None and os.path.isdir(spec.location):
        return [s.ArtifactoryDir(Path(spec.location))]
    raise InputError(f"source {spec.location!r} is neither a known source, a URL, a .whl file nor a directory",
                     "name a source the help lists, a URL, a flashinfer-cubin wheel or a directory",
                     value=spec.location, setting="source")


def _auto(settings: SourceSettings, version: str, transport: Transport | None, cache: Cache) -> list[Source]:
    """The cache (always first, in fetch_payload), an installed flashinfer-cubin, the index, then
    ``$FLASHINFER_CUBINS_REPOSITORY`` when it is set."""
    from repack.fetch import sources as s

    found: list[Source] = []
    installed = installed_cubin_dir(version)
    if installed is not None:
        found.append(s.ArtifactoryDir(installed))
    if transport is not None:
        found.append(s.IndexWheel(transport, settings.default_index(), version, cache))
        if settings.cubins_repository:
            found.append(_artifactory(SourceSpec("artifactory"), settings, transport))
    return found


def _artifactory(spec: SourceSpec, settings: SourceSettings, transport: Transport | None) -> Source:
    from repack.fetch import sources as s

    if spec.location is not None:
        return s.ArtifactoryURL(_online(spec, transport), spec.location)
    repo = settings.artifactory()
    if os.path.isdir(repo):
        return s.ArtifactoryDir(Path(repo))
    return s.ArtifactoryURL(_online(spec, transport), repo)


def _wheel(spec: SourceSpec, transport: Transport | None, cache: Cache) -> Source:
    from repack.fetch import sources as s

    assert spec.location is not None  # a wheel spec always names one (parse_source_spec)
    if spec.is_url:
        return s.RemoteWheel(_online(spec, transport), spec.location, cache)
    if not os.path.isfile(spec.location):
        raise InputError(f"source {spec.location}: no such file", "give the path of a flashinfer-cubin wheel",
                         value=spec.location, path=spec.location, setting="source")
    return s.WheelFile(Path(spec.location))


def _online(spec: SourceSpec, transport: Transport | None) -> Transport:
    if transport is None:
        what = spec.location or spec.kind
        raise InputError(f"source {what} needs the network, but this run is offline",
                         "allow the network, or use a local wheel or directory", value=what, setting="offline")
    return transport


def _installed(version: str) -> Path:
    found = installed_cubin_dir(version)
    if found is None:
        raise InputError(f"flashinfer-cubin {version} is not installed in this environment",
                         "install it, or choose another source", value=version, setting="source")
    return found


def installed_cubin_dir(version: str) -> Path | None:
    """flashinfer-cubin's cubins directory in this environment, judged by its metadata."""
    from packaging.version import Version

    try:
        dist = importlib.metadata.distribution("flashinfer-cubin")
    except importlib.metadata.PackageNotFoundError:
        return None
    if Version(dist.version) != Version(version):
        return None
    path = Path(str(dist.locate_file("flashinfer_cubin/cubins")))
    return path if path.is_dir() else None
