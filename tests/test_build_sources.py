"""``flashinfer-repack build`` from every source, and every way a source can fail.

The CLI runs in a subprocess as a user would run it.  The network sources are a
real HTTP server on 127.0.0.1 (``tests/support/servers.py``) serving the real
flashinfer-cubin 0.6.6 wheel, a small wheel made of its 19 BMM members, and an
artifactory layout extracted from it; the server misbehaves on request.  A
failure must be one ``error:`` line and one ``hint:`` line, exit code 1, no
traceback, and no file at all in the output directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from repack.errors import IntegrityError
from repack.fetch.verify import parse_checksums, verified_payload
from tests.support import synthetic
from tests.support.envs import closed_port
from tests.support.servers import CUBIN_ROOT, member_data_offset

VERSION = synthetic.VERSION
PLAN = synthetic.plan()
FAST = ("--retries", "1", "--timeout", "2")
ENUMS = PLAN.source_path("BatchedGemmEnums.h")
MMA = PLAN.source_path("trtllm/gen/MmaDecl.h")


def build(run_cli, out: Path, *sources: str, options=FAST, extra=(), env=None):
    args = ["build", VERSION, "-o", str(out), "--json", *options, *extra]
    if "--cache-dir" not in extra:
        args.append("--no-cache")
    for source in sources:
        args += ["--from", source]
    return run_cli(*args, env=env)


def succeeded(result) -> dict:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    return report


def header_transfer(report: dict, plan_server) -> dict:
    """The build's transfer less the requests that read flashinfer-python's code for the plan
    (the synthetic version has no shipped plan); the plan server's log is cleared for the next build."""
    plan = {"requests": plan_server.requests(), "bytes": plan_server.bytes_sent()}
    plan_server.log.clear()
    return {k: report["transfer"][k] - plan[k] for k in ("requests", "bytes")}


def failed(result, out: Path) -> str:
    """Assert a clean failure; return the error line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("flashinfer-repack: error: ")]
    hints = [line for line in lines if line.startswith("  hint: ") and len(line) > len("  hint: ")]
    assert (len(errors), len(hints), len(lines)) == (1, 1, 2), result.stderr
    assert not out.exists() or list(out.rglob("*")) == [], f"files left behind: {list(out.rglob('*'))}"
    return errors[0]


def payload_of(wheel) -> dict[str, bytes]:
    """A wheel's members but its SBOM and RECORD: the SBOM names the source, so it differs by source."""
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n) for n in zf.namelist() if "/sboms/" not in n and not n.endswith("/RECORD")}


def sbom_source_kind(report: dict) -> str:
    with zipfile.ZipFile(report["artifacts"][0]["path"]) as zf:
        doc = json.loads(zf.read(next(n for n in zf.namelist() if "/sboms/" in n)))
    cubin = next(c for c in doc["components"] if c["name"] == "flashinfer-cubin")
    return next(p["value"] for p in cubin["properties"] if p["name"].endswith(":source-kind"))


@pytest.fixture(scope="module")
def reference_payload(headers_wheel) -> dict[str, bytes]:
    """The members of the wheel built from the local real flashinfer-cubin wheel (its SBOM aside)."""
    return payload_of(headers_wheel(VERSION))


def installed_site(tmp_path: Path, tree: Path, wheel: Path) -> Path:
    """A site-packages with flashinfer-cubin's real dist-info and the BMM part of its cubins tree."""
    site = tmp_path / "site-packages"
    shutil.copytree(tree, site / "flashinfer_cubin" / "cubins")
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(f"flashinfer_cubin-{VERSION}.dist-info/"):
                (site / name).parent.mkdir(parents=True, exist_ok=True)
                (site / name).write_bytes(zf.read(name))
    return site


# -- every source gives the same wheel ----------------------------------------------------

