"""The one reader of flashinfer's code: each ordinary refactor is read right or refused, never silently wrong.

Two kinds of test: small snippets of source (fast, no wheel) that exercise one shape each, and
flashinfer-python wheels made at test time from the real 0.6.6 wheel with its code reshaped, run
through ``plan``, ``doctor`` and ``build``.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from repack.errors import PlanError
from repack.rules.plan import derive_plan, shipped_plan
from repack.rules.scope import CannotTellError

PLAN = shipped_plan("0.6.6")
ART = PLAN.artifact_path
SHA = PLAN.checksums_sha256

# -- a miniature flashinfer with the real shapes -------------------------------------------------

LOADER = '''
import pathlib
from .utils import write_if_different
from .env import FLASHINFER_CUBIN_DIR

def get_meta_hash(checksum, name="flashinferMetaInfo.h"):
    return "x"

def get_file(uri_path, sha256, file_path):
    return b"x"

def get_cubin(file_name, sha256, session=None):
    return b"x"

def download_trtllm_headers(op, header_dest_dir, header_path, artifact_path, checksum):
    header_dest_dir = pathlib.Path(header_dest_dir)
    if op == "bmm":
        header_files = HEADERS
    else:
        header_files = ["GemmInterface.h"]
    artifact_hash_path = header_dest_dir / ".artifact_hash"
    if artifact_hash_path.exists():
        with open(artifact_hash_path, "r") as f:
            cached_hash = f.read().strip()
        if cached_hash != artifact_path:
            raise RuntimeError("inconsistent")
    for file in header_files:
        uri_path = f"{header_path}/{file}"
        file_hash = get_meta_hash(checksum, file)
        file_path = str(header_dest_dir / file)
        result = get_file(uri_path, file_hash, file_path)
        assert result, f"{file} not found"
    write_if_different(artifact_hash_path, MARKER)
'''

ENV = '''
import os, pathlib
def has_flashinfer_cubin():
    return False
def _get_cubin_dir():
    if has_flashinfer_cubin():
        import flashinfer_cubin
        if not os.getenv("FLASHINFER_DISABLE_VERSION_CHECK") and "a" != flashinfer_cubin.__version__:
            raise RuntimeError("mismatch")
        return pathlib.Path(flashinfer_cubin.get_cubin_dir())
    env_dir = os.getenv("FLASHINFER_CUBIN_DIR")
    if env_dir:
        return pathlib.Path(env_dir)
    return pathlib.Path("/x")
FLASHINFER_CUBIN_DIR = _get_cubin_dir()
'''

ARTIFACTS = f'''
class ArtifactPath:
    TRTLLM_GEN_BMM: str = "{ART}"

class CheckSumHash:
    TRTLLM_GEN_BMM: str = "{SHA}"
'''

CALLER = '''
from . import env as jit_env
from .cubin_loader import get_cubin, download_trtllm_headers

def gen_module():
    from ..artifacts import ArtifactPath, CheckSumHash
    download_trtllm_headers(
        "bmm",
        jit_env.FLASHINFER_CUBIN_DIR / "flashinfer" / "trtllm" / "batched_gemm" / "trtllmGen_bmm_export",
        f"{ArtifactPath.TRTLLM_GEN_BMM}/include/trtllmGen_bmm_export",
        ArtifactPath.TRTLLM_GEN_BMM,
        get_cubin(f"{ArtifactPath.TRTLLM_GEN_BMM}/checksums.txt", CheckSumHash.TRTLLM_GEN_BMM),
    )
'''

HEADERS = repr(list(PLAN.headers))


def tree(caller: str = CALLER, headers: str = HEADERS, marker: str = "artifact_path", loader: str = LOADER,
         **extra: str) -> dict[str, str]:
    files = {
        "flashinfer/__init__.py": "",
        "flashinfer/artifacts.py": ARTIFACTS,
        "flashinfer/jit/__init__.py": "",
        "flashinfer/jit/env.py": ENV,
        "flashinfer/jit/utils.py": "def write_if_different(path, content):\n    pass\n",
        "flashinfer/jit/cubin_loader.py": loader.replace("HEADERS", headers).replace("MARKER", marker),
        "flashinfer/jit/moe.py": caller,
    }
    files.update(extra)
    return files


def read(files: dict[str, str]):
    return derive_plan("0.6.6", files, "Requires-Python: <4.0,>=3.10\n")


def agrees(plan) -> None:
    assert plan.needed and plan.mode == "download"
    assert PLAN.differences(plan) == [], PLAN.differences(plan)


def cannot_tell(files: dict[str, str], where: str, words: str) -> CannotTellError:
    with pytest.raises(CannotTellError) as info:
        read(files)
    err = info.value
    assert f"{err.file}:{err.line}".startswith(where), str(err)
    assert words in str(err), str(err)
    assert isinstance(err, PlanError) and str(err).startswith("cannot tell what this flashinfer needs: ")
    return err


# -- read right ------------------------------------------------------------------------------------

def test_the_real_shape_in_miniature_agrees_with_the_shipped_plan():
    agrees(read(tree()))


def test_no_downloader_at_all_is_not_needed_with_the_reason():
    files = tree(caller="x = 1\n")
    del files["flashinfer/jit/cubin_loader.py"]
    plan = read(files)
    assert (plan.needed, plan.mode) == (False, "none")
    assert "never calls download_trtllm_headers('bmm', ...)" in plan.reason


def test_a_downloader_nothing_calls_is_not_needed():
    assert read(tree(caller="x = 1\n")).needed is False


@pytest.mark.parametrize("caller", [
    CALLER.replace("get_cubin, download_trtllm_headers", "get_cubin, download_trtllm_headers as dl")
          .replace("    download_trtllm_headers(", "    dl("),
    CALLER.replace("from .cubin_loader import get_cubin, download_trtllm_headers",
                   "from . import cubin_loader as cl\nfrom .cubin_loader import get_cubin")
          .replace("    download_trtllm_headers(", "    cl.download_trtllm_headers("),
    CALLER.replace("from .cubin_loader import get_cubin, download_trtllm_headers",
                   "import flashinfer.jit.cubin_loader\nfrom flashinfer.jit.cubin_loader import get_cubin")
          .replace("    download_trtllm_headers(", "    flashinfer.jit.cubin_loader.download_trtllm_headers("),
], ids=["from-import-as", "module-alias", "absolute-module"])
def test_import_aliases_are_followed(caller):
    agrees(read(tree(caller=caller)))


def test_a_re_export_under_another_name_in_a_package_init_is_followed():
    caller = CALLER.replace("from .cubin_loader import get_cubin, download_trtllm_headers",
                            "from flashinfer.jit import fetch\nfrom .cubin_loader import get_cubin") \
                   .replace("    download_trtllm_headers(", "    fetch(")
    init = "from .cubin_loader import download_trtllm_headers as fetch\n"
    agrees(read(tree(caller=caller, **{"flashinfer/jit/__init__.py": init})))


def test_a_caller_in_a_method_of_a_class():
    method = CALLER.replace("def gen_module():", "class Gen:\n  def module(self):").replace("\n    ", "\n      ")
    agrees(read(tree(caller=method)))


def test_keyword_arguments_in_any_order():
    caller = '''
from . import env as jit_env
from .cubin_loader import get_cubin, download_trtllm_headers
from ..artifacts import ArtifactPath, CheckSumHash

def gen_module():
    sums = get_cubin(sha256=CheckSumHash.TRTLLM_GEN_BMM, file_name=ArtifactPath.TRTLLM_GEN_BMM + "checksums.txt")
    download_trtllm_headers(checksum=sums, artifact_path=ArtifactPath.TRTLLM_GEN_BMM, op="bmm",
                            header_path=ArtifactPath.TRTLLM_GEN_BMM + "include/trtllmGen_bmm_export",
                            header_dest_dir=jit_env.FLASHINFER_CUBIN_DIR / "flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export")
'''
    agrees(read(tree(caller=caller)))


def test_a_renamed_wrapper_outside_jit_is_followed_through_its_callers():
    wrapper = '''
from .cubin_loader import download_trtllm_headers as _dl

def fetch_bmm_headers(dest, artifact, sums):
    _dl("bmm", dest, f"{artifact}/include/trtllmGen_bmm_export", artifact, sums)
'''
    caller = '''
from ..jit import env as jit_env
from ..jit.wrap import fetch_bmm_headers
from ..jit.cubin_loader import get_cubin
from ..artifacts import ArtifactPath as AP, CheckSumHash

def setup():
    fetch_bmm_headers(jit_env.FLASHINFER_CUBIN_DIR / "flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export",
                      AP.TRTLLM_GEN_BMM, sums=get_cubin(f"{AP.TRTLLM_GEN_BMM}checksums.txt", CheckSumHash.TRTLLM_GEN_BMM))
'''
    agrees(read(tree(caller="x = 1\n", **{"flashinfer/jit/wrap.py": wrapper, "flashinfer/fused_moe/core.py": caller})))


def test_constants_moved_to_another_module_and_lists_built_with_star_and_plus():
    consts = f'BMM = "{ART[:20]}" + "{ART[20:]}"\nSUMS = "{SHA}"\nCOMMON = {list(PLAN.headers[3:10])!r}\n'
    artifacts = "from .consts import BMM, SUMS\nclass ArtifactPath:\n    TRTLLM_GEN_BMM = BMM\n" \
                "class CheckSumHash:\n    TRTLLM_GEN_BMM = SUMS\n"
    headers = f"[*{list(PLAN.headers[:3])!r}, *COMMON] + {list(PLAN.headers[10:])!r}"
    loader = "from ..consts import COMMON\n" + LOADER
    plan = read(tree(headers=headers, loader=loader,
                     **{"flashinfer/consts.py": consts, "flashinfer/artifacts.py": artifacts}))
    agrees(plan)
    assert len(plan.headers) == 17


def test_the_marker_content_is_what_the_downloader_writes():
    plan = read(tree(marker='artifact_path + "\\n"'))  # written with a newline, compared stripped
    assert plan.marker_bytes == ART.encode() + b"\n"
    assert PLAN.differences(plan) == [f"marker_content: {ART!r} != {ART + chr(10)!r}"]


def test_the_checksum_comes_from_the_call_not_from_a_constant_name():
    caller = CALLER.replace("CheckSumHash.TRTLLM_GEN_BMM)", "CheckSumHash.OTHER)")
    artifacts = ARTIFACTS + f'    OTHER: str = "{"e" * 64}"\n'
    plan = read(tree(caller=caller, **{"flashinfer/artifacts.py": artifacts}))
    assert plan.checksums_sha256 == "e" * 64


def test_the_cubin_dir_rules_come_from_env_py():
    plan = read(tree())
    assert (plan.cubin_env_first, plan.cubin_mismatch, plan.cubin_skips_unknown) == (False, "import-fails", False)
    later = ENV.replace('    if has_flashinfer_cubin():\n        import flashinfer_cubin\n        if not os.getenv'
                        '("FLASHINFER_DISABLE_VERSION_CHECK") and "a" != flashinfer_cubin.__version__:\n'
                        '            raise RuntimeError("mismatch")\n        return pathlib.Path(flashinfer_cubin.'
                        'get_cubin_dir())\n', "")
    later = later.replace("    return pathlib.Path(\"/x\")", '''    if has_flashinfer_cubin():
        try:
            _check("0.0.0+unknown")
        except RuntimeError:
            pass
        else:
            return pathlib.Path("/pkg")
    return pathlib.Path("/x")''') + "def _check(v):\n    raise RuntimeError(v)\n"
    plan = read(tree(**{"flashinfer/jit/env.py": later}))
    assert (plan.cubin_env_first, plan.cubin_mismatch, plan.cubin_skips_unknown) == (True, "package-ignored", True)


# -- refused, naming file and line ----------------------------------------------------------------

def test_a_reference_that_is_not_a_call_cannot_be_told():
    caller = CALLER + "\nHOOKS = [download_trtllm_headers]\n"
    cannot_tell(tree(caller=caller), "flashinfer/jit/moe.py:15", "refers to download_trtllm_headers without calling")


@pytest.mark.parametrize("line", ["dl = download_trtllm_headers",
                                  "f = functools.partial(download_trtllm_headers, 'bmm')"])
def test_an_alias_made_by_assignment_or_partial_cannot_be_told(line):
    caller = "import functools\nfrom .cubin_loader import download_trtllm_headers\n" + line + "\n"
    cannot_tell(tree(caller=caller), "flashinfer/jit/moe.py:3", "without calling it")


def test_a_call_for_another_op_cannot_be_told():
    cannot_tell(tree(caller=CALLER.replace('"bmm",', '"gemm",')), "flashinfer/jit/moe.py:7", "only 'bmm' is modelled")


def test_a_lookup_by_string_cannot_be_told():
    caller = "from . import cubin_loader\nf = getattr(cubin_loader, 'download_trtllm_headers')\n"
    cannot_tell(tree(caller=caller), "flashinfer/jit/moe.py:2", "a lookup by name")


def test_an_argument_that_is_not_a_constant_cannot_be_told():
    caller = CALLER.replace('"bmm",', 'os.environ["OP"],').replace("from . import", "import os\nfrom . import")
    cannot_tell(tree(caller=caller), "flashinfer/jit/moe.py:", "is not a value this reader evaluates")


def test_a_wrapper_nobody_calls_visibly_cannot_be_told():
    wrapper = "from .cubin_loader import download_trtllm_headers\n\ndef fetch(*a):\n" \
              "    download_trtllm_headers(*a)\n"
    cannot_tell(tree(caller="x = 1\n", **{"flashinfer/jit/wrap.py": wrapper}), "flashinfer/jit/wrap.py:4",
                "passes *args")


def test_a_list_with_an_unknown_part_cannot_be_told():
    cannot_tell(tree(headers="[*EXTRA, 'Enums.h']"), "flashinfer/jit/cubin_loader.py:",
                "does not resolve to one constant")


def test_a_marker_that_cannot_read_back_cannot_be_told():
    cannot_tell(tree(marker="header_path"), "flashinfer/jit/moe.py:", "flashinfer would refuse its own marker")


def test_a_downloader_of_another_shape_cannot_be_told_when_called():
    loader = LOADER.replace('if op == "bmm":', 'if op in ("bmm",):')
    cannot_tell(tree(loader=loader), "flashinfer/jit/cubin_loader.py:", "no `if <op> == 'bmm':` branch")


def test_a_star_import_of_the_loader_cannot_be_told():
    caller = "import os\nfrom .cubin_loader import *\n"  # the module never spells the downloader's name
    cannot_tell(tree(caller=caller), "flashinfer/jit/moe.py:2", "star import")


def test_a_header_path_that_leaves_the_cubin_dir_cannot_be_told():
    caller = CALLER.replace('/ "flashinfer" / "trtllm"', '/ ".." / "trtllm"')
    cannot_tell(tree(caller=caller), "flashinfer/jit/moe.py:", "does not stay under FLASHINFER_CUBIN_DIR")


# -- synthetic wheels made from the real 0.6.6 one -------------------------------------------------

def reshape(real: Path, dest: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """A copy of the real wheel's code and METADATA with ``edits`` (path -> [(old, new)]), each applied once."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / real.name
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in src.infolist():
            if not (info.filename.endswith(".py") or info.filename.endswith(".dist-info/METADATA")):
                continue
            data = src.read(info)
            for old, new in edits.get(info.filename, []):
                text = data.decode()
                assert text.count(old) == 1, (info.filename, old)
                data = text.replace(old, new).encode()
            zf.writestr(info, data)
    return out


