"""The built flashinfer-cubin-headers wheel, checked with independent tools.

``installer`` validates the RECORD and installs the wheel into a scratch
scheme; ``packaging`` validates the metadata; the header bytes are compared
with the members of the real flashinfer-cubin wheel.  Builds are reproducible,
and ``SOURCE_DATE_EPOCH`` changes the bytes only through the timestamps.
(pip install + pip check are the acceptance tests' business.)
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import zipfile
from pathlib import Path

import pytest
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile
from packaging.metadata import Metadata

from tests.support import synthetic
from tests.support.servers import CUBIN_ROOT

VERSION = synthetic.VERSION
PLAN = synthetic.plan()
EXPORT = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export/"
DIST_INFO = f"flashinfer_cubin_headers-{VERSION}.dist-info/"


def test_wheel_holds_exactly_the_headers_the_marker_and_metadata(headers_wheel, cubin_wheel):
    with zipfile.ZipFile(headers_wheel(VERSION)) as zf:
        names = zf.namelist()
        ours = {name: zf.read(name) for name in names}
    with zipfile.ZipFile(cubin_wheel(VERSION)) as zf:
        real = {h: zf.read(CUBIN_ROOT + PLAN.source_path(h)) for h in PLAN.headers}

    expected = {EXPORT + h for h in PLAN.headers} | {EXPORT + ".artifact_hash"} \
        | {DIST_INFO + n for n in ("METADATA", "WHEEL", "RECORD", "sboms/flashinfer-cubin-headers.cdx.json")}
    assert sorted(names) == sorted(expected) and len(names) == len(expected) == 22
    assert names[-1] == DIST_INFO + "RECORD"
    assert not any(n.startswith("flashinfer_cubin/__init__") for n in names)
    for header in PLAN.headers:
        assert ours[EXPORT + header] == real[header], header
    marker = ours[EXPORT + ".artifact_hash"]
    assert marker == synthetic.ARTIFACT.encode()
    assert len(marker) == 70 and marker == PLAN.artifact_path.encode()


def test_metadata_pins_both_flashinfer_packages(headers_wheel):
    with zipfile.ZipFile(headers_wheel(VERSION)) as zf:
        raw = zf.read(DIST_INFO + "METADATA")
        wheel_file = zf.read(DIST_INFO + "WHEEL").decode()
    meta = Metadata.from_email(raw, validate=True)  # raises on any invalid field

    assert (str(meta.name), str(meta.version)) == ("flashinfer-cubin-headers", VERSION)
    assert sorted(str(r) for r in meta.requires_dist) == [f"flashinfer-cubin=={VERSION}", f"flashinfer-python=={VERSION}"]
    assert str(meta.requires_python) == "<4.0,>=3.10"
    assert "Root-Is-Purelib: true" in wheel_file and "Tag: py3-none-any" in wheel_file


def test_record_validates_with_installer_and_a_tampered_copy_does_not(headers_wheel, tmp_path):
    with WheelFile.open(headers_wheel(VERSION)) as source:
        source.validate_record()

    tampered = tmp_path / headers_wheel(VERSION).name
    with zipfile.ZipFile(headers_wheel(VERSION)) as src, zipfile.ZipFile(tampered, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            out.writestr(info, data + b"// changed\n" if info.filename.endswith("/Enums.h") else data)
    with WheelFile.open(tampered) as source, pytest.raises(Exception, match=r"Enums\.h"):
        source.validate_record()


def test_installer_places_the_files_where_flashinfer_looks(headers_wheel, tmp_path):
    scheme = {key: str(tmp_path / key) for key in ("purelib", "platlib", "headers", "scripts", "data")}
    destination = SchemeDictionaryDestination(scheme, interpreter=sys.executable, script_kind="posix")
    with WheelFile.open(headers_wheel(VERSION)) as source:
        install(source, destination, {"INSTALLER": b"flashinfer-repack-tests\n"})

    site = tmp_path / "purelib"
    export = site / EXPORT
    for header in PLAN.headers:
        assert hashlib.sha256((export / header).read_bytes()).hexdigest() == PLAN.header_sha256[header]
    assert (export / ".artifact_hash").read_bytes() == PLAN.marker_bytes
    assert not (site / "flashinfer_cubin" / "__init__.py").exists()
    assert sorted(p.name for p in (site / DIST_INFO).iterdir()) == ["INSTALLER", "METADATA", "RECORD", "WHEEL",
                                                                    "sboms"]
    installed = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert len(installed) == len(PLAN.headers) + 1 + 5


# -- reproducibility ---------------------------------------------------------------------------

def build_sha(run_cli, cubin_wheel, out: Path, epoch: str | None = None) -> tuple[str, Path]:
    env = {"SOURCE_DATE_EPOCH": epoch} if epoch is not None else None
    result = run_cli("build", VERSION, "-o", str(out), "--from", str(cubin_wheel(VERSION)), "--no-cache",
                     "--json", env=env)
    assert result.returncode == 0, result.stderr
    artifact = json.loads(result.stdout)["artifacts"][0]
    path = Path(artifact["path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]
    return artifact["sha256"], path


@pytest.fixture
def unset_epoch(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.mark.usefixtures("unset_epoch")
def test_two_builds_give_one_sha256(run_cli, cubin_wheel, tmp_path):
    first, _ = build_sha(run_cli, cubin_wheel, tmp_path / "a")
    second, _ = build_sha(run_cli, cubin_wheel, tmp_path / "b")
    assert first == second


@pytest.mark.usefixtures("unset_epoch")
def test_source_date_epoch_changes_only_the_timestamps(run_cli, cubin_wheel, tmp_path):
    default, default_path = build_sha(run_cli, cubin_wheel, tmp_path / "default")
    epoch = 1_700_000_000  # even: zip times have two-second resolution
    first, path = build_sha(run_cli, cubin_wheel, tmp_path / "e1", str(epoch))
    again, _ = build_sha(run_cli, cubin_wheel, tmp_path / "e2", str(epoch))
    later, _ = build_sha(run_cli, cubin_wheel, tmp_path / "e3", str(epoch + 2))
    before_zip, _ = build_sha(run_cli, cubin_wheel, tmp_path / "e4", "0")

    assert first == again
    assert len({default, first, later}) == 3
    assert before_zip == default  # zip cannot store dates before 1980: clamped to the default
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(default_path) as zd:
        assert {i.date_time for i in zf.infolist()} == {time.gmtime(epoch)[:6]}
        assert {i.date_time for i in zd.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert [(i.filename, zf.read(i)) for i in zf.infolist()] == [(i.filename, zd.read(i)) for i in zd.infolist()]


def test_a_malformed_source_date_epoch_is_a_usage_error(run_cli, cubin_wheel, tmp_path):
    result = run_cli("build", VERSION, "-o", str(tmp_path / "out"), "--from", str(cubin_wheel(VERSION)),
                     "--no-cache", env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert result.returncode == 2 and "SOURCE_DATE_EPOCH='yesterday'" in result.stderr
    assert not (tmp_path / "out").exists()
