"""flashinfer's own header code, run as-is: generate the fused-MoE JIT specs.

    python header_probe.py [--fast-clock] [--report FILE]

Every flashinfer-python version touches the TRT-LLM BMM headers while it
generates these JIT specs: 0.6.5-0.6.7 through ``download_trtllm_headers``
(what vLLM's snippet calls), 0.6.7.post1 and later through ``get_artifact`` +
``ensure_symlink`` + ``verify_symlinked_headers``, and all of them read
``checksums.txt`` and ``flashinferMetaInfo.h``.  So this calls the public
generators, ``gen_moe_utils_module()`` and
``gen_trtllm_gen_fused_moe_sm100_module()``, of whatever version is installed.
No GPU is needed: the target architecture comes from FLASHINFER_CUDA_ARCH_LIST
(default here 10.0a, the one both generators accept).

Like ``vllm_snippet.py``: an audit hook records every connection attempt,
``--fast-clock`` makes time.sleep a no-op (flashinfer's retry backoff), and
the JSON report says ok, error, seconds and connects.  Imports nothing of this
project.
"""

import json
import os
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
os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "10.0a")

result = {"ok": False, "error": None, "specs": []}
started = time.perf_counter()
try:
    from flashinfer.jit import env as jit_env  # noqa: F401 - the report reads FLASHINFER_CUBIN_DIR from it
    from flashinfer.jit.moe_utils import gen_moe_utils_module
    from flashinfer.jit.fused_moe import gen_trtllm_gen_fused_moe_sm100_module

    imported = time.perf_counter()
    for generate in (gen_moe_utils_module, gen_trtllm_gen_fused_moe_sm100_module):
        spec = generate()
        result["specs"].append(spec.name)
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
