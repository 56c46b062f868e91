"""The step of vLLM's Dockerfile that fetches the BMM export headers, run as-is.

    python vllm_snippet.py [--fast-clock] [--report FILE]

``run_report.py`` beside it records every connection attempt, makes the
clock fast on request (the failing case then ends in a second instead of 35)
and writes the JSON report.  Runs inside a venv with the real flashinfer;
imports nothing of this project.
"""

from run_report import RunReport

run = RunReport()
try:
    # --- vLLM Dockerfile snippet, verbatim ---
    from flashinfer.jit import env as jit_env
    from flashinfer.jit.cubin_loader import download_trtllm_headers, get_cubin
    from flashinfer.artifacts import ArtifactPath, CheckSumHash
    run.mark_imported()
    download_trtllm_headers(
        'bmm',
        jit_env.FLASHINFER_CUBIN_DIR / 'flashinfer' / 'trtllm' / 'batched_gemm' / 'trtllmGen_bmm_export',
        f'{ArtifactPath.TRTLLM_GEN_BMM}/include/trtllmGen_bmm_export',
        ArtifactPath.TRTLLM_GEN_BMM,
        get_cubin(f'{ArtifactPath.TRTLLM_GEN_BMM}/checksums.txt', CheckSumHash.TRTLLM_GEN_BMM),
    )
    # --- end of snippet ---
    run.result["ok"] = True
except BaseException as exc:  # noqa: BLE001 - the report carries it
    run.failed(exc)
run.finish()
