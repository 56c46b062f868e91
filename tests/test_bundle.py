"""``bundle VERSION -o DIR``: built once from a local index serving the real flashinfer-python and
flashinfer-cubin 0.6.6 wheels (with interrupted downloads left in place), then used with no index:
real pip installs from it and vLLM's snippet starts offline; py-rattler solves and installs from its
conda channel (stand-ins only for python, pytorch and flashinfer's other third-party requirements)
and the snippet starts offline from that conda prefix too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from repack.build.conda_archive import Member, conda_bytes
from repack.fetch.digest import file_sha256
from repack.publish.channel import write_repodata
from tests.support.envs import PROJECTS, closed_port, light_requirements
from tests.support.servers import FileServer
from tests.support.tinywheel import make_wheel

pytestmark = pytest.mark.slow
VERSION = "0.6.6"
EXPORT = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"
RESUMED_BYTES = 4_000_000   # what an interrupted run had already fetched of flashinfer-cubin (trimmed: 10 MB)
GPU_ONLY = {"nvidia-cutlass-dsl": "4.3.4", "nvidia-cudnn-frontend": "1.13.0"}


@pytest.fixture(scope="module")
def index_server(python_wheel, cubin_wheel):
    with FileServer() as server:
        server.serve_project("flashinfer-python", [python_wheel(VERSION)])
        server.serve_project("flashinfer-cubin", [cubin_wheel(VERSION)])
        yield server


@pytest.fixture(scope="module")
def bundled(tmp_path_factory, index_server, cubin_wheel):
    """The bundle, made by the CLI into a directory where an earlier run was interrupted: the first
    100 MB of flashinfer-cubin in its .part, 1 MB of other bytes in flashinfer-python's .part (the
    index changed since), and a temporary that a killed streaming download left behind."""
    from tests.conftest import cli

    out = tmp_path_factory.mktemp("bundle")
    wheels = out / "wheels"
    wheels.mkdir()
    cubin = cubin_wheel(VERSION)
    with open(cubin, "rb") as src:
        (wheels / f"{cubin.name}.part").write_bytes(src.read(RESUMED_BYTES))
    (wheels / f"flashinfer_python-{VERSION}-py3-none-any.whl.part").write_bytes(b"\0" * 1_000_000)
    (wheels / f".{cubin.name}.4242.part").write_bytes(b"stale")
    result = cli("bundle", VERSION, "-o", str(out), "--index-url", index_server.index_url, "--json")
    assert result.returncode == 0, result.stderr
    return {"out": out, "report": json.loads(result.stdout),
            "sent": {p: index_server.bytes_sent(f"/files/{p}*") for p in ("flashinfer_python", "flashinfer_cubin")}}


def test_interrupted_downloads_resume(bundled, python_wheel, cubin_wheel):
    cubin, python = cubin_wheel(VERSION), python_wheel(VERSION)
    assert bundled["report"]["fetched"] == {python.name: "downloaded", cubin.name: "resumed"}
    assert bundled["sent"]["flashinfer_cubin"] == cubin.stat().st_size - RESUMED_BYTES
    # the foreign partial bytes failed the sha256 and were fetched again from the start
    assert bundled["sent"]["flashinfer_python"] >= python.stat().st_size
    wheels = bundled["out"] / "wheels"
    assert file_sha256(wheels / cubin.name) == file_sha256(cubin) and file_sha256(wheels / python.name) == file_sha256(python)
    assert not list(wheels.glob("*.part")) and not list(wheels.glob(".*"))


def test_manifest_lists_every_file_with_its_sha256(bundled):
    out = bundled["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() and p.name != "manifest.json" and not any(s.startswith(".") for s in p.parts))
    assert [f["path"] for f in manifest["files"]] == on_disk
    for f in manifest["files"]:
        assert (f["sha256"], f["size"]) == (file_sha256(out / f["path"]), (out / f["path"]).stat().st_size), f["path"]
    names = {Path(f["path"]).name for f in manifest["files"]}
    for expected in (f"flashinfer_cubin_headers-{VERSION}-py3-none-any.whl", "repodata.json", "README.txt",
                     f"flashinfer_cubin-{VERSION}-py3-none-any.whl.metadata", "conda-map.json"):
        assert expected in names
    conda = sorted(p.name.rsplit("-", 2)[0] for p in (out / "conda" / "noarch").glob("*.conda"))
    assert conda == ["flashinfer-cubin", "flashinfer-cubin-headers", "flashinfer-python"]


def test_rerun_downloads_nothing_and_writes_the_same_bytes(bundled, index_server):
    from tests.conftest import cli

    out = bundled["out"]
    before = {p: p.read_bytes() for p in [out / "manifest.json", out / "conda" / "noarch" / "repodata.json"]}
    sent = index_server.bytes_sent("/files/*")
    result = cli("bundle", VERSION, "-o", str(out), "--index-url", index_server.index_url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["fetched"].values()) == {"present"} and report["transferred_bytes"] == 0
    assert index_server.bytes_sent("/files/*") == sent
    assert {p: p.read_bytes() for p in before} == before


def offline_env(**extra: str) -> dict:
    """No index, no pip configuration, and any HTTP(S) attempt sent to a closed port."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "FLASHINFER_", "PYTHON"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "http_proxy": proxy, "https_proxy": proxy,
                "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": "", "no_proxy": ""}, **extra)
    return env


