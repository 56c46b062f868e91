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

from repack import __version__
from repack.errors import RepackError, UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PYPI = "https://pypi.org/simple/"  # as index.PYPI; kept here so that --help imports nothing heavy
ZIP_TIME_LIMIT = 4354819200  # 2108-01-01: a zip stores years up to 2107

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
    except OSError as exc:  # the filesystem said no where no module expected it: still one line, no traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return report_error(args, RepackError(f"{exc.strerror or exc}{where}",
                                              "check that the path exists, is a directory where one is "
                                              "needed, is writable, and that the disk has room"))


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


def common_options(p: argparse.ArgumentParser, network: bool = True, cache: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request and decision")
    if network:
        p.add_argument("--index-url", metavar="URL",
                       help="simple-API index (default: $PIP_INDEX_URL, pip.conf, then PyPI)")
        if cache:
            p.add_argument("--cache-dir", metavar="DIR", type=Path, help="cache directory")
            p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
        p.add_argument("--offline", action="store_true", help="use no network: cache and local sources only")
        p.add_argument("--timeout", type=positive_seconds, default=20.0, metavar="S",
                       help="connect and read timeout per request (default 20)")
        p.add_argument("--retries", type=int, default=3, metavar="N",
                       help="retries after a failed request, with backoff 0.5, 1, 2 s... (default 3)")


def source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="sources", action="append", metavar="SOURCE",
                   help="where to get the headers (repeatable; see below; default auto)")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 1e6):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


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
    if not value.strip().isdigit() or int(value) >= ZIP_TIME_LIMIT:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds before 2108",
                         "unset it or give seconds since 1970 (zip and tar timestamps end in 2107)")
    return int(value)


def cubins_repository() -> str:
    from repack.fetch.sources import NVIDIA_ARTIFACTORY

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
    from repack.fetch.transport import Transport

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
    from repack.rules import resolve
    from repack.rules.plan import shipped_plan
    from repack.fetch.transport import redact

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
        plan, origin = resolve.plan_from_index(transport, url, version), f"flashinfer-python {version} on {redact(url)}"
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
    source_option(p)
    p.add_argument("--format", default="wheel", metavar="FMT[,FMT]",
                   help="wheel, conda (.conda) and/or conda-bz2 (.tar.bz2), comma-separated (default wheel)")
    conda = p.add_argument_group("conda packages (--format conda, conda-bz2)")
    conda.add_argument("--conda-dep-name", action="append", metavar="DEP=NAME",
                       help="depend on NAME instead of DEP, for channels that name flashinfer differently "
                            "(DEP: flashinfer-python or flashinfer-cubin; repeatable)")
    conda.add_argument("--conda-no-flashinfer-deps", action="store_true",
                       help="depend on python only, for conda environments whose flashinfer-python and "
                            "flashinfer-cubin came from pip; install flashinfer-cubin of the same version first: "
                            "without it the headers' flashinfer_cubin/ folder breaks 'import flashinfer'")
    conda.add_argument("--build-number", type=int, default=0, metavar="N",
                       help="the conda build number, to rebuild the same version (default 0)")
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
    from repack.rules.resolve import check_version

    started = time.monotonic()
    version = check_version(args.version)
    formats = parse_formats(args.format)
    if any(f != "wheel" for f in formats):
        from repack.build.conda import conda_options_from_args
        conda_options_from_args(args)  # a malformed --conda-* option fails before any download
    epoch = source_date_epoch()
    transport = make_transport(args)
    plan = resolve_for_build(args, version, transport)
    payload, report = fetch_verified(args, plan, transport)
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
            from repack.build.conda import build_conda, conda_options_from_args
            out.append(build_conda(payload, args.output, epoch, archive="tar.bz2" if fmt == "conda-bz2" else "conda",
                                   **conda_options_from_args(args)))
    return out


def resolve_for_build(args, version: str, transport):
    from repack.rules.resolve import plan_from_index, resolve_plan

    derive = None if transport is None else (lambda: plan_from_index(transport, index_url(args), version))
    return resolve_plan(version, derive)


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


# -- publish -------------------------------------------------------------------------

