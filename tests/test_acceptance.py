"""Acceptance (real tier): flashinfer's own code accepts what we build, with no network.

For each affected version, in one venv with the real flashinfer-python and
flashinfer-cubin from PyPI (torch: the local CPU build; flashinfer-cubin without
its kernels, see ``envs.trimmed_cubin_wheel``): vLLM's Dockerfile snippet fails
without our wheel (so the test can fail), and succeeds with it without a single
connection attempt, also read-only and as an unprivileged user.  Every test
leaves the shared venv as it found it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from repack.rules.plan import shipped_plan
from tests.conftest import AFFECTED

pytestmark = pytest.mark.real
EXPORT = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime, to prove zero writes."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return state


def set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        new = (mode | stat.S_IWUSR) if writable else (mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        os.chmod(path, new)


def resolved_install(env, wheel: Path, tmp: Path) -> dict[str, str]:
    """What pip, resolving dependencies, would install beside the venv's flashinfer: name -> version.
    (Resolved for real, but not installed: flashinfer-python's other requirements are GPU-only.)"""
    report = tmp / "pip-report.json"
    env.pip("install", "--dry-run", "-q", "--report", str(report), str(wheel))
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize("version", AFFECTED)
def test_snippet_needs_our_wheel_and_then_starts_offline(version, flashinfer_env, headers_wheel, tmp_path):
    flashinfer_env.use(version)

    without = flashinfer_env.run_snippet(fast_clock=True)
    assert not without["ok"], "the snippet must fail without our wheel, or this test proves nothing"
    assert "BatchedGemmEnums.h not found" in without["error"]
    assert without["connects"], "flashinfer should have tried the (closed) artifactory"

    # our pins are satisfied by the installed flashinfer-python and flashinfer-cubin: pip replaces neither
    planned = resolved_install(flashinfer_env, headers_wheel(version), tmp_path)
    assert planned["flashinfer-cubin-headers"] == version
    assert "flashinfer-python" not in planned and "flashinfer-cubin" not in planned, planned
    with flashinfer_env.restoring():
        flashinfer_env.pip("install", "-q", "--no-deps", str(headers_wheel(version)))
        assert flashinfer_env.installed()["flashinfer-cubin-headers"] == version

        with_wheel = flashinfer_env.run_snippet()
    assert with_wheel["ok"], with_wheel
    assert with_wheel["connects"] == []
    assert with_wheel["cubin_dir"].endswith("site-packages/flashinfer_cubin/cubins")
    # its time (about 15 ms against 35 s of backoff) is measured in benchmarks/bench_build.py


def test_read_only_install_as_unprivileged_user_makes_zero_writes(flashinfer_env, headers_wheel, shared_tmp,
                                                                  unprivileged_user):
    version = "0.6.6"
    flashinfer_env.use(version, extra=(headers_wheel(version),))
    package = flashinfer_env.site_packages() / "flashinfer_cubin"
    work = shared_tmp
    before = tree_state(package)
    set_writable(package, False)
    try:
        result = flashinfer_env.run_snippet(user=unprivileged_user, cwd=work, env={"HOME": str(work)})
    finally:
        set_writable(package, True)
    assert result["ok"], result
    assert result["connects"] == []
    assert tree_state(package) == before


def test_read_only_check_can_fail_when_the_marker_is_not_exact(flashinfer_env, headers_wheel, shared_tmp,
                                                               unprivileged_user):
    """A marker with a trailing newline is accepted by .strip() but rewritten: read-only, that write fails."""
    version = "0.6.6"
    flashinfer_env.use(version, extra=(headers_wheel(version),))
    package = flashinfer_env.site_packages() / "flashinfer_cubin"
    marker = package.parent / EXPORT / ".artifact_hash"
    marker.write_bytes(marker.read_bytes() + b"\n")
    work = shared_tmp
    set_writable(package, False)
    try:
        result = flashinfer_env.run_snippet(user=unprivileged_user, cwd=work, env={"HOME": str(work)})
    finally:
        set_writable(package, True)
        flashinfer_env.remove("flashinfer-cubin-headers")
    assert not result["ok"]
    assert result["error"].startswith("PermissionError: [Errno 13] Permission denied"), result["error"]
    assert EXPORT in result["error"], result["error"]  # the write that failed is the marker's directory


def test_pip_check_is_clean_for_our_wheel_and_catches_a_missing_dependency(flashinfer_env, headers_wheel):
    version = "0.6.6"
    flashinfer_env.use(version, extra=(headers_wheel(version),))

    def our_problems() -> list[str]:
        proc = subprocess.run([str(flashinfer_env.python), "-m", "pip", "check"], capture_output=True, text=True)
        return [line for line in proc.stdout.splitlines() if line.startswith("flashinfer-cubin-headers")]

    assert our_problems() == []
    flashinfer_env.remove("flashinfer-cubin")
    try:
        assert any("requires flashinfer-cubin" in line for line in our_problems())
    finally:
        flashinfer_env.remove("flashinfer-cubin-headers")


def test_use_starts_clean_after_a_runtime_replaced_the_export_dir(flashinfer_env, headers_wheel):
    """flashinfer 0.6.7.post1+ replaces the export directory with a symlink into flashinfer-cubin's artifact
    path. Left behind with no package installed (as a random order left it after the truth table), it broke
    every later install and start with FileExistsError; use() must start from a clean flashinfer_cubin/."""
    flashinfer_env.use("0.6.6")
    flashinfer_env.remove("flashinfer-python", "flashinfer-cubin")
    site = flashinfer_env.site_packages()
    export = site / EXPORT
    export.parent.mkdir(parents=True, exist_ok=True)
    export.symlink_to(site / "flashinfer_cubin" / "cubins" / shipped_plan("0.6.6").artifact_path
                      / "include" / "trtllmGen_bmm_export")  # dangling: flashinfer-cubin is gone
    with pytest.raises(subprocess.CalledProcessError):  # the control: the leftover breaks an install
        flashinfer_env.pip("install", "-q", "--no-deps", str(headers_wheel("0.6.6")))

    flashinfer_env.use("0.6.6", extra=(headers_wheel("0.6.6"),))
    try:
        assert not export.is_symlink() and (export / "BatchedGemmEnums.h").is_file()
    finally:
        flashinfer_env.remove("flashinfer-cubin-headers")
