"""``flashinfer-repack publish --channel``: a local conda channel that py-rattler solves and installs from.

The channel also holds stand-ins for python and flashinfer (made at test time
by rattler-build's assembler, see tests/support/conda_env.py).  rattler solves
and installs offline from its ``file://`` URL into fresh prefixes for two
Pythons, from the ``.conda`` and from the ``.tar.bz2``.  Bad input must fail
with a clear message and leave every byte of the channel as it was.  Last, in
a prefix with the real flashinfer-python and flashinfer-cubin 0.6.6 (pip),
the conda-installed headers let vLLM's Dockerfile snippet start offline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from repack.rules.plan import shipped_plan
from tests.conftest import cli
from tests.support import synthetic
from tests.support.conda_env import (
    EXPORT_DIR,
    conda_meta,
    files_under,
    python_standin,
    solve,
    solve_and_install,
    standin,
)
from tests.support.envs import real_wheel, trimmed_cubin_wheel

VERSION = synthetic.VERSION
PLAN = synthetic.plan()
REAL = "0.6.6"  # the real tier's flashinfer
PYTHONS = ("3.11", "3.12")


def expected_files(site: str, plan=PLAN) -> dict[str, bytes | str]:
    """Prefix-relative path -> sha256 (headers, as flashinfer pins them) or the exact marker bytes."""
    out: dict[str, bytes | str] = {f"{site}/{EXPORT_DIR}/{h}": plan.header_sha256[h] for h in plan.headers}
    out[f"{site}/{EXPORT_DIR}/{plan.marker_name}"] = plan.marker_bytes
    return out


def assert_headers_installed(prefix: Path, python: str, alone: bool = True, plan=PLAN) -> None:
    """The 18 files at the runtime path; ``alone``: and nothing else under flashinfer_cubin/ (no __init__.py)."""
    site = f"lib/python{python}/site-packages"
    top = "flashinfer_cubin" if alone else "flashinfer_cubin/cubins/flashinfer"
    found = files_under(prefix / site / top)
    want = expected_files(site, plan)
    assert {f"{site}/{top}/{p}" for p in found} == set(want)
    for path, expected in want.items():
        data = (prefix / path).read_bytes()
        assert data == expected if isinstance(expected, bytes) else hashlib.sha256(data).hexdigest() == expected, path
    record = conda_meta(prefix, "flashinfer-cubin-headers")
    assert sorted(record["files"]) == sorted(want)  # conda-meta lists exactly the 18 files, relocated


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root: a channel that must not change."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def publish(channel: Path, *packages: Path, user: str | None = None,
            read_only: Path | None = None) -> subprocess.CompletedProcess:
    """``publish --channel``; as ``user`` (root only), or with ``read_only`` bind-mounted read-only (root only:
    in a mount namespace of its own, so nothing outside the run sees it)."""
    if user is None and read_only is None:
        return cli("publish", "--channel", str(channel), *map(str, packages))
    run = [sys.executable, "-m", "repack", "publish", "--channel", str(channel), *map(str, packages)]
    if user is not None:
        account = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--", *run]
    else:
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
               str(read_only), *run]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHINFER_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=120)


def runs_as(user: str) -> bool:
    """This interpreter can be started as ``user`` (one under a private home, as pyenv's, cannot)."""
    account = pwd.getpwnam(user)
    return subprocess.run(["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                           "--", sys.executable, "-c", "pass"], capture_output=True, cwd="/").returncode == 0


def repodata(channel: Path, subdir: str = "noarch") -> dict:
    return json.loads((channel / subdir / "repodata.json").read_text())


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packages(tmp_path_factory, cubin_wheel) -> dict[str, Path]:
    """Our packages (.conda, .tar.bz2, and the .conda without flashinfer dependencies), built by the CLI."""
    out = tmp_path_factory.mktemp("built")
    found = {}
    for kind, extra in [("default", []), ("pip", ["--conda-no-flashinfer-deps"])]:
        result = cli("build", VERSION, "--format", "conda,conda-bz2", "-o", str(out / kind), "--no-cache", "--json",
                     "--from", str(cubin_wheel(VERSION)), *extra)
        assert result.returncode == 0, result.stderr
        for a in json.loads(result.stdout)["artifacts"]:
            found[f"{kind}-{a['kind']}"] = Path(a["path"])
    return {"conda": found["default-conda"], "bz2": found["default-conda-bz2"], "pip-conda": found["pip-conda"]}


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("standins")
    made = [python_standin(out, f"{py}.9") for py in PYTHONS]
    made += [standin(out, name, VERSION) for name in ("flashinfer-python", "flashinfer-cubin")]
    made.append(standin(out, "flashinfer-cubin", "0.6.5"))  # a wrong version the solver must not pick
    return made


@pytest.fixture
def channel(tmp_path, standins) -> Path:
    path = tmp_path / "channel"
    result = publish(path, *standins)
    assert result.returncode == 0, result.stderr
    return path


# -- publishing ----------------------------------------------------------------------------

def test_publish_indexes_with_size_sha256_md5(channel, packages):
    result = publish(channel, packages["conda"], packages["bz2"])
    assert result.returncode == 0, result.stderr
    assert f"added noarch/{packages['conda'].name}" in result.stdout
    data = repodata(channel)
    assert data["info"] == {"subdir": "noarch"}
    for key, pkg in [("packages.conda", packages["conda"]), ("packages", packages["bz2"])]:
        entry = data[key][pkg.name]
        raw = (channel / "noarch" / pkg.name).read_bytes()
        assert raw == pkg.read_bytes()
        assert (entry["size"], entry["sha256"], entry["md5"]) == (
            len(raw), hashlib.sha256(raw).hexdigest(), hashlib.md5(raw).hexdigest())
        assert entry["name"] == "flashinfer-cubin-headers" and entry["version"] == VERSION
        assert entry["depends"] == ["python >=3.10,<4.0", f"flashinfer-python =={VERSION}",
                                    f"flashinfer-cubin =={VERSION}"]
    assert set(repodata(channel, "linux-64")["packages.conda"]) == {"python-3.11.9-standin_0.conda",
                                                                    "python-3.12.9-standin_0.conda"}
    assert not list(channel.rglob("*.tmp")), "no temporary file may be left behind"


def test_publish_is_idempotent(channel, packages):
    assert publish(channel, packages["conda"]).returncode == 0
    before = snapshot(channel)
    again = cli("publish", "--channel", str(channel), str(packages["conda"]), "--json")
    assert again.returncode == 0, again.stderr
    assert [f["action"] for f in json.loads(again.stdout)["files"]] == ["skipped"]
    assert snapshot(channel) == before


def test_refuses_other_bytes_under_an_existing_name(channel, packages, cubin_wheel, tmp_path):
    assert publish(channel, packages["conda"]).returncode == 0
    before = snapshot(channel)
    later = cli("build", VERSION, "--format", "conda", "-o", str(tmp_path / "later"), "--no-cache", "--json",
                "--from", str(cubin_wheel(VERSION)), env={"SOURCE_DATE_EPOCH": "1800000000"})
    other = Path(json.loads(later.stdout)["artifacts"][0]["path"])
    assert other.name == packages["conda"].name and other.read_bytes() != packages["conda"].read_bytes()
    result = publish(channel, other)
    assert result.returncode == 1
    assert "already exists with other bytes" in result.stderr and "--build-number" in result.stderr
    assert snapshot(channel) == before


def corruptions(package: Path, out: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of a good .conda: (path, what the error must say)."""
    raw = package.read_bytes()
    out.mkdir()
    (out / "truncated").mkdir()
    truncated = out / "truncated" / package.name
    truncated.write_bytes(raw[: len(raw) // 2])
    (out / "flipped").mkdir()
    flipped = out / "flipped" / package.name
    middle = len(raw) // 2
    flipped.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1:])
    renamed = out / package.name.replace("flashinfer-cubin-headers", "flashinfer-cubin")
    renamed.write_bytes(raw)
    not_conda = out / f"flashinfer-cubin-headers-{VERSION}-py3-none-any.whl"
    not_conda.write_bytes(raw)
    return {"truncated": (truncated, "not a readable conda package"),
            "flipped": (flipped, "not a readable conda package"),
            "renamed": (renamed, "the file name says flashinfer-cubin-"),
            "not-conda": (not_conda, "ends in neither .conda nor .tar.bz2")}


def tampered_bz2(package: Path, out: Path) -> Path:
    """The .tar.bz2 with one header's bytes changed but paths.json untouched: only a full check sees it."""
    import bz2

    members = []
    with tarfile.open(package, "r:bz2") as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            if m.name.endswith("/Enums.h"):
                data = data.replace(b"enum", b"ENUM", 1)
            members.append((m, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    out.mkdir(exist_ok=True)
    target = out / package.name
    target.write_bytes(bz2.compress(buf.getvalue()))
    return target


def test_refuses_damaged_packages_and_leaves_the_channel_alone(channel, packages, tmp_path):
    assert publish(channel, packages["bz2"]).returncode == 0
    before = snapshot(channel)
    cases = corruptions(packages["conda"], tmp_path / "bad")
    cases["tampered"] = (tampered_bz2(packages["bz2"], tmp_path / "tampered"), "Enums.h: size or sha256 differs")
    for label, (path, message) in cases.items():
        result = publish(channel, path)
        # a file that is no conda package at all is a usage error, as a non-wheel is for --simple and --index
        assert result.returncode == (2 if label == "not-conda" else 1), (label, result.stderr)
        assert message in result.stderr, (label, result.stderr)
        assert "hint:" in result.stderr, label
        assert snapshot(channel) == before, label
    mixed = publish(channel, packages["conda"], cases["truncated"][0])  # one bad file stops all of them
    assert mixed.returncode == 1 and snapshot(channel) == before


def test_refuses_a_payload_another_package_owns(channel, packages, tmp_path):
    owner = standin(tmp_path / "owner", "other-headers", "1.0", noarch="python",
                    files={f"site-packages/{EXPORT_DIR}/Enums.h": "/* someone else's */\n"})
    arch_owner = standin(tmp_path / "arch", "arch-headers", "1.0", platform="linux-64", noarch=None,
                         files={f"lib/python3.12/site-packages/{EXPORT_DIR}/KernelParams.h": "/* mine */\n"})
    for other, clash in [(owner, "Enums.h"), (arch_owner, "KernelParams.h")]:
        ch = tmp_path / f"ch-{other.stem}"
        shutil.copytree(channel, ch)
        assert publish(ch, other).returncode == 0
        before = snapshot(ch)
        result = publish(ch, packages["conda"])
        assert result.returncode == 1
        assert f"would overwrite <site-packages>/{EXPORT_DIR}/{clash}" in result.stderr
        assert other.name in result.stderr
        assert snapshot(ch) == before


@pytest.fixture
def world_readable_dir():
    """A directory outside pytest's private tmp (0700), for a run as another user."""
    path = Path(tempfile.mkdtemp(prefix="repack-channel-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_refuses_an_unwritable_channel(channel, packages, world_readable_dir):
    ch = world_readable_dir / "channel"
    shutil.copytree(channel, ch)
    pkg = world_readable_dir / packages["conda"].name
    shutil.copyfile(packages["conda"], pkg)
    for p in [ch, *ch.rglob("*"), pkg]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # readable by anyone, writable by the owner (root) only
    before = snapshot(ch)
    # root writes anywhere: publish as an unprivileged user, or (an interpreter that user cannot start) with the
    # channel mounted read-only
    if os.geteuid() != 0:
        for p in [ch, *ch.rglob("*")]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        result = publish(ch, pkg)
    elif runs_as("nobody"):
        result = publish(ch, pkg, user="nobody")
    else:
        result = publish(ch, pkg, read_only=ch)
    assert result.returncode == 1, result.stderr
    assert f"cannot write to the channel {ch}" in result.stderr and "hint:" in result.stderr
    assert snapshot(ch) == before
    (world_readable_dir / "a-file").write_text("x")
    blocked = publish(world_readable_dir / "a-file" / "channel", pkg)  # a channel path through a file
    assert blocked.returncode == 2  # a mistake in the command line, as for every output folder (test_cli_ux)
    assert f"cannot create the channel {world_readable_dir / 'a-file' / 'channel'}: " \
           f"{world_readable_dir / 'a-file'} is a file, not a folder" in blocked.stderr


def test_publishers_take_turns(channel, packages):
    """While another publisher holds the channel's lock, publish waits, then finishes."""
    import fcntl

    before = snapshot(channel)
    with open(channel / ".flashinfer-repack.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = subprocess.Popen([sys.executable, "-m", "repack", "publish", "--channel", str(channel),
                                    str(packages["conda"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                waiting.wait(timeout=1.5)
            assert snapshot(channel) == before
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _, err = waiting.communicate(timeout=60)  # reads and closes both pipes (an open one is a ResourceWarning)
    assert waiting.returncode == 0, err
    assert packages["conda"].name in repodata(channel)["packages.conda"]


def test_an_interrupted_publish_heals(channel, packages):
    shutil.copyfile(packages["bz2"], channel / "noarch" / packages["bz2"].name)  # copied, never indexed
    assert packages["bz2"].name not in repodata(channel)["packages"]
    assert publish(channel, packages["conda"]).returncode == 0
    data = repodata(channel)
    assert packages["bz2"].name in data["packages"] and packages["conda"].name in data["packages.conda"]


# -- installing from the channel with rattler ------------------------------------------------

@pytest.mark.parametrize("kind", ["conda", "bz2"])
def test_rattler_installs_from_the_channel(kind, channel, packages, tmp_path):
    assert publish(channel, packages[kind]).returncode == 0
    for python in PYTHONS:
        prefix = tmp_path / f"prefix-{python}"
        records = solve_and_install(channel, ["flashinfer-cubin-headers", f"python {python}.*"], prefix,
                                    tmp_path / "pkgs")
        chosen = {str(r.name.normalized): str(r.version) for r in records}
        assert chosen == {"flashinfer-cubin-headers": VERSION, "flashinfer-python": VERSION,
                          "flashinfer-cubin": VERSION, "python": f"{python}.9"}
        assert next(r.url for r in records if str(r.name.normalized) == "flashinfer-cubin-headers").endswith(
            packages[kind].name)
        assert_headers_installed(prefix, python)


def test_the_solver_honours_the_exact_pins(tmp_path, packages):
    ch = tmp_path / "channel"
    made = [python_standin(tmp_path / "s", "3.12.9"), standin(tmp_path / "s", "flashinfer-python", VERSION),
            standin(tmp_path / "s", "flashinfer-cubin", "0.6.5")]
    assert publish(ch, *made, packages["conda"]).returncode == 0
    with pytest.raises(Exception, match="flashinfer-cubin"):
        solve(ch, ["flashinfer-cubin-headers"])


@pytest.mark.slow
def test_real_flashinfer_starts_offline_with_the_conda_headers(channel, flashinfer_env, tmp_path):
    """pip's flashinfer in a conda prefix + our pip-mode conda package: vLLM's snippet, no network."""
    built = cli("build", REAL, "--format", "conda", "--conda-no-flashinfer-deps", "-o", str(tmp_path / "real"),
                "--no-cache", "--json", "--from", str(trimmed_cubin_wheel(REAL)))
    assert built.returncode == 0, built.stderr
    assert publish(channel, Path(json.loads(built.stdout)["artifacts"][0]["path"])).returncode == 0
    prefix = tmp_path / "prefix"
    solve_and_install(channel, ["python 3.11.*"], prefix, tmp_path / "pkgs")
    site = prefix / "lib" / "python3.11" / "site-packages"
    flashinfer_env.use(REAL)  # flashinfer's light dependencies in the venv whose interpreter we borrow...
    flashinfer_env.remove("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers")  # ...but not flashinfer
    # pip first: 'pip install --target' skips a top-level folder (flashinfer_cubin/) that already exists
    flashinfer_env.pip("install", "-q", "--no-deps", "--target", str(site),
                       str(real_wheel("flashinfer-python", REAL)), str(trimmed_cubin_wheel(REAL)))
    env = {"PYTHONPATH": str(site)}
    without = flashinfer_env.run_snippet(fast_clock=True, env=env)
    assert not without["ok"] and "BatchedGemmEnums.h not found" in without["error"], without
    shutil.rmtree(site / "flashinfer_cubin" / "cubins" / "flashinfer")  # the failed run's filelock leftovers
    solve_and_install(channel, ["python 3.11.*", "flashinfer-cubin-headers"], prefix, tmp_path / "pkgs")
    assert_headers_installed(prefix, "3.11", alone=False, plan=shipped_plan(REAL))  # flashinfer-cubin's files beside
    with_headers = flashinfer_env.run_snippet(env=env)
    assert with_headers["ok"], with_headers
    assert with_headers["connects"] == []
    assert with_headers["cubin_dir"] == str(site / "flashinfer_cubin" / "cubins")



# -- honest indexes: what paths.json says, and what the channel already holds (issue 10, class 7) -------

def rebuilt_bz2(package: Path, out: Path, *, edit_paths=None, tamper: str | None = None,
                symlink: str | None = None) -> Path:
    """The .tar.bz2 rebuilt: paths.json through ``edit_paths(entries)``, member ``tamper`` changed,
    member ``symlink`` turned into a link.  ``edit_paths`` returning None drops paths.json."""
    import bz2

    members = []
    with tarfile.open(package, "r:bz2") as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            if tamper and m.name.endswith(tamper):
                data = data.replace(b"enum", b"ENUM", 1)
            if m.name == "info/paths.json" and edit_paths is not None:
                doc = json.loads(data)
                doc["paths"] = edit_paths(doc["paths"])
                if doc["paths"] is None:
                    continue
                data = json.dumps(doc).encode()
            if symlink and m.name.endswith(symlink):
                m.type, m.linkname, data = tarfile.SYMTYPE, "../../../../../../../../etc/hostname", b""
            m.size = len(data)
            members.append((m, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    out.mkdir(parents=True, exist_ok=True)
    target = out / package.name
    target.write_bytes(bz2.compress(buf.getvalue()))
    return target


def edit_entry(suffix: str, change):
    def edit(entries):
        for e in entries:
            if e["_path"].endswith(suffix):
                change(e)
        return entries
    return edit


def test_paths_json_must_vouch_for_every_payload_file(channel, packages, tmp_path):
    """A tampered header passes no paths.json trick: softlink, no sha256, no size, no paths.json, a link member."""
    assert publish(channel, packages["bz2"]).returncode == 0
    before = snapshot(channel)
    link_sha = hashlib.sha256(b"../../../../../../../../etc/hostname").hexdigest()
    cases = {
        "softlink": ({"edit_paths": edit_entry("/Enums.h", lambda e: e.update(path_type="softlink")), "tamper": "/Enums.h"},
                     "Enums.h: paths.json lists it as 'softlink', not as a regular file"),
        "no-sha256": ({"edit_paths": edit_entry("/Enums.h", lambda e: e.pop("sha256")), "tamper": "/Enums.h"},
                      "Enums.h: paths.json gives no sha256"),
        "no-size": ({"edit_paths": edit_entry("/Enums.h", lambda e: e.pop("size_in_bytes")), "tamper": "/Enums.h"},
                    "Enums.h: paths.json gives no size_in_bytes"),
        "no-paths-json": ({"edit_paths": lambda entries: None, "tamper": "/Enums.h"}, "has no info/paths.json"),
        "link-member": ({"edit_paths": edit_entry("/Enums.h", lambda e: e.update(sha256=link_sha, size_in_bytes=0)),
                             "symlink": "/Enums.h"}, "Enums.h: a symlink in the archive, not a regular file"),
        "unsafe-path": ({"edit_paths": lambda entries: [*entries, dict(entries[0], _path="../outside.h")]},
                        "'../outside.h' is not a safe relative path"),
    }
    for label, (how, message) in cases.items():
        bad = rebuilt_bz2(packages["bz2"], tmp_path / label, **how)
        result = publish(channel, bad)
        assert result.returncode == 1, (label, result.stderr)
        assert message in result.stderr, (label, result.stderr)
        assert snapshot(channel) == before, label


def test_hash_case_does_not_matter(channel, packages, tmp_path):
    """An upper-case sha256 in paths.json is the same hash (pip lowercases too)."""
    upper = rebuilt_bz2(packages["bz2"], tmp_path / "upper",
                        edit_paths=lambda entries: [dict(e, sha256=e["sha256"].upper()) for e in entries])
    result = publish(channel, upper)
    assert result.returncode == 0, result.stderr


def test_a_package_replaced_under_the_same_size_is_rehashed(channel, packages, tmp_path):
    """Size alone never vouches for an entry: a same-size replacement (mtime kept) leaves the index."""
    assert publish(channel, packages["bz2"]).returncode == 0
    target = channel / "noarch" / packages["bz2"].name
    stat_before = target.stat()
    fake = tmp_path / "fake"
    fake.write_bytes(b"\0" * stat_before.st_size)  # other bytes, same size
    os.replace(fake, target)
    os.utime(target, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    assert publish(channel, packages["conda"]).returncode == 0
    data = repodata(channel)
    assert packages["bz2"].name not in data["packages"]  # unreadable now: left out, never its old sha256
    assert packages["conda"].name in data["packages.conda"]


def test_rehashes_when_only_the_inode_differs(channel, packages, tmp_path):
    """A valid package copied over another entry's file name with its size and mtime: the inode tells."""
    assert publish(channel, packages["bz2"]).returncode == 0
    target = channel / "noarch" / packages["bz2"].name
    recorded = repodata(channel)["packages"][target.name]
    copy = tmp_path / "copy"
    shutil.copyfile(target, copy)
    st = target.stat()
    os.replace(copy, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    index = json.loads((channel / "noarch" / ".flashinfer-repack-index.json").read_text())
    assert index["files"][target.name]["ino"] != target.stat().st_ino
    assert publish(channel, packages["conda"]).returncode == 0
    assert repodata(channel)["packages"][target.name] == recorded  # re-hashed: the same bytes, the same entry


# -- a channel conda-index manages -----------------------------------------------------------------

def conda_index_files(channel: Path) -> None:
    """The files conda-index (0.13) writes beside repodata.json, in its shapes, from the channel as it is."""
    import bz2

    import zstandard

    subdirs = sorted(p.name for p in channel.iterdir() if (p / "repodata.json").is_file())
    packages = {}
    for subdir in subdirs:
        data = (channel / subdir / "repodata.json").read_bytes()
        doc = json.loads(data)
        (channel / subdir / "current_repodata.json").write_bytes(data)
        (channel / subdir / "current_repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
        (channel / subdir / "repodata.json.bz2").write_bytes(bz2.compress(data))
        (channel / subdir / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
        run_exports = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}}
        for key in ("packages", "packages.conda"):
            for fn, entry in doc[key].items():
                run_exports[key][fn] = {"run_exports": {}}
                packages.setdefault(entry["name"], {"subdirs": [], "version": entry["version"]})["subdirs"].append(subdir)
        (channel / subdir / "run_exports.json").write_text(json.dumps(run_exports))
        (channel / subdir / "index.html").write_text(f"<html><body>{subdir}: {sorted(doc['packages.conda'])}</body></html>")
    (channel / "channeldata.json").write_text(json.dumps({"channeldata_version": 1, "packages": packages,
                                                          "subdirs": subdirs}))
    (channel / "index.html").write_text("<html><body>channel</body></html>")


def test_publish_keeps_a_conda_index_channel_consistent(channel, packages):
    import bz2

    import zstandard

    conda_index_files(channel)
    result = publish(channel, packages["conda"])
    assert result.returncode == 0, result.stderr
    name = packages["conda"].name
    noarch = channel / "noarch"
    full = (noarch / "repodata.json").read_bytes()
    assert name in json.loads(full)["packages.conda"]
    assert bz2.decompress((noarch / "repodata.json.bz2").read_bytes()) == full
    assert zstandard.ZstdDecompressor().decompress((noarch / "repodata.json.zst").read_bytes()) == full
    current = json.loads((noarch / "current_repodata.json").read_bytes())
    assert name in current["packages.conda"]  # conda reads current_repodata.json first
    assert name in json.loads(zstandard.ZstdDecompressor().decompress(
        (noarch / "current_repodata.json.zst").read_bytes()))["packages.conda"]
    run_exports = json.loads((noarch / "run_exports.json").read_text())
    assert run_exports["packages.conda"][name] == {"run_exports": {}}
    for stale in (channel / "channeldata.json", channel / "index.html", noarch / "index.html"):
        assert not stale.exists(), stale
        assert f"removed {stale}" in result.stderr
    # every subdir conda asks for answers, as bundle's channel does
    for subdir in ("noarch", "linux-64", "linux-aarch64"):
        assert json.loads((channel / subdir / "repodata.json").read_text())["info"] == {"subdir": subdir}


def test_repodata_zst_always_matches_repodata_json(channel, packages):
    """conda (repodata_use_zst) and rattler read repodata.json.zst first: it is always written."""
    import zstandard

    assert publish(channel, packages["conda"]).returncode == 0
    for subdir in ("noarch", "linux-64", "linux-aarch64"):
        full = (channel / subdir / "repodata.json").read_bytes()
        assert zstandard.ZstdDecompressor().decompress((channel / subdir / "repodata.json.zst").read_bytes()) == full


def test_a_package_replaced_while_it_is_checked_is_refused(channel, packages, tmp_path, monkeypatch):
    """Hashed in one read and scanned in another: a file swapped between the two is refused, never published
    under the hash of bytes that were not scanned (third review)."""
    from repack.errors import PublishError
    from repack.publish import channel as channel_module

    pkg = tmp_path / packages["conda"].name
    shutil.copyfile(packages["conda"], pkg)
    scan = channel_module._scan

    def swapping_scan(path):
        found = scan(path)
        other = tmp_path / "other"
        shutil.copyfile(packages["conda"], other)  # the same bytes, another file: a rename is still a change
        os.replace(other, path)
        return found

    monkeypatch.setattr(channel_module, "_scan", swapping_scan)
    before = snapshot(channel)
    with pytest.raises(PublishError, match="changed while it was being checked"):
        channel_module.publish_channel(channel, [pkg])
    assert snapshot(channel) == before