SOURCES = ["wheel", "index-json-ranges", "index-html-ranges", "index-no-ranges", "url-wheel-ranges",
           "url-wheel-no-ranges", "artifactory-url", "artifactory-dir", "cubins-dir", "installed"]


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_builds_the_same_wheel(kind, run_cli, tmp_path, file_server, cubin_wheel,
                                            small_cubin_wheel, artifactory_tree, reference_payload, plan_server):
    real, small, tree = cubin_wheel(VERSION), small_cubin_wheel(VERSION), artifactory_tree(VERSION)
    env, ranged = None, not kind.endswith("no-ranges")
    if kind == "wheel":
        spec = str(real)
    elif kind.startswith("index"):
        file_server.ranges = ranged
        file_server.index_format = "html" if "html" in kind else "json"
        spec = "index+" + file_server.serve_project("flashinfer-cubin", [real if file_server.ranges else small])
    elif kind.startswith("url-wheel"):
        file_server.ranges = ranged
        spec = file_server.serve_file(f"dl/{real.name}", real if file_server.ranges else small)
    elif kind == "artifactory-url":
        spec = file_server.serve_tree("artifactory", tree)
    elif kind == "artifactory-dir":
        spec = str(tree)
    else:
        site = installed_site(tmp_path, tree, real)
        spec = str(site / "flashinfer_cubin" / "cubins") if kind == "cubins-dir" else "installed"
        env = {"PYTHONPATH": str(site)}
    report = succeeded(build(run_cli, tmp_path / "out", spec, env=env))

    assert payload_of(report["artifacts"][0]["path"]) == reference_payload
    assert sbom_source_kind(report) == {"wheel": "wheel", "artifactory-url": "artifactory"}.get(
        kind, "index" if kind.startswith("index") else "remote-wheel" if kind.startswith("url") else "directory")
    assert report["source"] != "cache"
    transfer = header_transfer(report, plan_server)
    assert transfer["requests"] == file_server.requests()
    wheel_gets = [entry for entry in file_server.log if entry.path.startswith(("/files/", "/dl/"))]
    if kind.endswith("-ranges") and ranged:  # a few ranges, not the 268 MB wheel
        assert transfer["bytes"] == file_server.bytes_sent() < real.stat().st_size / 50
        assert len(wheel_gets) <= 5 and all(entry.status == 206 for entry in wheel_gets)
    if not ranged:  # the ranged try is answered whole and dropped unread; then one stream
        assert [entry.status for entry in wheel_gets] == [200, 200]
        assert wheel_gets[-1].sent == small.stat().st_size
        assert transfer["bytes"] == file_server.bytes_sent("/simple/*") + small.stat().st_size
    if kind == "artifactory-url":
        assert file_server.requests() == 1 + len(PLAN.headers)
    if kind in ("wheel", "artifactory-dir", "cubins-dir", "installed"):
        assert file_server.log == []


def test_html_index_without_sizes_uses_a_suffix_range(run_cli, tmp_path, file_server, cubin_wheel):
    file_server.index_format = "html"
    index = file_server.serve_project("flashinfer-cubin", [cubin_wheel(VERSION)])
    succeeded(build(run_cli, tmp_path / "out", "index+" + index))
    first = next(entry for entry in file_server.log if entry.path.startswith("/files/"))
    assert first.range.startswith("bytes=-") and first.status == 206


def test_streaming_the_real_wheel_without_ranges(run_cli, tmp_path, file_server, cubin_wheel, reference_payload,
                                                 plan_server):
    """The whole wheel, checked against the index's sha256 (its time: benchmarks/bench_build.py)."""
    real = cubin_wheel(VERSION)
    file_server.ranges = False
    index = file_server.serve_project("flashinfer-cubin", [real])
    report = succeeded(build(run_cli, tmp_path / "out", "index+" + index))
    assert payload_of(report["artifacts"][0]["path"]) == reference_payload
    wheel_gets = [entry for entry in file_server.log if entry.path.startswith("/files/")]
    assert [entry.status for entry in wheel_gets] == [200, 200]  # the ranged try, dropped; the stream
    assert wheel_gets[-1].sent == real.stat().st_size
    assert header_transfer(report, plan_server)["bytes"] == file_server.bytes_sent("/simple/*") + real.stat().st_size


# -- misbehaving servers ---------------------------------------------------------------

MISBEHAVIOURS = {  # id: (kind, options, words expected in the error line)
    "403": ("status", {"status": 403}, ["HTTP 403"]),
    "404": ("status", {"status": 404}, ["HTTP 404"]),
    "500-permanent": ("status", {"status": 500}, ["HTTP 500", "after 2 attempts"]),
    "reset": ("reset", {}, ["reset"]),
    "truncate": ("truncate", {}, ["truncated"]),
    "slow": ("slow", {"delay": 5.0}, ["timed out"]),
}
#: the hint follows the failure: 403 means credentials, 404 a wrong URL
HINT_WORDS = {"403": "credentials", "404": "url"}
#: an index that answers 404 for a project page says the project is not there
WORDS_FOR = {("404", "index-page"): ["has no project flashinfer-cubin"]}
TARGETS = {  # id: (what is served, the path that misbehaves)
    "artifactory": ("artifactory", "/artifactory/*/checksums.txt"),
    "wheel-by-range": ("index", "/files/*"),
    "index-page": ("index", "/simple/*"),
}


