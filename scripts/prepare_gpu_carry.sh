#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh needs on an air-gapped GPU machine, where pip and PyPI work.
#
#   scripts/prepare_gpu_carry.sh [CARRY_DIR]     # from the repository root; CARRY_DIR default .carry
#
# CARRY_DIR/wheels       flashinfer-python 0.6.6 and apache-tvm-ffi for CPython 3.12 on manylinux x86-64
#                        (the GPU image's python; its torch, numpy, ... are used as they are)
# CARRY_DIR/artifactory  checksums.txt, the 17 BMM export headers and flashinferMetaInfo.h of 0.6.6 in
#                        artifactory layout (about 5.7 MB), read out of the flashinfer-cubin 0.6.6 wheel:
#                        $CUBIN_WHEEL if set, else the one on PyPI by HTTP range requests (~8 MB moved,
#                        not 268 MB).  Not verified here: `flashinfer-repack install` verifies them there.
# A CARRY_DIR inside the repository is added to .git/info/exclude, so that it travels only when carried.
set -euo pipefail
CARRY=${1:-.carry}
PY=${PYTHON:-python3}
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
mkdir -p "$CARRY/wheels" "$CARRY/artifactory"
if git rev-parse --git-dir >/dev/null 2>&1 && [[ "$(realpath "$CARRY")" == "$(git rev-parse --show-toplevel)"/* ]]; then
    entry="/$(realpath --relative-to="$(git rev-parse --show-toplevel)" "$CARRY")/"
    exclude="$(git rev-parse --git-dir)/info/exclude"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "$entry" "$exclude" 2>/dev/null || echo "$entry" >> "$exclude"
fi

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
    -d "$CARRY/wheels" "flashinfer-python==0.6.6" "apache-tvm-ffi>=0.1.6,<0.2,!=0.1.8,!=0.1.8.post0"

"$PY" - "$CARRY/artifactory" "${CUBIN_WHEEL:-}" <<'PY'
import sys
from pathlib import Path

from repack.fetch.cache import Cache
from repack.rules.plan import shipped_plan
from repack.fetch.sources import IndexWheel, WheelFile
from repack.fetch.transport import Transport

out, wheel = Path(sys.argv[1]), sys.argv[2]
plan = shipped_plan("0.6.6")
paths = ([plan.checksums_path] + [plan.source_path(h) for h in plan.headers]
         + [plan.artifact_path + "include/flashinferMetaInfo.h"])
source = WheelFile(Path(wheel)) if wheel else IndexWheel(Transport(), "https://pypi.org/simple/", "0.6.6", Cache(None))
for path, data in source.read(paths).items():
    dest = out / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
print(f"{len(paths)} files from {source.label} -> {out}")
PY
ls -l "$CARRY/wheels"
du -sh "$CARRY"
total=$(du -sb "$CARRY" | cut -f1)
[ "$total" -lt $((64 * 1024 * 1024)) ] || { echo "CARRY is $total bytes: over the 64 MiB a device call may carry"; exit 1; }
echo "ready: carry '$CARRY' and run: bash benchmarks/gpu_check.sh $CARRY"
