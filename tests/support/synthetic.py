"""A synthetic flashinfer-python and flashinfer-cubin, made at test time, for the fast tier.

They have the SHAPE of the real 0.6.6 wheels, which this module copies (read from PyPI's
0.6.6 wheels): ``flashinfer/artifacts.py`` pins ``ArtifactPath.TRTLLM_GEN_BMM`` and
``CheckSumHash.TRTLLM_GEN_BMM``; ``flashinfer/jit/cubin_loader.py`` defines
``download_trtllm_headers`` with the 17-name 'bmm' list and the ``.artifact_hash`` marker;
``flashinfer/jit/fused_moe.py`` and ``flashinfer/jit/moe_utils.py`` call it with a
``FLASHINFER_CUBIN_DIR / "flashinfer" / ...`` destination; the cubin wheel holds
``flashinfer_cubin/cubins/<artifact>/{checksums.txt, include/flashinferMetaInfo.h,
include/trtllmGen_bmm_export/...}`` beside another artifact and a few ``.cubin`` files.

What differs is every byte that matters: a fake artifact path, fake header contents, and a
pin that is the sha256 of the synthetic ``checksums.txt``.  The versions are in no shipped
plan, so flashinfer-repack must derive the plan from the synthetic code, exactly as it would
for a FlashInfer release newer than itself.  ``FIXED`` has the shape of 0.6.8: it links the
headers from the artifact path and never calls ``download_trtllm_headers('bmm', ...)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path

from repack.rules.plan import Plan, derive_plan
from tests.support.tinywheel import make_wheel

VERSION = "0.6.6.post9"  # affected shape; no such release exists
FIXED = "0.6.8.post9"  # fixed shape (as 0.6.7.post1 and later)
ARTIFACT = "5e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e7e/batched_gemm-5a5a5a5-0c0c0c0/"
GEMM_ARTIFACT = "6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f/gemm-1a1a1a1-2b2b2b2/"
HEADER_DIR = "include/trtllmGen_bmm_export"
DEST = "flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"
REQUIRES_PYTHON = "<4.0,>=3.10"
# the 'bmm' list of flashinfer 0.6.6's download_trtllm_headers, in its order
HEADERS = (
    "BatchedGemmEnums.h", "BatchedGemmInterface.h", "BatchedGemmOptions.h", "Enums.h",
    "GemmGatedActOptions.h", "GemmOptions.h", "KernelParams.h", "KernelParamsDecl.h", "KernelTraits.h",
    "TmaDescriptor.h", "trtllm/gen/CommonUtils.h", "trtllm/gen/CudaArchDecl.h",
    "trtllm/gen/CudaKernelLauncher.h", "trtllm/gen/DtypeDecl.h", "trtllm/gen/MmaDecl.h",
    "trtllm/gen/SfLayoutDecl.h", "trtllm/gen/SparsityDecl.h",
)
CUBINS = tuple(f"Bmm_Bfloat16_synthetic_t128x128x64_s{i}_sm100f.cubin" for i in range(4))


def header_bytes(name: str) -> bytes:
    """Fake, deterministic C++ of a few kB; sizes differ so that spans and offsets differ too."""
    guard = name.replace("/", "_").replace(".", "_").upper()
    body = "".join(f"constexpr int k{guard}_{i} = {i * 7919 % 10007};\n" for i in range(8 + 2 * len(name)))
    return (f"// synthetic {name}: not NVIDIA's header, made by flashinfer-repack's tests\n"
            f"#pragma once\n#ifndef {guard}\n#define {guard}\nenum class {guard}_KIND {{ A, B }};\n"
            f"{body}#endif\n").encode()


def meta_info_bytes() -> bytes:
    return b"// synthetic flashinferMetaInfo.h\n#pragma once\nstatic const char* tllmGenBatchedGemmList[] = {};\n"


def cubin_bytes(name: str) -> bytes:
    """2 MiB that do not compress, as cubins: the headers are a small part of a large wheel, so
    tests can tell reading by ranges from downloading the whole wheel."""
    return random.Random(name).randbytes(2 << 20)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksums_bytes() -> bytes:
    """``<sha256>  <relative path>`` lines as in the real file: cubins first, then the includes."""
    lines = [f"{_sha(cubin_bytes(c))}  {c}" for c in CUBINS]
    lines.append(f"{_sha(meta_info_bytes())}  include/flashinferMetaInfo.h")
    lines += [f"{_sha(header_bytes(h))}  {HEADER_DIR}/{h}" for h in HEADERS]
    return ("\n".join(lines) + "\n").encode()


def checksums_sha256() -> str:
    return _sha(checksums_bytes())


# -- flashinfer-python: the code flashinfer-repack reads -----------------------------------------

_ARTIFACTS = '''"""Synthetic flashinfer/artifacts.py, in the shape of flashinfer 0.6.6's."""
from dataclasses import dataclass