def serve(target: str, server, cubin_wheel, artifactory_tree) -> str:
    if target == "artifactory":
        return server.serve_tree("artifactory", artifactory_tree(VERSION))
    return "index+" + server.serve_project("flashinfer-cubin", [cubin_wheel(VERSION)])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MISBEHAVIOURS)
def test_misbehaving_server_fails_cleanly(name, target, run_cli, tmp_path, file_server, cubin_wheel,
                                          artifactory_tree):
    kind, options, words = MISBEHAVIOURS[name]
    what, pattern = TARGETS[target]
    spec = serve(what, file_server, cubin_wheel, artifactory_tree)
    file_server.misbehave(pattern, kind, **options)
    out = tmp_path / "out"
    result = build(run_cli, out, spec, options=("--retries", "1", "--timeout", "0.5"))
    error = failed(result, out)
    for word in WORDS_FOR.get((name, target), words):
        assert word.lower() in error.lower(), error
    hint = result.stderr.splitlines()[-1].lower()
    assert HINT_WORDS.get(name, "") in hint, hint
    retried = kind != "status" or options["status"] >= 500
    assert file_server.requests(pattern) == (2 if retried else 1)


def test_transient_500_then_success_thanks_to_retries(run_cli, tmp_path, file_server, artifactory_tree,
                                                      reference_payload, plan_server):
    base = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    rule = file_server.misbehave("/artifactory/*/checksums.txt", "status", status=500, times=2)
    report = succeeded(build(run_cli, tmp_path / "out", base, options=("--retries", "2", "--timeout", "2")))
    assert payload_of(report["artifacts"][0]["path"]) == reference_payload
    assert rule.hits == 2
    assert [e.status for e in file_server.log if e.path.endswith("checksums.txt")] == [500, 500, 200]
    assert header_transfer(report, plan_server)["requests"] == file_server.requests() == 3 + len(PLAN.headers)


def test_transient_500_fails_without_retries(run_cli, tmp_path, file_server, artifactory_tree):
    base = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    file_server.misbehave("/artifactory/*/checksums.txt", "status", status=500, times=1)
    out = tmp_path / "out"
    assert "HTTP 500" in failed(build(run_cli, out, base, options=("--retries", "0", "--timeout", "2")), out)


def test_transient_failures_over_ranges_are_retried(run_cli, tmp_path, file_server, cubin_wheel, reference_payload,
                                                    plan_server):
    index = file_server.serve_project("flashinfer-cubin", [cubin_wheel(VERSION)])
    unavailable = file_server.misbehave("/simple/*", "status", status=503, times=1)
    reset = file_server.misbehave("/files/*", "reset", times=1)
    report = succeeded(build(run_cli, tmp_path / "out", "index+" + index))
    assert payload_of(report["artifacts"][0]["path"]) == reference_payload
    assert (unavailable.hits, reset.hits) == (1, 1)
    assert header_transfer(report, plan_server)["requests"] == file_server.requests()


def test_two_tampered_headers_are_both_named(run_cli, tmp_path, file_server, artifactory_tree):
    base = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    file_server.misbehave("/artifactory/" + ENUMS, "tamper", offset=100)
    file_server.misbehave("/artifactory/" + MMA, "tamper", offset=7)
    out = tmp_path / "out"
    result = build(run_cli, out, base)
    error = failed(result, out)
    assert "2 file(s)" in error and "BatchedGemmEnums.h" in error and "trtllm/gen/MmaDecl.h" in error
    problems = json.loads(result.stdout)["problems"]
    assert len(problems) == 2 and problems[0].startswith("BatchedGemmEnums.h: sha256 ")


def test_tampered_checksums_file_fails_the_pin(run_cli, tmp_path, file_server, artifactory_tree):
    base = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    file_server.misbehave("/artifactory/*/checksums.txt", "tamper", offset=5)
    out = tmp_path / "out"
    error = failed(build(run_cli, out, base), out)
    assert PLAN.checksums_sha256 in error and "CheckSumHash" in error


def test_tampered_wheel_by_range_is_refused(run_cli, tmp_path, file_server, cubin_wheel):
    real = cubin_wheel(VERSION)
    index = file_server.serve_project("flashinfer-cubin", [real])
    file_server.misbehave("/files/*", "tamper", offset=member_data_offset(real, CUBIN_ROOT + ENUMS) + 10)
    out = tmp_path / "out"
    error = failed(build(run_cli, out, "index+" + index), out)
    assert f"member {CUBIN_ROOT + ENUMS} is damaged" in error  # zip's CRC-32, before any hash


