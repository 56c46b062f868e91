"""The synthetic flashinfer that the fast tier builds from is what it claims: a version with no shipped
plan, whose plan flashinfer-repack derives from its code, in the shape of the real 0.6.6 wheels."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile

import pytest

from repack.rules.plan import shipped_plan
from repack.rules.resolve import plan_from_wheel
from tests.support import synthetic

SHAPE = ("needed", "header_dir", "headers", "dest_dir", "marker_name", "requires_python")
LINE = re.compile(r"[0-9a-f]{64}  \S+")


def test_the_synthetic_versions_have_no_shipped_plan():
    assert shipped_plan(synthetic.VERSION) is None and shipped_plan(synthetic.FIXED) is None


def test_build_derives_the_plan_from_the_synthetic_code_on_the_default_index(run_cli, plan_server):
    report = json.loads(run_cli("plan", synthetic.VERSION, "--json").stdout)
    assert report["origin"] == f"flashinfer-python {synthetic.VERSION} on {plan_server.index_url}"
    assert report["shipped"] is False
    expected = synthetic.plan().to_json() | {"header_sha256": {}}  # a derived plan knows no header hashes
    assert report["plan"] == expected
    assert plan_server.requests("/files/flashinfer_python-*") > 0


def test_the_fixed_shape_needs_no_package(run_cli):
    result = run_cli("plan", synthetic.FIXED, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert plan["needed"] is False and "links them from flashinfer-cubin's artifact path" in plan["reason"]


def test_the_pin_is_the_sha256_of_the_synthetic_checksums(cubin_wheel):
    with zipfile.ZipFile(cubin_wheel(synthetic.VERSION)) as zf:
        data = zf.read(f"flashinfer_cubin/cubins/{synthetic.ARTIFACT}checksums.txt")
    assert synthetic.plan().checksums_sha256 == synthetic.checksums_sha256() == hashlib.sha256(data).hexdigest()


@pytest.mark.real
def test_the_synthetic_wheels_have_the_shape_of_the_real_0_6_6(python_wheel, cubin_wheel):
    real_plan = plan_from_wheel(python_wheel("0.6.6"))
    fake_plan = plan_from_wheel(python_wheel(synthetic.VERSION))
    assert {n: getattr(fake_plan, n) for n in SHAPE} == {n: getattr(real_plan, n) for n in SHAPE}
    assert fake_plan.artifact_path != real_plan.artifact_path  # the bytes that matter are fake

    def layout(wheel, artifact: str) -> tuple[set[str], list[str]]:
        with zipfile.ZipFile(wheel) as zf:
            names = {n.replace(artifact, "<artifact>/") for n in zf.namelist()
                     if n.startswith(f"flashinfer_cubin/cubins/{artifact}") and not n.endswith(".cubin")}
            lines = zf.read(f"flashinfer_cubin/cubins/{artifact}checksums.txt").decode().splitlines()
        return names, lines

    real_names, real_lines = layout(cubin_wheel("0.6.6"), real_plan.artifact_path)
    fake_names, fake_lines = layout(cubin_wheel(synthetic.VERSION), synthetic.ARTIFACT)
    assert fake_names == real_names
    assert all(LINE.fullmatch(line) for line in real_lines + fake_lines)
    include = lambda lines: sorted(line.split()[1] for line in lines if line.split()[1].startswith("include/"))  # noqa: E731
    assert include(fake_lines) == include(real_lines)
