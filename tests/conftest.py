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


# -- a local HTTP server and what it serves, made at test time from the real wheels ------------

@pytest.fixture(scope="session")
def artifactory_tree(tmp_path_factory, cubin_wheel):
    """``artifactory_tree(version)``: a directory in NVIDIA's artifactory layout holding
    ``<artifact>/checksums.txt`` and the 17 headers, extracted from the real flashinfer-cubin wheel."""
    from repack.rules.plan import shipped_plan
    from tests.support.servers import artifact_members, extract_tree

    made: dict[str, Path] = {}

    def make(version: str) -> Path:
        if version not in made:
            paths = artifact_members(shipped_plan(version))
            dest = tmp_path_factory.mktemp(f"artifactory-{version}")
            made[version] = extract_tree(cubin_wheel(version), paths, dest)
        return made[version]

    return make


@pytest.fixture(scope="session")
def small_cubin_wheel(tmp_path_factory, cubin_wheel):
    """``small_cubin_wheel(version)``: a small zip named like the real flashinfer-cubin wheel, holding
    exactly its 19 members under the BMM artifact (checksums.txt, flashinferMetaInfo.h, 17 headers)."""
    from repack.rules.plan import ARTIFACT_EXTRAS, shipped_plan
    from tests.support.servers import CUBIN_ROOT, artifact_members, copy_members

    made: dict[str, Path] = {}

    def make(version: str) -> Path:
        if version not in made:
            real = cubin_wheel(version)
            names = [CUBIN_ROOT + p for p in artifact_members(shipped_plan(version), ARTIFACT_EXTRAS[1:])]
            made[version] = copy_members(real, names, tmp_path_factory.mktemp(f"small-{version}") / real.name)
        return made[version]

    return make


@pytest.fixture
def file_server():
    """A started :class:`tests.support.servers.FileServer` on 127.0.0.1, stopped after the test."""
    from tests.support.servers import FileServer

    with FileServer() as server:
        yield server