def safe_urljoin(base, path):
    return base.rstrip("/") + "/" + path.lstrip("/")


@dataclass(frozen=True)
class ArtifactPath:
    TRTLLM_GEN_FMHA: str = "f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1/fmha/trtllm-gen/"
    TRTLLM_GEN_BMM: str = (
        "{artifact}"
    )
    TRTLLM_GEN_GEMM: str = (
        "{gemm}"
    )


class CheckSumHash:
    TRTLLM_GEN_FMHA: str = (
        "{zeros}"
    )
    TRTLLM_GEN_BMM: str = (
        "{pin}"
    )
    map_checksums: dict[str, str] = {{
        safe_urljoin(ArtifactPath.TRTLLM_GEN_BMM, "checksums.txt"): TRTLLM_GEN_BMM,
    }}
'''

_LOADER = '''"""Synthetic flashinfer/jit/cubin_loader.py: download_trtllm_headers as in flashinfer 0.6.6."""
import hashlib
import os
import pathlib
from typing import Union

FLASHINFER_CUBINS_REPOSITORY = os.environ.get("FLASHINFER_CUBINS_REPOSITORY", "http://127.0.0.1:9/")


def get_meta_hash(checksums_bytes: bytes, target_file: str = "flashinferMetaInfo.h") -> str:
    for line in checksums_bytes.decode("utf-8").splitlines():
        sha256, filename = line.strip().split()
        if filename.lower() == target_file.lower() or filename.lower().endswith("/" + target_file.lower()):
            return sha256
    raise ValueError("Invalid checksums.txt, no flashinferMetaInfo.h found")


def get_file(uri_path: str, file_hash: str, file_path: str) -> bytes:
    path = pathlib.Path(file_path)
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == file_hash:
        return path.read_bytes()
    return b""


def get_cubin(name: str, sha256: str) -> bytes:
    return b""


def write_if_different(path: pathlib.Path, content: str) -> None:
    if not path.exists() or path.read_text() != content:
        path.write_text(content)


def download_trtllm_headers(
    op: str,
    header_dest_dir: Union[str, pathlib.Path],
    header_path: str,
    artifact_path: str,
    checksum: bytes,
):
    header_dest_dir = pathlib.Path(header_dest_dir)

    if op == "bmm":
        header_files = [
{bmm_list}
        ]

    else:
        header_files = [
            "GemmInterface.h",
            "GemmOptions.h",
            "Enums.h",
        ]

    artifact_hash_path = header_dest_dir / ".artifact_hash"
    if artifact_hash_path.exists():
        with open(artifact_hash_path, "r") as f:
            cached_hash = f.read().strip()
        if cached_hash != artifact_path:
            raise RuntimeError("Detected inconsistent cached artifacts.")

    for file in header_files:
        uri_path = f"{{header_path}}/{{file}}"
        file_hash = get_meta_hash(checksum, file)
        file_path = str(header_dest_dir / file)
        result = get_file(uri_path, file_hash, file_path)
        assert result, f"{{file}} not found"

    write_if_different(artifact_hash_path, artifact_path)
'''

_FUSED_MOE = '''"""Synthetic flashinfer/jit/fused_moe.py: the caller of flashinfer 0.6.6, trimmed."""
from . import env as jit_env
from ..artifacts import ArtifactPath, CheckSumHash
from .cubin_loader import get_cubin, get_meta_hash, download_trtllm_headers


