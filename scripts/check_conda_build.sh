#!/bin/bash
# Build recipe/conda-build/meta.yaml with the real conda-build, offline, and install and remove the
# result with the real conda; then the same for the bundle's channel.  One line per step.
#
#   scripts/check_conda_build.sh CONDA_SRC CONDA_BUILD_SRC
#
# CONDA_SRC and CONDA_BUILD_SRC are source trees of conda and conda-build (neither is on PyPI), e.g.
#   git --git-dir=.../conda.git archive HEAD | tar -x -C /tmp/conda
# Nothing is fetched from a conda channel: the local channel holds a `python` package made from this
# machine's interpreter (a `python -m venv --copies` tree), packaging/requests and their requirements
# converted from PyPI wheels by flashinfer-repack itself, flashinfer-repack's own wheel converted the
# same way, flashinfer-python/-cubin converted from their wheels, and stand-ins for flashinfer-python's
# other requirements (pytorch, numpy...: no conda-forge here).  conda-build uses the rattler solver
# (its classic solver cannot solve a host environment offline: conda/conda-build#5516), and every
# conda run gets a fresh package cache (offline conda indexes a reused cache as a channel).
#
# Environment: WORK (scratch directory; default: a new temporary one), FLASHINFER_VERSION (0.6.6),
# WHEELS (a directory holding flashinfer_python-V and flashinfer_cubin-V wheels; default: the tests'
# store), CONDA_VERSION (the version the source trees are given, default 26.7.1).
set -euo pipefail

