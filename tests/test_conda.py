"""The flashinfer-cubin-headers conda package: its metadata, its bytes, and a second opinion.

Every package here is built by the CLI from the real flashinfer-cubin wheel;
conda-package-streaming (not our reader) extracts it, and conda's
noarch-python rule places its files, which are then checked against the
package's own paths.json and against the hashes flashinfer-python pins.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conda_package_streaming.extract import extract
from conda_package_streaming.package_streaming import stream_conda_info

from repack.build.conda import parse_dependency_names, python_spec
from repack.errors import BuildError, InputError
from tests.conftest import cli
from tests.support import synthetic
from tests.support.conda_env import EXPORT_DIR

VERSION = synthetic.VERSION
EPOCH = "1700000000"
PLAN = synthetic.plan()
INFO_FILES = {"info/index.json", "info/paths.json", "info/files", "info/link.json", "info/about.json",
              "info/hash_input.json", "info/sboms/flashinfer-cubin-headers.cdx.json"}
ARCHIVES = {"conda": ".conda", "conda-bz2": ".tar.bz2"}


def expected_payload() -> dict[str, str]:
    """site-packages-relative path -> sha256, from the shipped plan (pinned by flashinfer-python)."""
    out = {f"{EXPORT_DIR}/{h}": PLAN.header_sha256[h] for h in PLAN.headers}
    out[f"{EXPORT_DIR}/{PLAN.marker_name}"] = hashlib.sha256(PLAN.marker_bytes).hexdigest()
    return out


def build(out: Path, wheel: Path, *extra: str, epoch: str = EPOCH, formats: str = "conda,conda-bz2") -> dict[str, Path]:
    result = cli("build", VERSION, "--format", formats, "-o", str(out), "--from", str(wheel), "--no-cache",
                 "--json", *extra, env={"SOURCE_DATE_EPOCH": epoch})
    assert result.returncode == 0, result.stderr
    return {a["kind"]: Path(a["path"]) for a in json.loads(result.stdout)["artifacts"]}


def info_of(package: Path) -> dict[str, bytes]:
    return {m.name: tar.extractfile(m).read() for tar, m in stream_conda_info(str(package)) if m.name.startswith("info/")}


@pytest.fixture(scope="module")
def built(tmp_path_factory, cubin_wheel) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("conda"), cubin_wheel(VERSION))


def test_build_twice_gives_the_same_bytes(built, cubin_wheel, tmp_path):
    again = build(tmp_path / "again", cubin_wheel(VERSION))
    for kind in ARCHIVES:
        assert again[kind].name == built[kind].name
        assert again[kind].read_bytes() == built[kind].read_bytes(), kind
    other_time = build(tmp_path / "later", cubin_wheel(VERSION), epoch="1700000001")
    for kind in ARCHIVES:  # the timestamp is an input: the comparison above can fail
        assert other_time[kind].read_bytes() != built[kind].read_bytes(), kind


@pytest.mark.parametrize("kind", ARCHIVES)
def test_metadata_files(built, kind):
    package = built[kind]
    assert package.name.endswith(ARCHIVES[kind])
    info = info_of(package)
    assert set(info) == INFO_FILES
    index = json.loads(info["info/index.json"])
    assert package.name == f"flashinfer-cubin-headers-{VERSION}-{index['build']}{ARCHIVES[kind]}"
    assert index["build"].startswith("pyh") and index["build"].endswith("_0")
    assert {k: index[k] for k in ("name", "version", "build_number", "noarch", "subdir", "license", "timestamp")} == {
        "name": "flashinfer-cubin-headers", "version": VERSION, "build_number": 0, "noarch": "python",
        "subdir": "noarch", "license": "Apache-2.0", "timestamp": int(EPOCH) * 1000}
    assert index["depends"] == ["python >=3.10,<4.0", f"flashinfer-python =={VERSION}", f"flashinfer-cubin =={VERSION}"]
    assert json.loads(info["info/link.json"]) == {"noarch": {"type": "python"}, "package_metadata_version": 1}
    paths = json.loads(info["info/paths.json"])
    assert paths["paths_version"] == 1
    listed = [e["_path"] for e in paths["paths"]]
    assert listed == sorted("site-packages/" + p for p in expected_payload())
    assert info["info/files"].decode().splitlines() == listed
    assert json.loads(info["info/hash_input.json"])["depends"] == index["depends"]
    about = json.loads(info["info/about.json"])
    assert about["license"] == "Apache-2.0" and about["extra"]["checksums_sha256"] == PLAN.checksums_sha256


def noarch_python_install(package: Path, staging: Path, prefix: Path, python: str) -> None:
    """conda's rule for noarch: python: site-packages/ -> lib/pythonX.Y/site-packages/, python-scripts/ -> bin/."""
    extract(str(package), str(staging))
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging).as_posix()
        if not path.is_file() or rel.startswith("info/"):
            continue
        if rel.startswith("site-packages/"):
            rel = f"lib/python{python}/site-packages/" + rel[len("site-packages/"):]
        elif rel.startswith("python-scripts/"):
            rel = "bin/" + rel[len("python-scripts/"):]
        (prefix / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, prefix / rel)