PUBLISH_EPILOG = """\
credentials for --index, first found wins (never printed, logged or written anywhere):
  1. --username / --password
  2. user:password in the --index URL
  3. $FLASHINFER_REPACK_USERNAME / $FLASHINFER_REPACK_PASSWORD
  4. $TWINE_USERNAME / $TWINE_PASSWORD
  5. the entry for the host in $NETRC or ~/.netrc
a file already there with the same sha256 is skipped; the same name with other bytes is refused.
--simple writes a static PEP 503/691 tree (see 'pydoc repack.publish.simple'): serve it with any web server,
or point pip at it directly: pip install --index-url file:///path/to/DIR ...
"""


def register_publish(sub) -> None:
    p = sub.add_parser("publish", help="add built packages to an index, a static simple tree or a conda channel",
                       description="Publish wheels to a package index through the upload API that twine uses "
                                   "(pypiserver, devpi, Artifactory, Nexus...), or into a static simple-API "
                                   "directory, or conda packages into a channel directory. Every wheel is "
                                   "checked against its own RECORD first.",
                       epilog=PUBLISH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="built packages to publish")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--index", metavar="URL", help="upload URL of an index, e.g. http://host:8080/ (pypiserver) "
                                                     "or http://host:3141/USER/INDEX/ (devpi)")
    dest.add_argument("--simple", type=Path, metavar="DIR", help="a static simple-API tree, updated in place")
    dest.add_argument("--channel", type=Path, metavar="DIR", help="a conda channel directory, re-indexed in place")
    p.add_argument("--username", help="index user (prefer the environment or ~/.netrc, see below)")
    p.add_argument("--password", help="index password (visible to other local users in the process list; "
                                      "prefer $FLASHINFER_REPACK_PASSWORD or ~/.netrc)")
    p.add_argument("--simple-url", metavar="URL",
                   help="the index's simple API, read to skip files already there (default: URL/simple/, "
                        "then URL/+simple/)")
    common_options(p, network=False)
    p.add_argument("--timeout", type=positive_seconds, default=60.0, metavar="S", help="connect/read timeout (default 60)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries when a gateway answers 502/503/504 (default 3)")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args) -> int:
    if args.channel is not None:
        return publish_to_channel(args)
    from repack.publish.distfile import read_distfile

    dists = [read_distfile(f) for f in args.files]  # every file checked before anything is sent
    if args.index:
        from repack.publish.upload import Uploader, find_credentials, netrc_path

        credentials = find_credentials(args.index, username=args.username, password=args.password,
                                       env=os.environ, netrc_file=netrc_path(os.environ))
        uploader = Uploader(args.index, credentials, simple_url=args.simple_url, timeout=args.timeout,
                            retries=max(0, args.retries), progress=progress_printer(args))
        destination, results = uploader.server, uploader.publish(dists)
    else:
        from repack.publish.simple import publish_simple

        destination, results = str(args.simple), publish_simple(args.simple, dists)
    _clear_progress()
    if args.json:
        emit_json({"ok": True, "destination": destination, "files": [r.to_json() for r in results]})
    elif not args.quiet:
        for r in results:
            note = " (already there, same sha256)" if r.action == "skipped" else ""
            print(f"{r.action} {r.filename}{note} -> {destination}")
    return EXIT_OK


def publish_to_channel(args) -> int:
    from repack.publish.channel import publish_channel

    results = publish_channel(args.channel, args.files)
    if args.json:
        emit_json({"ok": True, "destination": str(args.channel), "files": [r.to_json() for r in results]})
    elif not args.quiet:
        for r in results:
            note = " (already there, same sha256)" if r.action == "skipped" else ""
            print(f"{r.action} {r.subdir}/{r.filename}{note} -> {args.channel}")
        print(f"indexed {args.channel} (repodata.json); use it as: conda install -c file://"
              f"{args.channel.resolve()} ...")
    return EXIT_OK

# -- doctor --------------------------------------------------------------------------

DOCTOR_EPILOG = """\
doctor imports neither flashinfer nor torch: it asks the target interpreter (run from /, with this
shell's PYTHONPATH) for its distributions' metadata and what find_spec finds, reads flashinfer-python's
own code for that version's rules, resolves FLASHINFER_CUBIN_DIR as that version does (with this shell's
environment), and looks at the files there. Run it as the user that runs flashinfer: write permission is
judged for you.

exit codes: 0 flashinfer will start with no network, 1 it will reach for the network or fail, 2 usage error
"""


