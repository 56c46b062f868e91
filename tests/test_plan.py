"""Plans derived from the real flashinfer-python wheels, checked against the real flashinfer-cubin wheels.

The derivation reads flashinfer-python's code statically; the shipped plans
must agree with it, and every hash they ship must be what flashinfer's own
``get_meta_hash`` (taken from the real wheel, not re-implemented) picks out of
the real ``checksums.txt``, and the sha256 of the real header bytes.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from repack.rules.plan import shipped_plan, shipped_versions
from repack.rules.resolve import plan_from_wheel
from tests.conftest import AFFECTED
from tests.support.servers import CUBIN_ROOT

#: version -> (needs a package, words of the reason)
WHEELS = {
    "0.6.4": (False, "does not look for them"),
    "0.6.5": (True, "calls download_trtllm_headers('bmm', ...)"),
    "0.6.6": (True, "calls download_trtllm_headers('bmm', ...)"),
    "0.6.7": (True, "calls download_trtllm_headers('bmm', ...)"),
    "0.6.7.post3": (False, "links them from flashinfer-cubin's artifact path"),
    "0.6.8": (False, "links them from flashinfer-cubin's artifact path"),
}


@pytest.mark.real
@pytest.mark.parametrize("version", WHEELS)
def test_derived_plan_of_each_real_wheel(version, python_wheel):
    needed, words = WHEELS[version]
    derived = plan_from_wheel(python_wheel(version))

    assert (derived.version, derived.needed) == (version, needed)
    assert words in derived.reason
    shipped = shipped_plan(version)
    if not needed:
        assert shipped is None
        return
    assert shipped.differences(derived) == []
    assert derived.header_sha256 == {}  # hashes come from the checksums file, never from the code
    assert len(derived.headers) == 17 and derived.marker_name == ".artifact_hash"
    assert derived.requires_python == "<4.0,>=3.10"


def test_shipped_versions_are_exactly_the_needed_ones():
    assert set(shipped_versions()) == {v for v, (needed, _) in WHEELS.items() if needed} == set(AFFECTED)


def flashinfer_function(wheel: Path, module: str, name: str):
    """A top-level function of the real flashinfer-python wheel, compiled alone (it needs no imports)."""
    with zipfile.ZipFile(wheel) as zf:
        tree = ast.parse(zf.read(module), filename=module)
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace: dict = {}
    exec(compile(ast.Module(body=[func], type_ignores=[]), module, "exec"), namespace)
    return namespace[name]


@pytest.mark.real
@pytest.mark.parametrize("version", AFFECTED)
def test_shipped_hashes_are_the_real_files_and_flashinfers_own_choice(version, cubin_wheel, python_wheel):
    plan = shipped_plan(version)
    get_meta_hash = flashinfer_function(python_wheel(version), "flashinfer/jit/cubin_loader.py", "get_meta_hash")
    with zipfile.ZipFile(cubin_wheel(version)) as zf:
        checksums = zf.read(CUBIN_ROOT + plan.checksums_path)
        real = {h: hashlib.sha256(zf.read(CUBIN_ROOT + plan.source_path(h))).hexdigest() for h in plan.headers}

    assert hashlib.sha256(checksums).hexdigest() == plan.checksums_sha256
    assert set(plan.header_sha256) == set(plan.headers)
    for header in plan.headers:
        assert plan.header_sha256[header] == get_meta_hash(checksums, header) == real[header], header
    assert plan.marker_bytes == plan.artifact_path.encode() and len(plan.marker_bytes) == 70


@pytest.mark.real
def test_flashinfers_rule_is_not_a_substring_match(cubin_wheel, python_wheel):
    """Why the rule matters: Enums.h must not take BatchedGemmEnums.h's line (the control for the test above)."""
    plan = shipped_plan("0.6.6")
    get_meta_hash = flashinfer_function(python_wheel("0.6.6"), "flashinfer/jit/cubin_loader.py", "get_meta_hash")
    with zipfile.ZipFile(cubin_wheel("0.6.6")) as zf:
        checksums = zf.read(CUBIN_ROOT + plan.checksums_path)
    assert get_meta_hash(checksums, "Enums.h") != get_meta_hash(checksums, "BatchedGemmEnums.h")
    assert plan.header_sha256["Enums.h"] != plan.header_sha256["BatchedGemmEnums.h"]


# -- the plan command -------------------------------------------------------------------------

@pytest.fixture
def python_index(file_server, python_wheel) -> str:
    return file_server.serve_project("flashinfer-python", [python_wheel("0.6.6"), python_wheel("0.6.8")])


