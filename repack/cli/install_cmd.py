"""`install`: place verified headers straight into an environment."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from repack.cli.common import (
    EPILOG,
    EXIT_OK,
    EXIT_TABLE,
    UsageError,
    _clear_progress,
    common_options,
    emit_json,
    make_transport,
    resolve_python,
    source_option,
)
from repack.cli.settings import source_settings

if TYPE_CHECKING:
    from repack.rules.resolve import PlanCheck

# -- install -------------------------------------------------------------------------

INSTALL_EXAMPLES = """\
examples:
  flashinfer-repack install 0.6.6 --python .venv             into that venv's flashinfer_cubin/cubins
  flashinfer-repack install 0.6.6 --target /srv/cubins --from flashinfer_cubin-0.6.6-py3-none-any.whl
prefer the package where flashinfer-cubin is installed: pip owns its files (see doctor's fixes).
"""


def register_install(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("install", help="place the verified headers straight into an environment's cubin dir",
                       description="Fetch and verify the BMM export headers of VERSION (as build does) and place "
                                   "them, with the exact marker, directly where that environment's flashinfer "
                                   "searches, atomically; where the environment has no flashinfer-cubin, also "
                                   "checksums.txt and flashinferMetaInfo.h. Nothing is fetched at run time.",
                       epilog=INSTALL_EXAMPLES + "\n" + EPILOG + "\n" + EXIT_TABLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--python", metavar="PATH",
                       help="the environment (its interpreter, venv directory or conda prefix): its "
                            "FLASHINFER_CUBIN_DIR is resolved as its flashinfer does (default: this one)")
    where.add_argument("--target", type=Path, metavar="DIR", help="a FLASHINFER_CUBIN_DIR to fill (created if missing)")
    source_option(p)
    common_options(p)
    p.set_defaults(func=cmd_install)


def cmd_install(args: argparse.Namespace) -> int:
    from repack import pipeline
    from repack.environment.install import install
    from repack.rules.plan import require_needed
    from repack.rules.resolve import check_version

    version = check_version(args.version)
    transport = make_transport(args)
    settings = source_settings(args)
    if args.target:
        cubin_dir, with_extras, owned = args.target, True, False
        check = pipeline.checked_plan_for(version, settings, transport)
    else:  # the plan is the one that environment's own flashinfer code gives (checked against a shipped one)
        cubin_dir, with_extras, owned, check = install_destination(args, version)
    plan = require_needed(check.plan)
    payload, report = pipeline.verified_payload(plan, settings, transport, with_extras)
    written = install(payload, cubin_dir)
    _clear_progress()
    if args.json:
        emit_json({"ok": True, "version": version, "cubin_dir": str(cubin_dir), "source": report.source,
                   "written": [str(p) for p in written], "plan_checked": check.checked, "plan_check": check.note})
    elif not args.quiet:
        if written:
            print(f"installed the headers of flashinfer {version} into {cubin_dir} "
                  f"({len(written)} file(s) written, from {report.source})")
        else:
            print(f"the headers of flashinfer {version} were already in place in {cubin_dir}: nothing written")
        print(check.note)
        if args.target:
            print(f"flashinfer finds them with FLASHINFER_CUBIN_DIR={cubin_dir} (and no flashinfer-cubin installed)")
        elif written and not with_extras and not owned:
            print(f"note: inside flashinfer-cubin these {len(written)} file(s) belong to no package: `pip uninstall "
                  "flashinfer-cubin` leaves them behind as a namespace package that breaks `import flashinfer`; "
                  f"the flashinfer-cubin-headers package avoids that (flashinfer-repack build {version}, "
                  "then pip install the wheel)")
    return EXIT_OK


def install_destination(args: argparse.Namespace, version: str) -> tuple[Path, bool, bool, PlanCheck]:
    """The cubin dir of the environment of --python (default: this one), whether it lacks flashinfer-cubin,
    whether our package of this version is installed there (so pip owns the files), and the plan read
    from that environment's own flashinfer code (so the headers go exactly where it looks)."""
    from packaging.version import Version

    from repack.environment.probe import snapshot
    from repack.errors import BuildError

    env = snapshot(dict(os.environ), python=resolve_python(args.python) or sys.executable)
    fp = env.dist("flashinfer-python")
    if fp is None or Version(fp.version) != Version(version):
        raise UsageError(f"{env.target} has flashinfer-python {fp.version if fp else '(none)'}, not {version}",
                         f"install flashinfer-python=={version} there, or use --target DIR")
    rules, cubin_dir = env.rules, env.cubin_dir
    if env.unknown is not None or rules is None or cubin_dir is None or cubin_dir.path is None:
        # its code was not understood: no path is guessed
        from repack.errors import PlanError
        raise PlanError(env.unknown or f"where {env.target}'s flashinfer looks is unknown",
                        "the headers are not placed where that flashinfer may not look")
    from repack.rules.resolve import checked_plan
    check = checked_plan(version, [(f"flashinfer-python in {env.target}", lambda: rules)])  # refuses a disagreement
    if cubin_dir.import_error:
        raise BuildError(f"`import flashinfer` fails in {env.target}: {cubin_dir.import_error}",
                         f"run 'flashinfer-repack doctor --python {env.interpreter.python}' for the fix")
    ours = env.dist("flashinfer-cubin-headers")
    owned = ours is not None and Version(ours.version) == Version(version)
    return Path(cubin_dir.path), env.dist("flashinfer-cubin") is None, owned, check
