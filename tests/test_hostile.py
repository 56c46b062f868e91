"""Fail closed at the trust boundary (issue 10, classes 1-7): one hostile server on 127.0.0.1
(``tests/support/hostile.py``) misbehaving in each way, damaged caches, concurrent runs.

Each test was written to fail on the code before the fix: names that walk out of a directory,
bodies without bound, redirects and links to other schemes, credentials sent where they do not
belong, secrets in messages, caches that never heal, runs that share a ``.part``, indexes that
trust what they are told.  The payload is the small 19-member wheel made from the real 0.6.6 one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest

from repack.errors import (
    BuildError,
    FetchError,
    InputError,
    IntegrityError,
    PublishError,
    SourceError,
    UnknownVersionError,
)
from repack.fetch import transport as transport_module
from repack.fetch.archive import read_members
from repack.fetch.cache import Cache
from repack.fetch.download import DOWNLOADED, PRESENT, fetch_verified
from repack.fetch.index import IndexFile, find_wheel, parse_html_page, parse_json_page, wheel_filename
from repack.fetch.transport import Transport
from repack.fetch.urlpolicy import redact, scrub, secret_forms
from repack.fs import UnsafePathError
from tests.support.hostile import HostileServer, self_signed_cert
from tests.support.tinywheel import make_wheel
from tests.test_build_sources import FAST, VERSION, build, failed, succeeded

WHEEL = f"flashinfer_cubin-{VERSION}-py3-none-any.whl"
PASSWORD = "s3cret-Pa55\"word/with%odd+chars"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(url: str, data: bytes, filename: str = WHEEL, **changes) -> dict:
    """A PEP 691 file entry for ``data`` at ``url``; ``changes`` override any field."""
    found = {"filename": filename, "url": url, "size": len(data), "hashes": {"sha256": sha256(data)}}
    found.update(changes)
    return found


@pytest.fixture
def hostile():
    with HostileServer() as server:
        yield server


@pytest.fixture
def small(small_cubin_wheel) -> bytes:
    return small_cubin_wheel(VERSION).read_bytes()


def index_build(run_cli, tmp_path: Path, server: HostileServer, extra=(), options=FAST, env=None):
    return build(run_cli, tmp_path / "out", "index+" + server.url + "simple/", options=options, extra=extra, env=env)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- 1. names from outside -> paths only through the gate --------------------------------------

#: The first two are accepted by packaging 23.2-26.0 (no check of tag components): with packaging 25.0
#: (Debian's) the code before this fix wrote them to <cache>/../escape.whl and exited 0.
ESCAPING = ["flashinfer_cubin-0.6.6-py3-none-../../../../escape.whl",
            "flashinfer_cubin-0.6.6-py3-none-any/../../../../escape.whl", "../../../escape/" + WHEEL, "sub/" + WHEEL, "/tmp/escape/" + WHEEL, "..\\" + WHEEL,
            WHEEL + "\x00", "C:" + WHEEL]


@pytest.mark.parametrize("name", ESCAPING)
def test_an_index_file_name_that_leaves_the_cache_never_becomes_a_path(name, run_cli, tmp_path, hostile, small):
    url = hostile.file("files/w.whl", small, ranges=False)  # a whole-file download would land at cache/wheels/<name>
    hostile.page("flashinfer-cubin", [entry(url, small, filename=name)])
    cache = tmp_path / "a" / "b" / "cache"
    result = index_build(run_cli, tmp_path, hostile, extra=("--cache-dir", str(cache)))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [f for f in files_under(tmp_path) if f.endswith(".whl")] == []
    assert not Path("/tmp/escape").exists()  # the one absolute name points outside tmp_path


@pytest.mark.parametrize("name", [*ESCAPING, "flashinfer_cubin-0.6.6-py3-none-any.whl/../x-1-py3-none-any.whl"])
def test_wheel_names_are_checked_by_our_own_rule_not_the_installed_packaging(name, tmp_path):
    from packaging.utils import InvalidWheelFilename

    with pytest.raises(InvalidWheelFilename):
        wheel_filename(name)
    with pytest.raises(UnknownVersionError):
        find_wheel([IndexFile(name, "http://127.0.0.1/x")], "flashinfer-cubin", VERSION, "http://127.0.0.1/")
    with pytest.raises(UnsafePathError):
        Cache(tmp_path).wheel_path(name)


@pytest.mark.parametrize("name", ["flashinfer_cubin-0.6.6-py3-none-any.tar.gz", "flashinfer_cubin-0.6.6.whl",
                                  "-0.6.6-py3-none-any.whl", "flashinfer cubin-0.6.6-py3-none-any.whl"])
def test_what_is_not_a_wheel_name_is_not_taken_for_one(name):
    from packaging.utils import InvalidWheelFilename

    with pytest.raises(InvalidWheelFilename):
        wheel_filename(name)


@pytest.mark.parametrize("name", ESCAPING)
def test_the_gate_holds_whatever_the_installed_packaging_accepts(name, monkeypatch):
    from packaging.version import Version

    from repack.fetch import index

    def accepts_anything(filename):  # as permissive as packaging 25.0 is with tag components
        return "flashinfer-cubin", Version(VERSION), (), frozenset()

    monkeypatch.setattr(index, "parse_wheel_filename", accepts_anything)
    with pytest.raises(UnknownVersionError):
        find_wheel([IndexFile(name, "http://127.0.0.1/x")], "flashinfer-cubin", VERSION, "http://127.0.0.1/")


def test_a_plain_wheel_name_passes_the_gate():
    assert wheel_filename(WHEEL) == WHEEL
    assert wheel_filename("torch-2.13.0+cpu-1local-cp311-cp311-manylinux_2_28_x86_64.whl")


def test_install_refuses_a_payload_path_that_leaves_the_target(tmp_path, small_cubin_wheel):
    from repack.environment.install import install
    from repack.fetch.payload import fetch_payload
    from repack.fetch.sources import WheelFile
    from repack.fetch.verify import Payload, PayloadFile
    from tests.support import synthetic

    good = fetch_payload(synthetic.plan(VERSION), [WheelFile(small_cubin_wheel(VERSION))], Cache(None))
    evil = Payload(good.plan, (*good.files, PayloadFile("../../escape.h", b"x", sha256(b"x"))))
    target = tmp_path / "deep" / "cubins"
    with pytest.raises(UnsafePathError):
        install(evil, target)
    assert not (tmp_path / "escape.h").exists() and files_under(tmp_path) == []


def test_a_plan_whose_paths_leave_the_cubin_dir_never_makes_a_payload(small_cubin_wheel):
    import dataclasses

    from repack.fetch.payload import fetch_payload
    from repack.fetch.sources import WheelFile
    from tests.support import synthetic

    plan = synthetic.plan(VERSION)
    evil = dataclasses.replace(plan, dest_dir="../../../etc")
    with pytest.raises(UnsafePathError, match="payload path"):
        fetch_payload(evil, [WheelFile(small_cubin_wheel(VERSION))], Cache(None))


# -- 2. bounded everything -----------------------------------------------------------------------

def test_a_server_trickling_a_byte_every_half_second_cannot_hang_a_build(run_cli, tmp_path, hostile):
    hostile.trickle("simple/flashinfer-cubin/", size=4096, interval=0.5)
    result = index_build(run_cli, tmp_path, hostile, options=("--retries", "0", "--timeout", "2"))
    assert "too slow" in failed(result, tmp_path / "out")  # cli() bounds the run: a hang fails the test


def test_a_server_trickling_its_headers_cannot_hang_a_build(run_cli, tmp_path, hostile):
    """The same pace holds before the body: headers that arrive a byte per half second, forever."""
    hostile.trickle_headers("simple/flashinfer-cubin/", interval=0.5)
    result = index_build(run_cli, tmp_path, hostile, options=("--retries", "0", "--timeout", "1"))
    assert "timed out" in failed(result, tmp_path / "out")  # cli() bounds the run: a hang fails the test


def test_a_trickled_reply_to_an_upload_cannot_hang_publish(run_cli, tmp_path, hostile):
    url = hostile.trickle_headers("legacy/", interval=0.5)
    wheel = make_wheel(tmp_path / "w", "demo", "1.0")
    result = run_cli("publish", str(wheel), "--index", url, "--timeout", "1", timeout=60,
                     env={"TWINE_USERNAME": "u", "TWINE_PASSWORD": "p"})
    assert result.returncode == 1 and "timed out" in result.stderr, result.stderr


def test_headers_trickled_through_a_proxy_are_bounded_too(hostile, monkeypatch):
    """The bound lives in the connections, whichever pool makes them: a plain proxy's included."""
    hostile.routes["http://proxied.invalid/simple/x/"] = lambda h: h.send_trickled_headers(0.5)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, hostile.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    with pytest.raises(FetchError, match="timed out"):  # the test would hang without the bound
        Transport(retries=0, timeout=1).get("http://proxied.invalid/simple/x/")


