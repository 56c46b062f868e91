"""The live check (`doctor --run`): a synthetic flashinfer made at test time, run by the real probe.

The synthetic package behaves like flashinfer 0.6.5-0.6.7's header code where it matters: it asks a
(real, listening) server on 127.0.0.1 for checksums.txt, retries with 5/10/20 s sleeps, writes
lock files, and fails with the same AssertionError.  The real flashinfer runs in the truth table
(tests/test_doctor.py), which has a `doctor --run` column.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from repack.environment.run import BMM_CALLERS, live_check

FETCHING = """
import os, time, urllib.request
from pathlib import Path

def gen_moe_utils_module():
    repo = os.environ["FLASHINFER_CUBINS_REPOSITORY"]
    for attempt in range(4):
        try:
            urllib.request.urlopen(repo + "artifact/checksums.txt", timeout=5).read()
            return "spec"
        except OSError:
            if attempt < 3:
                time.sleep(5 * 2 ** attempt)
    raise AssertionError("BatchedGemmEnums.h not found")
"""

WRITING = """
import os
from pathlib import Path

from flashinfer.jit.env import FLASHINFER_CUBIN_DIR

def gen_moe_utils_module():
    for folder in (os.environ["FAKE_SITE"], FLASHINFER_CUBIN_DIR, os.environ["FLASHINFER_WORKSPACE_BASE"],
                   os.environ["FAKE_ELSEWHERE"]):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "written.lock").write_text("x")
    os.replace(Path(os.environ["FAKE_SITE"]) / "written.lock", Path(os.environ["FAKE_SITE"]) / "moved")