if [ $# -ne 2 ] || [ ! -f "$1/pyproject.toml" ] || [ ! -f "$2/pyproject.toml" ]; then
    echo "usage: $0 CONDA_SRC CONDA_BUILD_SRC   (source trees of conda and conda-build)" >&2
    exit 2
fi
CONDA_SRC=$(cd "$1" && pwd)
CONDA_BUILD_SRC=$(cd "$2" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${FLASHINFER_VERSION:-0.6.6}
WHEELS=${WHEELS:-$HOME/.cache/flashinfer-repack-tests/wheels}
WORK=${WORK:-$(mktemp -d -t check-conda-build.XXXXXX)}
mkdir -p "$WORK/logs"
PY_WHEEL="$WHEELS/flashinfer_python-$VERSION-py3-none-any.whl"
CUBIN_WHEEL="$WHEELS/flashinfer_cubin-$VERSION-py3-none-any.whl"
VENV="$WORK/venv"
CHANNEL="$WORK/channel"
N=0

# step NAME CMD...: run CMD with its output in logs/NN.log; one line: the step, ok/FAILED, seconds.
step() {
    local name=$1; shift
    N=$((N + 1))
    local log; log=$(printf '%s/logs/%02d.log' "$WORK" "$N")
    local t0=$SECONDS rc=0
    # in the background, not in an `if`: bash ignores set -e inside a function called as a condition
    ( "$@" ) >"$log" 2>&1 &
    wait $! || rc=$?
    if [ "$rc" -eq 0 ]; then
        printf '%02d %-66s ok    %4ds\n' "$N" "$name" $((SECONDS - t0))
    else
        printf '%02d %-66s FAILED %3ds  (log: %s)\n' "$N" "$name" $((SECONDS - t0)) "$log"
        tail -n 25 "$log" | sed 's/^/   | /'
        exit 1
    fi
}

with_condarc() {  # a conda tool with this check's condarc and a fresh package cache per call
    local pkgs; pkgs=$(mktemp -d "$WORK/pkgs.XXXXXX")
    CONDARC="$WORK/condarc.yml" CONDA_PKGS_DIRS="$pkgs" CONDA_ENVS_PATH="$WORK/envs" "$@"
}
# `python -m conda`: the pip-installed `conda` script refuses every command until `conda init`
conda_env() { with_condarc "$VENV/bin/python" -m conda "$@"; }

make_venv() {
    if [ -f "$VENV/.complete" ]; then echo "reusing $VENV"; return 0; fi  # WORK of an earlier run
    python3 -m venv "$VENV"
    SETUPTOOLS_SCM_PRETEND_VERSION=${CONDA_VERSION:-26.7.1} \
        "$VENV/bin/pip" install -q --no-deps "$CONDA_SRC" "$CONDA_BUILD_SRC"
    # conda's and conda-build's PyPI requirements (menuinst: Windows/macOS only), conda-index, the rattler
    # solver, py-rattler-build (conda-build imports it without declaring it), and this project
    "$VENV/bin/pip" install -q archspec 'backports.zstd>=1.3.0' boltons charset-normalizer \
        'conda-package-handling>=2.2' distro 'frozendict>=2.4.2' 'msgpack>=1.1.1' packaging platformdirs pluggy \
        pycosat requests 'ruamel.yaml<0.20' setuptools tqdm truststore beautifulsoup4 chardet filelock jinja2 \
        jsonschema libarchive-c pkginfo psutil pyyaml 'evalidate>=2,<3' conda-index conda-rattler-solver \
        py-rattler-build "$ROOT"
    "$VENV/bin/conda" --version && "$VENV/bin/conda-build" --version && touch "$VENV/.complete"
}

write_condarc() {
    cat >"$WORK/condarc.yml" <<EOF
channels: [file://$CHANNEL]
offline: true
solver: rattler
always_yes: true
auto_update_conda: false
notify_outdated_conda: false
conda_build:
  root-dir: $WORK/croot
EOF
}

install_checkout() {  # every run: this checkout as it is now (a reused venv holds an older one)
    "$VENV/bin/pip" install -q --no-deps --force-reinstall "$ROOT"
}

fetch_pure_wheels() {  # the build's host requirements, pure wheels only (they become noarch: python)
    "$VENV/bin/pip" download -q --only-binary=:all: --platform any --implementation py \
        --python-version "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        -d "$WORK/wheels" packaging requests pip  # conda makes python depend on pip
    "$VENV/bin/pip" wheel -q --no-deps -w "$WORK/wheels" "$ROOT"
    ls "$WORK/wheels"
}

make_channel() {
    if [ -f "$CHANNEL/.complete" ]; then echo "reusing $CHANNEL"; return 0; fi
    rm -rf "$CHANNEL" "$WORK/made"
    "$VENV/bin/python" "$ROOT/scripts/check_conda_build_channel.py" "$WORK" "$CHANNEL" "$PY_WHEEL" "$CUBIN_WHEEL" \
        "$WORK"/wheels/*.whl
    touch "$CHANNEL/.complete"
}

build_meta_yaml() {
    rm -rf "$WORK/conda-build-out" "$WORK/croot"
    FLASHINFER_REPACK_FROM="$CUBIN_WHEEL" with_condarc "$VENV/bin/conda-build" "$ROOT/recipe/conda-build" --override-channels \
        -c "file://$CHANNEL" --output-folder "$WORK/conda-build-out" --croot "$WORK/croot" --no-anaconda-upload
    ls "$WORK"/conda-build-out/noarch/flashinfer-cubin-headers-"$VERSION"-*
}

build_recipe_yaml() {
    FLASHINFER_REPACK_FROM="$CUBIN_WHEEL" "$VENV/bin/python" - "$ROOT/recipe/rattler-build/recipe.yaml" \
        "$WORK/rattler-build-out" "file://$CHANNEL" <<'EOF'
import sys
from pathlib import Path
from rattler_build import Stage0Recipe
recipe, out, channel = sys.argv[1:]
for result in Stage0Recipe.from_file(Path(recipe)).run_build(output_dir=Path(out), channels=[channel], no_build_id=True):
    print(*result.packages)
EOF
}

built() { ls "$WORK"/"$1"/noarch/flashinfer-cubin-headers-"$VERSION"-*."${2:-conda}" 2>/dev/null | head -n 1; }

compare_outputs() {  # conda-build's, rattler-build's and flashinfer-repack build's own
    rm -rf "$WORK/cli-out"
    "$VENV/bin/flashinfer-repack" build "$VERSION" --format conda -o "$WORK/cli-out/noarch" --from "$CUBIN_WHEEL" \
        --no-cache -q
    "$VENV/bin/python" "$ROOT/scripts/check_conda_build_channel.py" --compare \
        "$(built conda-build-out conda)" "$(built rattler-build-out)" "$(built cli-out)"
}

install_and_remove() {  # the package built by conda-build, with both flashinfer packages named
    local env="$WORK/envs/built" pkg
    pkg=$(built conda-build-out conda)
    "$VENV/bin/python" -m conda_index "$WORK/conda-build-out" >/dev/null
    conda_env create -p "$env" --override-channels -c "file://$WORK/conda-build-out" -c "file://$CHANNEL" \
        "flashinfer-cubin-headers=$VERSION" "flashinfer-python=$VERSION" "flashinfer-cubin=$VERSION"
    conda_env list -p "$env" | grep -E "^(flashinfer|python )"
    local site; site=$(ls -d "$env"/lib/python3.*/site-packages)
    test -f "$site/flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export/BatchedGemmEnums.h"
    test -f "$site/flashinfer_cubin/__init__.py"  # flashinfer-cubin's, untouched
    conda_env remove -p "$env" flashinfer-cubin-headers
    test ! -e "$site/flashinfer_cubin/cubins/flashinfer"
    conda_env list -p "$env" | grep -E "^flashinfer-(python|cubin) " | wc -l | grep -qx 2
    echo "left: $(conda_env list -p "$env" | grep -E '^flashinfer-' | cut -d' ' -f1 | paste -sd' '), $(basename "$pkg") removed"
}

publish_into_conda_index() {  # a channel conda-index manages: every index file it wrote stays true
    local ch="$WORK/indexed" pkg
    pkg=$(built cli-out)
    rm -rf "$ch" && cp -r "$CHANNEL" "$ch"
    "$VENV/bin/python" -m conda_index --channeldata --rss --bz2 --zst --run-exports --current-repodata "$ch"
    ls "$ch" "$ch/noarch" | grep -E 'json|html|xml|zst|bz2' | sort -u | paste -sd' '
    "$VENV/bin/flashinfer-repack" publish --channel "$ch" "$pkg"
    # conda reads current_repodata.json(.zst) first: the new package must be found through it
    conda_env search --override-channels -c "file://$ch" --repodata-fn current_repodata.json \
        "flashinfer-cubin-headers=$VERSION" | grep -F "flashinfer-cubin-headers"
    conda_env create -p "$WORK/envs/indexed" --dry-run --override-channels -c "file://$ch" \
        "flashinfer-python=$VERSION" "flashinfer-cubin=$VERSION" "flashinfer-cubin-headers=$VERSION" \
        | grep -F "flashinfer-cubin-headers"
}

make_bundle() {  # bundle reads an index: a static simple tree of the local wheels, served on 127.0.0.1
    "$VENV/bin/flashinfer-repack" publish --simple "$WORK/simple" "$PY_WHEEL" "$CUBIN_WHEEL"
    "$VENV/bin/python" -m http.server 0 --bind 127.0.0.1 --directory "$WORK/simple" >"$WORK/http.log" 2>&1 &
    local pid=$! port=""
    for _ in $(seq 50); do
        port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$WORK/http.log" | head -n 1)
        [ -n "$port" ] && break
        sleep 0.1
    done
    local rc=0
    "$VENV/bin/flashinfer-repack" bundle "$VERSION" -o "$WORK/bundle" --index-url "http://127.0.0.1:$port/" || rc=$?
    kill "$pid"
    return $rc
}

install_bundle_and_remove() {  # README.txt's conda line, with the stand-ins' channel for conda-forge
    local env="$WORK/envs/bundle" site
    conda_env create -p "$env" --override-channels -c "file://$WORK/bundle/conda" -c "file://$CHANNEL" \
        "flashinfer-python=$VERSION" "flashinfer-cubin=$VERSION" "flashinfer-cubin-headers=$VERSION"
    site=$(ls -d "$env"/lib/python3.*/site-packages)
    test -f "$site/flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export/.artifact_hash"
    "$VENV/bin/flashinfer-repack" doctor --prefix "$env"  # exit 0: starts offline; names the conda package
    conda_env remove -p "$env" flashinfer-cubin-headers
    conda_env list -p "$env" | grep -E "^flashinfer-(python|cubin) " | wc -l | grep -qx 2
    test -f "$site/flashinfer_cubin/__init__.py" && test ! -e "$site/flashinfer_cubin/cubins/flashinfer"
    echo "left: $(conda_env list -p "$env" | grep -E '^flashinfer-' | cut -d' ' -f1 | paste -sd' ')"
}

echo "check_conda_build: flashinfer $VERSION, work directory $WORK"
step "scratch venv: conda + conda-build from source, rattler solver" make_venv
step "conda $("$VENV/bin/conda" --version | cut -d' ' -f2), conda-build $("$VENV/bin/conda-build" --version | cut -d' ' -f2)" true
step "flashinfer-repack from this checkout into the venv" install_checkout
step "pure wheels of the host requirements and flashinfer-repack" fetch_pure_wheels
step "local channel: python from this interpreter, converted wheels" make_channel
write_condarc
step "conda build recipe/conda-build (offline, its tests included)" build_meta_yaml
step "rattler-build recipe/rattler-build (offline, its tests included)" build_recipe_yaml
step "compare the two recipes' packages file by file" compare_outputs
sed 's/^/   /' "$WORK/logs/$(printf %02d $N).log"
step "conda create with the built package; conda remove it" install_and_remove
sed 's/^/   /' "$WORK/logs/$(printf %02d $N).log" | tail -n 1
step "conda-index a channel, publish into it, conda searches and solves it" publish_into_conda_index
sed 's/^/   /' "$WORK/logs/$(printf %02d $N).log" | grep -E 'removed|json|flashinfer-cubin-headers' | cut -c1-160
step "flashinfer-repack bundle $VERSION (from a local index)" make_bundle
step "conda create from the bundle's channel, all three; remove headers" install_bundle_and_remove
sed 's/^/   /' "$WORK/logs/$(printf %02d $N).log" | grep -E 'left:|conda package|offline' | cut -c1-160 || true
echo "check_conda_build: all steps passed"
