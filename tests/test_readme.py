"""The README's commands, run as written: every ``flashinfer-repack`` line of its ```sh blocks, in order,
in one scratch directory, against local servers (the index pip uses, a pypiserver named in ~/.pypirc)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.test_upload import PASSWORD, USER, pypiserver  # noqa: F401  (a fixture, used by name)

README = Path(__file__).resolve().parents[1] / "README.md"
#: doctor's exit code says whether flashinfer starts offline; the README's venv has no flashinfer at all
EXPECTED_EXIT = {"doctor": 1}


def readme_commands() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.M | re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("flashinfer-repack ")]


def test_the_readme_names_commands_to_run():
    commands = readme_commands()
    assert len(commands) >= 8
    assert {c.split()[1] if not c.split()[1].startswith("-") else c.split()[2] for c in commands} >= {
        "plan", "build", "publish", "doctor", "install"}


@pytest.mark.real
def test_readme_commands_run(tmp_path, file_server, python_wheel, small_cubin_wheel, pypiserver):  # noqa: F811
    for version in ("0.6.6", "0.6.8"):
        file_server.serve_project("flashinfer-python", [python_wheel(version)])
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel("0.6.6")])
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pypirc").write_text(f"[distutils]\nindex-servers = internal\n\n[internal]\n"
                                  f"repository = {pypiserver['url']}\nusername = {USER}\npassword = {PASSWORD}\n")
    work = tmp_path / "work"
    venv.EnvBuilder(with_pip=False).create(work / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "PIP_", "TWINE_"))}
    env.update(HOME=str(home), PIP_INDEX_URL=file_server.index_url, FLASHINFER_REPACK_CACHE_DIR=str(tmp_path / "c"),
               UPLOAD_URL=pypiserver["url"], FLASHINFER_REPACK_USERNAME=USER, FLASHINFER_REPACK_PASSWORD=PASSWORD,
               NETRC="/nonexistent")
    for command in readme_commands():
        script = f'flashinfer-repack() {{ "{sys.executable}" -m repack "$@"; }}\n{command}\n'
        done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        name = next(w for w in command.split()[1:] if not w.startswith("-"))
        assert done.returncode == EXPECTED_EXIT.get(name, 0), f"{command}\n{done.stdout}\n{done.stderr}"
    assert (work / "dist" / "flashinfer_cubin_headers-0.6.6-py3-none-any.whl").is_file()
    assert (pypiserver["packages"] / "flashinfer_cubin_headers-0.6.6-py3-none-any.whl").is_file()