FUSED = "flashinfer/jit/fused_moe.py"
MOE_UTILS = "flashinfer/jit/moe_utils.py"
LOADER_PY = "flashinfer/jit/cubin_loader.py"
ALIAS = [("from .cubin_loader import download_trtllm_headers, get_cubin\n",
          "from .cubin_loader import download_trtllm_headers as dl, get_cubin\n"),
         ("    download_trtllm_headers(\n        \"bmm\",\n", "    dl(\n        \"bmm\",\n")]
KEYWORDS = [("    download_trtllm_headers(\n        \"bmm\", header_dest_dir, header_path, ArtifactPath.TRTLLM_GEN_BMM, "
             "checksum\n    )",
             "    download_trtllm_headers(\n        checksum=checksum, op=\"bmm\", header_dest_dir=header_dest_dir, "
             "header_path=header_path, artifact_path=ArtifactPath.TRTLLM_GEN_BMM\n    )")]
STAR = [('        header_files = [\n            "BatchedGemmEnums.h",\n            "BatchedGemmInterface.h",\n',
         "        header_files = [\n            *_FIRST,\n")]
FIRST = [("def download_trtllm_headers(",
          '_FIRST = ["BatchedGemmEnums.h"] + ["BatchedGemmInterface.h"]\n\n\ndef download_trtllm_headers(')]


