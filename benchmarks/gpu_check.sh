#!/usr/bin/env bash
# The GPU check: on an air-gapped machine with a GPU, nvcc and torch, with only carried files
# (scripts/prepare_gpu_carry.sh makes them), two routes, nothing fetched:
#  1. install --target: flashinfer-python 0.6.6 without flashinfer-cubin generates its moe_utils JIT
#     spec and nvcc compiles moe_utils_binding.cu with the BMM export headers that
#     `flashinfer-repack install` placed;
#  2. the package route: a venv (with the image's torch) gets flashinfer-python 0.6.6, the trimmed
#     flashinfer-cubin 0.6.6 and our flashinfer-cubin-headers wheel with pip --no-index, and
#     `flashinfer-repack doctor --run` runs that environment's own header start-up code there
#     (both JIT-spec generators, every connection refused and counted).
#
#   bash benchmarks/gpu_check.sh [CARRY_DIR]        # from the repository root; CARRY_DIR default .carry
#
# CARRY_DIR holds wheels/ (flashinfer-python 0.6.6, apache-tvm-ffi) and artifactory/ (checksums.txt,
# the 17 headers and flashinferMetaInfo.h in artifactory layout, unverified: install verifies them).
# Needs on the machine: python3 with torch, numpy, einops, click, tabulate, nvidia-ml-py, ninja,
# packaging, requests, filelock, tqdm (flashinfer's light dependencies); nvcc on PATH or in CUDA_HOME.
# Set FULL_BUILD=1 to also build and load the whole moe_utils module.  Figures go to stdout and,
# when $OUT is set, to $OUT/gpu_check.json and $OUT/gpu_check.log.
set -uo pipefail
CARRY=${1:-.carry}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
LOG=${OUT:+$OUT/gpu_check.log}
exec > >(tee ${LOG:-/dev/null}) 2>&1
fail() { echo "GPU CHECK FAILED: $*"; exit 1; }
[ -d "$CARRY/wheels" ] && [ -d "$CARRY/artifactory" ] && [ -d "$CARRY/package" ] || fail "$CARRY/wheels, artifactory or package missing (run scripts/prepare_gpu_carry.sh where pip works)"
command -v nvcc >/dev/null || export PATH=${CUDA_HOME:-/usr/local/cuda}/bin:$PATH

echo "== machine"
nvidia-smi -L || echo "(no nvidia-smi)"
nvcc --version | tail -1 || fail "no nvcc"
"$PY" - <<'PY'
import socket
for host in ("pypi.org", "edge.urm.nvidia.com"):
    try:
        socket.create_connection((host, 443), timeout=3).close()
        print(f"network: {host}:443 reachable")
    except OSError as exc:
        print(f"network: {host}:443 unreachable ({type(exc).__name__})")
PY

echo "== carried wheels (pip --no-index)"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$CARRY"/wheels/*.whl \
    || fail "pip could not install the carried wheels"
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import importlib.metadata as m; print(*(f'{d} {m.version(d)}' for d in ('flashinfer-python', 'apache-tvm-ffi')), sep='; ')"
missing=$("$PY" -c "
import importlib.util as u
mods = 'torch numpy einops click tabulate pynvml ninja packaging requests filelock tqdm'.split()
print(' '.join(m for m in mods if u.find_spec(m) is None))")
[ -z "$missing" ] || fail "missing on this machine (carry them as wheels): $missing"
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('flashinfer_cubin') is not None)" \
    || fail "flashinfer-cubin is installed here: this check is about an environment without it"

echo "== flashinfer-repack install (offline, verified against flashinfer's pins)"
CUBINS="$WORK/cubins"
TIMEFORMAT='install took %R s'
time "$PY" -m repack install 0.6.6 --target "$CUBINS" --from "$CARRY/artifactory" --offline --no-cache \
    || fail "install"
export FLASHINFER_CUBIN_DIR="$CUBINS" FLASHINFER_WORKSPACE_BASE="$WORK/workspace"
export FLASHINFER_CUBINS_REPOSITORY=http://127.0.0.1:9/  # belt and braces: any download attempt fails fast

echo "== flashinfer-repack doctor"
"$PY" -m repack doctor --python "$(command -v "$PY")"
doctor=$?
echo "doctor exit code: $doctor"

echo "== flashinfer: JIT spec and nvcc"
"$PY" benchmarks/gpu_check.py --cubin-dir "$CUBINS" --report "$WORK/gpu_check.json" ${FULL_BUILD:+--full-build}
check=$?
[ -n "${OUT:-}" ] && cp "$WORK/gpu_check.json" "$OUT/gpu_check.json" 2>/dev/null

echo "== package route: flashinfer-python + trimmed flashinfer-cubin + flashinfer-cubin-headers, doctor --run"
unset FLASHINFER_CUBIN_DIR  # the installed flashinfer_cubin package decides, as for any pip user
export PYTHONPATH="$PWD"    # not the first route's site: pip must install flashinfer-python into the venv itself
VENV="$WORK/venv"
"$PY" -m venv --system-site-packages "$VENV" || fail "cannot make a venv"
# why: $PY may itself be a venv (the GPU image's is), whose packages (torch, filelock, ...) a nested venv's
# --system-site-packages does not see; a .pth file adds them, as a site's base image would provide them
"$PY" -c "import site; print(*site.getsitepackages(), sep='\n')" \
    > "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_base_image.pth"
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-cache-dir "$CARRY"/wheels/*.whl "$CARRY"/package/*.whl \
    || fail "pip could not install the carried wheels into the venv"
"$VENV/bin/python" -c "import importlib.metadata as m; print(*(f'{d} {m.version(d)}' for d in ('flashinfer-python', 'flashinfer-cubin', 'flashinfer-cubin-headers')), sep='; ')"
TIMEFORMAT='doctor --run took %R s'
time PYTHONPATH="$PWD" "$PY" -m repack doctor --python "$VENV/bin/python" --run --json > "$WORK/doctor_run.json"
run=$?
PYTHONPATH="$PWD" "$PY" -m repack doctor --python "$VENV/bin/python" --run
"$PY" - "$WORK/doctor_run.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
live = d["live"]
print(f"static verdict: {'offline' if d['static_ok'] else 'not offline'}; live: {live['summary']}")
print(f"live: step {live['step']}, {live['seconds']:.2f} s, calls {', '.join(c.rsplit(':', 1)[1] for c in live['calls'])}, "
      f"{len(live['connects'])} connects, {len(live['requests'])} requests, "
      f"{sum(w['where'] == 'site-packages' for w in live['writes'])} writes in site-packages")
PY
[ -n "${OUT:-}" ] && cp "$WORK/doctor_run.json" "$OUT/doctor_run.json" 2>/dev/null
[ "$doctor" -eq 0 ] || fail "doctor did not report a clean environment"
[ "$check" -eq 0 ] || fail "see above"
[ "$run" -eq 0 ] || fail "doctor --run: flashinfer did not start offline in the package route"
echo "GPU CHECK PASSED"
