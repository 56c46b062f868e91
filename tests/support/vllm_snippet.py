"""The step of vLLM's Dockerfile that fetches the BMM export headers, run as-is.

    python vllm_snippet.py [--fast-clock] [--report FILE]

An audit hook records every socket connection attempt; ``--fast-clock``
replaces time.sleep (flashinfer's retry backoff) with a no-op so that the
failing case ends in a second instead of 35.  The report (JSON) says whether
the snippet succeeded, its error, its time and the connection attempts.
Runs inside a venv with the real flashinfer; imports nothing of this project.
"""

import json
import sys
import time
import traceback

connects = []


def _audit(event, args):
    if event == "socket.connect":
        connects.append(repr(args[1]))


sys.addaudithook(_audit)
if "--fast-clock" in sys.argv:
    time.sleep = lambda seconds: None
report = sys.argv[sys.argv.index("--report") + 1] if "--report" in sys.argv else None

result = {"ok": False, "error": None}
started = time.perf_counter()
try:
    # --- vLLM Dockerfile snippet, verbatim ---
    from flashinfer.jit import env as jit_env
    from flashinfer.jit.cubin_loader import download_trtllm_headers, get_cubin
    from flashinfer.artifacts import ArtifactPath, CheckSumHash
    imported = time.perf_counter()
    download_trtllm_headers(
        'bmm',
        jit_env.FLASHINFER_CUBIN_DIR / 'flashinfer' / 'trtllm' / 'batched_gemm' / 'trtllmGen_bmm_export',
        f'{ArtifactPath.TRTLLM_GEN_BMM}/include/trtllmGen_bmm_export',
        ArtifactPath.TRTLLM_GEN_BMM,
        get_cubin(f'{ArtifactPath.TRTLLM_GEN_BMM}/checksums.txt', CheckSumHash.TRTLLM_GEN_BMM),
    )
    # --- end of snippet ---
    result["ok"] = True
except BaseException as exc:  # noqa: BLE001 - the report carries it
    result["error"] = f"{type(exc).__name__}: {exc}"
    result["traceback"] = traceback.format_exc()[-2000:]
    imported = locals().get("imported", time.perf_counter())
finished = time.perf_counter()
result.update(seconds=finished - started, snippet_seconds=finished - imported, connects=connects,
              cubin_dir=str(getattr(sys.modules.get("flashinfer.jit.env"), "FLASHINFER_CUBIN_DIR", "")))
text = json.dumps(result)
if report:
    with open(report, "w") as fh:
        fh.write(text)
else:
    print(text)
sys.exit(0 if result["ok"] else 1)