@pytest.mark.real
def test_the_real_wheel_reshaped_with_an_alias_and_keywords_agrees(python_wheel, tmp_path):
    from repack.rules.resolve import plan_from_wheel

    wheel = reshape(python_wheel("0.6.6"), tmp_path, {MOE_UTILS: ALIAS, FUSED: KEYWORDS})
    assert PLAN.differences(plan_from_wheel(wheel)) == []


@pytest.mark.real
def test_the_real_wheel_with_a_header_list_built_with_star(python_wheel, tmp_path):
    from repack.rules.resolve import plan_from_wheel

    undefined = reshape(python_wheel("0.6.6"), tmp_path / "a", {LOADER_PY: STAR})
    with pytest.raises(CannotTellError) as caught:  # _FIRST is defined nowhere
        plan_from_wheel(undefined)
    err = caught.value
    assert err.file == LOADER_PY and "_FIRST" in err.what

    defined = reshape(python_wheel("0.6.6"), tmp_path / "b", {LOADER_PY: STAR + FIRST})
    plan = plan_from_wheel(defined)
    assert PLAN.differences(plan) == [] and len(plan.headers) == 17


@pytest.fixture
def hooked_wheel(python_wheel, tmp_path) -> Path:
    """The real 0.6.6 wheel with one reference to the downloader that is not a call (in moe_utils.py)."""
    hook = [("def gen_moe_utils_module() -> JitSpec:",
             "def gen_moe_utils_module() -> JitSpec:\n    _hook = download_trtllm_headers")]
    return reshape(python_wheel("0.6.6"), tmp_path / "hooked", {MOE_UTILS: hook})


