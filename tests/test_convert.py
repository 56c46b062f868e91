"""Wheel -> noarch: python conda package (repack.build.convert): requirements, names, layout, checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from email.parser import HeaderParser
from pathlib import Path

import pytest

from repack.build.conda import python_spec
from repack.build.conda_archive import read_members
from repack.build.convert import conda_depends, convert_wheel, load_name_map, package_filename
from repack.errors import BuildError, InputError, IntegrityError
from repack.publish.channel import inspect_package
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
    assert conda_depends(meta, names) == ["python >=3.10", *expected]


def test_name_map_override(tmp_path):
    override = tmp_path / "map.json"
    override.write_text(json.dumps({"names": {"Flashinfer_Python": "flashinfer", "torch": None}}))
    names = load_name_map(override)
    assert names["flashinfer-python"] == "flashinfer" and names["torch"] is None
    assert names["flashinfer-cubin"] == "flashinfer-cubin"  # the shipped entries stay
    override.write_text("[1, 2]")
    with pytest.raises(InputError, match="conda name map"):
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


# -- markers: evaluated for the channel's platforms and Pythons, never the converter's -------------

@pytest.mark.parametrize("requires_python, requirement, expected", [
    (">=3.10", 'tomli; python_version < "3.8"', []),                    # false everywhere: dropped
    (">=3.10", 'exceptiongroup; python_version >= "3.8"', ["exceptiongroup"]),
    (">=3.10", "pywin32; sys_platform == 'win32'", []),
    (">=3.10", 'uvloop; implementation_name == "cpython"', ["uvloop"]),
    (">=3.11", 'tomli; python_version < "3.11"', []),                   # Requires-Python narrows the Pythons
    (">=3.10", 'fancy; platform_machine != "s390x"', ["fancy"]),
])
def test_markers_are_evaluated_for_every_target(requires_python, requirement, expected):
    meta = HeaderParser().parsestr(f"Requires-Dist: {requirement}\nRequires-Python: {requires_python}\n")
    assert conda_depends(meta, {}) == [python_spec(requires_python), *expected]


@pytest.mark.parametrize("requirement, marker", [
    ('tomli; python_version < "3.11"', 'python_version < "3.11"'),
    ('nvidia-thing; platform_machine == "x86_64"', 'platform_machine == "x86_64"'),
    ('odd; platform_release >= "5"', 'platform_release >= "5"'),
])
def test_a_marker_that_splits_the_targets_is_refused_by_name(requirement, marker):
    meta = HeaderParser().parsestr(f"Requires-Dist: {requirement}\nRequires-Python: >=3.10\n")
    with pytest.raises(BuildError, match=re.escape(f"the marker '{marker}' holds on some")):
        conda_depends(meta, {})


MARKER_PROBE = """
import json, sys
from email.parser import HeaderParser
from repack.build.convert import conda_depends
from repack.errors import BuildError
out = []
for line in json.loads(sys.argv[1]):
    meta = HeaderParser().parsestr(f"Requires-Dist: {line}\\nRequires-Python: >=3.10\\n")
    try:
        out.append(conda_depends(meta, {}))
    except BuildError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""