def register_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="will an environment's flashinfer start offline? what to fix",
                       description="Inspect a Python environment (this one, another interpreter, or a conda "
                                   "prefix) and tell whether its FlashInfer will reach for the network at start-up "
                                   "for the TRT-LLM BMM headers, why, and the exact command that fixes each problem.",
                       epilog=DOCTOR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--python", metavar="PATH", help="the environment's interpreter (default: this one)")
    where.add_argument("--prefix", metavar="PATH", type=Path,
                       help="a conda prefix (its bin/python if it has one, else its files are read)")
    common_options(p, network=False)
    p.set_defaults(func=cmd_doctor)


def _target_python(path: str | None) -> str | None:
    if path is None:
        return None
    if not os.path.lexists(path) or os.path.isdir(path):  # a link this user cannot resolve may still run
        raise UsageError(f"--python {path}: no such file", "give the path of the environment's python")
    return path


def cmd_doctor(args) -> int:
    from repack.environment.doctor import diagnose
    from repack.environment.probe import snapshot

    if args.prefix is not None and not args.prefix.is_dir():
        raise UsageError(f"--prefix {args.prefix}: no such directory", "give the root of a conda environment")
    python = _target_python(args.python) or (None if args.prefix else sys.executable)
    env = snapshot(dict(os.environ), python=python, prefix=str(args.prefix) if args.prefix else None)
    diagnosis = diagnose(env)
    if args.json:
        data = {"ok": diagnosis.starts_offline, "target": env.target,
                "python": env.interpreter.python, "python_version": env.interpreter.python_version,
                "versions": {k: v.version for k, v in env.interpreter.dists.items()},
                "cubin_dir": env.cubin_dir.path if env.cubin_dir else None,
                "cubin_dir_source": env.cubin_dir.source if env.cubin_dir else None}
        data.update(diagnosis.to_json())
        emit_json(data)
    elif not args.quiet or not diagnosis.starts_offline:
        print_diagnosis(env, diagnosis)
    return EXIT_OK if diagnosis.starts_offline else EXIT_FAIL


def print_diagnosis(env, diagnosis) -> None:
    print(f"{env.target} (Python {env.interpreter.python_version})")
    for c in diagnosis.checks:
        print(f"  {c.status.upper():7}  {c.name:24} {c.detail}")
    for p in diagnosis.problems:
        print(f"\n{'PROBLEM' if p.fatal else 'note'} [{p.code}] {p.what}")
        print(f"  effect: {p.consequence}")
        print(f"  fix:    {p.fix}")
    fatal = sum(p.fatal for p in diagnosis.problems)
    verdict = (f"flashinfer will reach for the network or fail at start-up ({fatal} fatal problem"
               f"{'s' if fatal > 1 else ''})" if fatal else "flashinfer will start with no network")
    print(f"\nverdict: {verdict}")


# -- install -------------------------------------------------------------------------

def register_install(sub) -> None:
    p = sub.add_parser("install", help="place the verified headers straight into an environment's cubin dir",
                       description="Fetch and verify the BMM export headers of VERSION (as build does) and place "
                                   "them, with the exact marker, directly where that environment's flashinfer "
                                   "searches, atomically; where the environment has no flashinfer-cubin, also "
                                   "checksums.txt and flashinferMetaInfo.h. Nothing is fetched at run time.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--python", metavar="PATH",
                       help="the environment's interpreter: its FLASHINFER_CUBIN_DIR is resolved as its flashinfer "
                            "does (default: this one)")
    where.add_argument("--target", type=Path, metavar="DIR", help="a FLASHINFER_CUBIN_DIR to fill (created if missing)")
    source_option(p)
    common_options(p)
    p.set_defaults(func=cmd_install)


