"""recipe/: rattler-build/recipe.yaml built for real by py-rattler-build, conda-build/meta.yaml kept its twin.

The build runs offline against a local channel made at test time: stand-ins
for python (its bin/python runs this interpreter, which has packaging and
requests), packaging, requests, flashinfer-python and flashinfer-cubin.
``FLASHINFER_REPACK_FROM`` points the recipe's build script at the real
flashinfer-cubin wheel on disk.  conda-build is not on PyPI, so meta.yaml is
rendered with Jinja, compared with the rendered recipe.yaml, and its test
commands are run as conda-build runs them (``set -ex``, PREFIX, SP_DIR) on our package of the
synthetic flashinfer (fast tier: same 18 paths) in a
prefix that py-rattler installs with stand-ins carrying the real run
requirements' files, flashinfer-cubin's ``__init__.py`` included: a test that
looks at the environment instead of the package fails there.
scripts/check_conda_build.sh builds meta.yaml with the real conda-build.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import jinja2
import pytest
import yaml
from conda_package_streaming.package_streaming import stream_conda_component

from repack.rules.plan import shipped_plan
from tests.conftest import cli
from tests.support import synthetic
from tests.support.conda_env import EXPORT_DIR, python_standin, standin

RECIPE_ROOT = Path(__file__).resolve().parents[1] / "recipe"
RATTLER_DIR, CONDA_BUILD_DIR = RECIPE_ROOT / "rattler-build", RECIPE_ROOT / "conda-build"
VERSION = "0.6.6"
PLAN = shipped_plan(VERSION)


def expected_payload() -> dict[str, str]:
    out = {f"site-packages/{EXPORT_DIR}/{h}": PLAN.header_sha256[h] for h in PLAN.headers}
    out[f"site-packages/{EXPORT_DIR}/{PLAN.marker_name}"] = hashlib.sha256(PLAN.marker_bytes).hexdigest()
    return out


@pytest.fixture(scope="module")
def build_channel(tmp_path_factory) -> Path:
    """What conda-forge would give the build, as stand-ins; python runs this interpreter."""
    made, channel = tmp_path_factory.mktemp("standins"), tmp_path_factory.mktemp("build-channel")
    packages = [python_standin(made, "3.11.9", executable=sys.executable)]
    packages += [standin(made, name, version) for name, version in [
        ("packaging", "24.0"), ("requests", "2.32.0"), ("flashinfer-python", VERSION), ("flashinfer-cubin", VERSION)]]
    result = cli("publish", "--channel", str(channel), *map(str, packages))
    assert result.returncode == 0, result.stderr
    return channel


def rattler_build(output: Path, channel: Path):
    from rattler_build import Stage0Recipe

    recipe = Stage0Recipe.from_file(RATTLER_DIR / "recipe.yaml")
    return recipe.run_build(output_dir=output, channels=[channel.resolve().as_uri()], no_build_id=True)


def members(package: Path, component: str) -> dict[str, bytes]:
    return {m.name: tar.extractfile(m).read()
            for tar, m in stream_conda_component(str(package), component=component) if m.isfile()}


@pytest.mark.real  # the recipe pins the real 0.6.6
def test_recipe_builds_exactly_the_headers(build_channel, cubin_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHINFER_REPACK_FROM", str(cubin_wheel(VERSION)))
    results = rattler_build(tmp_path / "out", build_channel)  # also runs the recipe's package_contents test
    packages = [p for r in results for p in r.packages]
    assert len(packages) == 1 and Path(packages[0]).name.startswith(f"flashinfer-cubin-headers-{VERSION}-pyh")
    package = Path(packages[0])
    payload = members(package, "pkg")
    assert {p: hashlib.sha256(d).hexdigest() for p, d in payload.items()} == expected_payload()
    assert payload[f"site-packages/{EXPORT_DIR}/{PLAN.marker_name}"] == PLAN.marker_bytes
    info = members(package, "info")
    index = json.loads(info["info/index.json"])
    assert (index["name"], index["version"], index["noarch"], index["subdir"]) == (
        "flashinfer-cubin-headers", VERSION, "python", "noarch")
    assert json.loads(info["info/link.json"])["noarch"]["type"] == "python"
    assert index["depends"] == cli_package_depends(tmp_path, cubin_wheel)  # the recipe and the CLI agree


def cli_package_depends(tmp_path: Path, cubin_wheel) -> list[str]:
    result = cli("build", VERSION, "--format", "conda", "-o", str(tmp_path / "cli"), "--from", str(cubin_wheel(VERSION)),
                 "--no-cache", "--json")
    assert result.returncode == 0, result.stderr
    package = Path(json.loads(result.stdout)["artifacts"][0]["path"])
    return json.loads(members(package, "info")["info/index.json"])["depends"]


def test_recipe_build_fails_without_a_valid_source(build_channel, tmp_path, monkeypatch):
    """The build really runs flashinfer-repack with FLASHINFER_REPACK_FROM: a missing wheel stops it."""
    from rattler_build import RattlerBuildError

    monkeypatch.setenv("FLASHINFER_REPACK_FROM", str(tmp_path / "missing" / "flashinfer_cubin-0.6.6-py3-none-any.whl"))
    with pytest.raises(RattlerBuildError):
        rattler_build(tmp_path / "out", build_channel)
    assert not list((tmp_path / "out").rglob("flashinfer-cubin-headers-*.conda"))


# -- meta.yaml, the conda-build twin ----------------------------------------------------------

def rendered_meta(environ: dict[str, str]) -> dict:
    """meta.yaml as conda-build renders it: Jinja with ``environ``, then YAML."""
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string((CONDA_BUILD_DIR / "meta.yaml").read_text())
    return yaml.safe_load(template.render(environ=environ))


def rendered_recipe() -> dict:
    from rattler_build import Stage0Recipe

    variants = Stage0Recipe.from_file(RATTLER_DIR / "recipe.yaml").render()
    assert len(variants) == 1
    return variants[0].recipe.to_dict()


def meta_test_paths(meta: dict) -> list[str]:
    """conda-build's ``test -f`` commands as package paths, like package_contents's ``exists``."""
    exists = []
    for command in meta["test"]["commands"]:
        words = shlex.split(command)
        if words[:2] == ["test", "-f"] and len(words) == 3:
            exists.append(words[2].replace("${SP_DIR}/", "site-packages/"))
        elif words[:2] != ["python", "-c"]:  # the own-files check, which test_meta_yaml_test_commands_* run
            raise AssertionError(f"unexpected test command in meta.yaml: {command!r}")
    return exists


def test_meta_yaml_renders_and_matches_recipe_yaml():
    meta, recipe = rendered_meta({}), rendered_recipe()
    assert meta["package"] == recipe["package"] == {"name": "flashinfer-cubin-headers", "version": VERSION}
    assert meta["source"] == {"path": recipe["source"][0]["path"], "folder": recipe["source"][0]["target_directory"]}
    assert meta["build"]["number"] == recipe["build"]["number"] and meta["build"]["noarch"] == recipe["build"]["noarch"]
    assert recipe["build"]["script"]["file"] == "build.sh"  # conda-build's default name, in each folder
    assert "script" not in meta["build"] and meta["build"]["script_env"] == list(recipe["build"]["script"]["env"])
    assert meta["requirements"]["host"] == recipe["requirements"]["host"]
    assert meta["requirements"]["run"] == recipe["requirements"]["run"]
    files = recipe["tests"][0]["package_contents"]["files"]
    assert recipe["tests"][0]["package_contents"]["strict"] is True
    assert sorted(meta_test_paths(meta)) == sorted(files["exists"]) == sorted(expected_payload())
    assert files["not_exists"] == ["site-packages/flashinfer_cubin/__init__.py"]
    assert meta["about"]["license"] == recipe["about"]["license"] and meta["about"]["home"] == recipe["about"]["homepage"]


def test_both_recipes_take_the_version_from_one_variable():
    meta_text, recipe_text = (CONDA_BUILD_DIR / "meta.yaml").read_text(), (RATTLER_DIR / "recipe.yaml").read_text()
    for text in (meta_text, recipe_text):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert code.count(VERSION) == 1, "the version must be written once (comments aside)"
    assert "${PKG_VERSION}" in (CONDA_BUILD_DIR / "build.sh").read_text()
    bumped = jinja2.Environment().from_string(meta_text.replace(f'"{VERSION}"', '"0.6.7"')).render(environ={})
    assert yaml.safe_load(bumped)["requirements"]["run"][1:] == ["flashinfer-python ==0.6.7", "flashinfer-cubin ==0.6.7"]


def test_each_recipe_folder_holds_only_its_own_files():
    """conda-build copies its whole folder into info/recipe (and conda debug refuses a stray recipe.yaml)."""
    assert sorted(p.name for p in CONDA_BUILD_DIR.iterdir()) == ["build.sh", "meta.yaml"]
    assert sorted(p.name for p in RATTLER_DIR.iterdir()) == ["build.sh", "recipe.yaml"]
    assert (CONDA_BUILD_DIR / "build.sh").read_bytes() == (RATTLER_DIR / "build.sh").read_bytes()


# -- meta.yaml's test commands, run as conda-build runs them ---------------------------------

#: The test command meta.yaml had before: it looked at the environment, where flashinfer-cubin owns the file.
ENV_LOOKING_COMMAND = 'test ! -e "${SP_DIR}/flashinfer_cubin/__init__.py"'
PYTHON_VERSION = "3.11"


def run_meta_tests(prefix: Path, commands: list[str], workdir: Path):
    """conda-build's run_test.sh: ``set -ex``, the commands, ``exit 0``, with the test env's variables."""
    import os
    import subprocess

    script = workdir / "conda_test_runner.sh"
    script.write_text("set -ex\n\n" + "".join(c + "\n" for c in commands) + "exit 0\n")
    env = {**os.environ, "PREFIX": str(prefix), "SP_DIR": str(prefix / f"lib/python{PYTHON_VERSION}/site-packages"),
           "PYTHON": str(prefix / "bin/python"), "PATH": f"{prefix / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def run_dependency_standins(out: Path, version: str) -> list[Path]:
    """python (running this interpreter) and flashinfer-python/-cubin carrying their real packages' top files."""
    files = {"flashinfer-python": {"site-packages/flashinfer/__init__.py": f'__version__ = "{version}"\n'},
             "flashinfer-cubin": {"site-packages/flashinfer_cubin/__init__.py": f'__version__ = "{version}"\n',
                                  "site-packages/flashinfer_cubin/cubins/.placeholder": ""}}
    made = [python_standin(out, f"{PYTHON_VERSION}.9", executable=sys.executable)]
    made += [standin(out, name, version, files=f, noarch="python", depends=["python"]) for name, f in files.items()]
    return made


