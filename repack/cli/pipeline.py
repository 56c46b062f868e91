"""The glue that build, install and bundle share: plan, sources, verified payload, artifacts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from repack.cli.common import (
    PYPI,
    UsageError,
    cache_dir,
    cubins_repository,
    index_url,
)


def fetch_verified(args, plan, transport, with_extras: bool = False):
    """The verified payload of ``plan`` from the --from sources (cache first), and how it was got."""
    from repack.fetch.cache import Cache
    from repack.fetch.payload import FetchReport, fetch_payload

    cache = Cache(cache_dir(args))
    sources = make_sources(args.sources or ["auto"], args, plan.version, transport, cache)
    report = FetchReport()
    return fetch_payload(plan, sources, cache, with_extras=with_extras, report=report), report


def build_artifacts(payload, formats: list[str], args, epoch: int | None) -> list:
    from repack.build.wheel import build_wheel

    out = []
    for fmt in formats:
        if fmt == "wheel":
            out.append(build_wheel(payload, args.output, epoch))
        else:
            from repack.build.conda import build_conda
            out.append(build_conda(payload, args.output, epoch, archive="tar.bz2" if fmt == "conda-bz2" else "conda",
                                   **conda_options_of(args)))
    return out


def conda_options_of(args) -> dict:
    """build_conda's keyword arguments from ``build``'s --conda-* options (install and bundle have none)."""
    from repack.build.conda import conda_options

    number = getattr(args, "build_number", 0) or 0
    if number < 0:  # the library refuses it too, but in its words: this names the option
        raise UsageError(f"--build-number {number} is negative", "give 0, 1, 2...")
    return conda_options(number, getattr(args, "conda_dep_name", None) or [],
                         not getattr(args, "conda_no_flashinfer_deps", False))


def resolve_for_build(args, version: str, transport):
    """The plan of ``version`` (a PlanCheck), checked against its code: installed here, else on the build's indexes."""
    from repack.fetch.transport import redact
    from repack.rules import resolve

    readers: list = [(f"flashinfer-python installed in {sys.executable}",
                      lambda: resolve.plan_from_installed(version))]
    urls = code_indexes(args, transport)
    if not urls and transport is not None and resolve.shipped_plan(version) is None:
        urls = [index_url(args)]  # no plan ships for it: its code is needed, and the index is where it is
    for url in urls:
        readers.append((f"flashinfer-python {version} on {redact(url)}",
                        lambda url=url: resolve.plan_from_index(transport, url, version)))
    return resolve.checked_plan(version, readers)


def code_indexes(args, transport) -> list[str]:
    """The indexes asked for flashinfer-python's code: --index-url, and the index that auto/index/pypi read.

    ``index+URL`` names where the flashinfer-cubin wheel is, not flashinfer-python: it is not asked (give
    --index-url as well to have the plan checked there).  A build from a local wheel or directory talks to
    no server it was not pointed at.
    """
    if transport is None:
        return []
    urls = [index_url(args)] if getattr(args, "index_url", None) else []
    for spec in args.sources or ["auto"]:
        if spec in ("auto", "index"):
            urls.append(index_url(args))
        elif spec == "pypi":
            urls.append(args.index_url or PYPI)
    return list(dict.fromkeys(urls))


def make_sources(specs: list[str], args, version: str, transport, cache) -> list:
    from repack.fetch import sources as s

    out: list = []
    for spec in specs:
        out.extend(_source(spec, args, version, transport, cache, s))
    return out


def _source(spec: str, args, version: str, transport, cache, s) -> list:
    def need_net(what: str):
        if transport is None:
            raise UsageError(f"--from {what} needs the network, but --offline was given",
                             "drop --offline, or use a local wheel or directory")
        return transport

    if spec == "auto":
        found = [] if transport is None else [s.IndexWheel(transport, index_url(args), version, cache)]
        installed = installed_cubin_dir(version)
        if installed is not None:
            found.insert(0, s.ArtifactoryDir(installed))
        if transport is not None and os.environ.get("FLASHINFER_CUBINS_REPOSITORY"):
            found.extend(_source("artifactory", args, version, transport, cache, s))
        return found
    if spec == "cache":
        return []
    if spec == "installed":
        installed = installed_cubin_dir(version)
        if installed is None:
            raise UsageError(f"flashinfer-cubin {version} is not installed in this environment",
                             "install it, or choose another --from source")
        return [s.ArtifactoryDir(installed)]
    if spec in ("pypi", "index"):
        return [s.IndexWheel(need_net(spec), PYPI if spec == "pypi" and not args.index_url else index_url(args),
                             version, cache)]
    if spec.startswith("index+"):
        return [s.IndexWheel(need_net(spec), spec[len("index+"):], version, cache)]
    if spec == "artifactory":
        repo = cubins_repository()
        if os.path.isdir(repo):
            return [s.ArtifactoryDir(Path(repo))]
        return [s.ArtifactoryURL(need_net(spec), repo)]
    if spec.startswith("artifactory+"):
        return [s.ArtifactoryURL(need_net(spec), spec[len("artifactory+"):])]
    is_url = "://" in spec
    if spec.endswith(".whl"):
        if is_url:
            return [s.RemoteWheel(need_net(spec), spec, cache)]
        if not os.path.isfile(spec):
            raise UsageError(f"--from {spec}: no such file", "give the path of a flashinfer-cubin wheel")
        return [s.WheelFile(Path(spec))]
    if is_url:
        if spec.rstrip("/").endswith("/simple"):
            return [s.IndexWheel(need_net(spec), spec, version, cache)]
        return [s.ArtifactoryURL(need_net(spec), spec)]
    if os.path.isdir(spec):
        return [s.ArtifactoryDir(Path(spec))]
    raise UsageError(f"--from {spec!r} is neither a known source, a URL, a .whl file nor a directory",
                     "see 'flashinfer-repack build --help' for the sources")


def installed_cubin_dir(version: str) -> Path | None:
    """flashinfer-cubin's cubins directory in this environment, judged by its metadata."""
    import importlib.metadata

    from packaging.version import Version

    try:
        dist = importlib.metadata.distribution("flashinfer-cubin")
    except importlib.metadata.PackageNotFoundError:
        return None
    if Version(dist.version) != Version(version):
        return None
    path = Path(dist.locate_file("flashinfer_cubin/cubins"))
    return path if path.is_dir() else None