@pytest.mark.parametrize("kind", ARCHIVES)
def test_second_opinion_without_rattler(built, kind, tmp_path):
    prefix = tmp_path / "prefix"
    noarch_python_install(built[kind], tmp_path / "staging", prefix, "3.12")
    paths = json.loads((tmp_path / "staging" / "info" / "paths.json").read_text())["paths"]
    site = "lib/python3.12/site-packages/"
    installed = {p.relative_to(prefix).as_posix(): p for p in prefix.rglob("*") if p.is_file()}
    assert set(installed) == {site + e["_path"][len("site-packages/"):] for e in paths}
    for entry in paths:
        data = installed[site + entry["_path"][len("site-packages/"):]].read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["size_in_bytes"]), entry["_path"]
    got = {rel[len(site):]: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in installed.items()}
    assert got == expected_payload()  # the hashes flashinfer-python pins, and the marker
    marker = prefix / site / EXPORT_DIR / PLAN.marker_name
    assert marker.read_bytes() == PLAN.marker_bytes and len(marker.read_bytes()) == 70
    assert not (prefix / site / "flashinfer_cubin" / "__init__.py").exists()


def test_dependency_names_pip_mode_and_build_number(built, cubin_wheel, tmp_path):
    wheel = cubin_wheel(VERSION)
    renamed = build(tmp_path / "renamed", wheel, "--conda-dep-name", "flashinfer-python=flashinfer",
                    "--conda-dep-name", "flashinfer-cubin=flashinfer-cubin-nv", formats="conda")["conda"]
    pip_mode = build(tmp_path / "pip", wheel, "--conda-no-flashinfer-deps", formats="conda")["conda"]
    rebuilt = build(tmp_path / "rebuilt", wheel, "--build-number", "2", formats="conda")["conda"]
    indexes = {name: json.loads(info_of(p)["info/index.json"])
               for name, p in [("default", built["conda"]), ("renamed", renamed), ("pip", pip_mode), ("rebuilt", rebuilt)]}
    assert indexes["renamed"]["depends"] == ["python >=3.10,<4.0", f"flashinfer =={VERSION}",
                                             f"flashinfer-cubin-nv =={VERSION}"]
    assert indexes["pip"]["depends"] == ["python >=3.10,<4.0"]
    assert indexes["rebuilt"]["build_number"] == 2 and indexes["rebuilt"]["build"].endswith("_2")
    assert indexes["rebuilt"]["depends"] == indexes["default"]["depends"]
    # variants must never share a file name, or a channel would have to refuse one of them
    assert len({p.name for p in (built["conda"], renamed, pip_mode, rebuilt)}) == 4


@pytest.mark.parametrize("args, message", [
    (["--format", "conda,zip"], "unknown format 'zip'"),
    (["--format", "conda", "--conda-dep-name", "torch=pytorch"], "is not flashinfer-python=NAME"),
    (["--format", "conda", "--conda-dep-name", "flashinfer-python=Bad Name"], "is not a conda package name"),
    (["--format", "conda", "--build-number", "-1"], "--build-number -1 is negative"),
])
def test_bad_options_fail_before_any_work(args, message, tmp_path):
    # --offline with no source would fail with exit 1 at the fetch: exit 2 proves the check comes first
    result = cli("build", VERSION, "-o", str(tmp_path / "out"), "--offline", "--no-cache", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_documents_the_conda_options():
    text = cli("build", "--help").stdout
    for flag in ("--conda-dep-name", "--conda-no-flashinfer-deps", "--build-number", "conda-bz2"):
        assert flag in text


@pytest.mark.parametrize("requires, spec", [
    (">=3.10", "python >=3.10"),
    ("<4.0,>=3.10", "python >=3.10,<4.0"),
    (">=3.9,!=3.9.1", "python >=3.9,!=3.9.1"),
    (None, "python >=3.10"),
])
def test_python_spec(requires, spec):
    assert python_spec(requires) == spec


def test_python_spec_refuses_what_conda_cannot_say():
    with pytest.raises(BuildError, match="~="):
        python_spec("~=3.10")


@pytest.mark.parametrize("specs, names", [
    ([], {}),
    (["flashinfer-python=flashinfer"], {"flashinfer-python": "flashinfer"}),
    (["flashinfer-cubin = fi-cubin", "flashinfer-python=fp"], {"flashinfer-cubin": "fi-cubin", "flashinfer-python": "fp"}),
])
def test_parse_dependency_names(specs, names):
    assert parse_dependency_names(specs) == names


@pytest.mark.parametrize("spec", ["flashinfer-python", "numpy=np", "flashinfer-cubin=", "flashinfer-cubin=UPPER"])
def test_parse_dependency_names_refuses(spec):
    with pytest.raises(InputError):
        parse_dependency_names([spec])