@pytest.mark.real
def test_plan_cli_exits_1_with_cannot_tell_on_a_reshaped_wheel(run_cli, hooked_wheel):
    result = run_cli("plan", "0.6.6", "--python-wheel", str(hooked_wheel))
    assert result.returncode == 1
    assert re.search(r"cannot tell what this flashinfer needs: flashinfer/jit/moe_utils\.py:\d+: refers to "
                     r"download_trtllm_headers without calling it", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.real
def test_doctor_says_unknown_and_exits_1_on_a_reshaped_install(run_cli, hooked_wheel, tmp_path):
    prefix = tmp_path / "prefix"
    site = prefix / "lib" / "python3.11" / "site-packages"
    (prefix / "conda-meta").mkdir(parents=True)
    site.mkdir(parents=True)
    with zipfile.ZipFile(hooked_wheel) as zf:
        zf.extractall(site)
    result = run_cli("doctor", "--prefix", str(prefix))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[unknown]" in result.stdout and "verdict: unknown" in result.stdout
    assert "will start with no network" not in result.stdout
    report = json.loads(run_cli("doctor", "--prefix", str(prefix), "--json").stdout)
    assert report["ok"] is False and report["verdict"] == "unknown"
    assert [p["code"] for p in report["problems"]] == ["unknown"]


@pytest.mark.real
def test_build_refuses_when_the_code_at_hand_cannot_be_told(run_cli, hooked_wheel, tmp_path, file_server,
                                                             small_cubin_wheel):
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel("0.6.6")])
    index = file_server.serve_project("flashinfer-python", [hooked_wheel])
    out = tmp_path / "out"
    result = run_cli("build", "0.6.6", "-o", str(out), "--no-cache", "--from", "index+" + index,
                     "--index-url", index, "--retries", "0", "--timeout", "5")
    assert result.returncode == 1, result.stderr
    assert "cannot tell what this flashinfer needs: flashinfer/jit/moe_utils.py:" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.real
