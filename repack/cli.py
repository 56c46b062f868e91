"""The command line: the only module that reads argv and the environment,
prints, and picks exit codes.

Exit codes: 0 success; 1 the work failed (network, integrity, unknown or
unaffected version); 2 usage error; 130 interrupted.  ``doctor`` uses 0/1/2 as
"starts offline" / "will reach for the network or fail" / usage.
"""

from __future__ import annotations

import argparse
import configparser
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import RepackError, UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PYPI = "https://pypi.org/simple/"

EPILOG = """\
sources for --from (repeatable; tried in the order given; default: auto):
  auto               cache, then an installed flashinfer-cubin of the same version,
                     then the package index, then $FLASHINFER_CUBINS_REPOSITORY if set
  pypi | index       the flashinfer-cubin wheel on PyPI | on --index-url, read by HTTP ranges
  index+URL          the flashinfer-cubin wheel on the simple index at URL
  PATH.whl | URL.whl a flashinfer-cubin wheel on disk or at a URL
  DIR                a directory in artifactory layout (e.g. site-packages/flashinfer_cubin/cubins)
  artifactory        $FLASHINFER_CUBINS_REPOSITORY, read as flashinfer reads it (default NVIDIA's)
  URL | artifactory+URL  a server in artifactory layout (a URL ending in /simple/ is an index)
  installed          flashinfer-cubin installed in this Python environment
  cache              the local cache only

environment:
  PIP_INDEX_URL, pip.conf index-url   default --index-url (as pip reads them)
  FLASHINFER_REPACK_CACHE_DIR         cache directory (default: $XDG_CACHE_HOME/flashinfer-repack)
  HTTPS_PROXY, NO_PROXY, ~/.netrc     proxies and credentials, as for pip
  SOURCE_DATE_EPOCH                   timestamp inside built archives (default 1980-01-01)
  FLASHINFER_CUBINS_REPOSITORY        the artifactory base URL or directory (as flashinfer reads it)

exit codes: 0 success, 1 failure, 2 usage error
"""


# -- entry point -------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("flashinfer-repack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RepackError as exc:
        return report_error(args, exc)