def test_pip_installs_from_the_bundle_with_no_index_and_flashinfer_starts_offline(
        bundled, flashinfer_env, python_wheel, tmp_path):
    out = bundled["out"]
    flashinfer_env.remove(*PROJECTS)
    flashinfer_env.pip("install", "-q", *light_requirements(python_wheel(VERSION)))  # the site's own mirror
    # GPU-only requirements lie outside FlashInfer and outside the bundle: small stand-ins, found beside it
    standins = [make_wheel(tmp_path / "gpu-only", name, v, files={f"standin_{name.replace('-', '_')}.py": b""})
                for name, v in GPU_ONLY.items()]
    try:
        done = subprocess.run([str(flashinfer_env.python), "-m", "pip", "install", "--no-index",
                               "--find-links", str(out / "wheels"), "--find-links", str(standins[0].parent),
                               f"flashinfer-cubin-headers=={VERSION}"],
                              capture_output=True, text=True, env=offline_env())
        assert done.returncode == 0, done.stdout + done.stderr
        installed = flashinfer_env.installed()
        assert {p: installed.get(p) for p in PROJECTS} == dict.fromkeys(PROJECTS, VERSION)

        result = flashinfer_env.run_snippet()
        assert result["ok"], result
        assert result["connects"] == []

        dry = subprocess.run([str(flashinfer_env.python), "-m", "pip", "install", "--dry-run", "--no-deps",
                              "--ignore-installed", "--index-url", (out / "simple").as_uri() + "/",
                              *(f"{p}=={VERSION}" for p in PROJECTS)],
                             capture_output=True, text=True, env=offline_env(PIP_NO_INDEX="0"))
        assert dry.returncode == 0, dry.stderr
        assert "Would install flashinfer-cubin-0.6.6 flashinfer-cubin-headers-0.6.6 flashinfer-python-0.6.6" in dry.stdout
    finally:
        flashinfer_env.remove(*PROJECTS, *GPU_ONLY)


def standin_channel(root: Path, packages: dict[str, str]) -> Path:
    """A channel of empty packages for what lies outside FlashInfer (python is linux-64, the rest noarch)."""
    for name, version in packages.items():
        subdir = "linux-64" if name == "python" else "noarch"
        index = {"name": name, "version": version, "build": "standin_0", "build_number": 0, "depends": [],
                 "subdir": subdir, "timestamp": 315532800000, **({"noarch": "generic"} if subdir == "noarch" else {})}
        info = [Member("info/index.json", json.dumps(index).encode()),
                Member("info/paths.json", b'{"paths": [], "paths_version": 1}')]
        stem = f"{name}-{version}-standin_0"
        (root / subdir).mkdir(parents=True, exist_ok=True)
        (root / subdir / f"{stem}.conda").write_bytes(conda_bytes(stem, info, [], 315532800))
    for subdir in ("noarch", "linux-64"):
        write_repodata(root / subdir, subdir)
    return root