def plan_json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.real
def test_plan_from_the_index_reads_a_little_and_agrees(run_cli, python_index, file_server, python_wheel):
    report = plan_json(run_cli("plan", "0.6.6", "--json", "--index-url", python_index, "--retries", "0"))
    shipped = shipped_plan("0.6.6")

    assert report["ok"] and report["agrees_with_shipped"] and report["differences"] == []
    assert report["plan"] == shipped.to_json()  # hashes filled in from the shipped plan
    assert report["plan"]["marker_size"] == 70
    assert report["transfer"] == {"requests": file_server.requests(), "bytes": file_server.bytes_sent()}
    assert file_server.bytes_sent("/files/*") < python_wheel("0.6.6").stat().st_size / 4


def test_plan_shipped_uses_no_network(run_cli, tmp_path):
    from tests.support.envs import closed_port

    dead = f"http://127.0.0.1:{closed_port()}/simple/"
    report = plan_json(run_cli("plan", "0.6.6", "--shipped", "--json", "--index-url", dead))
    assert report["origin"] == "shipped with flashinfer-repack"
    assert report["plan"] == shipped_plan("0.6.6").to_json()
    assert "transfer" not in report


@pytest.mark.real
def test_plan_python_wheel_text_and_json(run_cli, python_wheel):
    wheel = str(python_wheel("0.6.6"))
    report = plan_json(run_cli("plan", "0.6.6", "--python-wheel", wheel, "--json"))
    assert report["agrees_with_shipped"] is True and report["origin"] == wheel

    text = run_cli("plan", "0.6.6", "--python-wheel", wheel)
    assert text.returncode == 0, text.stderr
    assert "needs a supplementary package: yes" in text.stdout and "shipped plan: agrees" in text.stdout
    for header, digest in shipped_plan("0.6.6").header_sha256.items():
        assert f"{header:32} {digest}" in text.stdout


@pytest.mark.real
def test_plan_for_an_unaffected_version_says_not_needed_and_why(run_cli, python_wheel, python_index):
    text = run_cli("plan", "0.6.8", "--python-wheel", str(python_wheel("0.6.8")))
    assert text.returncode == 0, text.stderr
    assert "needs a supplementary package: no" in text.stdout
    assert "never calls download_trtllm_headers('bmm', ...)" in text.stdout
    assert "links them from flashinfer-cubin's artifact path" in text.stdout

    report = plan_json(run_cli("plan", "0.6.8", "--json", "--index-url", python_index, "--retries", "0"))
    assert report["plan"]["needed"] is False and report["shipped"] is False
    assert report["agrees_with_shipped"] is None


@pytest.mark.real
def test_plan_reports_a_disagreement_with_the_shipped_plan(run_cli, python_wheel, tmp_path):
    """A flashinfer-python 0.6.6 whose pinned checksum differs: plan must say so and exit 1."""
    real = python_wheel("0.6.6")
    shipped = shipped_plan("0.6.6")
    altered = tmp_path / real.name
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(altered, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename == "flashinfer/artifacts.py" or info.filename.startswith("flashinfer/jit/") \
                    or info.filename.endswith(".dist-info/METADATA"):
                data = src.read(info)
                if info.filename == "flashinfer/artifacts.py":
                    assert data.count(shipped.checksums_sha256.encode()) == 1
                    data = data.replace(shipped.checksums_sha256.encode(), b"f" * 64)
                out.writestr(info, data)
    result = run_cli("plan", "0.6.6", "--python-wheel", str(altered), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["agrees_with_shipped"] is False
    assert report["differences"] == [f"checksums_sha256: {shipped.checksums_sha256!r} != {'f' * 64!r}"]
    assert dataclasses.replace(shipped, checksums_sha256="f" * 64).differences(plan_from_wheel(altered)) == []


@pytest.mark.real
def test_plan_of_a_wheel_of_another_version_is_a_usage_error(run_cli, python_wheel):
    result = run_cli("plan", "0.6.6", "--python-wheel", str(python_wheel("0.6.8")))
    assert result.returncode == 2
    assert "is flashinfer-python 0.6.8, not 0.6.6" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.network
def test_plan_against_real_pypi_agrees_with_the_shipped_plan(run_cli):
    pypi = {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": ""}  # the default index, not the tests' own
    result = run_cli("plan", "0.6.6", "--json", "--retries", "2", "--no-cache", env=pypi)
    report = plan_json(result)
    assert report["origin"] == "flashinfer-python 0.6.6 on https://pypi.org/simple/"
    assert report["agrees_with_shipped"] is True and report["differences"] == []
    assert 0 < report["transfer"]["bytes"] < 2_000_000  # ranges, not the 7.8 MB wheel
