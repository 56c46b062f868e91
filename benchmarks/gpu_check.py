"""On a GPU machine with no network: flashinfer generates the moe_utils JIT spec and nvcc compiles with our headers.

    python benchmarks/gpu_check.py --cubin-dir DIR [--report FILE] [--full-build]

Run by ``gpu_check.sh`` after ``flashinfer-repack install`` filled DIR (set as
FLASHINFER_CUBIN_DIR, with no flashinfer-cubin installed).  It times
``gen_moe_utils_module()`` (flashinfer's own header code: checksums.txt and the
17 BMM export headers read from DIR, nothing downloaded, every connection
attempt recorded by an audit hook), then compiles ``moe_utils_binding.cu``
with exactly the command flashinfer's JIT would use (``JitSpec.get_compile_commands``),
lists with ``nvcc -M`` which BMM export headers that compilation includes and
from where, and with ``--full-build`` builds the whole module with flashinfer's
ninja build and loads it.  Prints one line per figure and writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

connects: list[str] = []


def _audit(event, args):
    if event == "socket.connect":
        connects.append(repr(args[1]))


def compile_command(spec, source_name: str) -> tuple[list[str], str]:
    """flashinfer's own nvcc command line for one source of the spec, and its object file."""
    entry = next(e for e in spec.get_compile_commands() if e["file"].endswith("/" + source_name))
    argv = shlex.split(entry["command"])
    return argv, argv[argv.index("-o") + 1]


def included_headers(argv: list[str], under: str) -> list[str]:
    """The files under ``under`` that the compilation includes (nvcc -M, same flags, no output)."""
    out_at = argv.index("-o")
    deps_argv = [a for i, a in enumerate(argv) if a != "-c" and i not in (out_at, out_at + 1)] + ["-M"]
    deps = subprocess.run(deps_argv, capture_output=True, text=True, check=True).stdout
    paths = {p for p in deps.replace("\\\n", " ").split() if p.endswith(".h")}
    root = os.path.realpath(under)
    return sorted(os.path.relpath(os.path.realpath(p), root) for p in paths
                  if os.path.realpath(p).startswith(root + os.sep))


def nvcc(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc exited {done.returncode}: {done.stderr.strip()[-1500:]}")


def timed(label: str, report: dict, key: str, fn):
    started = time.perf_counter()
    value = fn()
    report[key] = round(time.perf_counter() - started, 3)
    print(f"{label:48} {report[key]:8.2f} s", flush=True)
    return value


def machine(report: dict) -> None:
    import torch

    report["python"] = sys.version.split()[0]
    report["torch"] = torch.__version__
    report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0))) if report["gpu"] else None
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True)
    report["nvcc"] = nvcc.stdout.strip().splitlines()[-1] if nvcc.returncode == 0 else None
    print(f"GPU {report['gpu']} (sm {report['capability']}), torch {report['torch']}, {report['nvcc']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cubin-dir", required=True, help="the FLASHINFER_CUBIN_DIR that install filled")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--full-build", action="store_true", help="also build and load the whole moe_utils module")
    args = parser.parse_args()
    os.environ["FLASHINFER_CUBIN_DIR"] = args.cubin_dir
    sys.addaudithook(_audit)
    report: dict = {"ok": False, "cubin_dir": args.cubin_dir}
    try:
        run(args, report)
        # offline, and the compilation really used the installed headers and produced code
        report["ok"] = not connects and bool(report["bmm_headers_included"]) and report["object_bytes"] > 0
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"FAILED: {report['error']}", file=sys.stderr)
    report["connects"] = connects
    print(f"{'connection attempts':48} {len(connects):8d}")
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0 if report["ok"] else 1


def run(args, report: dict) -> None:
    machine(report)
    jit_env = timed("import flashinfer", report, "import_seconds",
                    lambda: __import__("flashinfer.jit.env", fromlist=["env"]))
    report["flashinfer_cubin_dir"] = str(jit_env.FLASHINFER_CUBIN_DIR)
    from flashinfer.jit.moe_utils import gen_moe_utils_module

    spec = timed("gen_moe_utils_module() (JIT spec, headers)", report, "spec_seconds", gen_moe_utils_module)
    argv, obj = compile_command(spec, "moe_utils_binding.cu")
    os.makedirs(os.path.dirname(obj), exist_ok=True)
    bmm = [h for h in included_headers(argv, args.cubin_dir) if "trtllmGen_bmm_export" in h]
    report["bmm_headers_included"] = bmm
    print(f"{'BMM export headers included from the cubin dir':48} {len(bmm):8d}")
    report["gencode"] = [a for a in argv if a.startswith("-gencode")]
    print(f"{'target':48} {' '.join(report['gencode'])}")
    timed("nvcc moe_utils_binding.cu (flashinfer's command)", report, "compile_seconds", lambda: nvcc(argv))
    report["object_bytes"] = os.path.getsize(obj)
    print(f"{'object file':48} {report['object_bytes']:8d} B")
    if args.full_build:
        timed("whole moe_utils module: ninja build + load", report, "full_build_seconds", spec.build_and_load)


if __name__ == "__main__":
    sys.exit(main())