def test_rattler_solves_and_installs_from_the_bundle_channel(bundled, flashinfer_env, python_wheel, tmp_path):
    import rattler

    outside = {"python": "3.11.7", "pytorch": "2.13.0", "apache-tvm-ffi": "0.1.9", "click": "8.1", "einops": "0.8",
               "ninja": "1.11", "numpy": "2.0", "nvidia-ml-py": "12.0", "packaging": "24.2", "requests": "2.32",
               "tabulate": "0.9", "tqdm": "4.66", **GPU_ONLY}
    standins = standin_channel(tmp_path / "standins", outside)
    bundle_channel = (bundled["out"] / "conda").as_uri()
    records = asyncio.run(rattler.solve([rattler.Channel(bundle_channel), rattler.Channel(standins.as_uri())],
                                        ["flashinfer-cubin-headers"], platforms=["linux-64", "noarch"]))
    solved = {r.name.normalized: (str(r.version), r.channel.rstrip("/")) for r in records}
    for project in PROJECTS:
        assert solved.pop(project) == (VERSION, bundle_channel.rstrip("/"))
    assert set(solved) == set(outside)  # everything else is a stand-in: FlashInfer came from the bundle

    prefix = tmp_path / "prefix"
    asyncio.run(rattler.install(records, prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    site = prefix / "lib" / "python3.11" / "site-packages"
    assert (site / EXPORT / "BatchedGemmEnums.h").is_file()
    assert (site / "flashinfer_cubin" / "__init__.py").is_file()  # from the converted flashinfer-cubin
    assert (site / f"flashinfer_python-{VERSION}.dist-info" / "INSTALLER").read_text() == "conda\n"
    assert (prefix / "bin" / "flashinfer").is_file()  # the console script, made by the installer

    # the installed conda prefix is what flashinfer runs from: with torch and the light requirements of
    # the shared venv, and no flashinfer of its own there
    flashinfer_env.remove(*PROJECTS)
    flashinfer_env.pip("install", "-q", *light_requirements(python_wheel(VERSION)))
    result = flashinfer_env.run_snippet(env={"PYTHONPATH": str(site)})
    assert result["ok"], result
    assert result["connects"] == []
    assert result["cubin_dir"] == str(site / "flashinfer_cubin" / "cubins")


def test_rerun_with_other_inputs_replaces_our_wheel_everywhere(bundled, index_server):
    """Another SOURCE_DATE_EPOCH (or another flashinfer-repack) gives other bytes for our wheel: both
    copies, wheels/ and simple/, and the manifest move together; nothing is downloaded again."""
    from tests.conftest import cli

    out = bundled["out"]
    ours = f"flashinfer_cubin_headers-{VERSION}-py3-none-any.whl"
    before = file_sha256(out / "wheels" / ours)
    converted_before = {c.name: file_sha256(c) for c in (out / "conda" / "noarch").glob("flashinfer-python-*.conda")}
    try:
        result = cli("bundle", VERSION, "-o", str(out), "--index-url", index_server.index_url, "--json",
                     env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["transferred_bytes"] == 0
        after = file_sha256(out / "wheels" / ours)
        assert after != before and file_sha256(out / "simple" / "flashinfer-cubin-headers" / ours) == after
        converted = sorted((out / "conda" / "noarch").glob("flashinfer-python-*.conda"))
        assert converted and all(file_sha256(c) != converted_before[c.name] for c in converted)  # the epoch is inside
        for f in json.loads((out / "manifest.json").read_text())["files"]:
            assert f["sha256"] == file_sha256(out / f["path"]), f["path"]
    finally:
        assert cli("bundle", VERSION, "-o", str(out), "--index-url", index_server.index_url).returncode == 0


def test_a_tampered_converted_package_is_converted_again(bundled, index_server):
    """A converted package in the channel whose bytes changed since it was made is never vouched for: the
    rerun converts it again, and repodata.json and the manifest name the converted bytes."""
    from tests.conftest import cli

    out = bundled["out"]
    pkg = next((out / "conda" / "noarch").glob("flashinfer-python-*.conda"))
    good = file_sha256(pkg)
    data = bytearray(pkg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pkg.write_bytes(bytes(data))
    result = cli("bundle", VERSION, "-o", str(out), "--index-url", index_server.index_url, "--json")
    assert result.returncode == 0, result.stderr
    assert file_sha256(pkg) == good
    repodata = json.loads((out / "conda" / "noarch" / "repodata.json").read_text())
    assert repodata["packages.conda"][pkg.name]["sha256"] == good
    listed = {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert listed[f"conda/noarch/{pkg.name}"] == good


def test_readme_names_all_three_packages_for_pip_and_conda():
    """conda prunes what was never requested: an install naming only the headers loses flashinfer on removal."""
    from repack.publish.bundle import readme
    from repack.rules.plan import shipped_plan

    text = readme(shipped_plan(VERSION), [])
    installs = [line for line in text.splitlines() if line.strip().startswith(("pip install", "conda install"))]
    assert len(installs) == 3 and any("conda install" in line for line in installs)
    for line in installs:
        for package in ("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers"):
            assert f"{package}={'=' if 'pip' in line else ''}{VERSION}" in line, (package, line)
