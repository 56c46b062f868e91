"""install: verified headers placed straight into a FLASHINFER_CUBIN_DIR, and flashinfer then starts offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from repack.environment.install import install
from repack.errors import BuildError
from repack.fetch.cache import Cache
from repack.fetch.payload import fetch_payload
from repack.fetch.sources import WheelFile
from tests.support import synthetic

VERSION = synthetic.VERSION
PLAN = synthetic.plan()
DEST = PLAN.dest_dir


@pytest.fixture(scope="module")
def payload(cubin_wheel):
    return fetch_payload(PLAN, [WheelFile(cubin_wheel(VERSION))], Cache(None), with_extras=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_install_places_every_verified_file(payload, tmp_path):
    root = tmp_path / "cubins"
    written = install(payload, root)
    expected = {f.path: f.sha256 for f in payload.files + payload.extras}
    assert sorted(str(p.relative_to(root)) for p in written) == sorted(expected)
    assert len(expected) == 17 + 1 + 2  # headers, marker, checksums.txt + flashinferMetaInfo.h
    assert all(sha(root / path) == digest for path, digest in expected.items())
    assert (root / DEST / ".artifact_hash").read_bytes() == PLAN.artifact_path.encode()  # exact, no newline
    assert written[-1] == root / DEST / ".artifact_hash"  # the marker comes last
    assert not list(root.glob(".flashinfer-repack-*")), "the staging directory must be removed"


def test_install_writes_only_what_differs(payload, tmp_path):
    root = tmp_path / "cubins"
    install(payload, root)
    assert install(payload, root) == []
    header = root / DEST / "Enums.h"
    header.write_bytes(b"tampered")
    assert install(payload, root) == [header]
    assert sha(header) == PLAN.header_sha256["Enums.h"]


def test_a_read_only_correct_tree_needs_no_write(payload, tmp_path):
    root = tmp_path / "cubins"
    install(payload, root)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, path.stat().st_mode & ~0o222)
    try:
        assert install(payload, root) == []
    finally:
        for path in [root, *root.rglob("*")]:
            os.chmod(path, path.stat().st_mode | 0o200)


def test_a_failed_install_leaves_no_partial_file_and_no_marker(payload, tmp_path):
    root = tmp_path / "cubins"
    (root / DEST).mkdir(parents=True)
    (root / DEST / "trtllm").write_text("a file where a directory must go")
    with pytest.raises(BuildError):
        install(payload, root)
    assert not (root / DEST / ".artifact_hash").exists()
    assert not list(root.glob(".flashinfer-repack-*"))
    for path in root.rglob("*.h"):
        name = str(path.relative_to(root / DEST)) if DEST in str(path) else None
        if name in PLAN.header_sha256:
            assert sha(path) == PLAN.header_sha256[name], f"{path} is partial"
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_install_refuses_a_symlinked_include_dir(payload, tmp_path):
    root = tmp_path / "cubins"
    (root / PLAN.artifact_path).mkdir(parents=True)
    (root / DEST).parent.mkdir(parents=True)
    (root / DEST).symlink_to(root / PLAN.artifact_path)
    with pytest.raises(BuildError, match="symlink"):
        install(payload, root)


# -- with the real flashinfer --------------------------------------------------------------

def use_without_cubin(flashinfer_env, version: str) -> None:
    """flashinfer-python alone; what earlier tests' runs left in flashinfer_cubin/ would be a namespace package."""
    flashinfer_env.use(version, cubin=False)
    shutil.rmtree(flashinfer_env.site_packages() / "flashinfer_cubin", ignore_errors=True)


