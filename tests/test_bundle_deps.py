"""bundle --with-dependencies: pip's own resolver, the excluded projects' subtrees, and a clean install.

Fast: real pip resolves small wheels made at test time on a real index on 127.0.0.1 (a fake
flashinfer-python whose dependency tree has a torch-like project with one exclusive and one shared
dependency).  Real tier (``real``): a bundle of the real flashinfer 0.6.6 with its dependencies,
torch excluded, installed with ``--no-index`` into a clean venv that has only the local CPU torch
(as a site's mirror would provide it); vLLM's snippet then starts offline.  Its index is a local
one (as a site's mirror): the real flashinfer-python, flashinfer-cubin without its kernels, the real
wheels of flashinfer's light dependencies (``envs.dependency_wheels``, from the store), and empty
stand-ins for torch and the two GPU-only projects (flashinfer's import finds neither ``cutlass`` nor
``cudnn`` in them, as in a venv without them): about 40 MB, read locally, instead of 400 MB from PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from repack.errors import FetchError, InputError
from repack.publish.dependencies import Target, check_target, dependency_graph, reachable, resolve, wheel_file
from tests.support.tinywheel import make_wheel

V = "9.9.9"
SHA = "a" * 64


def fake_index(file_server, tmp_path: Path) -> str:
    """flashinfer-python -> dep-shared, heavy; heavy -> heavy-only, dep-shared; flashinfer-cubin -> nothing."""
    specs = [("flashinfer-python", V, ("fi-dep-shared>=1", "fi-heavy==2.0", "fi-win-only; sys_platform == 'win32'")),
             ("flashinfer-cubin", V, ()), ("fi-heavy", "2.0", ("fi-heavy-only", "fi-dep-shared")),
             ("fi-heavy-only", "1.0", ()), ("fi-dep-shared", "1.5", ()), ("fi-win-only", "1.0", ())]
    for name, version, requires in specs:
        file_server.serve_project(name, [make_wheel(tmp_path / "wheels", name, version, requires=requires)])
    return file_server.index_url


def test_pip_resolves_and_an_excluded_project_takes_only_its_own_subtree(file_server, tmp_path):
    index = fake_index(file_server, tmp_path)
    whole = resolve(V, Target(), index)
    assert whole.kept == ["fi-dep-shared==1.5", "fi-heavy==2.0", "fi-heavy-only==1.0", f"flashinfer-cubin=={V}",
                          f"flashinfer-python=={V}"]
    assert sorted(f.filename for f in whole.files) == ["fi_dep_shared-1.5-py3-none-any.whl",
                                                       "fi_heavy-2.0-py3-none-any.whl",
                                                       "fi_heavy_only-1.0-py3-none-any.whl"]
    assert all(f.url.startswith(file_server.url) and len(f.sha256) == 64 for f in whole.files)
    light = resolve(V, check_target(None, [], ["FI_Heavy"]), index)
    assert light.kept == ["fi-dep-shared==1.5", f"flashinfer-cubin=={V}", f"flashinfer-python=={V}"]
    assert light.dropped == ["fi-heavy", "fi-heavy-only"]


def test_excluding_a_project_that_is_not_a_dependency_is_refused(file_server, tmp_path):
    index = fake_index(file_server, tmp_path)
    with pytest.raises(InputError, match=r"fi-win-only is not among the dependencies pip resolved for flashinfer 9\.9\.9"):
        resolve(V, check_target(None, [], ["fi-win-only"]), index)


def test_pip_failure_is_one_clear_error(file_server, tmp_path):
    index = fake_index(file_server, tmp_path)
    with pytest.raises(FetchError, match=r"pip could not resolve flashinfer 1\.2\.3 for Python 3\.12 on "
                                         r"manylinux_2_28_x86_64: .*flashinfer-python==1\.2\.3"):
        resolve("1.2.3", check_target("3.12", ["manylinux_2_28_x86_64"], []), index)


def test_the_graph_follows_markers_and_extras_in_the_target_environment():
    # flashinfer-python needs kit[gpu]; kit's gpu extra needs kit-gpu; torch-like needs kit[other] -> kit-other
    report = {"environment": {"sys_platform": "linux", "python_version": "3.12"}, "install": [
        {"metadata": {"name": "flashinfer-python", "version": V,
                      "requires_dist": ["a", "b; sys_platform == 'win32'", "c; extra == 'x'", "not a requirement!",
                                        "Kit[GPU]>=1", "torchy"]}},
        {"metadata": {"name": "A", "version": "1"}}, {"metadata": {"name": "b", "version": "1"}},
        {"metadata": {"name": "c", "version": "1"}},
        {"metadata": {"name": "kit", "version": "1", "provides_extra": ["gpu", "other"],
                      "requires_dist": ["kit-gpu; extra == 'gpu'", "kit-other; extra == 'other'"]}},
        {"metadata": {"name": "kit-gpu", "version": "1"}}, {"metadata": {"name": "kit-other", "version": "1"}},
        {"metadata": {"name": "torchy", "version": "1", "requires_dist": ["kit[other]"]}}]}
    graph, _items = dependency_graph(report)
    assert graph[("flashinfer-python", "")] == {("a", ""), ("kit", ""), ("kit", "gpu"), ("torchy", "")}
    roots = ("flashinfer-python", "flashinfer-cubin")
    assert reachable(graph, roots, set()) == {"flashinfer-python", "a", "kit", "kit-gpu", "kit-other", "torchy"}
    assert reachable(graph, roots, {"torchy"}) == {"flashinfer-python", "a", "kit", "kit-gpu"}


@pytest.mark.parametrize("info, problem", [
    ({"url": "https://x/p/dep-1.0-py3-none-any.whl"}, "no sha256 from the index"),
    ({"url": "https://x/p/dep-1.0-py3-none-any.whl", "archive_info": {"hashes": {"sha256": "abc"}}},
     "no sha256 from the index"),
    ({"url": "https://x/p/dep-1.0.tar.gz", "archive_info": {"hashes": {"sha256": SHA}}}, "is not a wheel of dep"),
    ({"url": "https://x/p/other-1.0-py3-none-any.whl", "archive_info": {"hashes": {"sha256": SHA}}},
     "is not a wheel of dep"),
    ({"url": "https://x/p/..%2F..%2Fdep-1.0-py3-none-any.whl", "archive_info": {"hashes": {"sha256": SHA}}},
     "is not a wheel of dep"),
    ({"archive_info": {"hashes": {"sha256": SHA}}}, "no URL"),
])
def test_untrusted_report_entries_are_refused(info, problem):
    with pytest.raises(FetchError, match=problem):
        wheel_file("dep", {"metadata": {"name": "dep", "version": "1.0"}, "download_info": info})


def test_credentials_in_a_refused_url_are_not_shown():
    with pytest.raises(FetchError) as caught:
        wheel_file("dep", {"download_info": {"url": "https://bob:hunter2@x/p/dep-1.0.tar.gz"}})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("python, platforms, excludes, message", [
    ("3", [], [], "Python version '3' is not X.Y"),
    ("3.12; rm -rf /", [], [], "is not X.Y"),
    (None, ["manylinux x86_64"], [], "'manylinux x86_64' is not a wheel platform tag"),
    (None, [], ["Flashinfer_Python"], "flashinfer-python cannot be excluded"),
])
def test_malformed_targets_are_usage_errors(python, platforms, excludes, message):
    with pytest.raises(InputError, match=message):
        check_target(python, platforms, excludes)


@pytest.mark.parametrize("option", [["--exclude", "torch"], ["--python-version", "3.12"],
                                    ["--platform", "manylinux_2_28_x86_64"]])
def test_target_options_need_with_dependencies(run_cli, tmp_path, option):
    result = run_cli("bundle", "0.6.6", "-o", str(tmp_path / "b"), *option)
    assert result.returncode == 2 and f"{option[0]} applies only with --with-dependencies" in result.stderr
    assert not (tmp_path / "b").exists()


# -- real tier: a clean machine installs from the bundle alone ---------------------------------

#: stand-ins on the local index: torch (excluded from the bundle; the clean venv gets the real CPU build)
#: and the GPU-only projects at the lowest versions flashinfer-python 0.6.6 accepts
STAND_INS = (("torch", "2.13.0"), ("nvidia-cutlass-dsl", "4.3.4"), ("nvidia-cudnn-frontend", "1.13.0"))


def mirror_index(server, python_wheel, cubin_wheel, tmp_path: Path) -> str:
    """A site's mirror on 127.0.0.1: what pip resolves flashinfer-python 0.6.6 from (see the module's docstring)."""
    from tests.support.envs import dependency_wheels

    server.serve_project("flashinfer-python", [python_wheel("0.6.6")])
    server.serve_project("flashinfer-cubin", [cubin_wheel("0.6.6")])
    by_project: dict[str, list[Path]] = {}
    for wheel in dependency_wheels():
        by_project.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel)
    for name, version in STAND_INS:
        by_project[name] = [make_wheel(tmp_path / "stand-ins", name, version)]
    for project, wheels in sorted(by_project.items()):
        server.serve_project(project, wheels)
    return server.index_url


@pytest.mark.real
@pytest.mark.slow
def test_a_clean_venv_installs_from_the_bundle_with_no_index(run_cli, file_server, python_wheel, cubin_wheel,
                                                             tmp_path):
    from repack.environment.run import live_check
    from tests.support.envs import SNIPPET, FlashinferEnv

    out = tmp_path / "bundle"
    index = mirror_index(file_server, python_wheel, cubin_wheel, tmp_path)
    # the mirror is the only index pip sees (this machine's pip configuration names local wheels of torch)
    made = run_cli("bundle", "0.6.6", "-o", str(out), "--with-dependencies", "--exclude", "torch", "--json",
                   "--index-url", index, timeout=1800, env={"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": None})
    assert made.returncode == 0, made.stderr
    deps = json.loads(made.stdout)["dependencies"]
    assert "torch" in deps["dropped"] and not any(p.startswith("torch==") for p in deps["projects"])
    assert {"numpy", "apache-tvm-ffi", "requests"} <= {p.split("==")[0] for p in deps["projects"]}, deps
    readme = (out / "README.txt").read_text()
    command = next(line.strip() for line in readme.splitlines() if line.strip().startswith("pip install --no-index"))
    assert "except torch: install it first from your site's mirror" in readme

    # the site's mirror provides torch: a venv with only torch (a copy of the store's, not a minute of pip)
    python = str(FlashinferEnv.torch_only(tmp_path / "clean").python)
    args = command.split()[2:]  # after "pip install"
    # no pip configuration at all (this machine's names local indexes): the bundle is the only source
    install = subprocess.run([python, "-m", "pip", "install", "-q", *args], cwd=out, capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null"})
    assert install.returncode == 0, install.stderr
    result = live_check(python, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "FLASHINFER_CUBINS_REPOSITORY": "http://127.0.0.1:9/"}, script=SNIPPET)
    assert (result.ok, result.connects, result.requests) == (True, (), ()), result.summary()
