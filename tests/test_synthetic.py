"""The synthetic flashinfer that the fast tier builds from is what it claims: a version with no shipped
plan, whose plan flashinfer-repack derives from its code, in the shape of the real 0.6.6 wheels."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

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


# -- the fast tier never reaches a real wheel, whether or not the store holds it ----------------------

REAL = "0.6.6"


@pytest.fixture
def warm_store(tmp_path, monkeypatch):
    """A store that holds a file of the right name for every real accessor (the bytes do not matter:
    the guard must refuse before it looks)."""
    from tests.support import envs

    names = [f"wheels/flashinfer_cubin-{REAL}-py3-none-any.whl", f"wheels/flashinfer_python-{REAL}-py3-none-any.whl",
             f"trimmed/flashinfer_cubin-{REAL}-py3-none-any.whl"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not a wheel")
    monkeypatch.setattr(envs, "STORE", tmp_path)
    return tmp_path


def test_a_warm_store_does_not_open_real_wheels_to_the_fast_tier(warm_store, monkeypatch):
    from tests.support import envs

    assert envs.REAL_ALLOWED is False  # this test has no ``real`` marker
    with pytest.raises(envs.RealWheelInFastTier, match=rf"flashinfer-cubin=={REAL} is a real wheel"):
        envs.trimmed_cubin_wheel(REAL)
    with pytest.raises(envs.RealWheelInFastTier, match=rf"flashinfer-cubin=={REAL} is a real wheel"):
        envs.real_wheel("flashinfer-cubin", REAL)
    with pytest.raises(envs.RealWheelInFastTier, match=rf"flashinfer-python=={REAL} is a real wheel"):
        envs.real_wheel("flashinfer-python", REAL)
    monkeypatch.setattr(envs, "REAL_ALLOWED", True)  # the real tier still gets the store's files
    assert envs.trimmed_cubin_wheel(REAL) == warm_store / "trimmed" / f"flashinfer_cubin-{REAL}-py3-none-any.whl"
    assert envs.real_wheel("flashinfer-python", REAL) == warm_store / "wheels" / f"flashinfer_python-{REAL}-py3-none-any.whl"


@pytest.mark.parametrize("fixture", ["cubin_wheel", "python_wheel", "small_cubin_wheel", "artifactory_tree",
                                     "headers_wheel"])
def test_the_wheel_fixtures_refuse_a_real_version_to_the_fast_tier(fixture, warm_store, request):
    from tests.support.envs import RealWheelInFastTier

    make = request.getfixturevalue(fixture)
    with pytest.raises(RealWheelInFastTier, match=rf"=={REAL} is a real wheel"):
        make(REAL)
    assert make(synthetic.VERSION).exists()  # the synthetic version is what the fast tier uses


def test_what_a_real_test_made_stays_closed_to_the_fast_tier(monkeypatch):
    """The session fixtures keep what they made; a real test's real wheel must not reach a later fast test
    through that memo."""
    from tests.conftest import per_version
    from tests.support import envs

    made = []
    get = per_version("flashinfer-cubin", lambda version: made.append(version) or Path(version))
    monkeypatch.setattr(envs, "REAL_ALLOWED", True)
    assert get(REAL) == Path(REAL)
    monkeypatch.setattr(envs, "REAL_ALLOWED", False)
    with pytest.raises(envs.RealWheelInFastTier, match=rf"flashinfer-cubin=={REAL} is a real wheel"):
        get(REAL)
    assert get(synthetic.VERSION) == Path(synthetic.VERSION) and made == [REAL, synthetic.VERSION]


INNER_TESTS = '''
import pytest
from tests.support import envs


@pytest.fixture(scope="module")
def made_from_real():
    envs.require_real("flashinfer-cubin==0.6.6")  # as a fixture that reads a real wheel does
    return "made"


@pytest.mark.real
def test_a_real_test_makes_it(made_from_real):
    assert made_from_real == "made"


def test_a_fast_test_reuses_it(made_from_real):
    assert made_from_real == "made"


def test_a_fast_test_without_it():
    pass
'''


def test_a_fixture_a_real_test_made_is_closed_to_a_later_fast_test(tmp_path):
    """pytest keeps a module fixture's value: the fast test gets it without a call to any accessor, so
    conftest remembers which fixtures were made from a real wheel.  Run in a pytest of its own, with
    this suite's conftest."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    real: the real tier\n")
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403 (its hooks and fixtures)\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PASSED test_inner.py::test_a_real_test_makes_it" in result.stdout
    assert "PASSED test_inner.py::test_a_fast_test_without_it" in result.stdout
    assert "ERROR test_inner.py::test_a_fast_test_reuses_it - tests.support.envs.RealWhee" in result.stdout
    assert ("RealWheelInFastTier: fixture made_from_real was made from a real wheel (for a real test)"
            in result.stdout), result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("2 passed, 1 error in ")