def doctor(run_cli, *args: str, env: dict) -> tuple[int, dict]:
    result = run_cli("doctor", *args, "--json", env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
def test_install_into_a_fresh_cubin_dir_makes_0_6_6_start_offline_without_flashinfer_cubin(
        flashinfer_env, cubin_wheel, run_cli, shared_tmp):
    use_without_cubin(flashinfer_env, "0.6.6")
    empty = {"FLASHINFER_CUBIN_DIR": str(shared_tmp / "empty"), "HOME": str(shared_tmp)}
    before = flashinfer_env.run_snippet(fast_clock=True, env=empty)
    assert not before["ok"] and before["connects"], "without the headers the snippet must reach out and fail"
    code, report = doctor(run_cli, "--python", str(flashinfer_env.python), env=empty)
    assert code == 1 and "checksums-missing" in [p["code"] for p in report["problems"]]

    cubins = shared_tmp / "cubins"  # fresh: no earlier start left anything there
    env = {"FLASHINFER_CUBIN_DIR": str(cubins), "HOME": str(shared_tmp)}

    result = run_cli("install", "0.6.6", "--target", str(cubins), "--from", str(cubin_wheel("0.6.6")),
                     "--no-cache", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["written"]) == 20

    snippet = flashinfer_env.run_snippet(env=env)
    assert snippet["ok"], snippet
    assert snippet["connects"] == [] and snippet["cubin_dir"] == str(cubins)
    probe = flashinfer_env.run_header_code(env=env)
    assert probe["ok"] and probe["connects"] == [], probe
    code, report = doctor(run_cli, "--python", str(flashinfer_env.python), env=env)
    assert code == 0 and report["problems"] == [], report
    assert report["cubin_dir"] == str(cubins)


@pytest.mark.slow
def test_install_with_python_finds_the_default_cache_dir(flashinfer_env, cubin_wheel, run_cli, shared_tmp):
    use_without_cubin(flashinfer_env, "0.6.6")
    env = {"HOME": str(shared_tmp)}
    result = run_cli("install", "0.6.6", "--python", str(flashinfer_env.python), "--from",
                     str(cubin_wheel("0.6.6")), "--no-cache", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cubin_dir"] == str(shared_tmp / ".cache" / "flashinfer" / "cubins")
    probe = flashinfer_env.run_header_code(fast_clock=True, env=env)
    assert probe["ok"] and probe["connects"] == [], probe
    code, report = doctor(run_cli, "--python", str(flashinfer_env.python), env=env)
    assert code == 0 and report["problems"] == [], report


def test_install_refuses_a_python_of_another_version(run_cli, tmp_path):
    import sys

    result = run_cli("install", "0.6.6", "--python", sys.executable, "--offline", "--from", str(tmp_path))
    assert result.returncode == 2 and "not 0.6.6" in result.stderr


def test_install_with_python_reads_the_plan_from_that_environments_own_code(python_wheel, cubin_wheel, run_cli,
                                                                           tmp_path):
    """The headers go where the flashinfer of --python looks, by the plan its own code gives: no index
    and no flashinfer in the tool's environment are needed (here: offline, a version with no shipped plan)."""
    from tests.support.installs import fresh_venv, pip_into

    python = fresh_venv(tmp_path / "venv")
    assert pip_into(python, "install", "--no-deps", "--no-index", str(python_wheel(VERSION))).returncode == 0
    home = tmp_path / "home"
    result = run_cli("install", VERSION, "--python", str(tmp_path / "venv"), "--offline", "--no-cache",
                     "--from", str(cubin_wheel(VERSION)), "--json", env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["plan_checked"] and f"flashinfer-python in python {python}" in report["plan_check"]
    assert report["cubin_dir"] == str(home / ".cache" / "flashinfer" / "cubins")
    assert (Path(report["cubin_dir"]) / DEST / PLAN.marker_name).read_bytes() == PLAN.marker_bytes


@pytest.mark.parametrize("record", [True, False], ids=["with-RECORD", "without-RECORD"])
def test_doctor_and_install_on_a_conda_prefix_without_python(record, python_wheel, cubin_wheel, run_cli, tmp_path):
    """A prefix is read from its files: conda-meta and site-packages; install --target is the fix it names.
    Without RECORD (conda installs may have none) flashinfer's code is still read, never judged 'not needed'."""
    from installer import install as install_wheel
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile as InstallerWheel

    prefix = tmp_path / "env"
    site = prefix / "lib" / "python3.11" / "site-packages"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "conda-meta" / "python-3.11.7-h0.json").write_text(json.dumps({"name": "python", "version": "3.11.7"}))
    scheme = {k: str(site) for k in ("purelib", "platlib")}
    scheme.update(scripts=str(prefix / "bin2"), data=str(prefix), headers=str(prefix / "include"))
    with InstallerWheel.open(python_wheel(VERSION)) as source:
        install_wheel(source, SchemeDictionaryDestination(scheme, interpreter="/usr/bin/python3",
                                                          script_kind="posix"), additional_metadata={})
    if not record:
        (site / f"flashinfer_python-{VERSION}.dist-info" / "RECORD").unlink()
    env = {"HOME": str(tmp_path / "home")}
    code, report = doctor(run_cli, "--prefix", str(prefix), env=env)
    cubins = tmp_path / "home" / ".cache" / "flashinfer" / "cubins"
    assert code == 1 and report["python"] is None and report["cubin_dir"] == str(cubins)
    fixes = {p["fix"] for p in report["problems"] if p["fatal"]}
    assert f"flashinfer-repack install {VERSION} --target {cubins}" in fixes

    result = run_cli("install", VERSION, "--target", str(cubins), "--from", str(cubin_wheel(VERSION)), "--no-cache")
    assert result.returncode == 0, result.stderr
    code, report = doctor(run_cli, "--prefix", str(prefix), env=env)
    assert code == 0 and report["problems"] == [], report
