"""`bundle`: everything an air-gapped site needs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from repack.cli.common import (
    EXIT_OK,
    EXIT_TABLE,
    _clear_progress,
    common_options,
    emit_json,
    human_size,
    index_url,
    make_transport,
    output_dir,
    source_date_epoch,
)
from repack.errors import UsageError

# -- bundle --------------------------------------------------------------------------

BUNDLE_EXAMPLES = """\
examples:
  flashinfer-repack bundle 0.6.6 -o /media/usb/flashinfer-0.6.6     then read /media/usb/flashinfer-0.6.6/README.txt
  flashinfer-repack bundle 0.6.6 -o bundle --index-url http://mirror/simple/

"""


def register_bundle(sub) -> None:
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
    common_options(p, cache=False)  # the bundle directory is its own cache: a re-run downloads nothing
    p.set_defaults(func=cmd_bundle)


def cmd_bundle(args) -> int:
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
