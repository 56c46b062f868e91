"""Fresh, empty venvs, and real pip and uv installing into them (no machine-wide index config)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

UV = Path(sys.executable).with_name("uv")


def fresh_venv(path: Path) -> Path:
    """A venv without pip of its own (fast): pip installs into it with ``--python``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "FLASHINFER_", "TWINE_"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # no machine-wide index or find-links may help
    env.update(extra)
    return env


def pip_into(python: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python),
                           *args], capture_output=True, text=True, env=env or clean_env())


def uv_into(python: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(UV), "pip", "install", "--python", str(python), *args],
                          capture_output=True, text=True, env=clean_env(UV_CACHE_DIR=str(cache), UV_NO_CONFIG="1"))


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())