def gen_trtllm_gen_fused_moe_sm100_module():
    include_path = f"{ArtifactPath.TRTLLM_GEN_BMM}/include"
    header_name = "flashinferMetaInfo"
    checksum_path = f"{ArtifactPath.TRTLLM_GEN_BMM}/checksums.txt"
    checksum = get_cubin(checksum_path, CheckSumHash.TRTLLM_GEN_BMM)
    assert checksum, f"Failed to get checksums.txt from {checksum_path}"
    metainfo = get_cubin(f"{include_path}/{header_name}.h", get_meta_hash(checksum))
    assert metainfo, f"{header_name}.h not found"

    header_path = f"{include_path}/trtllmGen_bmm_export"
    header_dest_dir = (
        jit_env.FLASHINFER_CUBIN_DIR
        / "flashinfer"
        / "trtllm"
        / "batched_gemm"
        / "trtllmGen_bmm_export"
    )

    download_trtllm_headers(
        "bmm", header_dest_dir, header_path, ArtifactPath.TRTLLM_GEN_BMM, checksum
    )
'''

_MOE_UTILS = '''"""Synthetic flashinfer/jit/moe_utils.py: the caller of flashinfer 0.6.6, trimmed."""
from . import env as jit_env


def gen_moe_utils_module():
    from .cubin_loader import download_trtllm_headers, get_cubin
    from ..artifacts import ArtifactPath, CheckSumHash

    download_trtllm_headers(
        "bmm",
        jit_env.FLASHINFER_CUBIN_DIR
        / "flashinfer"
        / "trtllm"
        / "batched_gemm"
        / "trtllmGen_bmm_export",
        f"{ArtifactPath.TRTLLM_GEN_BMM}/include/trtllmGen_bmm_export",
        ArtifactPath.TRTLLM_GEN_BMM,
        get_cubin(
            f"{ArtifactPath.TRTLLM_GEN_BMM}/checksums.txt", CheckSumHash.TRTLLM_GEN_BMM
        ),
    )
'''

# 0.6.8's shape: the headers are linked from flashinfer-cubin's artifact path, never downloaded
_ENSURE_SYMLINK = """

def ensure_symlink(link, target):
    if not link.exists():
        link.symlink_to(target)
"""

_FIXED_MOE_UTILS = '''"""Synthetic flashinfer/jit/moe_utils.py in the shape of flashinfer 0.6.8 (fixed)."""
from . import env as jit_env


def gen_moe_utils_module():
    from .cubin_loader import ensure_symlink

    from ..artifacts import ArtifactPath

    ensure_symlink(
        jit_env.FLASHINFER_CUBIN_DIR / "flashinfer" / "trtllm" / "batched_gemm" / "trtllmGen_bmm_export",
        jit_env.FLASHINFER_CUBIN_DIR / ArtifactPath.TRTLLM_GEN_BMM / "include" / "trtllmGen_bmm_export",
    )
'''

_ENV = '''"""Synthetic flashinfer/jit/env.py: FLASHINFER_CUBIN_DIR as 0.6.0-0.6.15 resolve it (0.6.6's shape)."""
import importlib.util
import os
import pathlib

flashinfer_version = "{version}"


def has_flashinfer_cubin() -> bool:
    return importlib.util.find_spec("flashinfer_cubin") is not None


FLASHINFER_BASE_DIR = pathlib.Path(os.getenv("FLASHINFER_WORKSPACE_BASE", pathlib.Path.home().as_posix()))
FLASHINFER_CACHE_DIR = FLASHINFER_BASE_DIR / ".cache" / "flashinfer"


def _get_cubin_dir():
    if has_flashinfer_cubin():
        import flashinfer_cubin

        flashinfer_cubin_version = flashinfer_cubin.__version__
        if (
            not os.getenv("FLASHINFER_DISABLE_VERSION_CHECK")
            and flashinfer_version != flashinfer_cubin_version
        ):
            raise RuntimeError("flashinfer-cubin version does not match flashinfer version")
        return pathlib.Path(flashinfer_cubin.get_cubin_dir())
    env_dir = os.getenv("FLASHINFER_CUBIN_DIR")
    if env_dir:
        return pathlib.Path(env_dir)
    return FLASHINFER_CACHE_DIR / "cubins"


