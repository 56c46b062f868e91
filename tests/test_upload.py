"""``publish --index URL``: real pypiserver (htpasswd authentication) and real devpi-server on
127.0.0.1, real pip and uv installing from them, and a misbehaving server for the refusals.

Installs use ``--no-deps``: flashinfer-python and flashinfer-cubin (our wheel's requirements)
are not on these test indexes; test_bundle installs all three together.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from repack.errors import InputError
from repack.publish.upload import find_credentials
from tests.support import synthetic
from tests.support.installs import fresh_venv, pip_into, site_packages, uv_into
from tests.support.tinywheel import make_wheel, tamper

PROJECT = "flashinfer-cubin-headers"
EXPORT = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"
USER, PASSWORD = "alice", "Pa55-w0rd-never-shown"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], ready_url: str, log: Path, timeout: float = 60) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own descriptor; ours must not leak
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{cmd[0]} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def pypiserver(tmp_path_factory):
    """pypiserver with an htpasswd file: uploads need USER/PASSWORD; no fallback to PyPI."""
    from passlib.apache import HtpasswdFile

    root = tmp_path_factory.mktemp("pypiserver")
    htpasswd = HtpasswdFile(str(root / "htpasswd"), new=True)
    htpasswd.set_password(USER, PASSWORD)
    htpasswd.save()
    (root / "packages").mkdir()
    port = free_port()
    proc = start_server([str(BIN / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(port), "-P",
                         str(root / "htpasswd"), "-a", "update", "--disable-fallback", str(root / "packages")],
                        f"http://127.0.0.1:{port}/health", root / "log")
    yield {"url": f"http://127.0.0.1:{port}/", "simple": f"http://127.0.0.1:{port}/simple/",
           "packages": root / "packages"}
    stop(proc)


@pytest.fixture(scope="module")
def devpi(tmp_path_factory):
    """devpi-server with user USER and a non-volatile index USER/dev (only USER may upload)."""
    root = tmp_path_factory.mktemp("devpi")
    subprocess.run([str(BIN / "devpi-init"), "--serverdir", str(root / "data"), "--no-root-pypi"],
                   check=True, capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server([str(BIN / "devpi-server"), "--serverdir", str(root / "data"), "--host", "127.0.0.1",
                         "--port", str(port)], base + "/+api", root / "log")
    json_put(f"{base}/{USER}", {"password": PASSWORD})
    json_put(f"{base}/{USER}/dev", {"bases": [], "volatile": False}, auth=(USER, PASSWORD))
    yield {"url": f"{base}/{USER}/dev/", "simple": f"{base}/{USER}/dev/+simple/"}
    stop(proc)


def json_put(url: str, data: dict, auth: tuple[str, str] | None = None) -> None:
    req = urllib.request.Request(url, json.dumps(data).encode(), method="PUT",
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)


def publish(run_cli, *args: str, env: dict | None = None):
    return run_cli("publish", *args, env={"NETRC": "/nonexistent", **(env or {})})


def assert_no_secret(result) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for text in (result.stdout, result.stderr):
        assert PASSWORD not in text and token not in text


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed_headers(python: Path) -> Path:
    return site_packages(python) / EXPORT


# -- credentials, a pure function ----------------------------------------------------------

def test_credentials_order(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine idx.example login nina password from-netrc\n")
    env = {"FLASHINFER_REPACK_USERNAME": "fr", "FLASHINFER_REPACK_PASSWORD": "fr-pw",
           "TWINE_USERNAME": "tw", "TWINE_PASSWORD": "tw-pw"}
    url = "https://idx.example/simple/"

    def pick(url=url, username=None, password=None, env=env):
        c = find_credentials(url, username=username, password=password, env=env, netrc_file=netrc)
        return None if c is None else (c.username, c.password)

    assert pick(username="flag", password="flag-pw") == ("flag", "flag-pw")
    assert pick(url="https://u:p%40ss@idx.example/") == ("u", "p@ss")
    assert pick() == ("fr", "fr-pw")
    assert pick(env={k: v for k, v in env.items() if k.startswith("TWINE")}) == ("tw", "tw-pw")
    assert pick(env={}) == ("nina", "from-netrc")
    assert pick(env={}, username="nina") == ("nina", "from-netrc")  # a username finds its password in netrc
    assert pick(url="https://other.example/", env={}) is None
    with pytest.raises(InputError, match="no password"):
        pick(url="https://other.example/", env={}, username="someone")
    c = find_credentials(url, username="flag", password="flag-pw", env={}, netrc_file=None)
    assert "flag-pw" not in repr(c) and "flag-pw" not in str(c)


# -- pypiserver ------------------------------------------------------------------------------

def test_pypiserver_publish_then_pip_and_uv_install(pypiserver, run_cli, headers_wheel, tmp_path):
    wheel = headers_wheel(synthetic.VERSION)
    env = {"FLASHINFER_REPACK_USERNAME": USER, "FLASHINFER_REPACK_PASSWORD": PASSWORD}
    result = publish(run_cli, "--index", pypiserver["url"], str(wheel), "--json", "-v", env=env)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result)
    [entry] = json.loads(result.stdout)["files"]
    assert entry == {"filename": wheel.name, "action": "uploaded", "sha256": sha256(wheel), "verified": True}
    stored = pypiserver["packages"] / wheel.name
    assert stored.read_bytes() == wheel.read_bytes()

    python = fresh_venv(tmp_path / "pip-venv")
    done = pip_into(python, "install", "--no-deps", "--index-url", pypiserver["simple"], f"{PROJECT}=={synthetic.VERSION}")
    assert done.returncode == 0, done.stderr
    assert (installed_headers(python) / ".artifact_hash").read_bytes()== synthetic.ARTIFACT.encode()

    uv_python = fresh_venv(tmp_path / "uv-venv")
    done = uv_into(uv_python, tmp_path / "uv-cache", "--no-deps", "--index-url", pypiserver["simple"],
                   f"{PROJECT}=={synthetic.VERSION}")
    assert done.returncode == 0, done.stderr
    assert (installed_headers(uv_python) / "BatchedGemmEnums.h").is_file()

    before = stored.stat().st_mtime_ns
    again = publish(run_cli, "--index", pypiserver["url"], str(wheel), "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"][0]["action"] == "skipped"
    assert stored.stat().st_mtime_ns == before


def test_pypiserver_refuses_other_bytes_and_tampered_wheels(pypiserver, run_cli, tmp_path):
    env = {"TWINE_USERNAME": USER, "TWINE_PASSWORD": PASSWORD}
    first = make_wheel(tmp_path / "a", "fi-upload-demo", "1.0")
    assert publish(run_cli, "--index", pypiserver["url"], str(first), env=env).returncode == 0

    other = make_wheel(tmp_path / "b", "fi-upload-demo", "1.0", files={"fi_upload_demo/x.py": b"X = 2\n"})
    refused = publish(run_cli, "--index", pypiserver["url"], str(other), env=env)
    assert refused.returncode == 1
    assert f"{pypiserver['url']} already has {first.name} with sha256 {sha256(first)}" in refused.stderr
    assert sha256(other) in refused.stderr
    assert (pypiserver["packages"] / first.name).read_bytes() == first.read_bytes()

    fresh = make_wheel(tmp_path / "c", "fi-upload-demo", "2.0")
    bad = tamper(fresh, tmp_path / "bad" / fresh.name, "__init__.py")
    refused = publish(run_cli, "--index", pypiserver["url"], str(bad), env=env)
    assert refused.returncode == 1 and "does not match its own RECORD" in refused.stderr
    assert not (pypiserver["packages"] / fresh.name).exists()
    assert_no_secret(refused)


def test_pypiserver_wrong_password_is_a_clear_error(pypiserver, run_cli, tmp_path):
    wheel = make_wheel(tmp_path, "fi-upload-demo", "3.0")
    result = publish(run_cli, "--index", pypiserver["url"], str(wheel), "--username", USER,
                     "--password", PASSWORD + "-wrong")
    assert result.returncode == 1
    assert f"{pypiserver['url']} answered HTTP 403" in result.stderr and wheel.name in result.stderr
    assert "--username/--password" in result.stderr  # where the credentials came from, never what they are
    assert PASSWORD not in result.stdout + result.stderr
    assert not (pypiserver["packages"] / wheel.name).exists()


# -- devpi -------------------------------------------------------------------------------------

@pytest.mark.xdist_group("devpi")  # one devpi-server (a 9 s start) for both tests, on one worker
def test_devpi_publish_with_netrc_then_pip_install(devpi, run_cli, headers_wheel, tmp_path):
    wheel = headers_wheel(synthetic.VERSION)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    result = publish(run_cli, "--index", devpi["url"], str(wheel), "--json", env={"NETRC": str(netrc)})
    assert result.returncode == 0, result.stderr
    assert_no_secret(result)
    assert json.loads(result.stdout)["files"][0]["action"] == "uploaded"

    python = fresh_venv(tmp_path / "venv")
    done = pip_into(python, "install", "--no-deps", "--index-url", devpi["simple"], f"{PROJECT}=={synthetic.VERSION}")
    assert done.returncode == 0, done.stderr
    assert (installed_headers(python) / "BatchedGemmEnums.h").is_file()

    again = publish(run_cli, "--index", devpi["url"], str(wheel), "--json", env={"NETRC": str(netrc)})
    assert again.returncode == 0 and json.loads(again.stdout)["files"][0]["action"] == "skipped"

    other = tamper(wheel, tmp_path / "other" / wheel.name, "BatchedGemmEnums.h")
    refused = publish(run_cli, "--index", devpi["url"], str(other), env={"NETRC": str(netrc)})
    # the name is taken by other bytes, so nothing would be sent: refused on the sha256, RECORD never read
    assert refused.returncode == 1 and f"already has {wheel.name} with sha256" in refused.stderr


@pytest.mark.xdist_group("devpi")
def test_devpi_without_credentials_names_the_ways_to_give_them(devpi, run_cli, tmp_path):
    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0")
    result = publish(run_cli, "--index", devpi["url"], str(wheel))
    assert result.returncode == 1
    assert f"{devpi['url']} answered HTTP 401" in result.stderr and wheel.name in result.stderr
    assert "FLASHINFER_REPACK_USERNAME" in result.stderr


# -- a misbehaving server ------------------------------------------------------------------------

class Misbehaving:
    """Answers 404 to every simple page and ``status`` to every upload, echoing back what it got
    (the Authorization header included), so that scrubbing is tested, not assumed."""

    def __init__(self, status: int, then: int | None = None) -> None:
        self.status, self.then, self.posts = status, then, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._answer(404, b"no such project")

            def do_POST(self):
                try:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                except OSError:  # the guard's timeout, or the client gone: what arrived is what counts
                    body = b""
                outer.posts.append((dict(self.headers), body))
                status = outer.status if outer.then is None or len(outer.posts) == 1 else outer.then
                auth = self.headers.get("Authorization", "")
                decoded = base64.b64decode(auth.split()[-1]).decode() if auth else ""
                self._answer(status, f"refused: you sent {auth} ({decoded})".encode(), f"Refused {decoded}")

            def _answer(self, status: int, body: bytes, reason: str | None = None):
                self.send_response(status, reason)  # the reason phrase echoes the password too
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # no kept-alive connection for close() to wait on
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        Handler.timeout = 60  # a guard: a client that never sends the rest cannot hold close() for longer

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # server_close() joins every handler: each post in flight has arrived
            block_on_close = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/repo/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self, posts: int = 0) -> None:
        """Stop serving once ``posts`` posts have arrived (at most 30 s): a client that failed mid-body may be
        gone before the server has even accepted its connection (the kernel buffered the bytes it sent)."""
        deadline = time.monotonic() + 30
        while len(self.posts) < posts and time.monotonic() < deadline:
            time.sleep(0.01)
        self.httpd.shutdown()
        self.httpd.server_close()

    def form(self, number: int = 0) -> dict[str, list]:
        headers, body = self.posts[number]
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
        out: dict[str, list] = {}
        for part in message.get_payload():
            out.setdefault(part.get_param("name", header="content-disposition"), []).append(
                part.get_payload(decode=True))
        return out


@pytest.mark.parametrize("status, words", [(401, "check the username and password"),
                                           (403, "refused this user"),
                                           (409, "a file of that name exists there"),
                                           (500, "the index failed")])
def test_refusals_name_server_and_file_and_never_the_password(status, words, run_cli, tmp_path):
    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0", requires_python=">=3.9", requires=("packaging>=20",))
    server = Misbehaving(status)
    try:
        runs = [publish(run_cli, "--index", server.url, str(wheel), "--username", USER, "--password", PASSWORD,
                        *extra) for extra in ([], ["--json"], ["-v"])]
    finally:
        server.close()
    for result in runs:
        assert result.returncode == 1
        assert f"{server.url} answered HTTP {status}" in result.stderr and wheel.name in result.stderr
        assert words in result.stderr
        assert_no_secret(result)
    assert json.loads(runs[1].stdout)["ok"] is False
    assert len(server.posts) == 3  # 409 and 500 are not retried: an upload may have half-happened

    headers, _ = server.posts[0]
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    form = server.form()
    assert form[":action"] == [b"file_upload"] and form["protocol_version"] == [b"1"]
    assert form["name"] == [b"fi-upload-demo"] and form["version"] == [b"1.0"]
    assert form["filetype"] == [b"bdist_wheel"] and form["pyversion"] == [b"py3"]
    assert form["sha256_digest"] == [sha256(wheel).encode()]
    assert form["blake2_256_digest"] == [hashlib.blake2b(wheel.read_bytes(), digest_size=32).hexdigest().encode()]
    assert "md5_digest" not in form  # deprecated by PyPI; twine 7 does not send it
    assert form["requires_python"] == [b">=3.9"] and form["requires_dist"] == [b"packaging>=20"]
    assert form["content"] == [wheel.read_bytes()]


def test_a_gateway_error_is_retried(run_cli, tmp_path):
    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0")
    server = Misbehaving(503, then=200)
    try:
        result = publish(run_cli, "--index", server.url, str(wheel), "--json",
                         env={"FLASHINFER_REPACK_USERNAME": USER, "FLASHINFER_REPACK_PASSWORD": PASSWORD})
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"][0] == {"filename": wheel.name, "action": "uploaded",
                                                     "sha256": sha256(wheel), "verified": False}
    assert len(server.posts) == 2 and server.form(1)["content"] == [wheel.read_bytes()]


def test_a_file_rewritten_while_it_is_sent_never_reaches_the_index_whole(tmp_path):
    """The upload hashes what it sends and holds its last chunk until the hash is known."""
    import os

    from repack.errors import IntegrityError
    from repack.publish.distfile import read_distfile, ready_to_upload
    from repack.publish.upload import Credentials, Uploader

    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0", files={"fi_upload_demo/blob.bin": os.urandom(1 << 20)})
    dist = ready_to_upload(read_distfile(wheel, check_record=False, digests=("sha256",)))
    rewritten = []

    def rewrite_once(_label, _done, _total):
        if not rewritten:  # the first chunk is on its way: change the file's tail, size kept
            with open(wheel, "r+b") as fh:
                fh.seek(-200, os.SEEK_END)
                tail = fh.read()
                fh.seek(-200, os.SEEK_END)
                fh.write(bytes(b ^ 0xFF for b in tail))
            rewritten.append(True)

    server = Misbehaving(200)
    try:
        uploader = Uploader(server.url, Credentials(USER, PASSWORD, "test"), retries=0, progress=rewrite_once)
        with pytest.raises(IntegrityError, match="changed while it was being sent"):
            uploader.publish([dist])
    finally:
        server.close(posts=1)  # the post the client began has arrived; the handlers are joined
    assert rewritten
    assert server.posts and all(len(body) < int(headers["Content-Length"]) for headers, body in server.posts)


# -- the RECORD check runs while the largest wheel is sent ----------------------------------

CREDS = {"FLASHINFER_REPACK_USERNAME": USER, "FLASHINFER_REPACK_PASSWORD": PASSWORD}


def big_wheel(out: Path, name: str = "fi-upload-demo", megabytes: int = 3) -> Path:
    """A wheel of several upload chunks (incompressible, the same bytes every run)."""
    import random

    blob = random.Random(megabytes).randbytes(megabytes << 20)
    return make_wheel(out, name, "1.0", files={f"{name.replace('-', '_')}/blob.bin": blob})


def received_file(body: bytes, wheel: Path) -> bytes:
    """The bytes of ``wheel`` that a (possibly cut) multipart body carried."""
    start = body.index(f'filename="{wheel.name}"'.encode())
    return body[body.index(b"\r\n\r\n", start) + 4:]


def test_a_wheel_failing_its_record_check_leaves_no_whole_upload_not_even_of_the_sound_ones(run_cli, tmp_path):
    """The largest wheel is sent while every wheel to be sent is checked, and its body ends only once all
    passed: a damaged smaller wheel stops it before its end-of-central-directory record is sent."""
    big = big_wheel(tmp_path / "a")
    bad = tamper(make_wheel(tmp_path / "b", "fi-other-demo", "1.0"), tmp_path / "bad" / "fi_other_demo-1.0-py3-none-any.whl",
                 "__init__.py")
    server = Misbehaving(200)
    try:
        result = publish(run_cli, "--index", server.url, str(bad), str(big), "--json", env=CREDS)
    finally:
        server.close(posts=1)  # the post the client began has arrived; the handlers are joined
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["error"].startswith(f"{bad.name} does not match its own RECORD")
    assert len(server.posts) == 1  # the big one, first; the damaged one never started
    headers, body = server.posts[0]
    assert len(body) < int(headers["Content-Length"])
    sent, whole = received_file(body, big), big.read_bytes()
    assert whole.startswith(sent) and len(sent) <= whole.rindex(b"PK\x05\x06")


def test_pypiserver_gets_nothing_when_one_wheel_of_several_is_damaged(pypiserver, run_cli, tmp_path):
    big = big_wheel(tmp_path / "a", "fi-upload-several")
    bad = tamper(make_wheel(tmp_path / "b", "fi-upload-several2", "1.0"),
                 tmp_path / "bad" / "fi_upload_several2-1.0-py3-none-any.whl", "__init__.py")
    refused = publish(run_cli, "--index", pypiserver["url"], str(big), str(bad), env=CREDS)
    assert refused.returncode == 1 and f"{bad.name} does not match its own RECORD" in refused.stderr
    assert not (pypiserver["packages"] / big.name).exists() and not (pypiserver["packages"] / bad.name).exists()
    again = publish(run_cli, "--index", pypiserver["url"], str(big), "--json", env=CREDS)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"] == [{"filename": big.name, "action": "uploaded",
                                                  "sha256": sha256(big), "verified": True}]
    assert (pypiserver["packages"] / big.name).read_bytes() == big.read_bytes()


def test_the_largest_wheel_is_sent_first_and_results_keep_the_order_given(run_cli, tmp_path):
    small, big = make_wheel(tmp_path / "s", "fi-small-demo", "1.0"), big_wheel(tmp_path / "b")
    server = Misbehaving(200)
    try:
        result = publish(run_cli, "--index", server.url, str(small), str(big), "--json", env=CREDS)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert [f["filename"] for f in json.loads(result.stdout)["files"]] == [small.name, big.name]
    assert [server.form(i)["content"] for i in range(2)] == [[big.read_bytes()], [small.read_bytes()]]
    for i, wheel in enumerate((big, small)):
        form = server.form(i)
        assert form["sha256_digest"] == [sha256(wheel).encode()]
        assert form["blake2_256_digest"] == [hashlib.blake2b(wheel.read_bytes(), digest_size=32).hexdigest().encode()]


def test_a_wheel_refused_here_is_reported_at_once_while_the_index_is_still_silent(run_cli, tmp_path):
    """The index's pages are read on a thread while the wheels are hashed: a local refusal does not wait on it."""
    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0")
    renamed = tmp_path / "other" / "fi_upload_demo-2.0-py3-none-any.whl"  # METADATA says 1.0
    renamed.parent.mkdir()
    renamed.write_bytes(wheel.read_bytes())
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        # waiting on the index would take the 120 s --timeout (360 s for its headers): the run is not given that
        result = run_cli("publish", "--index", url, str(renamed), "--timeout", "120",
                         env={"NETRC": "/nonexistent", **CREDS}, timeout=60)
    assert result.returncode == 1 and "METADATA says version '1.0', the file name 2.0" in result.stderr


def test_an_upload_the_index_does_not_list_afterwards_is_said_to_be_unconfirmed(run_cli, tmp_path):
    """Misbehaving answers 200 and lists nothing: the upload happened, but the index does not confirm it."""
    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0")
    server = Misbehaving(200)
    try:
        result = publish(run_cli, "--index", server.url, str(wheel), env=CREDS)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"uploaded {wheel.name} (not confirmed: the index's page does not list it with this "
                             f"sha256 yet) -> {server.url}\n")


def test_a_wheel_replaced_by_a_fifo_before_it_is_sent_is_refused_not_waited_on(tmp_path):
    import os

    from repack.fs import NotRegularFileError
    from repack.publish.upload import MultipartBody

    fifo = tmp_path / "fi_upload_demo-1.0-py3-none-any.whl"
    os.mkfifo(fifo)  # no writer ever opens it: a blocking open would wait forever
    body = MultipartBody([("name", "fi-upload-demo")], fifo, size=10)
    with pytest.raises(NotRegularFileError, match="is not a regular file"):
        list(body)
