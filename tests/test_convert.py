"""Wheel -> noarch: python conda package (repack.build.convert): requirements, names, layout, checks."""

from __future__ import annotations

import json
from email.parser import HeaderParser

import pytest

from repack.publish.channel import inspect_package
from repack.build.conda_archive import read_members
from repack.build.convert import conda_depends, convert_wheel, load_name_map, package_filename
from repack.errors import IntegrityError, UsageError
from tests.support.tinywheel import make_wheel, tamper


@pytest.mark.parametrize("requires, expected", [
    (["torch"], ["pytorch"]),
    (["apache-tvm-ffi!=0.1.8,<0.2,>=0.1.6"], ["apache-tvm-ffi !=0.1.8,<0.2,>=0.1.6"]),
    (["numpy==2.*"], ["numpy 2.*"]),
    (["packaging~=24.2"], ["packaging ~=24.2"]),
    (["Some_Project[extra]>=1"], ["some-project >=1"]),
    (["pywin32; sys_platform == 'win32'", "uvloop; sys_platform == 'linux'"], ["uvloop"]),
    (["pytest; extra == 'test'"], []),
    (["dropped-one", "kept"], ["kept"]),
])
def test_requirements_become_conda_specs(requires, expected):
    meta = HeaderParser().parsestr("".join(f"Requires-Dist: {r}\n" for r in requires) + "Requires-Python: >=3.10\n")
    names = {**load_name_map(), "dropped-one": None}
    assert conda_depends(meta, names) == ["python >=3.10"] + expected


def test_name_map_override(tmp_path):
    override = tmp_path / "map.json"
    override.write_text(json.dumps({"names": {"Flashinfer_Python": "flashinfer", "torch": None}}))
    names = load_name_map(override)
    assert names["flashinfer-python"] == "flashinfer" and names["torch"] is None
    assert names["flashinfer-cubin"] == "flashinfer-cubin"  # the shipped entries stay
    override.write_text("[1, 2]")
    with pytest.raises(UsageError, match="conda name map"):
        load_name_map(override)


def test_converted_package_layout_and_metadata(tmp_path):
    wheel = make_wheel(tmp_path / "w", "fi-demo", "1.0", requires_python=">=3.9", requires=("torch>=2",), files={
        "fi_demo/__init__.py": b"X = 1\n",
        "fi_demo-1.0.data/scripts/fi-tool": b"#!python\nprint(1)\n",
        "fi_demo-1.0.data/data/share/fi-demo/notes.txt": b"notes\n",
        "fi_demo-1.0.dist-info/entry_points.txt": b"[console_scripts]\nfi-demo = fi_demo:main\n",
    })
    artifact = convert_wheel(wheel, tmp_path / "out", epoch=1_700_000_000)
    assert artifact.path.name == package_filename(wheel, load_name_map())
    package = inspect_package(artifact.path)  # the channel's own check: every file against paths.json
    assert package.index["depends"] == ["python >=3.9", "pytorch >=2"]
    assert package.index["noarch"] == "python" and package.index["timestamp"] == 1_700_000_000_000
    members = read_members(artifact.path)
    assert members["site-packages/fi_demo/__init__.py"] == b"X = 1\n"
    assert members["python-scripts/fi-tool"].startswith(b"#!python")
    assert members["share/fi-demo/notes.txt"] == b"notes\n"
    assert members["site-packages/fi_demo-1.0.dist-info/INSTALLER"] == b"conda\n"
    assert b"fi_demo-1.0.dist-info/INSTALLER," in members["site-packages/fi_demo-1.0.dist-info/RECORD"]
    link = json.loads(members["info/link.json"])
    assert link["noarch"] == {"type": "python", "entry_points": ["fi-demo = fi_demo:main"]}

    again = convert_wheel(wheel, tmp_path / "again", epoch=1_700_000_000)
    assert again.path.read_bytes() == artifact.path.read_bytes()  # same inputs, same bytes


def test_a_wheel_that_disagrees_with_its_record_is_refused(tmp_path):
    wheel = make_wheel(tmp_path / "w", "fi-demo", "1.0")
    bad = tamper(wheel, tmp_path / "bad" / wheel.name, "__init__.py")
    with pytest.raises(IntegrityError, match="does not match its own RECORD"):
        convert_wheel(bad, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_bundle_refuses_a_bad_conda_map_before_any_download(run_cli, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text("{not json")
    result = run_cli("bundle", "0.6.6", "-o", str(tmp_path / "out"), "--conda-map", str(bad),
                     "--index-url", "http://127.0.0.1:9/simple/")
    assert result.returncode == 2 and "cannot read the conda name map" in result.stderr
    assert not (tmp_path / "out").exists()
