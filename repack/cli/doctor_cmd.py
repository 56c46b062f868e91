"""`doctor`: will an environment's flashinfer start offline?"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repack.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_TABLE,
    UsageError,
    common_options,
    emit_json,
    index_settings,
    resolve_python,
)

if TYPE_CHECKING:
    from repack.environment.doctor import Advice, Diagnosis
    from repack.environment.probe import Environment
    from repack.environment.run import LiveResult

# -- doctor --------------------------------------------------------------------------

DOCTOR_EPILOG = """\
doctor imports neither flashinfer nor torch: it asks the target interpreter (run from /, with this
shell's PYTHONPATH) for its distributions' metadata and what find_spec finds, reads flashinfer-python's
own code for that version's rules, resolves FLASHINFER_CUBIN_DIR as that version does (with this shell's
environment), and looks at the files there. Run it as the user that runs flashinfer: write permission is
judged for you. Fixes name the package first (pip, with the index pip uses there, or conda), and
`flashinfer-repack install` only where no package can serve.

without --python or --prefix, the environment is this tool's own if it has flashinfer-python, else the
python3, then the python, on PATH; the first line says which.

examples:
  flashinfer-repack doctor --python .venv            a venv directory, relative to here
  flashinfer-repack doctor --python /opt/env/bin/python --json
  flashinfer-repack doctor --prefix /opt/conda/envs/serve

With --run, doctor then measures instead of predicting: the environment's interpreter runs that
flashinfer's own start-up code for the headers (0.6.5-0.6.7: gen_moe_utils_module and
gen_trtllm_gen_fused_moe_sm100_module; other versions: those and the TRT-LLM GEMM generators) in a
child process with every connection refused and recorded, sleeps cut short, a scratch
FLASHINFER_WORKSPACE_BASE, every file it writes recorded, and a time limit (--run-timeout). The exit
code is then the live result's.

doctor's exit code 0 means flashinfer will start with no network, 1 that it will reach for it or fail, or
that its code was not understood (verdict "unknown"), 2 a usage error.
"""


def register_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="will an environment's flashinfer start offline? what to fix",
                       description="Inspect a Python environment (this one, another interpreter, or a conda "
                                   "prefix) and tell whether its FlashInfer will reach for the network at start-up "
                                   "for the TRT-LLM BMM headers, why, and the exact command that fixes each problem.",
                       epilog=DOCTOR_EPILOG + EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--python", metavar="PATH",
                       help="the environment: its interpreter, its venv directory or its conda prefix "
                            "(default: see below)")
    where.add_argument("--prefix", metavar="PATH", type=Path,
                       help="a conda prefix (its bin/python if it has one, else its files are read)")
    p.add_argument("--run", action="store_true",
                   help="also run that environment's flashinfer header start-up code, offline and watched, "
                        "and exit from what it did")
    p.add_argument("--run-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="time limit of the --run check (default 300)")
    common_options(p, network=False)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from repack.environment.doctor import diagnose
    from repack.environment.probe import snapshot

    if args.prefix is not None and not args.prefix.is_dir():
        raise UsageError(f"--prefix {args.prefix}: no such directory", "give the root of a conda environment")
    if args.python and _is_conda_prefix_without_python(args.python):
        args.prefix, args.python = Path(args.python).resolve(), None  # a conda prefix given as --python
    python, chosen = resolve_python(args.python), None
    if python is None and args.prefix is None:
        python, chosen = default_environment()
    env = snapshot(dict(os.environ), python=python, prefix=str(args.prefix) if args.prefix else None)
    diagnosis = diagnose(env, advice_for(args, env))
    if chosen and not args.json and not args.quiet:
        print(f"checking {chosen}; choose another with --python or --prefix")
    if _is_own_env(env) and env.dist("flashinfer-python") is None:
        diagnosis = _not_the_tools_env(diagnosis)
    provenance = installed_provenance(env)
    live = run_live(args, env) if args.run else None
    if args.json:
        data = {"ok": diagnosis.starts_offline, "target": env.target, "chosen_because": chosen,
                "python": env.interpreter.python, "python_version": env.interpreter.python_version,
                "versions": {k: v.version for k, v in env.interpreter.dists.items()},
                "cubin_dir": env.cubin_dir.path if env.cubin_dir else None,
                "cubin_dir_source": env.cubin_dir.source if env.cubin_dir else None}
        data.update(diagnosis.to_json())
        data["provenance"] = provenance
        if live is not None:
            data.update(ok=live.ok, static_ok=diagnosis.starts_offline, live=live.to_json())
        emit_json(data)
    ok = diagnosis.starts_offline if live is None else live.ok
    if not args.json and (not args.quiet or not ok):
        print_diagnosis(env, diagnosis)
        print_provenance(provenance)
        if live is not None:
            print_live(diagnosis, live)
    return EXIT_OK if ok else EXIT_FAIL


def installed_provenance(env: Environment) -> dict[str, Any] | None:
    """The SBOM of the installed flashinfer-cubin-headers (where its bytes came from), if it has one."""
    from repack.build.sbom import read_installed

    ours = env.dist("flashinfer-cubin-headers")
    return read_installed(ours.location, ours.version) if ours else None


def print_provenance(provenance: dict[str, Any] | None) -> None:
    if not provenance:
        return
    if "error" in provenance:
        print(f"\nflashinfer-cubin-headers provenance: {provenance['error']}")
        return
    wheel = f", wheel {provenance['wheel']}" if provenance["wheel"] else ""
    digest = f" (sha256 {provenance['wheel_sha256']})" if provenance["wheel_sha256"] else ""
    print(f"\nflashinfer-cubin-headers provenance: {provenance['files']} files from {provenance['source_kind']} "
          f"{provenance['source']}{wheel}{digest}; checksums.txt sha256 {provenance['checksums_sha256']}")


def run_live(args: argparse.Namespace, env: Environment) -> LiveResult:
    from repack.environment.run import live_check_environment

    if args.run_timeout <= 0:
        raise UsageError(f"--run-timeout {args.run_timeout:g} is not a positive number of seconds",
                         "give e.g. --run-timeout 300")
    if not env.interpreter.python:
        raise UsageError(f"--run needs the environment's interpreter, and {env.target} has none",
                         "give --python PATH, or a conda prefix with bin/python")
    return live_check_environment(env, dict(os.environ), timeout=args.run_timeout)


def print_live(diagnosis: Diagnosis, live: LiveResult) -> None:
    print(f"\nlive run ({', '.join(c.rsplit(':', 1)[-1] for c in live.calls + live.absent) or 'import only'}; "
          f"flashinfer {live.version or '?'}, FLASHINFER_CUBIN_DIR {live.cubin_dir or '?'}):")
    print(f"  {live.summary()}")
    if live.absent:
        print(f"  not in this version: {', '.join(live.absent)}")
    if live.sleeps:
        print(f"  sleeps cut short: {live.sleeps} ({live.slept_seconds:g} s asked)")
    for where in ("site-packages", "cubin dir", "elsewhere"):
        written = live.writes_in(where)
        if written:
            more = f" and {len(written) - 5} more" if len(written) > 5 else ""
            shown = ", ".join(w.path for w in written[:5]) + more
            print(f"  wrote {len(written)} path(s) in {where}: {shown}")
    agree = "agrees with" if live.ok == diagnosis.starts_offline else "DISAGREES with"
    print(f"live verdict: {'starts offline' if live.ok else 'does not start offline'} "
          f"({agree} the static verdict)")


def _is_conda_prefix_without_python(given: str) -> bool:
    path = Path(os.path.expanduser(given))
    return (path / "conda-meta").is_dir() and not (path / "bin" / "python").exists()


def default_environment() -> tuple[str, str]:
    """The environment a user means: ours only if it has flashinfer-python, else python3, then python, on PATH."""
    import importlib.metadata
    import shutil

    try:
        importlib.metadata.distribution("flashinfer-python")
        return sys.executable, f"this tool's own environment ({sys.executable}), which has flashinfer-python"
    except importlib.metadata.PackageNotFoundError:
        pass
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found:
            return found, f"{found}, the first {name} on PATH (this tool's own environment has no flashinfer-python)"
    return sys.executable, f"this tool's own environment ({sys.executable}): no python3 or python on PATH"


def _is_own_env(env: Environment) -> bool:
    """The snapshot is of this tool's own environment, however its interpreter was named (shim, python3...)."""
    import sysconfig

    site = env.interpreter.site_packages
    return bool(site) and os.path.realpath(site) == os.path.realpath(sysconfig.get_paths()["purelib"])