FLASHINFER_CUBIN_DIR = _get_cubin_dir()
'''


def python_files(version: str) -> dict[str, bytes]:
    """The members of the synthetic flashinfer-python ``version`` (affected unless it is FIXED)."""
    bmm_list = "\n".join(f'            "{h}",' for h in HEADERS)
    files = {
        # the real wheel is 8 MB of kernels' sources around a few modules that the plan is read from
        "flashinfer/data/csrc/synthetic_kernels.bin": random.Random(version).randbytes(1 << 20),
        "flashinfer/__init__.py": f'__version__ = "{version}"\n'.encode(),
        "flashinfer/artifacts.py": _ARTIFACTS.format(artifact=ARTIFACT, gemm=GEMM_ARTIFACT, zeros="0" * 64,
                                                     pin=checksums_sha256()).encode(),
        "flashinfer/jit/__init__.py": b"",
        "flashinfer/jit/env.py": _ENV.replace("{version}", version).encode(),
        "flashinfer/jit/cubin_loader.py": (_LOADER.format(bmm_list=bmm_list)
                                           + (_ENSURE_SYMLINK if version == FIXED else "")).encode(),
    }
    if version == FIXED:
        files["flashinfer/jit/moe_utils.py"] = _FIXED_MOE_UTILS.encode()
        headers = "\n".join(f'    "{h}",' for h in HEADERS)
        files["flashinfer/jit/fused_moe.py"] = f"BMM_EXPORT_HEADERS = [\n{headers}\n]\n".encode()
    else:
        files["flashinfer/jit/fused_moe.py"] = _FUSED_MOE.encode()
        files["flashinfer/jit/moe_utils.py"] = _MOE_UTILS.encode()
    return files


def cubin_files(version: str) -> dict[str, bytes]:
    """The members of the synthetic flashinfer-cubin ``version``: two artifacts, as the real wheel has."""
    root, art = "flashinfer_cubin/", f"flashinfer_cubin/cubins/{ARTIFACT}"
    files = {
        root + "__init__.py": b"from pathlib import Path\n\nfrom ._build_meta import __version__\n\n"
                              b'CUBIN_DIR = Path(__file__).parent / "cubins"\n',
        root + "_build_meta.py": f'__version__ = "{version}"\n__git_version__ = "synthetic"\n'.encode(),
        f"flashinfer_cubin/cubins/{GEMM_ARTIFACT}checksums.txt": f"{_sha(b'gemm')}  Gemm_synthetic.cubin\n".encode(),
        f"flashinfer_cubin/cubins/{GEMM_ARTIFACT}Gemm_synthetic.cubin": b"gemm",
    }
    files.update({art + c: cubin_bytes(c) for c in CUBINS})
    files[art + "checksums.txt"] = checksums_bytes()
    files[art + "include/flashinferMetaInfo.h"] = meta_info_bytes()
    files.update({f"{art}{HEADER_DIR}/{h}": header_bytes(h) for h in HEADERS})
    return files


def python_wheel(out_dir: Path, version: str = VERSION) -> Path:
    return make_wheel(out_dir, "flashinfer-python", version, requires_python=REQUIRES_PYTHON,
                      requires=("numpy", "packaging>=24.2", "requests"), files=python_files(version))


def cubin_wheel(out_dir: Path, version: str = VERSION) -> Path:
    return make_wheel(out_dir, "flashinfer-cubin", version, files=cubin_files(version))


def plan(version: str = VERSION) -> Plan:
    """The plan flashinfer-repack derives from the synthetic code, with every header's sha256 added
    (as the shipped plans have them)."""
    files = python_files(version)
    sources = {k: v.decode() for k, v in files.items() if k.endswith(".py")}
    derived = derive_plan(version, sources, f"Requires-Python: {REQUIRES_PYTHON}\n")
    if not derived.needed:
        return derived
    return dataclasses.replace(derived, header_sha256={h: _sha(header_bytes(h)) for h in HEADERS})


def artifactory_tree(dest: Path) -> Path:
    """``<artifact>/checksums.txt``, ``include/flashinferMetaInfo.h`` and the 17 headers under ``dest``."""
    prefix = "flashinfer_cubin/cubins/"
    for name, data in cubin_files(VERSION).items():
        if name.startswith(prefix + ARTIFACT) and not name.endswith(".cubin"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return dest