def test_tampered_wheel_streamed_whole_fails_the_index_hash(run_cli, tmp_path, file_server, small_cubin_wheel):
    small = small_cubin_wheel(VERSION)
    file_server.ranges = False
    index = file_server.serve_project("flashinfer-cubin", [small])
    file_server.misbehave("/files/*", "tamper", offset=1000)
    out = tmp_path / "out"
    error = failed(build(run_cli, out, "index+" + index), out)
    assert "does not match the index's" in error


@pytest.mark.parametrize("fault", ["tamper-header", "tamper-checksums", "unsafe-symlink"])
def test_a_source_that_fails_verification_gives_way_to_the_next(run_cli, tmp_path, file_server, artifactory_tree,
                                                                 reference_payload, fault):
    """Bad bytes (or an unsafe file) from one source are that source's failure: it is named, with a warning,
    and the next source is tried; what ships is still only bytes verified against the pin."""
    bad = tmp_path / "bad-tree"
    shutil.copytree(artifactory_tree(VERSION), bad)
    if fault == "tamper-header":
        (bad / ENUMS).write_bytes(b"tampered")
    elif fault == "tamper-checksums":
        (bad / PLAN.checksums_path).write_bytes(b"0" * 64 + b"  x\n")
    else:
        target = bad / ENUMS
        target.unlink()
        target.symlink_to("/etc/hostname")
    good = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    out = tmp_path / "out"
    result = run_cli("build", VERSION, "-o", str(out), "--no-cache", "--from", str(bad), "--from", good, "--json")
    report = succeeded(result)
    assert payload_of(report["artifacts"][0]["path"]) == reference_payload
    assert str(bad) in result.stderr and "trying the next source" in result.stderr


def test_a_single_source_that_fails_verification_still_fails_the_build(run_cli, tmp_path, artifactory_tree):
    bad = tmp_path / "bad-tree"
    shutil.copytree(artifactory_tree(VERSION), bad)
    (bad / PLAN.checksums_path).write_bytes(b"0" * 64 + b"  x\n")
    out = tmp_path / "out"
    result = run_cli("build", VERSION, "-o", str(out), "--no-cache", "--from", str(bad), "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["kind"] == "IntegrityError"
    assert not out.exists() or list(out.iterdir()) == []


# -- versions, unreachable hosts, malformed archives ------------------------------------------

@pytest.fixture
def local_index(file_server, small_cubin_wheel, python_wheel) -> str:
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel(VERSION)])
    return file_server.serve_project("flashinfer-python", [python_wheel(synthetic.FIXED)])


def test_unknown_version_is_an_error(run_cli, tmp_path, local_index):
    out = tmp_path / "out"
    result = run_cli("build", "9.9.9", "-o", str(out), "--no-cache", "--index-url", local_index,
                     "--from", "index+" + local_index, *FAST)
    error = failed(result, out)
    assert "flashinfer-python 9.9.9 is not on" in error and synthetic.FIXED in error


def test_unaffected_version_is_refused_with_the_reason(run_cli, tmp_path, local_index, file_server, python_wheel):
    out = tmp_path / "out"
    result = run_cli("build", synthetic.FIXED, "-o", str(out), "--no-cache", "--index-url", local_index,
                     "--from", "index+" + local_index, *FAST)
    error = failed(result, out)
    assert f"{synthetic.FIXED} needs no flashinfer-cubin-headers package" in error
    assert "never calls download_trtllm_headers" in result.stderr
    # the plan was read from flashinfer-python's code by ranges; the cubin wheel was never touched
    assert 0 < file_server.bytes_sent("/files/flashinfer_python-*") < python_wheel(synthetic.FIXED).stat().st_size / 4
    assert file_server.requests("/files/flashinfer_cubin-*") == 0


def test_unreachable_index(run_cli, tmp_path):
    out = tmp_path / "out"
    index = f"http://127.0.0.1:{closed_port()}/simple/"
    error = failed(build(run_cli, out, "index+" + index, options=("--retries", "0", "--timeout", "2")), out)
    assert "connection refused" in error and "127.0.0.1" in error


@pytest.mark.parametrize("where", ["local", "index"])
def test_a_file_that_is_not_a_zip(where, run_cli, tmp_path, file_server):
    junk = tmp_path / "junk" / f"flashinfer_cubin-{VERSION}-py3-none-any.whl"
    junk.parent.mkdir()
    junk.write_bytes(b"<html>not a wheel</html>\n" * 4000)
    spec = str(junk) if where == "local" else "index+" + file_server.serve_project("flashinfer-cubin", [junk])
    out = tmp_path / "out"
    assert "not a zip archive" in failed(build(run_cli, out, spec), out)