def cmd_install(args) -> int:
    from repack.environment.install import install
    from repack.rules.plan import require_needed
    from repack.rules.resolve import check_version

    version = check_version(args.version)
    transport = make_transport(args)
    plan = require_needed(resolve_for_build(args, version, transport))
    cubin_dir, with_extras = (args.target, True) if args.target else install_destination(args, version)
    payload, report = fetch_verified(args, plan, transport, with_extras)
    written = install(payload, cubin_dir)
    _clear_progress()
    if args.json:
        emit_json({"ok": True, "version": version, "cubin_dir": str(cubin_dir), "source": report.source,
                   "written": [str(p) for p in written]})
    elif not args.quiet:
        print(f"installed the headers of flashinfer {version} into {cubin_dir} "
              f"({len(written)} file(s) written, from {report.source})")
        if args.target:
            print(f"flashinfer finds them with FLASHINFER_CUBIN_DIR={cubin_dir} (and no flashinfer-cubin installed)")
        elif not with_extras:
            print("note: inside flashinfer-cubin these files belong to no package: `pip uninstall flashinfer-cubin` "
                  "leaves them behind as a namespace package that breaks `import flashinfer`; the "
                  "flashinfer-cubin-headers package (flashinfer-repack build) avoids that")
    return EXIT_OK


def install_destination(args, version: str) -> tuple[Path, bool]:
    """The cubin dir of the environment of --python (default: this one), and whether it lacks flashinfer-cubin."""
    from packaging.version import Version

    from repack.errors import BuildError
    from repack.environment.probe import snapshot

    env = snapshot(dict(os.environ), python=_target_python(args.python) or sys.executable)
    fp = env.dist("flashinfer-python")
    if fp is None or Version(fp.version) != Version(version):
        raise UsageError(f"{env.target} has flashinfer-python {fp.version if fp else '(none)'}, not {version}",
                         f"install flashinfer-python=={version} there, or use --target DIR")
    if env.cubin_dir.import_error:
        raise BuildError(f"`import flashinfer` fails in {env.target}: {env.cubin_dir.import_error}",
                         f"run 'flashinfer-repack doctor --python {env.interpreter.python}' for the fix")
    return Path(env.cubin_dir.path), env.dist("flashinfer-cubin") is None


# -- bundle --------------------------------------------------------------------------

def register_bundle(sub) -> None:
    p = sub.add_parser("bundle", help="everything an air-gapped site needs for a version, in one directory",
                       description="Download flashinfer-python and flashinfer-cubin VERSION from the index (verified "
                                   "against its sha256), build flashinfer-cubin-headers (wheel and conda), and write "
                                   "a static simple index, a conda channel (with flashinfer-python and "
                                   "flashinfer-cubin converted from their wheels) and manifest.json into -o DIR. "
                                   "A re-run downloads nothing again; an interrupted download resumes. "
                                   "See DIR/README.txt for installing from it.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="the bundle directory")
    p.add_argument("--conda-map", type=Path, metavar="FILE",
                   help='JSON {"names": {"pypi-name": "conda-name" or null}} over the shipped table '
                        "(repack/build/condamap.json), for the conda requirements of converted wheels")
    common_options(p, cache=False)  # the bundle directory is its own cache: a re-run downloads nothing
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args) -> int:
    from repack.publish.bundle import bundle
    from repack.build.convert import load_name_map
    from repack.rules.resolve import check_version

    started = time.monotonic()
    version = check_version(args.version)
    names = load_name_map(args.conda_map)
    transport = make_transport(args)
    if transport is None:
        raise UsageError("bundle downloads from the index, but --offline was given",
                         "drop --offline; a re-run over a complete bundle downloads nothing")
    quiet = args.quiet or args.json

    def step(message: str) -> None:
        if not quiet:
            _clear_progress()
            print(f"bundle: {message}", file=sys.stderr)

    report = bundle(version, args.output, transport, index_url(args), epoch=source_date_epoch(), names=names,
                    step=step)
    _clear_progress()
    if args.json:
        emit_json({"ok": True, **report.to_json(), "seconds": round(time.monotonic() - started, 3)})
    else:
        size = sum(f["size"] for f in report.files)
        print(f"bundled flashinfer {version} into {args.output}: {len(report.files)} files, {human_size(size)}; "
              f"{human_size(report.transferred)} downloaded "
              f"({', '.join(f'{k}: {v}' for k, v in report.fetched.items())}), "
              f"{time.monotonic() - started:.1f} s")
    return EXIT_OK

COMMANDS: list[Callable] = [register_plan, register_build, register_publish, register_doctor, register_install, register_bundle]
