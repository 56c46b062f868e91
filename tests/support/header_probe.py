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

Like ``vllm_snippet.py``, it reports through ``run_report.py`` (connection
attempts, ``--fast-clock``, the JSON report).  Imports nothing of this project.
"""

import os

from run_report import RunReport

run = RunReport(specs=[])
os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "10.0a")
try:
    from flashinfer.jit import env as jit_env  # noqa: F401 - the report reads FLASHINFER_CUBIN_DIR from it
    from flashinfer.jit.moe_utils import gen_moe_utils_module
    from flashinfer.jit.fused_moe import gen_trtllm_gen_fused_moe_sm100_module

    run.mark_imported()
    for generate in (gen_moe_utils_module, gen_trtllm_gen_fused_moe_sm100_module):
        spec = generate()
        run.result["specs"].append(spec.name)
    run.result["ok"] = True
except BaseException as exc:  # noqa: BLE001 - the report carries it
    run.failed(exc)
run.finish()