def test_a_zip_whose_member_names_escape(run_cli, tmp_path, small_cubin_wheel):
    evil = tmp_path / "evil" / f"flashinfer_cubin-{VERSION}-py3-none-any.whl"
    evil.parent.mkdir()
    with zipfile.ZipFile(small_cubin_wheel(VERSION)) as src, zipfile.ZipFile(evil, "w") as zf:
        for info in src.infolist():
            zf.writestr(info, src.read(info))
        zf.writestr("../x", b"outside")
    out = tmp_path / "out"
    error = failed(build(run_cli, out, str(evil)), out)
    assert "escapes" in error and "'../x'" in error


# -- checksum lines that name paths outside the artifact (library level) -----------------------

def real_checksums(cubin_wheel) -> bytes:
    with zipfile.ZipFile(cubin_wheel(VERSION)) as zf:
        return zf.read(CUBIN_ROOT + PLAN.checksums_path)


@pytest.mark.parametrize("name", ["../x", "include/../../x", "/etc/passwd", "..", "./Enums.h", "C:/x"])
def test_checksums_lines_that_escape_are_refused(name, cubin_wheel, artifactory_tree):
    crafted = real_checksums(cubin_wheel) + f"{'0' * 64}  {name}\n".encode()
    with pytest.raises(IntegrityError, match="unsafe path"):
        parse_checksums(crafted)
    plan = dataclasses.replace(PLAN, checksums_sha256=hashlib.sha256(crafted).hexdigest())
    tree = artifactory_tree(VERSION)
    headers = {h: (tree / PLAN.source_path(h)).read_bytes() for h in PLAN.headers}
    with pytest.raises(IntegrityError, match="unsafe path") as caught:
        verified_payload(plan, crafted, headers)
    last_line = len(crafted.splitlines())
    assert caught.value.problems == (f"line {last_line}: unsafe path {name!r}",)


def test_the_real_checksums_pass_the_same_checks(cubin_wheel, artifactory_tree):
    """The control for the test above: only the crafted line makes it fail."""
    data = real_checksums(cubin_wheel)
    tree = artifactory_tree(VERSION)
    payload = verified_payload(PLAN, data, {h: (tree / PLAN.source_path(h)).read_bytes() for h in PLAN.headers})
    assert len(payload.files) == len(PLAN.headers) + 1
    assert len(parse_checksums(data)) == len(data.splitlines())


# -- the cache ---------------------------------------------------------------------------------

def test_second_build_makes_no_request_and_a_damaged_blob_is_fetched_again(run_cli, tmp_path, file_server,
                                                                           artifactory_tree, reference_payload,
                                                                           plan_server):
    base = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    cache = ("--cache-dir", str(tmp_path / "cache"))
    first = succeeded(build(run_cli, tmp_path / "out1", base, extra=cache))
    assert header_transfer(first, plan_server)["requests"] == file_server.requests() == 1 + len(PLAN.headers)

    second = succeeded(build(run_cli, tmp_path / "out2", base, extra=cache))
    assert second["source"] == "cache" and header_transfer(second, plan_server)["requests"] == 0
    assert file_server.requests() == 1 + len(PLAN.headers)
    assert second["artifacts"][0]["sha256"] == first["artifacts"][0]["sha256"]  # the cache keeps the provenance
    assert payload_of(second["artifacts"][0]["path"]) == reference_payload

    blob = tmp_path / "cache" / "sha256" / PLAN.header_sha256["Enums.h"][:2] / PLAN.header_sha256["Enums.h"]
    good = blob.read_bytes()
    blob.write_bytes(good[:-1] + b"\0")
    third = succeeded(build(run_cli, tmp_path / "out3", base, extra=cache))
    assert third["source"] != "cache" and header_transfer(third, plan_server)["requests"] == 1 + len(PLAN.headers)
    assert payload_of(third["artifacts"][0]["path"]) == reference_payload
    assert blob.read_bytes() == good


def test_server_fixture_collapses_double_slashes_and_answers_suffix_ranges(file_server, artifactory_tree):
    """The fixture itself: flashinfer asks for ``<artifact>//include/...``; Range as PyPI's host does."""
    import requests

    base = file_server.serve_tree("artifactory", artifactory_tree(VERSION))
    whole = requests.get(base + PLAN.artifact_path + "/" + PLAN.header_dir + "/BatchedGemmEnums.h", timeout=5)
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == PLAN.header_sha256["BatchedGemmEnums.h"]
    tail = requests.get(base + ENUMS, headers={"Range": "bytes=-10"}, timeout=5)
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    size = len(whole.content)
    assert tail.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"
    assert file_server.bytes_sent() == len(whole.content) + 10 and file_server.requests() == 2
