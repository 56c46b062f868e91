"""`bundle`: everything an air-gapped site needs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from repack.cli.common import (
    EXIT_OK,
    EXIT_TABLE,
    UsageError,
    _clear_progress,
    common_options,
    emit_json,
    human_size,
    index_url,
    make_transport,
    output_dir,
    source_date_epoch,
)

if TYPE_CHECKING:
    from repack.publish.dependencies import Target

# -- bundle --------------------------------------------------------------------------

BUNDLE_EXAMPLES = """\
examples:
  flashinfer-repack bundle 0.6.6 -o /media/usb/flashinfer-0.6.6     then read /media/usb/flashinfer-0.6.6/README.txt
  flashinfer-repack bundle 0.6.6 -o bundle --index-url http://mirror/simple/

"""


def register_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="everything an air-gapped site needs for a version, in one directory",
                       description="Download flashinfer-python and flashinfer-cubin VERSION from the index (verified "
                                   "against its sha256), build flashinfer-cubin-headers (wheel and conda), and write "
                                   "a static simple index, a conda channel (with flashinfer-python and "
                                   "flashinfer-cubin converted from their wheels) and manifest.json into -o DIR. "
                                   "A re-run downloads nothing again; an interrupted download resumes. "
                                   "See DIR/README.txt for installing from it.",
                       epilog=BUNDLE_EXAMPLES + EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", metavar="VERSION", help="a FlashInfer version, e.g. 0.6.6")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="the bundle directory")
    p.add_argument("--conda-map", type=Path, metavar="FILE",
                   help='JSON {"names": {"pypi-name": "conda-name" or null}} over the shipped table '
                        "(repack/build/condamap.json), for the conda requirements of converted wheels")
    deps = p.add_argument_group("dependencies (for a clean machine with no index at all)")
    deps.add_argument("--with-dependencies", action="store_true",
                      help="also bundle every wheel flashinfer-python needs on the target, as pip's own resolver "
                           "picks them (pip install --dry-run --report), each checked against the index's sha256")
    deps.add_argument("--python-version", metavar="X.Y", help="the target's Python (default: this one's)")
    deps.add_argument("--platform", action="append", default=[], metavar="TAG",
                      help="a wheel platform tag of the target, e.g. manylinux_2_28_x86_64 (repeatable; "
                           "default: this machine's)")
    deps.add_argument("--exclude", action="append", default=[], metavar="NAME",
                      help="leave out a project your site mirrors, and what only it needs (repeatable), "
                           "e.g. --exclude torch")
    common_options(p, cache=False)  # the bundle directory is its own cache: a re-run downloads nothing
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args: argparse.Namespace) -> int:
    from repack.build.convert import load_name_map
    from repack.publish.bundle import bundle
    from repack.rules.resolve import check_version

    started = time.monotonic()
    version = check_version(args.version)
    output_dir(args.output)
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
                    step=step, target=dependency_target(args))
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


def dependency_target(args: argparse.Namespace) -> Target | None:
    """The --with-dependencies target, or None; the target options without it are a usage error."""
    from repack.publish.dependencies import check_target

    if not args.with_dependencies:
        given = [f for f, v in (("--python-version", args.python_version), ("--platform", args.platform),
                                ("--exclude", args.exclude)) if v]
        if given:
            raise UsageError(f"{given[0]} applies only with --with-dependencies",
                             "add --with-dependencies, or drop " + given[0])
        return None
    return check_target(args.python_version, args.platform, args.exclude)