def installed_prefix(tmp_path: Path, packages: list[Path], specs: list[str]) -> Path:
    from tests.support.conda_env import solve_and_install

    channel, prefix = tmp_path / "channel", tmp_path / "prefix"
    result = cli("publish", "--channel", str(channel), *map(str, packages))
    assert result.returncode == 0, result.stderr
    solve_and_install(channel, specs, prefix, tmp_path / "pkgs")
    return prefix


@pytest.fixture(scope="module")
def built_package(tmp_path_factory, cubin_wheel) -> Path:
    """Our conda package of the synthetic flashinfer: the same 18 paths as any affected version's, which is
    all meta.yaml's test commands look at (its version pin is the stand-ins' business)."""
    out = tmp_path_factory.mktemp("cli-build")
    result = cli("build", synthetic.VERSION, "--format", "conda", "-o", str(out),
                 "--from", str(cubin_wheel(synthetic.VERSION)), "--no-cache", "--json")
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["artifacts"][0]["path"])


@pytest.fixture(scope="module")
def full_prefix(tmp_path_factory, built_package) -> Path:
    """Our package with its run requirements, as conda-build's test environment holds it."""
    tmp = tmp_path_factory.mktemp("meta-test-env")
    standins = run_dependency_standins(tmp / "standins", synthetic.VERSION)
    return installed_prefix(tmp, [*standins, built_package], ["flashinfer-cubin-headers", f"python {PYTHON_VERSION}.*"])