def _not_the_tools_env(diagnosis: Diagnosis) -> Diagnosis:
    """Installing flashinfer beside this tool helps nobody: point at the environment that runs it instead."""
    from dataclasses import replace

    problems = tuple(replace(p, fix="run doctor with --python set to the interpreter or venv that runs flashinfer")
                     if p.code == "no-flashinfer" else p for p in diagnosis.problems)
    return replace(diagnosis, problems=problems)


def advice_for(args: argparse.Namespace, env: Environment) -> Advice:
    """Where the fixes' packages come from: pip's index for that environment, or conda for a conda env."""
    from repack.environment.doctor import Advice
    from repack.fetch.urlpolicy import redact
    from repack.pipconfig import PYPI

    prefix = _prefix_of(env)
    settings = index_settings(args, site_prefix=prefix)
    conda = prefix if prefix and os.path.isdir(os.path.join(prefix, "conda-meta")) and _by_conda(env) else None
    url = redact(settings.index_url)
    return Advice(index_url=url, index_is_pypi=url.rstrip("/") == PYPI.rstrip("/"), conda_prefix=conda)


def _prefix_of(env: Environment) -> str | None:
    site = env.interpreter.site_packages  # <prefix>/lib/pythonX.Y/site-packages
    return os.path.dirname(os.path.dirname(os.path.dirname(site))) if site else None


def _by_conda(env: Environment) -> bool:
    """flashinfer-python came from conda (its INSTALLER says so), so conda, not pip, should add to it."""
    import glob

    from repack.fs import NotRegularFileError, read_regular

    site = env.interpreter.site_packages or ""
    for installer in glob.glob(os.path.join(site, "flashinfer_python-*.dist-info", "INSTALLER")):
        try:
            return read_regular(Path(installer), 4096).decode("utf-8").strip() == "conda"
        except (OSError, UnicodeDecodeError, NotRegularFileError):
            return False
    return False


def print_diagnosis(env: Environment, diagnosis: Diagnosis) -> None:
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
