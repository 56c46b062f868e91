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
# CARRY_DIR/package      for the package route: a TRIMMED flashinfer_cubin-0.6.6 wheel (its __init__.py,
#                        _build_meta.py and metadata, and only the 19 files of the BMM artifact that the
#                        check touches, instead of 9,764 files and 268 MB; RECORD rewritten for them) and
#                        our flashinfer_cubin_headers-0.6.6 wheel, built here from those same files.
# A CARRY_DIR inside the repository is added to .git/info/exclude, so that it travels only when carried.
set -euo pipefail
CARRY=${1:-.carry}
PY=${PYTHON:-python3}
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
mkdir -p "$CARRY/wheels" "$CARRY/artifactory" "$CARRY/package"
if git rev-parse --git-dir >/dev/null 2>&1 && [[ "$(realpath "$CARRY")" == "$(git rev-parse --show-toplevel)"/* ]]; then
    entry="/$(realpath --relative-to="$(git rev-parse --show-toplevel)" "$CARRY")/"
    exclude="$(git rev-parse --git-dir)/info/exclude"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "$entry" "$exclude" 2>/dev/null || echo "$entry" >> "$exclude"
fi

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
    -d "$CARRY/wheels" "flashinfer-python==0.6.6" "apache-tvm-ffi>=0.1.6,<0.2,!=0.1.8,!=0.1.8.post0"

"$PY" - "$CARRY" "${CUBIN_WHEEL:-}" <<'PY'
import base64
import hashlib
import sys
import zipfile
from pathlib import Path

from repack.fetch.archive import LocalBytes, read_members
from repack.fetch.cache import Cache
from repack.fetch.sources import WHEEL_ROOT, HTTPBytes, IndexWheel, WheelFile
from repack.fetch.transport import Transport
from repack.rules.plan import shipped_plan

carry, wheel = Path(sys.argv[1]), sys.argv[2]
plan = shipped_plan("0.6.6")
paths = ([plan.checksums_path] + [plan.source_path(h) for h in plan.headers]
         + [plan.artifact_path + "include/flashinferMetaInfo.h"])
KEEP = ("flashinfer_cubin/__init__.py", "flashinfer_cubin/_build_meta.py", "flashinfer_cubin-0.6.6.dist-info/METADATA",
        "flashinfer_cubin-0.6.6.dist-info/WHEEL", "flashinfer_cubin-0.6.6.dist-info/top_level.txt")
if wheel:
    source, raw = WheelFile(Path(wheel)), LocalBytes(Path(wheel))
else:
    index = IndexWheel(Transport(), "https://pypi.org/simple/", "0.6.6", Cache(None))
    found = index.locate()
    source, raw = index, HTTPBytes(index.transport, found.url, found.size, found.filename)
files = source.read(paths)
for path, data in files.items():
    dest = carry / "artifactory" / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
print(f"{len(paths)} files from {source.label} -> {carry / 'artifactory'}")

# the trimmed flashinfer-cubin wheel: the package's own code and metadata, and only the BMM artifact
members = dict(read_members(raw, list(KEEP)))
members.update({WHEEL_ROOT + p: d for p, d in files.items()})
b64 = lambda d: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
record_name = "flashinfer_cubin-0.6.6.dist-info/RECORD"
members[record_name] = ("".join(f"{n},sha256={b64(d)},{len(d)}\n" for n, d in sorted(members.items()))
                        + f"{record_name},,\n").encode()
trimmed = carry / "package" / "flashinfer_cubin-0.6.6-py3-none-any.whl"
with zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, data in sorted(members.items(), key=lambda kv: kv[0] == record_name):
        zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
print(f"trimmed flashinfer-cubin: {len(members)} files, {trimmed.stat().st_size} bytes -> {trimmed}")
PY
"$PY" -m repack build 0.6.6 --from "$CARRY/artifactory" --offline --no-cache -o "$CARRY/package" -q
ls -l "$CARRY/wheels" "$CARRY/package"
du -sh "$CARRY"
total=$(du -sb "$CARRY" | cut -f1)
[ "$total" -lt $((64 * 1024 * 1024)) ] || { echo "CARRY is $total bytes: over the 64 MiB a device call may carry"; exit 1; }
echo "ready: carry '$CARRY' and run: bash benchmarks/gpu_check.sh $CARRY"