"""


def fake_flashinfer(root: Path, moe_utils: str, init: str = "") -> Path:
    """A package named flashinfer with jit.env (FLASHINFER_CUBIN_DIR as 0.6.x resolves it without a package)."""
    pkg = root / "flashinfer"
    (pkg / "jit").mkdir(parents=True)
    (pkg / "__init__.py").write_text(init + '\n__version__ = "0.6.6"\n')
    (pkg / "jit" / "__init__.py").write_text("")
    (pkg / "jit" / "env.py").write_text(textwrap.dedent("""
        import os
        from pathlib import Path
        FLASHINFER_CUBIN_DIR = Path(os.environ.get("FLASHINFER_CUBIN_DIR") or
            Path(os.environ.get("FLASHINFER_WORKSPACE_BASE", Path.home())) / ".cache" / "flashinfer" / "cubins")
        """))
    (pkg / "jit" / "moe_utils.py").write_text(textwrap.dedent(moe_utils))
    (pkg / "jit" / "fused_moe.py").write_text("def gen_trtllm_gen_fused_moe_sm100_module():\n    return 'spec'\n")
    return root


def env_for(root: Path, **extra: str) -> dict:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(root / "home"), **extra}


def test_connections_are_refused_recorded_and_sleeps_cut(tmp_path, file_server):
    repo = file_server.url + "/"
    root = fake_flashinfer(tmp_path / "fi", FETCHING)
    result = live_check(sys.executable, env_for(root, FLASHINFER_CUBINS_REPOSITORY=repo), calls=BMM_CALLERS)
    assert file_server.requests() == 0, "the live check let a connection through to a listening server"
    assert (result.ok, result.step, result.error) == (False, "headers", "AssertionError: BatchedGemmEnums.h not found")
    assert len(result.connects) == 4 and result.requests == (repo + "artifact/checksums.txt",) * 4
    assert (result.sleeps, result.slept_seconds) == (3, 35.0)
    assert result.summary() == ("tried 4 download(s) of checksums.txt (4 connection attempt(s) refused); "
                                "then failed at the header step: AssertionError: BatchedGemmEnums.h not found")


def test_name_lookups_are_refused(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", FETCHING)
    result = live_check(sys.executable, env_for(root, FLASHINFER_CUBINS_REPOSITORY="http://artifactory.invalid/"))
    assert not result.ok and result.connects == ()
    assert result.lookups and all(x.startswith("artifactory.invalid:") for x in result.lookups)
    assert result.requests == ("http://artifactory.invalid/artifact/checksums.txt",) * 4


def test_every_write_is_recorded_by_where_it_landed(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", WRITING)
    site, cubins, other = tmp_path / "site", tmp_path / "cubins", tmp_path / "other"
    site.mkdir()
    result = live_check(sys.executable, env_for(root, FAKE_SITE=str(site), FAKE_ELSEWHERE=str(other)),
                        site_packages=str(site), cubin_dir=str(cubins))
    assert result.ok, result
    assert [w.path for w in result.writes_in("site-packages")] == [str(site / "written.lock"), str(site / "moved")]
    assert [w.path for w in result.writes_in("cubin dir")] == [str(cubins), str(cubins / "written.lock")]
    assert [w.path for w in result.writes_in("elsewhere")] == [str(other), str(other / "written.lock")]
    assert any(w.path.endswith("/written.lock") for w in result.writes_in("scratch"))
    assert not (tmp_path / "fi" / "home").exists(), "the workspace must be the scratch one"


def test_the_pinned_cubin_dir_is_the_one_flashinfer_uses(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", WRITING)
    result = live_check(sys.executable, env_for(root, FAKE_SITE=str(tmp_path / "s"), FAKE_ELSEWHERE=str(tmp_path / "o")),
                        cubin_dir=str(tmp_path / "cubins"))
    assert result.cubin_dir == str(tmp_path / "cubins")
    own = live_check(sys.executable, env_for(root, FAKE_SITE=str(tmp_path / "s"), FAKE_ELSEWHERE=str(tmp_path / "o"),
                                             FLASHINFER_CUBIN_DIR=str(tmp_path / "mine")),
                     cubin_dir=str(tmp_path / "cubins"))
    assert own.cubin_dir == str(tmp_path / "mine"), "a FLASHINFER_CUBIN_DIR the user set is never overridden"


def test_an_import_failure_is_reported_at_the_import_step(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", WRITING, init="import torch_is_not_installed_here")
    result = live_check(sys.executable, env_for(root))
    assert (result.ok, result.step, result.imported) == (False, "import", False)
    assert result.summary() == ("cannot import flashinfer: ModuleNotFoundError: "
                                "No module named 'torch_is_not_installed_here'")


def test_absent_code_paths_are_listed_not_failed(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", WRITING.replace("def gen_moe_utils_module", "def renamed"))
    result = live_check(sys.executable, env_for(root))
    assert result.ok and result.calls == (BMM_CALLERS[1],) and result.absent == (BMM_CALLERS[0],)


def test_the_deadline_stops_a_hung_start(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", "def gen_moe_utils_module():\n    while True:\n        pass\n")
    result = live_check(sys.executable, env_for(root), timeout=1)
    assert (result.ok, result.timed_out, result.step) == (False, True, "headers")
    assert result.summary() == "did not finish: Deadline: the live check ran out of its 1 s"


def test_a_child_that_dies_leaves_a_clear_error(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", "import os\ndef gen_moe_utils_module():\n    os._exit(3)\n")
    result = live_check(sys.executable, env_for(root))
    assert not result.ok and result.returncode == 3
    assert result.error == "the live check's child exited 3 without a report"


# -- the command line ------------------------------------------------------------------

def test_doctor_run_exits_from_the_live_result(run_cli, tmp_path):
    # no flashinfer-python distribution (static: not offline), but an importable flashinfer that starts
    root = fake_flashinfer(tmp_path / "fi", WRITING)
    env = {"PYTHONPATH": str(root), "FAKE_SITE": str(tmp_path / "s"), "FAKE_ELSEWHERE": str(tmp_path / "o")}
    static = run_cli("doctor", "--python", sys.executable, "--json", env=env)
    assert static.returncode == 1
    live = run_cli("doctor", "--python", sys.executable, "--json", "--run", env=env)
    data = json.loads(live.stdout)
    assert live.returncode == 0, live.stderr
    assert (data["ok"], data["static_ok"], data["live"]["ok"], data["live"]["step"]) == (True, False, True, "done")
    assert data["problems"][0]["code"] == "no-flashinfer"
    text = run_cli("doctor", "--python", sys.executable, "--run", env=dict(env, FAKE_SITE=str(tmp_path / "t")))
    assert "live verdict: starts offline (DISAGREES with the static verdict)" in text.stdout
    assert f"wrote 4 path(s) in elsewhere: {tmp_path / 't'}, {tmp_path / 't' / 'written.lock'}, " in text.stdout


def test_doctor_run_without_flashinfer_says_why(run_cli):
    result = run_cli("doctor", "--python", sys.executable, "--run")
    assert result.returncode == 1
    assert "cannot import flashinfer: ModuleNotFoundError: No module named 'flashinfer'" in result.stdout


@pytest.mark.parametrize("value", ["0", "-3"])
def test_doctor_run_timeout_must_be_positive(run_cli, value):
    result = run_cli("doctor", "--run", "--run-timeout", value)
    assert result.returncode == 2 and f"--run-timeout {value} is not a positive number" in result.stderr


def test_the_environments_own_workspace_when_asked(tmp_path):
    root = fake_flashinfer(tmp_path / "fi", WRITING)
    env = env_for(root, FAKE_SITE=str(tmp_path / "s"), FAKE_ELSEWHERE=str(tmp_path / "o"),
                  FLASHINFER_WORKSPACE_BASE=str(tmp_path / "ws"))
    result = live_check(sys.executable, env, scratch_workspace=False)
    assert result.cubin_dir == str(tmp_path / "ws" / ".cache" / "flashinfer" / "cubins")
    assert result.writes_in("scratch") == [] and (tmp_path / "ws" / "written.lock").is_file()