def test_meta_yaml_test_commands_pass_on_the_package(full_prefix, tmp_path):
    assert (full_prefix / f"lib/python{PYTHON_VERSION}/site-packages/flashinfer_cubin/__init__.py").is_file()
    result = run_meta_tests(full_prefix, rendered_meta({})["test"]["commands"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_env_looking_command_fails_where_conda_build_tests(full_prefix, tmp_path):
    """Why meta.yaml changed: its old last command fails on a sound package in the real test environment."""
    old = [c for c in rendered_meta({})["test"]["commands"] if c.startswith("test -f")] + [ENV_LOOKING_COMMAND]
    result = run_meta_tests(full_prefix, old, tmp_path)
    assert result.returncode == 1 and "+ test '!' -e" in result.stderr


def test_meta_yaml_test_commands_refuse_a_package_with_init(tmp_path):
    """A headers package that owns flashinfer_cubin/__init__.py (it would shadow flashinfer-cubin) fails the test."""
    plan_files = {f"site-packages/{EXPORT_DIR}/{h}": "header\n" for h in PLAN.headers}
    plan_files["site-packages/flashinfer_cubin/__init__.py"] = "__version__ = 'shadow'\n"
    out = tmp_path / "made"
    bad = standin(out, "flashinfer-cubin-headers", VERSION, files=plan_files, noarch="python", depends=["python"])
    python = python_standin(out, f"{PYTHON_VERSION}.9", executable=sys.executable)
    prefix = installed_prefix(tmp_path, [python, bad], ["flashinfer-cubin-headers", f"python {PYTHON_VERSION}.*"])
    own_files_check = [c for c in rendered_meta({})["test"]["commands"] if c.startswith("python -c")]
    result = run_meta_tests(prefix, own_files_check, tmp_path)  # (the assembler drops the dot-file marker)
    assert result.returncode == 1
    assert "owns other files than the 18 expected" in result.stderr and "flashinfer_cubin/__init__.py" in result.stderr