def interpreter(version: str) -> str | None:
    """A working ``pythonX.Y``: on PATH, or one that pyenv installed (its shims may refuse to run it)."""
    found = [shutil.which(f"python{version}")]
    # the tests' HOME is a temporary one: pyenv's versions are found beside the interpreter running the tests too
    roots = {Path.home() / ".pyenv" / "versions", Path(os.path.realpath(sys.base_prefix)).parent}
    found += sorted(str(p) for root in roots for p in root.glob(f"{version}.*/bin/python{version}"))
    for exe in filter(None, found):
        if subprocess.run([exe, "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
            return exe
    return None


def test_two_interpreters_convert_markers_alike(tmp_path):
    """A 3.10 and a 3.11 converter give the same depends (or the same refusal) for every marker."""
    import packaging

    lines = ['tomli; python_version < "3.11"', 'a; python_version >= "3.10"', 'b; python_full_version < "3.10.1"',
             'c; sys_platform == "linux"', 'd; platform_machine == "aarch64"', 'e; os_name == "nt"']
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), str(Path(packaging.__file__).parents[1])])
    results = {}
    for python in ("3.10", "3.11"):
        exe = interpreter(python)
        if exe is None:
            pytest.skip(f"no working python{python} here")
        done = subprocess.run([exe, "-c", MARKER_PROBE, json.dumps(lines)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": path}, timeout=60)
        assert done.returncode == 0, done.stderr
        results[python] = json.loads(done.stdout)
    assert results["3.10"] == results["3.11"]
    assert "holds on some" in results["3.10"][0] and "holds on some" in results["3.10"][4]


# -- pip's view inside the conda environment -------------------------------------------------------

def test_pip_requirements_move_under_an_extra(tmp_path):
    """pip check must not ask for conda-provided requirements under their PyPI names (whl2conda's way)."""
    import base64
    import csv
    import hashlib
    import io

    from packaging.requirements import Requirement

    wheel = make_wheel(tmp_path / "w", "fi-demo", "1.0", requires_python=">=3.10",
                       requires=("torch>=2", 'tomli; python_version < "3.8"'))
    members = read_members(convert_wheel(wheel, tmp_path / "out").path)
    meta_path = "site-packages/fi_demo-1.0.dist-info/METADATA"
    meta = HeaderParser().parsestr(members[meta_path].decode())
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    assert [r.name for r in requires] == ["torch", "tomli"]
    assert "original" in meta.get_all("Provides-Extra")
    for r in requires:  # what pip check evaluates: no extra requested, so none of them is required
        assert not r.marker.evaluate({"extra": ""}) and r.marker.evaluate({"extra": "original", "python_version": "3.7"})
    rows = {row[0]: row[1] for row in csv.reader(io.StringIO(members[meta_path.replace("METADATA", "RECORD")].decode()))}
    digest = base64.urlsafe_b64encode(hashlib.sha256(members[meta_path]).digest()).rstrip(b"=").decode()
    assert rows["fi_demo-1.0.dist-info/METADATA"] == f"sha256={digest}"  # RECORD stays true


def test_the_shipped_name_map_comes_from_grayskull():
    """conda-forge's names for PyPI projects, from grayskull's maintained map (scripts/update_condamap.py)."""
    from repack.build.convert import MAP_FILE

    table = json.loads(MAP_FILE.read_text())
    assert table["source"]["project"] == "grayskull" and len(table["source"]["sha256"]) == 64
    names = load_name_map()
    assert names["torch"] == "pytorch" and names["build"] == "python-build"
    assert len(names) > 100


# -- hostile wheels: bounded inflation, names through the path gate -------------------------------------

def _bomb_wheel(tmp_path: Path, member: str, size: int) -> Path:
    """A valid wheel whose ``member`` (a .dist-info file) inflates to ``size`` zero bytes."""
    import zipfile

    wheel = make_wheel(tmp_path / "src", "fi-demo", "1.0")
    out = tmp_path / "bomb" / wheel.name
    out.parent.mkdir()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.endswith("/" + member):
                with dst.open(zipfile.ZipInfo(info.filename, (2020, 1, 1, 0, 0, 0)), "w") as fh:
                    chunk = bytes(1 << 20)
                    for _ in range(size >> 20):
                        fh.write(chunk)
            else:
                dst.writestr(info, src.read(info))
    return out


@pytest.mark.parametrize("member", ["METADATA", "RECORD"])
def test_a_metadata_bomb_is_refused_before_inflating(tmp_path, member):
    """A 100 MB METADATA/RECORD (a few hundred kB compressed) is refused on its declared size, never read."""
    import resource

    wheel = _bomb_wheel(tmp_path, member, 100 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if member == "METADATA":  # the name of the package comes from METADATA alone
        with pytest.raises(IntegrityError, match="more than the"):
            package_filename(wheel, load_name_map())
    with pytest.raises(IntegrityError, match="more than the"):
        convert_wheel(wheel, tmp_path / "out", names=load_name_map())
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 << 10, f"peak memory grew by {grown_kib} KiB"
    assert not list(tmp_path.glob("out/*.conda"))


@pytest.mark.parametrize("name", ["fi_demo/../../../evil.py", "/abs/evil.py", "fi_demo-1.0.data/purelib/../../x.py"])
def test_a_member_name_that_leaves_the_package_is_refused(tmp_path, name):
    from repack.fs import UnsafePathError

    wheel = make_wheel(tmp_path, "fi-demo", "1.0", files={"fi_demo/__init__.py": b"", name: b"x = 1\n"})
    with pytest.raises(UnsafePathError):
        convert_wheel(wheel, tmp_path / "out", names=load_name_map())
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
