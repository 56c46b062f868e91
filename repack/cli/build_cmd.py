"""`build`: fetch, verify and package the headers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from repack.cli.common import (
    EPILOG,
    EXIT_OK,
    EXIT_TABLE,
    _clear_progress,
    common_options,
    emit_json,
    human_size,
    make_transport,
    output_dir,
    source_option,
)
from repack.cli.settings import settings_from

# -- build ---------------------------------------------------------------------------

BUILD_EXAMPLES = """\
examples:
  flashinfer-repack build 0.6.6 -o dist                       from the index pip uses (-v says which)
  flashinfer-repack build 0.6.6 --from flashinfer_cubin-0.6.6-py3-none-any.whl --format wheel,conda
  flashinfer-repack build 0.6.6 --offline                     from the cache or an installed flashinfer-cubin
"""


def register_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="fetch, verify and package the headers of a version",
                       description="Fetch the BMM export headers of VERSION from a real source, verify every byte "
                                   "against the checksums flashinfer-python pins, and build the "
                                   "flashinfer-cubin-headers package(s) into -o DIR. Nothing is written unless "
                                   "everything verifies.",
                       epilog=BUILD_EXAMPLES + "\n" + EPILOG + "\n" + EXIT_TABLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
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


def cmd_build(args: argparse.Namespace) -> int:
    from repack import pipeline
    from repack.rules.resolve import check_version

    started = time.monotonic()
    version = check_version(args.version)
    output_dir(args.output)  # before any download: a file at -o is a usage error, not "File exists" at the end
    settings = settings_from(args)  # a malformed --format, --conda-* or --from fails before any download
    transport = make_transport(args)
    built = pipeline.build(version, settings.sources, transport, out_dir=args.output, formats=settings.formats,
                           epoch=settings.epoch, conda=dict(settings.conda))
    check, report, artifacts, plan = built.check, built.report, built.artifacts, built.check.plan
    elapsed = time.monotonic() - started
    _clear_progress()
    transfer = {"requests": transport.stats.requests if transport else 0,
                "bytes": transport.stats.bytes if transport else 0}
    if args.json:
        emit_json({"ok": True, "version": version, "source": report.source, "tried": report.tried,
                   "seconds": round(elapsed, 3), "transfer": transfer,
                   "plan_checked": check.checked, "plan_check": check.note,
                   "artifacts": [a.to_json() for a in artifacts]})
    else:
        for a in artifacts:
            print(f"built {a.path}  ({human_size(a.size)}, sha256 {a.sha256})")
        print(f"headers of flashinfer {version} from {report.source}, verified against sha256 "
              f"{plan.checksums_sha256[:16]}...; {human_size(transfer['bytes'])} in {transfer['requests']} "
              f"request(s), {elapsed:.2f} s")
        print(check.note)
    return EXIT_OK
