"""Provenance: the SBOM in every wheel and conda package, checked with independent tools.

The CycloneDX schema (cyclonedx-python-lib's strict JSON validator) validates it; it names the real
source (a local wheel's own sha256; an index without its credentials, and the index's sha256); two
builds, and a build from the cache after one from the index, are byte-identical; installer and pip
install the wheel with it; the conda package carries the same document; doctor shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conda_package_streaming.package_streaming import stream_conda_info

from repack.build.sbom import SBOM_NAME
from repack.fetch.digest import file_sha256
from tests.support import synthetic

VERSION = synthetic.VERSION  # the fast tier's flashinfer; its pin is synthetic.checksums_sha256()
REAL = "0.6.6"
REAL_PIN = "0af823880730c4f0b3832d2208fab035946694b83444410b9309db5613d60195"  # CheckSumHash.TRTLLM_GEN_BMM
SBOM = f"flashinfer_cubin_headers-{VERSION}.dist-info/sboms/{SBOM_NAME}"


def build(run_cli, out: Path, source: str, *extra: str) -> dict:
    result = run_cli("build", VERSION, "-o", str(out), "--from", source, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return {a["kind"]: Path(a["path"]) for a in json.loads(result.stdout)["artifacts"]}


def sbom_of(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        return json.loads(zf.read(SBOM))


def component(doc: dict, name: str) -> dict:
    found = next(c for c in doc["components"] if c["name"] == name)
    found["props"] = {p["name"].split(":", 1)[1]: p["value"] for p in found.get("properties", [])}
    return found


def validate(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, error


def test_the_sbom_validates_and_names_the_local_wheel(run_cli, small_cubin_wheel, tmp_path):
    source = small_cubin_wheel(VERSION)
    wheel = build(run_cli, tmp_path / "out", str(source), "--no-cache")["wheel"]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(SBOM).decode()
    validate(text)
    doc = json.loads(text)
    cubin = component(doc, "flashinfer-cubin")
    assert cubin["props"]["source-kind"] == "wheel" and cubin["props"]["wheel"] == source.name
    assert cubin["hashes"] == [{"alg": "SHA-256", "content": file_sha256(source)}]
    pins = component(doc, "flashinfer-python")
    assert (pins["version"], pins["props"]["checksum-hash"]) == (VERSION, synthetic.checksums_sha256())
    files = {c["name"]: c["hashes"][0]["content"] for c in doc["components"] if c["type"] == "file"}
    assert len(files) == 18  # 17 headers and the marker
    with zipfile.ZipFile(wheel) as zf:
        for name, digest in files.items():
            assert file_digest_of(zf.read(name)) == digest, name
    assert "timestamp" not in doc["metadata"] and "serialNumber" not in doc


@pytest.mark.parametrize("url, public", [
    ("https://alice:s3cr3t@pypi.internal/simple/?token=x#frag", "https://pypi.internal/simple/"),
    ("https://pypi.internal:8443/a/b.whl", "https://pypi.internal:8443/a/b.whl"),
    ("http://user@host/", "http://host/"),
])
def test_public_url_drops_credentials_query_and_fragment(url, public):
    from repack.fetch.provenance import public_url
    assert public_url(url) == public


def file_digest_of(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def test_an_index_source_is_named_without_credentials_and_rebuilds_identically(run_cli, small_cubin_wheel,
                                                                               file_server, tmp_path):
    source = small_cubin_wheel(VERSION)
    index = file_server.serve_project("flashinfer-cubin", [source])
    secret = index.replace("http://", "http://alice:s3cr3t@")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = build(run_cli, tmp_path / "a", "index+" + secret, *cache)["wheel"]
    raw = first.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert not any(b"s3cr3t" in zf.read(n) or b"alice" in zf.read(n) for n in zf.namelist())
    assert b"s3cr3t" not in raw
    cubin = component(sbom_of(first), "flashinfer-cubin")
    assert (cubin["props"]["source-kind"], cubin["props"]["source"]) == ("index", index)
    assert cubin["hashes"][0]["content"] == file_sha256(source) and cubin["props"]["wheel-sha256-from"] == "index"
    again = build(run_cli, tmp_path / "b", "index+" + secret, *cache)["wheel"]  # from the cache this time
    assert again.read_bytes() == raw


def test_conda_package_carries_the_same_document(run_cli, small_cubin_wheel, tmp_path):
    built = build(run_cli, tmp_path / "out", str(small_cubin_wheel(VERSION)), "--no-cache",
                  "--format", "wheel,conda,conda-bz2")
    wheel_doc = zipfile.ZipFile(built["wheel"]).read(SBOM)
    for kind in ("conda", "conda-bz2"):
        info = {m.name: tar.extractfile(m).read() for tar, m in stream_conda_info(str(built[kind]))}
        assert info[f"info/sboms/{SBOM_NAME}"] == wheel_doc, kind


def test_installer_and_pip_accept_the_wheel(run_cli, small_cubin_wheel, tmp_path):
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    wheel = build(run_cli, tmp_path / "out", str(small_cubin_wheel(VERSION)), "--no-cache")["wheel"]
    scheme = {k: str(tmp_path / "scheme" / k) for k in ("purelib", "platlib", "headers", "scripts", "data")}
    with WheelFile.open(wheel) as source:
        source.validate_record()
        install(source, SchemeDictionaryDestination(scheme, sys.executable, "#!python"), {})
    assert (Path(scheme["purelib"]) / SBOM).is_file()
    target = tmp_path / "target"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                          str(target), str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert (target / SBOM).read_bytes() == zipfile.ZipFile(wheel).read(SBOM)
    record = (target / SBOM).parent.parent / "RECORD"
    assert f"{SBOM}," in record.read_text()


def test_doctor_shows_the_installed_packages_provenance(run_cli, small_cubin_wheel, tmp_path):
    source = small_cubin_wheel(VERSION)
    wheel = build(run_cli, tmp_path / "out", str(source), "--no-cache")["wheel"]
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    result = run_cli("doctor", "--python", sys.executable, "--json", env={"PYTHONPATH": str(target)})
    provenance = json.loads(result.stdout)["provenance"]
    assert provenance == {"source_kind": "wheel", "source": str(source.parent.resolve()), "wheel": source.name,
                          "wheel_sha256": file_sha256(source),
                          "checksums_sha256": synthetic.checksums_sha256(),
                          "files": 18}
    text = run_cli("doctor", "--python", sys.executable, env={"PYTHONPATH": str(target)})
    assert f"flashinfer-cubin-headers provenance: 18 files from wheel {source.parent.resolve()}, wheel {source.name}" \
        in text.stdout


@pytest.mark.parametrize("damage", [b"{not json", b"[]"])
def test_doctor_says_when_the_sbom_is_unreadable(run_cli, small_cubin_wheel, tmp_path, damage):
    wheel = build(run_cli, tmp_path / "out", str(small_cubin_wheel(VERSION)), "--no-cache")["wheel"]
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    (target / SBOM).write_bytes(damage)
    result = run_cli("doctor", "--python", sys.executable, "--json", env={"PYTHONPATH": str(target)})
    assert json.loads(result.stdout)["provenance"]["error"].startswith(f"cannot read {target / SBOM}")


def test_a_damaged_provenance_record_in_the_cache_costs_only_the_provenance(run_cli, small_cubin_wheel, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    build(run_cli, tmp_path / "a", str(small_cubin_wheel(VERSION)), *cache)
    records = list((tmp_path / "cache" / "provenance").glob("*.json"))
    assert len(records) == 1
    records[0].write_bytes(b"\x00not json")
    again = build(run_cli, tmp_path / "b", "cache", *cache)["wheel"]
    cubin = component(sbom_of(again), "flashinfer-cubin")
    assert (cubin["props"]["source-kind"], "hashes" in cubin) == ("cache", False)


def test_the_sbom_says_the_pins_were_read_from_the_code(run_cli, small_cubin_wheel, tmp_path):
    """A version with no shipped plan is built from a plan read from flashinfer-python's code: the SBOM says that."""
    derived = sbom_of(build(run_cli, tmp_path / "derived", str(small_cubin_wheel(VERSION)), "--no-cache")["wheel"])
    assert component(derived, "flashinfer-python")["props"]["pins-from"].startswith("flashinfer-python's own code")


@pytest.mark.real  # only a released version has a shipped plan, and only its real files match it
def test_the_sbom_says_when_the_shipped_pins_were_not_checked(run_cli, small_cubin_wheel, tmp_path):
    """A build from a local wheel with no flashinfer-python code at hand uses the shipped plan unchecked: the
    SBOM says so rather than claiming what was not done."""
    result = run_cli("build", REAL, "-o", str(tmp_path / "shipped"), "--json", "--no-cache",
                     "--from", str(small_cubin_wheel(REAL)))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(json.loads(result.stdout)["artifacts"][0]["path"]) as zf:
        shipped = json.loads(zf.read(f"flashinfer_cubin_headers-{REAL}.dist-info/sboms/{SBOM_NAME}"))
    pins = component(shipped, "flashinfer-python")
    assert "NOT checked" in pins["props"]["pins-from"]
    assert (pins["version"], pins["props"]["checksum-hash"]) == (REAL, REAL_PIN)