def test_build_refuses_when_the_shipped_plan_disagrees_with_the_code(run_cli, python_wheel, tmp_path, file_server,
                                                                      small_cubin_wheel):
    """The code is that of 0.6.6 with a 16-header list: an edited table or code, either way no wheel."""
    edits = {LOADER_PY: [('            "trtllm/gen/SparsityDecl.h",\n        ]\n\n    else', "        ]\n\n    else")]}
    wheel = reshape(python_wheel("0.6.6"), tmp_path / "w", edits)
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel("0.6.6")])
    index = file_server.serve_project("flashinfer-python", [wheel])
    out = tmp_path / "out"
    result = run_cli("build", "0.6.6", "-o", str(out), "--no-cache", "--from", "index",
                     "--index-url", index, "--retries", "0", "--timeout", "5")
    assert result.returncode == 1, result.stderr
    assert "the plan shipped for flashinfer 0.6.6 disagrees with its code" in result.stderr
    assert "headers:" in result.stderr


@pytest.mark.real
def test_build_from_a_local_wheel_offline_says_the_plan_was_not_checked(run_cli, small_cubin_wheel, tmp_path):
    out = tmp_path / "out"
    result = run_cli("build", "0.6.6", "-o", str(out), "--no-cache", "--offline", "--from",
                     str(small_cubin_wheel("0.6.6")))
    assert result.returncode == 0, result.stderr
    assert "plan shipped with flashinfer-repack, NOT checked against flashinfer-python's code" in result.stdout
    report = json.loads(run_cli("build", "0.6.6", "-o", str(out), "--no-cache", "--offline", "--json", "--from",
                                str(small_cubin_wheel("0.6.6"))).stdout)
    assert report["plan_checked"] is False and "NOT checked" in report["plan_check"]


@pytest.mark.real
def test_build_against_an_index_with_the_code_says_it_was_checked(run_cli, python_wheel, small_cubin_wheel,
                                                                   tmp_path, file_server):
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel("0.6.6")])
    index = file_server.serve_project("flashinfer-python", [python_wheel("0.6.6")])
    result = run_cli("build", "0.6.6", "-o", str(tmp_path / "out"), "--no-cache", "--json", "--from",
                     "index+" + index, "--index-url", index, "--retries", "0", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["plan_checked"] is True and index in report["plan_check"]
