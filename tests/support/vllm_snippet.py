"""The step of vLLM's Dockerfile that fetches the BMM export headers, verbatim.

Run inside a venv with the real flashinfer by the library's live check
(``repack/environment/live_probe.py --script``), which imports flashinfer
first, then runs this, recording every connection attempt and file written.
Imports nothing of this project.
"""

# --- vLLM Dockerfile snippet, verbatim ---
from flashinfer.artifacts import ArtifactPath, CheckSumHash
from flashinfer.jit import env as jit_env
from flashinfer.jit.cubin_loader import download_trtllm_headers, get_cubin

download_trtllm_headers(
    'bmm',
    jit_env.FLASHINFER_CUBIN_DIR / 'flashinfer' / 'trtllm' / 'batched_gemm' / 'trtllmGen_bmm_export',
    f'{ArtifactPath.TRTLLM_GEN_BMM}/include/trtllmGen_bmm_export',
    ArtifactPath.TRTLLM_GEN_BMM,
    get_cubin(f'{ArtifactPath.TRTLLM_GEN_BMM}/checksums.txt', CheckSumHash.TRTLLM_GEN_BMM),
)
# --- end of snippet ---