def report_error(args, exc: RepackError) -> int:
    code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAIL
    if getattr(args, "json", False):
        emit_json({"ok": False, "error": str(exc), "hint": exc.hint, "kind": type(exc).__name__,
                   "problems": list(getattr(exc, "problems", ()))})
    _clear_progress()
    print(f"flashinfer-repack: error: {exc}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashinfer-repack",
        description="Package FlashInfer's TRT-LLM BMM export headers where flashinfer-python 0.6.5-0.6.7 "
                    "looks for them, so that it starts with no network.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request and decision")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def common_options(p: argparse.ArgumentParser, network: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request and decision")
    if network:
        p.add_argument("--index-url", metavar="URL",
                       help="simple-API index (default: $PIP_INDEX_URL, pip.conf, then PyPI)")
        p.add_argument("--cache-dir", metavar="DIR", type=Path, help="cache directory")
        p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
        p.add_argument("--offline", action="store_true", help="use no network: cache and local sources only")
        p.add_argument("--timeout", type=float, default=20.0, metavar="S",
                       help="connect and read timeout per request (default 20)")
        p.add_argument("--retries", type=int, default=3, metavar="N",
                       help="retries after a failed request, with backoff 0.5, 1, 2 s... (default 3)")


# -- environment ---------------------------------------------------------------------

def index_url(args) -> str:
    if getattr(args, "index_url", None):
        return args.index_url
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    return _pip_config_index() or PYPI


def _pip_config_index() -> str | None:
    files = []
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", os.path.expanduser("~/.config"))
        files += ["/etc/pip.conf", os.path.join(xdg, "pip", "pip.conf"), os.path.expanduser("~/.pip/pip.conf")]
        if os.environ.get("VIRTUAL_ENV"):
            files.append(os.path.join(os.environ["VIRTUAL_ENV"], "pip.conf"))
    found = None
    for path in files:
        config = configparser.ConfigParser()
        try:
            config.read(path)
        except configparser.Error:
            continue
        for section in ("global", "install", "download"):
            if config.has_option(section, "index-url"):
                found = config.get(section, "index-url")
    return found


def cache_dir(args) -> Path | None:
    if getattr(args, "no_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return args.cache_dir
    if os.environ.get("FLASHINFER_REPACK_CACHE_DIR"):
        return Path(os.environ["FLASHINFER_REPACK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "flashinfer-repack"


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds",
                         "unset it or give seconds since 1970")
    return int(value)


def cubins_repository() -> str:
    from .sources import NVIDIA_ARTIFACTORY

    return os.environ.get("FLASHINFER_CUBINS_REPOSITORY", NVIDIA_ARTIFACTORY)


# -- output --------------------------------------------------------------------------

def emit_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


_progress_shown = False


def progress_printer(args) -> Callable[[str, int, "int | None"], None] | None:
    if getattr(args, "quiet", False) or getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(label: str, done: int, total: int | None) -> None:
        global _progress_shown
        now = time.monotonic()
        if now - last[0] < 0.1 and (total is None or done < total):
            return
        last[0] = now
        _progress_shown = True
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            line = f"{label[:40]} [{bar}] {done / 1e6:.1f}/{total / 1e6:.1f} MB"
        else:
            line = f"{label[:40]} {done / 1e6:.1f} MB"
        sys.stderr.write("\r" + line.ljust(79)[:79])
        sys.stderr.flush()

    return show


def _clear_progress() -> None:
    global _progress_shown
    if _progress_shown:
        sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.flush()
        _progress_shown = False


def make_transport(args):
    from .transport import Transport

    if getattr(args, "offline", False):
        return None
    return Transport(timeout=args.timeout, retries=max(0, args.retries), progress=progress_printer(args))


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# -- plan ----------------------------------------------------------------------------

def register_plan(sub) -> None:
    p = sub.add_parser("plan", help="what a FlashInfer version needs, read from its own code",
                       description="Read flashinfer-python's code of VERSION statically (never imported) and "
                                   "report whether it needs a supplementary headers package, and exactly what: "
                                   "artifact path, pinned checksum, headers, runtime path, marker bytes. "
                                   "Compares the result with the plan shipped in this package.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--python-wheel", type=Path, metavar="PATH", help="read a flashinfer-python wheel on disk")
    where.add_argument("--installed", action="store_true", help="read the flashinfer-python installed here")
    where.add_argument("--shipped", action="store_true", help="show the shipped plan only (no network)")
    common_options(p)
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    from . import resolve
    from .plan import shipped_plan

    version = resolve.check_version(args.version)
    shipped = shipped_plan(version)
    transport = None
    if args.shipped or (args.offline and not args.python_wheel and not args.installed):
        if shipped is None:
            raise resolve.UnknownVersionError(f"no plan for flashinfer {version} is shipped with this package",
                                              "drop --shipped/--offline to read the code from the index")
        plan, origin = shipped, "shipped with flashinfer-repack"
    elif args.python_wheel:
        plan, origin = resolve.plan_from_wheel(args.python_wheel, version), str(args.python_wheel)
    elif args.installed:
        plan, origin = resolve.plan_from_installed(version), "installed flashinfer-python"
    else:
        transport = make_transport(args)
        url = index_url(args)
        plan, origin = resolve.plan_from_index(transport, url, version), f"flashinfer-python {version} on {url}"
    differences = shipped.differences(plan) if shipped is not None and plan is not shipped else []
    _clear_progress()
    if args.json:
        data = {"ok": not differences, "origin": origin, "shipped": shipped is not None,
                "agrees_with_shipped": (not differences) if shipped is not None else None,
                "differences": differences, "plan": plan.to_json()}
        if shipped is not None and not plan.header_sha256:
            data["plan"]["header_sha256"] = dict(shipped.header_sha256)
        if transport is not None:
            data["transfer"] = {"requests": transport.stats.requests, "bytes": transport.stats.bytes}
        emit_json(data)
    else:
        print_plan(plan, origin, shipped, differences)
    return EXIT_FAIL if differences else EXIT_OK


def print_plan(plan, origin: str, shipped, differences: list[str]) -> None:
    print(f"flashinfer {plan.version}  (read from {origin})")
    print(f"  needs a supplementary package: {'yes' if plan.needed else 'no'}")
    print(f"  why: {plan.reason}")
    if plan.needed:
        print(f"  requires-python:   {plan.requires_python}")
        print(f"  BMM artifact path: {plan.artifact_path}")
        print(f"  pinned checksum:   sha256({plan.checksums_path}) = {plan.checksums_sha256}")
        print(f"  runtime path:      FLASHINFER_CUBIN_DIR/{plan.dest_dir}/")
        print(f"  marker:            {plan.marker_name} = {plan.marker_bytes!r} ({len(plan.marker_bytes)} bytes, no newline)")
        hashes = plan.header_sha256 or (shipped.header_sha256 if shipped else {})
        print(f"  headers ({len(plan.headers)}, from {plan.artifact_path}{plan.header_dir}/):")
        for h in plan.headers:
            print(f"    {h:32} {hashes.get(h, '')}")
    if shipped is not None:
        print("  shipped plan: " + ("agrees" if not differences else "DIFFERS: " + "; ".join(differences)))


# -- build ---------------------------------------------------------------------------

FORMATS = ("wheel", "conda", "conda-bz2")


def register_build(sub) -> None:
    p = sub.add_parser("build", help="fetch, verify and package the headers of a version",
                       description="Fetch the BMM export headers of VERSION from a real source, verify every byte "
                                   "against the checksums flashinfer-python pins, and build the "
                                   "flashinfer-cubin-headers package(s) into -o DIR. Nothing is written unless "
                                   "everything verifies.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    p.add_argument("-o", "--output", type=Path, default=Path("dist"), metavar="DIR",
                   help="output directory (default: ./dist)")
    p.add_argument("--from", dest="sources", action="append", metavar="SOURCE",
                   help="where to get the headers (repeatable; see below; default auto)")
    p.add_argument("--format", default="wheel", metavar="FMT[,FMT]",
                   help="wheel, conda (.conda) and/or conda-bz2 (.tar.bz2), comma-separated (default wheel)")
    common_options(p)
    p.set_defaults(func=cmd_build)


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown format {unknown[0] if unknown else text!r}",
                         f"choose from {', '.join(FORMATS)}, comma-separated")
    return list(dict.fromkeys(formats))


def cmd_build(args) -> int:
    from .cache import Cache
    from .fetch import FetchReport, fetch_payload
    from .resolve import check_version

    started = time.monotonic()
    version = check_version(args.version)
    formats = parse_formats(args.format)
    epoch = source_date_epoch()
    transport = make_transport(args)
    plan = resolve_for_build(args, version, transport)
    cache = Cache(cache_dir(args))
    sources = make_sources(args.sources or ["auto"], args, version, transport, cache)
    report = FetchReport()
    payload = fetch_payload(plan, sources, cache, report=report)
    artifacts = build_artifacts(payload, formats, args, epoch)
    elapsed = time.monotonic() - started
    _clear_progress()
    transfer = {"requests": transport.stats.requests if transport else 0,
                "bytes": transport.stats.bytes if transport else 0}
    if args.json:
        emit_json({"ok": True, "version": version, "source": report.source, "tried": report.tried,
                   "seconds": round(elapsed, 3), "transfer": transfer,
                   "artifacts": [a.to_json() for a in artifacts]})
    else:
        for a in artifacts:
            print(f"built {a.path}  ({human_size(a.size)}, sha256 {a.sha256})")
        print(f"headers of flashinfer {version} from {report.source}, verified against sha256 "
              f"{plan.checksums_sha256[:16]}...; {human_size(transfer['bytes'])} in {transfer['requests']} "
              f"request(s), {elapsed:.2f} s")
    return EXIT_OK


def build_artifacts(payload, formats: list[str], args, epoch: int | None) -> list:
    from .wheel import build_wheel

    out = []
    for fmt in formats:
        if fmt == "wheel":
            out.append(build_wheel(payload, args.output, epoch))
        else:
            from .conda import build_conda, conda_options_from_args
            out.append(build_conda(payload, args.output, epoch, archive="tar.bz2" if fmt == "conda-bz2" else "conda",
                                   **conda_options_from_args(args)))
    return out


def resolve_for_build(args, version: str, transport):
    from .resolve import plan_from_index, resolve_plan

    derive = None if transport is None else (lambda: plan_from_index(transport, index_url(args), version))
    return resolve_plan(version, derive)


def make_sources(specs: list[str], args, version: str, transport, cache) -> list:
    from . import sources as s

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


COMMANDS: list[Callable] = [register_plan, register_build]
