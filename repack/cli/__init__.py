"""The command line: the only module that reads argv and the environment,
prints, and picks exit codes.

Exit codes: 0 success; 1 the work failed (network, integrity, unknown or
unaffected version); 2 usage error; 130 interrupted.  ``doctor`` uses 0/1/2 as
"starts offline" / "will reach for the network or fail" / usage.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Callable, Sequence

from repack import __version__
from repack.cli.common import (
    EPILOG,
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    _clear_progress,
    emit_json,
)
from repack.errors import RepackError, UsageError

# -- entry point -------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # why: a SIGTERM (docker stop, CI cancel) must unwind like ^C, so that temporaries are removed
    signal.signal(signal.SIGTERM, _interrupt)
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    for register in _commands():
        register(sub)
    return parser


def _commands() -> list[Callable]:
    from repack.cli import (
        build_cmd,
        bundle_cmd,
        doctor_cmd,
        install_cmd,
        plan_cmd,
        publish_cmd,
    )

    return [plan_cmd.register_plan, build_cmd.register_build, publish_cmd.register_publish,
            doctor_cmd.register_doctor, install_cmd.register_install, bundle_cmd.register_bundle]
