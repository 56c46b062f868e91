"""`plan`: what a FlashInfer version needs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repack.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_TABLE,
    UsageError,
    _clear_progress,
    cache_dir,
    common_options,
    emit_json,
    index_url,
    make_transport,
)

if TYPE_CHECKING:
    from repack.rules.plan import Plan

# -- plan ----------------------------------------------------------------------------

PLAN_EXAMPLES = """\
examples:
  flashinfer-repack plan 0.6.6                 read from the index pip uses, then kept in the cache
  flashinfer-repack -v plan 0.6.8 --offline    from the cache; -v says which entry and why
  flashinfer-repack plan 0.6.6 --python-wheel flashinfer_python-0.6.6-py3-none-any.whl --json

"""


def register_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="what a FlashInfer version needs, read from its own code",
                       description="Read flashinfer-python's code of VERSION statically (never imported) and "
                                   "report whether it needs a supplementary headers package, and exactly what: "
                                   "artifact path, pinned checksum, headers, runtime path, marker bytes. "
                                   "Compares the result with the plan shipped in this package.",
                       epilog=PLAN_EXAMPLES + EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--python-wheel", type=Path, metavar="PATH", help="read a flashinfer-python wheel on disk")
    where.add_argument("--installed", action="store_true", help="read the flashinfer-python installed here")
    where.add_argument("--shipped", action="store_true", help="show the shipped plan only (no network)")
    common_options(p)
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from repack.rules.plan import shipped_plan

    version = _check_version(args.version)
    shipped = shipped_plan(version)
    transport = None
    cached = None
    if not (args.shipped or args.python_wheel or args.installed):
        cached = _from_cache(args, version)  # a plan read before answers with no request, offline too
    if cached is None:
        from repack.fetch.cache import Cache
        from repack.fetch.urlpolicy import redact
        from repack.rules import resolve
    if cached is not None:
        plan, origin = cached
    elif args.shipped or (args.offline and not args.python_wheel and not args.installed):
        if shipped is None:
            from repack.errors import UnknownVersionError
            raise UnknownVersionError(f"no plan for flashinfer {version} is shipped with this package",
                                      "drop --shipped/--offline to read the code from the index")
        plan, origin = shipped, "shipped with flashinfer-repack"
    elif args.python_wheel:
        plan, origin = resolve.plan_from_wheel(args.python_wheel, version), str(args.python_wheel)
    elif args.installed:
        from repack.errors import SourceError, UnknownVersionError

        try:
            plan, origin = resolve.plan_from_installed(version), "installed flashinfer-python"
        except (SourceError, UnknownVersionError) as exc:  # the source named lacks it: exit 2, as install --python
            raise UsageError(str(exc), exc.hint) from exc
    else:
        transport = make_transport(args)
        url = index_url(args)
        plan = resolve.plan_from_index(transport, url, version, Cache(cache_dir(args)))
        origin = f"flashinfer-python {version} on {redact(url)}"
    differences = shipped.differences(plan) if shipped is not None and plan is not shipped else []
    _clear_progress()
    if args.json:
        data: dict[str, Any] = {"ok": not differences, "origin": origin, "shipped": shipped is not None,
                "agrees_with_shipped": (not differences) if shipped is not None else None,
                "differences": differences, "plan": plan.to_json()}
        if shipped is not None and not plan.header_sha256:
            data["plan"]["header_sha256"] = dict(shipped.header_sha256)
        if cached is not None:
            data["transfer"] = {"requests": 0, "bytes": 0}
        if transport is not None:
            data["transfer"] = {"requests": transport.stats.requests, "bytes": transport.stats.bytes}
        emit_json(data)
    else:
        print_plan(plan, origin, shipped, differences)
    return EXIT_FAIL if differences else EXIT_OK


def _check_version(text: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(text))
    except InvalidVersion:
        from repack.rules.resolve import check_version

        return check_version(text)  # raises the one message for a bad version


def _from_cache(args: argparse.Namespace, version: str) -> tuple[Plan, str] | None:
    """A plan derived before from the same index: no request, and no network code imported."""
    from repack.rules import plancache

    if getattr(args, "no_cache", False):
        return None
    found = plancache.load(cache_dir(args), index_url(args), version)
    return None if found is None else (found[0], f"flashinfer-python {version} on {found[1]} (cached)")


def print_plan(plan: Plan, origin: str, shipped: Plan | None, differences: list[str]) -> None:
    print(f"flashinfer {plan.version}  (read from {origin})")
    print(f"  needs a supplementary package: {'yes' if plan.needed else 'no'}")
    print(f"  why: {plan.reason}")
    if plan.needed:
        print(f"  requires-python:   {plan.requires_python}")
        print(f"  BMM artifact path: {plan.artifact_path}")
        print(f"  pinned checksum:   sha256({plan.checksums_path}) = {plan.checksums_sha256}")
        print(f"  runtime path:      FLASHINFER_CUBIN_DIR/{plan.dest_dir}/")
        size = len(plan.marker_bytes)
        print(f"  marker:            {plan.marker_name} = {plan.marker_bytes!r} ({size} bytes, no newline)")
        hashes = plan.header_sha256 or (shipped.header_sha256 if shipped else {})
        print(f"  headers ({len(plan.headers)}, from {plan.artifact_path}{plan.header_dir}/):")
        for h in plan.headers:
            print(f"    {h:32} {hashes.get(h, '')}")
    order = "FLASHINFER_CUBIN_DIR, then flashinfer-cubin" if plan.cubin_env_first else \
        "flashinfer-cubin, then FLASHINFER_CUBIN_DIR"
    mismatch = "is ignored (default cache used)" if plan.cubin_mismatch == "package-ignored" else \
        "makes `import flashinfer` fail"
    print(f"  cubin dir:         {order}, then the default cache; a flashinfer-cubin of another version {mismatch}")
    if shipped is not None:
        print("  shipped plan: " + ("agrees" if not differences else "DIFFERS: " + "; ".join(differences)))