def test_a_server_that_ignores_ranges_and_streams_forever_is_cut_at_the_index_size(run_cli, tmp_path, hostile,
                                                                                   small):
    url = hostile.endless("files/w.whl")
    hostile.page("flashinfer-cubin", [entry(url, small)])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cache = tmp_path / "cache"
    result = index_build(run_cli, tmp_path, hostile, extra=("--cache-dir", str(cache)), env={"TMPDIR": str(scratch)})
    assert "more than the" in failed(result, tmp_path / "out")
    assert files_under(scratch) == [] and [f for f in files_under(cache) if "wheels/" in f] == []


def test_a_build_stopped_by_sigterm_removes_its_temporary(tmp_path, hostile, small):
    import signal
    import subprocess
    import sys
    import time

    url = hostile.endless("files/w.whl")
    hostile.page("flashinfer-cubin", [entry(url, small, size=4 << 30)])  # the index vouches for 4 GiB
    cache = tmp_path / "cache"
    from tests.conftest import DEFAULT_INDEX

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHINFER_")}
    env["PIP_INDEX_URL"] = DEFAULT_INDEX[-1]  # where the synthetic flashinfer-python's code is
    scratch = tmp_path / "tmp"  # a wheel too big to keep is streamed into TMPDIR, not the cache
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    child = subprocess.Popen([sys.executable, "-m", "repack", "build", VERSION, "-o", str(tmp_path / "out"),
                              "--cache-dir", str(cache), "--from", "index+" + hostile.url + "simple/", *FAST],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until the stream is being written
            if list(tmp_path.rglob("*.part")) or child.poll() is not None:
                break
            time.sleep(0.05)
        assert list(tmp_path.rglob("*.part")), child.stderr.read() if child.poll() is not None else "no .part"
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 130
        stderr = child.stderr.read()
    finally:
        child.kill()
        child.stderr.close()
    assert "interrupted" in stderr
    assert list(tmp_path.rglob("*.part")) == []


def test_an_endless_stream_that_nobody_sized_stops_at_the_wheel_cap(monkeypatch, tmp_path, hostile):
    monkeypatch.setattr(transport_module, "WHEEL_LIMIT", 1 << 20)
    url = hostile.endless("files/w.whl")
    with pytest.raises(FetchError, match="sent more than the 1048576 bytes"):
        Transport(retries=0, timeout=5).download(url, tmp_path / "w.whl")
    assert files_under(tmp_path) == []


def test_a_page_announcing_100_mb_is_refused_before_it_is_read(hostile):
    hostile.file("simple/flashinfer-cubin/", bytes(100 << 20), ctype="application/json")
    transport = Transport(retries=0, timeout=5)
    with pytest.raises(FetchError, match=r"announces 104857600 bytes, more than the \d+ expected"):
        transport.get(hostile.url + "simple/flashinfer-cubin/")
    assert transport.stats.bytes == 0


def test_a_page_without_a_length_is_cut_at_the_page_cap(hostile):
    hostile.endless("simple/flashinfer-cubin/")
    with pytest.raises(FetchError, match=f"sent more than the {transport_module.PAGE_LIMIT} bytes"):
        from repack.fetch.index import project_files
        project_files(Transport(retries=0, timeout=5), hostile.url + "simple/", "flashinfer-cubin")


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_file_url_that_is_not_a_regular_file_is_refused_without_reading(kind, tmp_path):
    path = {"device": Path("/dev/zero"), "fifo": tmp_path / "fifo", "directory": tmp_path / "d"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "directory":
        (path / "index.html").mkdir(parents=True)
    transport = Transport(retries=0)
    with pytest.raises(FetchError, match="not a regular file"):
        transport.get(path.as_uri())
    with pytest.raises(FetchError, match="not a regular file"):
        transport.download(path.as_uri(), tmp_path / "out.whl")


def bomb(member: str, inflated: int, declared: int | None = None) -> bytes:
    """A zip whose ``member`` inflates to ``inflated`` zero bytes; ``declared`` forges its recorded size."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(member)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=False) as fh:
            block = bytes(1 << 20)
            for _ in range(inflated >> 20):
                fh.write(block)
    data = buf.getvalue()
    if declared is not None:  # patch the size in the local header (offset 22) and central directory (24)
        data = bytearray(data)
        local = 0
        central = data.rfind(b"PK\x01\x02")
        data[local + 22: local + 26] = declared.to_bytes(4, "little")
        data[central + 24: central + 28] = declared.to_bytes(4, "little")
        data = bytes(data)
    return data


class Memory:
    """A ByteSource over bytes (the archive reader's own interface)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.label = data, len(data), "memory"

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]


def test_a_zip_bomb_is_refused_from_its_declared_size_before_inflating():
    import tracemalloc

    data = bomb("m.h", 256 << 20)  # 256 MiB of zeros in about 250 KB
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=r"declares 268435456 bytes"):
            read_members(Memory(data), ["m.h"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_member_that_inflates_past_its_declared_size_is_damaged_not_read_on():
    with pytest.raises(SourceError, match="is damaged"):
        read_members(Memory(bomb("m.h", 32 << 20, declared=1000)), ["m.h"])


def test_a_central_directory_past_the_cap_is_refused():
    size = 64 << 20
    eocd = b"PK\x05\x06" + bytes(4) + (1).to_bytes(2, "little") * 2 + (size - 1000).to_bytes(4, "little") \
        + (500).to_bytes(4, "little") + bytes(2)

    class Sparse(Memory):
        def read(self, start: int, end: int) -> bytes:
            tail_at = size - len(eocd)
            return bytes(max(0, min(end, tail_at) - start)) + eocd[max(0, start - tail_at): max(0, end - tail_at)]

    source = Sparse(b"")
    source.size = size
    with pytest.raises(SourceError, match=r"central directory of .* more than the"):
        read_members(source, ["x"])


# -- 3. schemes, redirects, where credentials go --------------------------------------------------

@pytest.mark.parametrize("link", ["file:///dev/zero", "FILE_WHEEL", "ftp://127.0.0.1/w.whl", "data:,x"])
def test_a_remote_page_may_link_only_to_http(link, run_cli, tmp_path, hostile, small, small_cubin_wheel):
    link = small_cubin_wheel(VERSION).as_uri() if link == "FILE_WHEEL" else link
    hostile.page("flashinfer-cubin", [entry(link, small)])
    result = index_build(run_cli, tmp_path, hostile)
    assert "/simple/flashinfer-cubin/ links to " in failed(result, tmp_path / "out")
    assert "a remote index may link only to http(s)" in result.stderr


def test_a_local_page_may_link_to_files(tmp_path):
    files = parse_html_page(b'<a href="w.whl#sha256=' + b"A" * 64 + b'">w</a>', (tmp_path / "index.html").as_uri())
    assert files[0].url == (tmp_path / "w.whl").as_uri() and files[0].sha256 == "a" * 64


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def test_an_https_redirect_to_plain_http_fails_and_netrc_never_travels_in_clear(tmp_path, monkeypatch, tls, small):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login bob password {PASSWORD.replace(chr(34), '')}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[0]))
    with HostileServer() as plain, HostileServer(tls) as secure:
        plain.file("simple/flashinfer-cubin/", b"{}", ctype="application/json")
        secure.redirect("simple/flashinfer-cubin/", plain.url + "simple/flashinfer-cubin/")
        secure.file("ok", b"fine")
        transport = Transport(retries=0, timeout=5)
        assert transport.get(secure.url + "ok").body == b"fine"  # netrc does go over https
        with pytest.raises(FetchError, match=r"refusing the redirect from https://.* to http://"):
            transport.get(secure.url + "simple/flashinfer-cubin/")
        assert secure.authorizations("/ok") != [None]
        assert plain.seen == []


def test_credentials_go_only_to_the_host_they_were_given_for(hostile):
    hostile.file("simple/p/", b"page")
    hostile.file("files/w.whl", b"wheel")
    transport = Transport(retries=0, timeout=5, trust_env=False)
    transport.get(hostile.url.replace("http://", "http://bob:pw@") + "simple/p/")
    transport.get(hostile.url.replace("127.0.0.1", "localhost") + "files/w.whl")  # another host name
    assert hostile.authorizations("/simple/")[0].startswith("Basic ")
    assert hostile.authorizations("/files/") == [None]


def test_credentials_are_never_sent_over_plain_http_to_another_machine():
    with pytest.raises(InputError, match=r"refusing to send credentials to http://192\.0\.2\.1/simple/ over plain http"):
        Transport(retries=0, timeout=1).get("http://bob:pw@192.0.2.1/simple/")


def test_credentials_for_this_machine_never_go_through_a_proxy_in_clear(hostile, tmp_path, monkeypatch):
    """Plain http to loopback may carry a password only when the request goes there directly."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine localhost login bob password from-netrc\n")
    netrc.chmod(0o600)
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, hostile.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("NETRC", str(netrc))
    with pytest.raises(InputError, match="through a proxy"):
        Transport(retries=0, timeout=5).get("http://alice:s3cret@localhost:9/simple/x/")
    with pytest.raises(FetchError):  # the proxy answers 404: what matters is what it was sent
        Transport(retries=0, timeout=5).get("http://localhost:9/simple/x/")
    assert hostile.seen and all(s.authorization is None for s in hostile.seen)


@pytest.mark.parametrize(("url", "code"), [("https://alice:s3cr#etPass@pypi.example/simple/", 2),
                                           ("https://alice:hunter2/xyz@pypi.example/simple/", 2),
                                           ("https://alice:a?b@pypi.example/simple/", 2),
                                           ("https://alice:s3cr@t@192.0.2.1:9/simple/", 1)])
def test_a_password_with_url_delimiters_is_never_shown(url, code, run_cli):
    """'#', '/', '?' end the netloc for urlsplit, so the password looks like a host or a path: never shown."""
    secret = url.split("alice:", 1)[1].rsplit("@", 1)[0]
    assert secret not in redact(url) and "alice" not in redact(url)
    args = ("plan", "0.6.9", "--no-cache", "--retries", "0", "--timeout", "1")
    given = run_cli(*args, "--index-url", url)
    from_pip = run_cli(*args, env={"PIP_INDEX_URL": url})
    for result in (given, from_pip):
        assert result.returncode == code and secret not in result.stdout + result.stderr, result.stderr
    if code == 2:  # the caller's mistake, named where it was made
        assert "(--index-url)" in given.stderr
        assert "PIP_INDEX_URL" in from_pip.stderr and "--index-url" not in from_pip.stderr


# -- 4. secrets never printed ---------------------------------------------------------------------

def forms_of(password: str, username: str = "bob") -> list[str]:
    import base64
    import urllib.parse

    return [password, urllib.parse.quote(password, safe=""), json.dumps(password)[1:-1],
            base64.b64encode(f"{username}:{password}".encode()).decode()]


@pytest.mark.parametrize("password", [PASSWORD, "x" * 300, "é-ünïcode-pw"])
def test_every_encoding_of_a_password_is_scrubbed_before_any_cut(password):
    for form in forms_of(password):
        text = "server says: " + "a" * 190 + form + " and " + form
        clean = scrub(text, secret_forms("bob", password))
        assert form not in clean and form[:6] not in clean.replace("a" * 6, "")


@pytest.mark.parametrize("password", ["x", "pw", "abc"])
def test_a_short_password_withholds_the_message_rather_than_leak_it(password):
    assert password not in scrub(f"denied for bob:{password}", secret_forms("bob", password))


@pytest.mark.parametrize("password", [PASSWORD, "pw"])
def test_an_upload_refusal_never_shows_the_password(password, tmp_path, hostile):
    from repack.publish.distfile import read_distfile
    from repack.publish.upload import Credentials, Uploader

    echoed = json.dumps({"error": "bad auth " + "." * 170 + password, "echo": password}).encode()
    hostile.answer("", 400, echoed, "application/json", reason=f"Bad password {password}")
    dist = read_distfile(make_wheel(tmp_path, "demo", "1.0"))
    uploader = Uploader(hostile.url, Credentials("bob", password, "test"), retries=0, timeout=5)
    with pytest.raises(PublishError) as caught:
        uploader.publish([dist])
    text = str(caught.value) + caught.value.hint
    for form in forms_of(password):
        assert form not in text
    assert password[:6] not in text or len(password) < 4


def test_publish_waits_only_the_documented_timeout(tmp_path, hostile):
    from repack.publish.distfile import read_distfile
    from repack.publish.upload import Uploader

    hostile.answer("", 200, b"ok", delay=3)  # answers, but after three timeouts of 1 s (the old wait was 10)
    with pytest.raises(PublishError, match=r"cannot reach http://127\.0\.0\.1:\d+/ \(POST for demo-1\.0-py3-none-any"
                                           r"\.whl\): timed out"):
        Uploader(hostile.url, None, retries=0, timeout=1).publish([read_distfile(make_wheel(tmp_path, "demo", "1.0"))])


# -- 5. self-healing caches ------------------------------------------------------------------------

def test_a_tampered_cached_wheel_is_dropped_with_a_warning_and_the_index_used_again(run_cli, tmp_path, hostile,
                                                                                   small):
    url = hostile.file("files/w.whl", small, ranges=False)
    hostile.page("flashinfer-cubin", [entry(url, small)])
    cache = tmp_path / "cache"
    succeeded(index_build(run_cli, tmp_path, hostile, extra=("--cache-dir", str(cache))))
    cached = cache / "wheels" / WHEEL
    cached.write_bytes(small[:-10] + b"tampered!!")
    for blob in (cache / "sha256").rglob("*"):  # force a read of the wheel, not of the header blobs
        if blob.is_file():
            blob.unlink()
    result = index_build(run_cli, tmp_path / "again", hostile, extra=("--cache-dir", str(cache)))
    report = succeeded(result)
    assert f"dropping the damaged cache entry {cached}" in result.stderr and "index" not in result.stderr
    assert report["source"].startswith("index ") and cached.read_bytes() == small


def test_temporaries_of_killed_runs_are_removed_from_the_cache(run_cli, tmp_path, hostile, small):
    url = hostile.file("files/w.whl", small, ranges=False)
    hostile.page("flashinfer-cubin", [entry(url, small)])
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    stale = wheels / f".{WHEEL}.{dead}.part"
    stale.write_bytes(b"half a wheel")
    succeeded(index_build(run_cli, tmp_path, hostile, extra=("--cache-dir", str(tmp_path / "cache"))))
    assert not stale.exists()


def test_an_unusable_cache_degrades_to_none_with_one_warning(run_cli, tmp_path, hostile, small):
    url = hostile.file("files/w.whl", small, ranges=False)  # the whole wheel would be streamed into the cache
    hostile.page("flashinfer-cubin", [entry(url, small)])
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_bytes(b"a file where the cache should be")
    result = index_build(run_cli, tmp_path, hostile, extra=("--cache-dir", str(not_a_dir)))
    succeeded(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"the cache {not_a_dir} cannot be written" in lines[0]


# -- 6. concurrency ------------------------------------------------------------------------------

def test_two_runs_into_one_directory_never_share_a_part(tmp_path, hostile, small):
    url = hostile.file("files/w.whl", small, delay=0.3)  # both are inside the download at once
    found = IndexFile(WHEEL, url, sha256(small).upper(), len(small))
    dest = tmp_path / "wheels" / WHEEL
    results: list = []

    def run() -> None:
        results.append(fetch_verified(Transport(retries=0, timeout=5), found, dest)[0])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([DOWNLOADED, PRESENT])
    assert dest.read_bytes() == small and not dest.with_name(WHEEL + ".part").exists()


def test_a_manifest_never_vouches_for_a_file_changed_after_verification(tmp_path):
    from repack.publish.bundle import write_manifest

    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / WHEEL).write_bytes(b"other bytes")
    with pytest.raises(BuildError, match=f"wheels/{WHEEL} changed after it was verified"):
        write_manifest(tmp_path, VERSION, {f"wheels/{WHEEL}": sha256(b"the verified bytes")})
    assert not (tmp_path / "manifest.json").exists()


# -- 7. honest indexes ---------------------------------------------------------------------------

def test_a_file_replaced_in_place_with_the_same_size_and_mtime_is_rehashed(tmp_path):
    from repack.publish.distfile import read_distfile
    from repack.publish.simple import publish_simple, write_project_pages

    wheel = make_wheel(tmp_path / "in", "demo", "1.0", files={"demo/__init__.py": b"A = 1\n" * 50})
    root = tmp_path / "simple"
    publish_simple(root, [read_distfile(wheel)])
    served = root / "demo" / wheel.name
    before = served.stat()
    data = bytearray(served.read_bytes())
    at = data.index(b"PK\x03\x04", 1) - 5  # a byte inside the first member's data: the zip still opens
    data[at] ^= 0xFF
    with open(served, "r+b") as fh:  # same inode, same size
        fh.write(data)
    os.utime(served, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    write_project_pages(root, "demo")
    page = json.loads((root / "demo" / "index.json").read_text())
    assert page["files"][0]["hashes"]["sha256"] == sha256(bytes(data))


@pytest.mark.parametrize("fmt", ["json", "html"])
def test_an_index_giving_sha256_in_upper_case_is_not_altered_in_transit(fmt, run_cli, tmp_path, hostile, small):
    url = hostile.file("files/" + WHEEL, small, ranges=False)
    hostile.page("flashinfer-cubin", [entry(url, small, hashes={"sha256": sha256(small).upper()})], fmt=fmt)
    succeeded(index_build(run_cli, tmp_path, hostile))


@pytest.mark.parametrize("page", [b'{"files": [{"filename": "w.whl", "url": "w.whl", "size": -1}]}',
                                  b'{"files": [{"filename": "w.whl", "url": "w.whl", "size": true}]}',
                                  b'{"files": [{"filename": "w.whl", "url": "w.whl", "hashes": {"sha256": "zz"}}]}',
                                  b'{"files": [{"filename": 7, "url": "w.whl"}]}'])
def test_a_json_page_with_nonsense_sizes_or_hashes_is_refused(page):
    with pytest.raises(SourceError):
        parse_json_page(page, "http://127.0.0.1/simple/p/")


def test_checksum_lines_that_leave_the_tree_are_refused():
    from repack.fetch.verify import parse_checksums

    with pytest.raises(IntegrityError, match="unsafe path"):
        parse_checksums(b"a" * 64 + b"  ../../etc/passwd\n")


# -- files from earlier runs or other processes: never read without bound -------------------------------

@pytest.fixture
def no_hang():
    """Fails the test (instead of hanging the suite) if a read blocks on a FIFO."""
    import signal

    def hang(signum, frame):
        raise TimeoutError("blocked on a FIFO or an endless file")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", ["fifo", "endless"])
def test_cache_and_conda_meta_reads_are_bounded(tmp_path, no_hang, kind):
    from repack.environment.probe import _conda_python

    def plant(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")

    cache = Cache(tmp_path / "cache")
    record = cache.provenance_path("a" * 64)
    plant(record)
    assert cache.get_provenance("a" * 64) is None
    plant(tmp_path / "prefix" / "conda-meta" / "python-3.11.0-h_0.json")
    assert _conda_python(tmp_path / "prefix") is None


def test_temporaries_of_killed_runs_are_swept_from_every_cache_folder(tmp_path):
    import time

    from tests.support import synthetic

    cache = Cache(tmp_path / "cache")
    old = time.time() - 2 * 3600
    left = [tmp_path / "cache" / d / ".x.abc.tmp" for d in ("sha256/ab", "provenance", "plans", "wheels")]
    fresh = tmp_path / "cache" / "plans" / ".y.def.tmp"  # a write in progress
    for path in [*left, fresh]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    for path in left:
        os.utime(path, (old, old))
    assert cache.get(synthetic.checksums_sha256()) is None
    assert [p for p in left if p.exists()] == [] and fresh.exists()
