"""`doctor`: will an environment's flashinfer start offline?"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from repack.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    _target_python,
    common_options,
    emit_json,
)
from repack.errors import UsageError

# -- doctor --------------------------------------------------------------------------

DOCTOR_EPILOG = """\
doctor imports neither flashinfer nor torch: it asks the target interpreter (run from /, with this
shell's PYTHONPATH) for its distributions' metadata and what find_spec finds, reads flashinfer-python's
own code for that version's rules, resolves FLASHINFER_CUBIN_DIR as that version does (with this shell's
environment), and looks at the files there. Run it as the user that runs flashinfer: write permission is
judged for you.

exit codes: 0 flashinfer will start with no network, 1 it will reach for the network or fail, or its
code was not understood (verdict "unknown"), 2 usage error
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
    if diagnosis.verdict == "unknown":
        print("\nverdict: unknown: this flashinfer's code was not understood, so doctor cannot tell whether it "
              "starts with no network")
        return
    verdict = (f"flashinfer will reach for the network or fail at start-up ({fatal} fatal problem"
               f"{'s' if fatal > 1 else ''})" if fatal else "flashinfer will start with no network")
    print(f"\nverdict: {verdict}")
