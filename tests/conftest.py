"""Shared fixtures: the real wheels, one FlashInfer venv, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.envs import FlashinferEnv, real_wheel

AFFECTED = ("0.6.5", "0.6.6", "0.6.7")


@pytest.fixture(scope="session")
def cubin_wheel():
    """``cubin_wheel(version)``: the real flashinfer-cubin wheel from PyPI (downloaded once)."""
    return lambda version: real_wheel("flashinfer-cubin", version)


@pytest.fixture(scope="session")
def python_wheel():
    """``python_wheel(version)``: the real flashinfer-python wheel from PyPI (downloaded once)."""
    return lambda version: real_wheel("flashinfer-python", version)


@pytest.fixture(scope="session")
def flashinfer_env() -> FlashinferEnv:
    """One venv with the local CPU torch, shared by every acceptance test (versions swapped with pip).

    It lies in a world-readable temporary directory (pytest's are private to
    root) so that tests can run flashinfer as an unprivileged user.
    """
    root = Path(tempfile.mkdtemp(prefix="flashinfer-env-"))
    os.chmod(root, 0o755)
    try:
        yield FlashinferEnv(root / "venv").create()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def shared_tmp():
    """A temporary directory every user may write to (for runs as an unprivileged user)."""
    path = Path(tempfile.mkdtemp(prefix="flashinfer-repack-"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def headers_wheel(tmp_path_factory, cubin_wheel):
    """``headers_wheel(version)``: our wheel, built by the CLI from the real local flashinfer-cubin wheel."""
    built: dict[str, Path] = {}

    def build(version: str) -> Path:
        if version not in built:
            out = tmp_path_factory.mktemp(f"headers-{version}")
            result = cli("build", version, "-o", str(out), "--from", str(cubin_wheel(version)), "--no-cache", "--json")
            assert result.returncode == 0, result.stderr
            built[version] = Path(json.loads(result.stdout)["artifacts"][0]["path"])
        return built[version]

    return build


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m repack ARGS`` as a user would; no FlashInfer variables leak in."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "PIP_INDEX_URL"))}
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "repack", *args], capture_output=True, text=True,
                          env=run_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def run_cli():
    return cli
