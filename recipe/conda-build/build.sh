#!/bin/bash
# The build step of both recipes (rattler-build/recipe.yaml and conda-build/meta.yaml hold
# identical copies, so that each recipe folder is complete on its own; tests/test_recipe.py keeps them equal).
#
# flashinfer-repack, run from its own source (copied to $SRC_DIR/repack), fetches
# flashinfer-cubin's TRT-LLM BMM export headers, verifies every byte against the
# checksums that flashinfer-python $PKG_VERSION pins, and builds the headers wheel; its
# flashinfer_cubin/ tree (17 headers and the exact .artifact_hash marker, no __init__.py)
# is then copied into $SP_DIR.  Nothing unverified reaches the package.
#
# FLASHINFER_REPACK_FROM picks the source, as 'flashinfer-repack build --from' reads it:
# pypi (the default: the flashinfer-cubin wheel on PyPI, read by HTTP ranges, ~3 MB),
# index+URL (a mirror's simple index), a flashinfer-cubin wheel on disk, or a directory
# in artifactory layout; a local wheel or directory builds with no network at all.
set -euo pipefail
cd "${SRC_DIR}"
"${PYTHON}" -m repack build "${PKG_VERSION}" --format wheel -o "${SRC_DIR}/dist" \
    --from "${FLASHINFER_REPACK_FROM:-pypi}" --no-cache
"${PYTHON}" -m zipfile -e "${SRC_DIR}/dist/flashinfer_cubin_headers-${PKG_VERSION}-py3-none-any.whl" \
    "${SRC_DIR}/unpacked"
test ! -e "${SRC_DIR}/unpacked/flashinfer_cubin/__init__.py"
mkdir -p "${SP_DIR}"
cp -R "${SRC_DIR}/unpacked/flashinfer_cubin" "${SP_DIR}/"
