"""recipe/: recipe.yaml built for real by py-rattler-build, and meta.yaml kept its equivalent.

The build runs offline against a local channel made at test time: stand-ins
for python (its bin/python runs this interpreter, which has packaging and
requests), packaging, requests, flashinfer-python and flashinfer-cubin.
``FLASHINFER_REPACK_FROM`` points the recipe's build script at the real
flashinfer-cubin wheel on disk.  conda-build is not installable here, so
meta.yaml is rendered with Jinja and compared with the rendered recipe.yaml.
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
from tests.support.conda_env import EXPORT_DIR, python_standin, standin

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipe"
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

    recipe = Stage0Recipe.from_file(RECIPE_DIR / "recipe.yaml")
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
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string((RECIPE_DIR / "meta.yaml").read_text())
    return yaml.safe_load(template.render(environ=environ))


def rendered_recipe() -> dict:
    from rattler_build import Stage0Recipe

    variants = Stage0Recipe.from_file(RECIPE_DIR / "recipe.yaml").render()
    assert len(variants) == 1
    return variants[0].recipe.to_dict()


def meta_test_paths(meta: dict) -> tuple[list[str], list[str]]:
    """conda-build's ``test -f``/``test ! -e`` commands as package paths, like package_contents's."""
    exists, absent = [], []
    for command in meta["test"]["commands"]:
        *test, path = shlex.split(command)
        path = path.replace("${SP_DIR}/", "site-packages/")
        if test == ["test", "-f"]:
            exists.append(path)
        elif test == ["test", "!", "-e"]:
            absent.append(path)
        else:
            raise AssertionError(f"unexpected test command in meta.yaml: {command!r}")
    return exists, absent


def test_meta_yaml_renders_and_matches_recipe_yaml():
    meta, recipe = rendered_meta({}), rendered_recipe()
    assert meta["package"] == recipe["package"] == {"name": "flashinfer-cubin-headers", "version": VERSION}
    assert meta["source"] == {"path": recipe["source"][0]["path"], "folder": recipe["source"][0]["target_directory"]}
    assert meta["build"]["number"] == recipe["build"]["number"] and meta["build"]["noarch"] == recipe["build"]["noarch"]
    assert recipe["build"]["script"]["file"] == "build.sh" and (RECIPE_DIR / "build.sh").is_file()  # conda-build's default
    assert "script" not in meta["build"] and meta["build"]["script_env"] == list(recipe["build"]["script"]["env"])
    assert meta["requirements"]["host"] == recipe["requirements"]["host"]
    assert meta["requirements"]["run"] == recipe["requirements"]["run"]
    files = recipe["tests"][0]["package_contents"]["files"]
    assert recipe["tests"][0]["package_contents"]["strict"] is True
    exists, absent = meta_test_paths(meta)
    assert sorted(exists) == sorted(files["exists"]) == sorted(expected_payload())
    assert absent == files["not_exists"] == ["site-packages/flashinfer_cubin/__init__.py"]
    assert meta["about"]["license"] == recipe["about"]["license"] and meta["about"]["home"] == recipe["about"]["homepage"]


def test_both_recipes_take_the_version_from_one_variable():
    meta_text, recipe_text = (RECIPE_DIR / "meta.yaml").read_text(), (RECIPE_DIR / "recipe.yaml").read_text()
    for text in (meta_text, recipe_text):
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert code.count(VERSION) == 1, "the version must be written once (comments aside)"
    assert "${PKG_VERSION}" in (RECIPE_DIR / "build.sh").read_text()
    bumped = jinja2.Environment().from_string(meta_text.replace(f'"{VERSION}"', '"0.6.7"')).render(environ={})
    assert yaml.safe_load(bumped)["requirements"]["run"][1:] == ["flashinfer-python ==0.6.7", "flashinfer-cubin ==0.6.7"]
