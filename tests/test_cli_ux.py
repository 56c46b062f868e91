"""The command line as a new user meets it (issue 12): a real terminal (pexpect, 80 and 40 columns),
real servers on 127.0.0.1, exact exit codes and message fragments."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pexpect
import pytest

from repack.cli.common import EXIT_CODES, progress_line
from tests.conftest import cli
from tests.support import synthetic
from tests.support.tinywheel import make_wheel
from tests.test_upload import Misbehaving

REPO = Path(__file__).resolve().parents[1]


def synthetic_index_env() -> dict[str, str]:
    """The session's synthetic index as PIP_INDEX_URL (where the synthetic flashinfer-python's code is read
    from, as ``cli()`` gives it)."""
    from tests.conftest import DEFAULT_INDEX

    return {"PIP_INDEX_URL": DEFAULT_INDEX[-1]}


def spawn(*args: str, columns: int, env: dict | None = None, cwd: Path | None = None) -> pexpect.spawn:
    # COLUMNS/LINES (set by pytest-xdist's workers) would win over the terminal's size that the test sets
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FLASHINFER_", "PIP_INDEX_URL")) and k not in ("COLUMNS", "LINES")}
    run_env.update(env or {})
    return pexpect.spawn(sys.executable, ["-m", "repack", *args], env=run_env, cwd=str(cwd or REPO),
                         dimensions=(24, columns), encoding="utf-8", timeout=120)


def visible_lines(raw: str) -> list[str]:
    """What a terminal shows: each line is what follows its last carriage return (erase codes dropped)."""
    raw = raw.replace("\x1b[K", "")
    return [line.rstrip("\r").split("\r")[-1] for line in raw.split("\n")]


def progress_frames(raw: str) -> list[str]:
    return [f for f in re.split(r"[\r\n]", raw.replace("\x1b[K", "")) if re.search(r"\d (B|kB|MB) / ", f)]


# -- the progress line --------------------------------------------------------------------------

@pytest.mark.parametrize("width", [79, 39, 20])
def test_progress_line_fits_and_keeps_the_numbers(width):
    line = progress_line("flashinfer_cubin-0.6.6-py3-none-any.whl (resumed)", 28_300_000, 267_661_457, width)
    assert len(line) <= width
    assert line.endswith(("28.3 MB / 267.7 MB", "28.3/267.7 MB"))  # units and total are never what is cut


def test_progress_line_without_total_shows_a_size():
    assert progress_line("index page", 12_345, None, 39) == "index page 12.3 kB"


@pytest.mark.parametrize("columns", [80, 40])
def test_build_progress_fits_the_terminal(columns, file_server, small_cubin_wheel, tmp_path):
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel(synthetic.VERSION)])
    file_server.misbehave("/files/*", "slow", delay=0.3)  # long enough for the bar to be drawn
    child = spawn("build", synthetic.VERSION, "-o", str(tmp_path / "out"), "--from", "index+" + file_server.index_url,
                  "--no-cache", columns=columns, env=synthetic_index_env())
    child.expect(pexpect.EOF)
    child.close()
    raw = child.before
    assert child.exitstatus == 0, raw
    frames = progress_frames(raw)
    assert frames, raw
    assert all(len(f) <= columns - 1 for f in frames), [f for f in frames if len(f) >= columns]
    assert any(" / " in f for f in frames)  # done / total, with units
    assert visible_lines(raw)[0].startswith("built ")  # the bar was wiped before the result


@pytest.mark.parametrize("columns", [80, 40])
def test_interrupted_lands_on_a_line_of_its_own(columns, file_server, small_cubin_wheel, tmp_path):
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel(synthetic.VERSION)])
    file_server.misbehave("/files/*", "slow", delay=30)
    child = spawn("build", synthetic.VERSION, "-o", str(tmp_path / "out"), "--from", "index+" + file_server.index_url,
                  "--no-cache", columns=columns, env=synthetic_index_env())
    deadline = 50
    while file_server.requests("/files/*") == 0 and deadline:  # wait until it is inside the stalled request
        deadline -= 1
        child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.2)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130, child.before
    shown = visible_lines(child.before)
    assert "flashinfer-repack: interrupted" in shown, child.before


# -- options anywhere, mistakes ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_logs_decisions(where, tmp_path, small_cubin_wheel):
    def verbose(*args: str) -> list[str]:
        return ["-v", *args] if where == "before" else [*args, "-v"]

    args = verbose("build", synthetic.VERSION, "--from", str(small_cubin_wheel(synthetic.VERSION)),
                   "--cache-dir", str(tmp_path / "c"), "-o", str(tmp_path / "out"))
    first, again = cli(*args), cli(*args)
    assert first.returncode == again.returncode == 0, first.stderr
    assert "source: not in the cache" in first.stderr and "gave verified headers" in first.stderr
    assert f"source: the cache {tmp_path / 'c'}" in again.stderr and "urllib3" not in again.stderr
    # the plan decision of a shipped version comes before any source is opened, so no real wheel is needed
    missing = tmp_path / "absent" / "flashinfer_cubin-0.6.6-py3-none-any.whl"
    shipped = cli(*verbose("build", "0.6.6", "--offline", "--no-cache", "--from", str(missing), "-o", str(tmp_path / "x")))
    assert shipped.returncode == 2 and f"source {missing}: no such file" in shipped.stderr, shipped.stderr
    assert "flashinfer 0.6.6: plan shipped with flashinfer-repack, NOT checked" in shipped.stderr


def test_build_verbose_says_where_the_index_came_from(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:9/simple/\nextra-index-url = http://127.0.0.1:9/x/\n")
    result = cli("-v", "build", "0.6.6", "--from", "index", "--retries", "0", "--no-cache", "-o", str(tmp_path),
                 env={"PIP_CONFIG_FILE": str(conf), "PIP_INDEX_URL": None})
    assert result.returncode == 1
    assert f"index http://127.0.0.1:9/simple/, from {conf} [global]" in result.stderr
    assert "pip also searches http://127.0.0.1:9/x/" in result.stderr


@pytest.mark.parametrize("argv, hint", [(("buidl", "0.6.6"), "did you mean 'build'?"),
                                        (("build", "0.6.6", "--retires", "3"), "did you mean '--retries'?"),
                                        (("doctor", "--pyton", "x"), "did you mean '--python'?"),
                                        (("bundle", "0.6.6", "-o", "x", "--from", "index"),
                                         "--from is an option of build, install, not of bundle; "
                                         "see flashinfer-repack bundle --help"),
                                        (("doctor", "--ouput", "x"), "")])
def test_did_you_mean(argv, hint):
    result = cli(*argv)
    assert result.returncode == 2
    assert (f"hint: {hint}" in result.stderr) if hint else ("hint:" not in result.stderr)  # doctor has no --output
    assert result.stderr.startswith(f"usage: flashinfer-repack {argv[0]} " if argv[0] != "buidl" else
                                    "usage: flashinfer-repack [-h]")  # the usage of the command that was named


@pytest.mark.parametrize("value", ["-5", "x", "101"])
def test_retries_are_validated(value):
    result = cli("build", "0.6.6", "--retries", value)
    assert result.returncode == 2
    assert f"argument --retries: '{value}' is not a whole number of retries from 0 to 100" in result.stderr


def test_timeout_is_validated():
    assert cli("plan", "0.6.6", "--timeout", "0").returncode == 2


def test_argparse_errors_are_json_under_json():
    result = cli("build", "0.6.6", "--json", "--retries", "-5")
    data = json.loads(result.stdout)
    assert result.returncode == 2 and data["ok"] is False and data["kind"] == "UsageError"
    assert data["exit_code"] == 2 and "--retries" in data["error"]


@pytest.mark.parametrize("args", ["plan 0.6.6 --shipped --json", "build 0.6.6 --json --retries x"])
def test_a_closed_pipe_is_quiet(args):
    # the reader is gone before the answer is written (`true` exits at once): every write meets EPIPE
    done = subprocess.run(["bash", "-c", f"( sleep 0.5; {sys.executable} -m repack {args} ) "
                           "| true; echo ${PIPESTATUS[0]}"], capture_output=True, text=True)
    assert done.stderr == ""  # no "Broken pipe", no traceback, no disk-space hint
    assert done.stdout.strip() == "141"


def test_help_prints_the_exit_codes_and_examples():
    top = cli("--help").stdout
    for code, text in EXIT_CODES:
        assert re.search(rf"^  {code}\s+{re.escape(text)}$", top, re.M), code
    for command in ("plan", "build", "publish", "doctor", "install", "bundle"):
        assert "examples:\n  flashinfer-repack " + command in cli(command, "--help").stdout, command


def test_readme_prints_the_same_exit_codes():
    readme = (REPO / "README.md").read_text()
    for code, text in EXIT_CODES:
        assert f"| {code} | {text} |" in readme, code


# -- errors that blame the right thing -------------------------------------------------------

def test_output_naming_a_file(tmp_path):
    (tmp_path / "dist").write_text("")
    result = cli("build", "0.6.6", "-o", str(tmp_path / "dist"), "--offline")
    assert result.returncode == 2
    assert f"-o {tmp_path / 'dist'}: a file is there, not a directory" in result.stderr


def test_from_cache_with_an_empty_cache_does_not_mention_offline(tmp_path):
    result = cli("build", "0.6.6", "--from", "cache", "--cache-dir", str(tmp_path / "c"), "-o", str(tmp_path))
    assert result.returncode == 1
    assert f"not in the cache {tmp_path / 'c'}" in result.stderr and "offline" not in result.stderr


def test_mistyped_cubins_repository_directory(tmp_path):
    result = cli("build", "0.6.6", "--from", "artifactory", "-o", str(tmp_path),
                 env={"FLASHINFER_CUBINS_REPOSITORY": str(tmp_path / "cubns")})
    assert result.returncode == 2
    assert "is neither a URL nor an existing directory" in result.stderr and "Schema" not in result.stderr


# -- --python and the environment doctor picks ------------------------------------------------

@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    return root


@pytest.mark.parametrize("given", ["venv/bin/python", "venv", "./venv/", "{root}/venv/bin/python"])
def test_python_takes_relative_paths_and_venv_directories(bare_venv, given):
    result = cli("doctor", "--python", given.format(root=bare_venv), "--json", cwd=bare_venv)
    data = json.loads(result.stdout)
    assert result.returncode == 1 and data["python"] == str(bare_venv / "venv" / "bin" / "python")
    assert [p["code"] for p in data["problems"]] == ["no-flashinfer"]
    assert data["problems"][0]["fix"] == f"{bare_venv / 'venv' / 'bin' / 'python'} -m pip install flashinfer-python"


def test_python_that_is_not_there_names_the_absolute_path(bare_venv):
    result = cli("doctor", "--python", "nowhere/bin/python", cwd=bare_venv)
    assert result.returncode == 2
    assert f"no such file or directory ({bare_venv}/nowhere/bin/python)" in result.stderr


def test_doctor_without_python_takes_python3_on_path_and_says_so(bare_venv):
    path = f"{bare_venv / 'venv' / 'bin'}:/usr/bin:/bin"
    result = cli("doctor", env={"PATH": path})
    assert result.returncode == 1
    assert result.stdout.startswith(f"checking {bare_venv / 'venv' / 'bin' / 'python3'}, the first python3 on PATH")


@pytest.mark.parametrize("how", ["given", "python3 on PATH"])
def test_doctor_never_advises_flashinfer_into_its_own_env(how):
    own_bin = Path(sys.executable).parent  # this venv's python3 is another name for the same environment
    args = ("--python", sys.executable) if how == "given" else ()
    result = cli("doctor", *args, "--json", env={"PATH": f"{own_bin}:/usr/bin:/bin"})
    fix = json.loads(result.stdout)["problems"][0]["fix"]
    assert "pip install" not in fix and "--python" in fix


# -- doctor's fixes lead to the package -----------------------------------------------------------

def advice_case(version: str, cubin: bool, index: str | None):
    from dataclasses import replace

    from repack.environment.doctor import Advice, diagnose
    from tests.test_doctor import DEST_H, MISSING, snapshot_env

    env = snapshot_env(change={DEST_H: MISSING}, cubin=cubin)
    env = replace(env, rules=replace(env.rules, version=version))
    return diagnose(env, Advice(index_url=index, index_is_pypi=index is None))


def test_fix_is_pip_install_of_our_package_from_the_index_pip_uses():
    fix = advice_case("0.6.6", True, "http://mirror.example/simple/").problems[0].fix
    assert fix == ("/env/bin/python -m pip install flashinfer-cubin-headers==0.6.6  "
                   "# from http://mirror.example/simple/, the index pip uses there")


def test_install_route_only_without_flashinfer_cubin():
    problems = advice_case("0.6.6", False, "http://mirror.example/simple/").problems
    assert all(p.fix.startswith(("flashinfer-repack install 0.6.6 --python", "/env/bin/python -m pip install "
                                 "flashinfer-cubin")) for p in problems), problems


def test_cubin_after_0_6_13_comes_from_flashinfers_index():
    from repack.environment.doctor import _cubin_fix
    from tests.test_doctor import snapshot_env

    env = snapshot_env()
    assert _cubin_fix(env, "0.6.13") == "/env/bin/python -m pip install flashinfer-cubin==0.6.13"
    assert _cubin_fix(env, "0.6.14") == ("/env/bin/python -m pip install flashinfer-cubin==0.6.14 "
                                         "--index-url https://flashinfer.ai/whl")


# -- publish --repository: ~/.pypirc and keyring, as twine reads them --------------------------------

@pytest.fixture
def upload_server():
    server = Misbehaving(200)
    yield server
    server.close()


def sent_credentials(server: Misbehaving) -> str:
    auth = server.posts[0][0]["Authorization"].split()[-1]
    return base64.b64decode(auth).decode()


def test_publish_repository_from_pypirc(upload_server, tmp_path):
    wheel = make_wheel(tmp_path, "demo", "1.0")
    rc = tmp_path / "pypirc"
    rc.write_text(f"[distutils]\nindex-servers =\n  internal\n\n[internal]\nrepository = {upload_server.url}\n"
                  "username = bob\npassword = p%40ss%w0rd\n")
    result = cli("publish", str(wheel), "--repository", "internal", "--config-file", str(rc), "--json",
                 env={"NETRC": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert sent_credentials(upload_server) == "bob:p%40ss%w0rd"  # RawConfigParser: '%' is data
    assert "p%40ss" not in result.stdout + result.stderr


def test_publish_unknown_repository_is_a_usage_error(tmp_path):
    rc = tmp_path / "pypirc"
    rc.write_text("[distutils]\nindex-servers = internal\n[internal]\nrepository = http://127.0.0.1:9/\n")
    wheel = make_wheel(tmp_path, "demo", "1.0")
    result = cli("publish", str(wheel), "--repository", "internl", "--config-file", str(rc))
    assert result.returncode == 2
    assert "repository 'internl' is not in" in result.stderr and "index-servers: internal" in result.stderr


def test_publish_takes_the_password_from_keyring(upload_server, tmp_path):
    backend = tmp_path / "fixedkeyring.py"
    backend.write_text(textwrap.dedent(f"""\
        import keyring.backend
        class Fixed(keyring.backend.KeyringBackend):
            priority = 1
            def get_password(self, service, username):
                return "from-keyring" if (service, username) == ({upload_server.url!r}, "carol") else None
            def set_password(self, *a):
                raise NotImplementedError
            def delete_password(self, *a):
                raise NotImplementedError
        """))
    wheel = make_wheel(tmp_path, "demo", "1.0")
    result = cli("publish", str(wheel), "--index", upload_server.url, "--username", "carol", "--json",
                 env={"PYTHON_KEYRING_BACKEND": "fixedkeyring.Fixed", "PYTHONPATH": str(tmp_path),
                      "NETRC": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert sent_credentials(upload_server) == "carol:from-keyring"


# -- plan: cached, then answered offline with no request ------------------------------------------

@pytest.mark.real
def test_plan_is_cached_then_answered_with_no_request(file_server, python_wheel, tmp_path):
    file_server.serve_project("flashinfer-python", [python_wheel("0.6.6")])
    args = ("plan", "0.6.6", "--index-url", file_server.index_url, "--cache-dir", str(tmp_path), "--json")
    cold = json.loads(cli(*args).stdout)
    before = file_server.requests()
    warm = cli(*args, "-v")
    offline = cli(*args, "--offline")
    assert cold["transfer"]["requests"] > 0 and file_server.requests() == before
    assert json.loads(warm.stdout)["transfer"] == {"requests": 0, "bytes": 0}
    assert "plan: from the cache entry" in warm.stderr
    assert json.loads(offline.stdout)["plan"] == cold["plan"]


def test_a_warm_plan_loads_no_http_client(file_server, python_wheel, tmp_path):
    """The cache answers before any network code is imported (what keeps a warm plan near 0.1 s)."""
    file_server.serve_project("flashinfer-python", [python_wheel(synthetic.VERSION)])
    args = ("plan", synthetic.VERSION, "--index-url", file_server.index_url, "--cache-dir", str(tmp_path), "--json")
    assert cli(*args).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "PIP_INDEX_URL"))}
    warm = subprocess.run([sys.executable, "-X", "importtime", "-m", "repack", *args], capture_output=True,
                          text=True, env=env, timeout=60)
    assert warm.returncode == 0, warm.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in warm.stderr.splitlines() if line.startswith("import time:")}
    assert "repack.rules.plancache" in loaded
    assert not loaded & {"requests", "urllib3", "repack.fetch.transport", "repack.pipeline"}, sorted(loaded)


# -- publish: RECORD read only for what will be sent, with progress ------------------------------

def test_record_check_shows_progress_at_40_columns(tmp_path):
    wheel = make_wheel(tmp_path / "w", "demo", "1.0", files={"demo/big.bin": os.urandom(3 << 20)})
    child = spawn("publish", str(wheel), "--simple", str(tmp_path / "simple"), columns=40)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    frames = [f for f in progress_frames(child.before) if f.startswith("RECORD")]
    assert frames and all(len(f) <= 39 for f in frames), child.before


def test_record_is_not_read_for_a_file_that_is_not_sent(tmp_path):
    from repack.publish.distfile import read_distfile
    from repack.publish.simple import publish_simple
    from tests.support.tinywheel import tamper

    good = make_wheel(tmp_path / "good", "demo", "1.0")
    bad = tamper(good, tmp_path / "bad" / good.name, "__init__.py")
    refused = cli("publish", str(bad), "--simple", str(tmp_path / "fresh"))
    assert refused.returncode == 1 and "does not match its own RECORD" in refused.stderr
    assert not (tmp_path / "fresh" / "demo" / good.name).exists()
    # the same bytes already served (placed without the check): nothing to send, so RECORD is not read
    publish_simple(tmp_path / "tree", [read_distfile(bad, check_record=False)])
    again = cli("publish", str(bad), "--simple", str(tmp_path / "tree"))
    assert again.returncode == 0 and f"skipped {good.name} (already there, same sha256)" in again.stdout


# -- a wheel streamed whole is kept only when small ------------------------------------------------

@pytest.mark.parametrize("limit_delta, kept", [(0, True), (-1, False)])
def test_streamed_wheel_is_kept_only_up_to_the_limit(limit_delta, kept, monkeypatch, file_server,
                                                     small_cubin_wheel, tmp_path):
    from repack.fetch import sources
    from repack.fetch.cache import Cache
    from repack.fetch.digest import file_sha256
    from repack.fetch.index import IndexFile
    from repack.fetch.transport import Transport

    wheel = small_cubin_wheel(synthetic.VERSION)
    file_server.ranges = False
    url = file_server.serve_file(f"files/{wheel.name}", wheel)
    monkeypatch.setattr(sources, "KEEP_WHOLE_WHEEL_UP_TO", wheel.stat().st_size + limit_delta)
    cache = Cache(tmp_path / "cache")
    transport = Transport(retries=0)
    try:
        found = IndexFile(wheel.name, url, size=wheel.stat().st_size, sha256=file_sha256(wheel))
        got = sources.read_remote_wheel(transport, cache, found, lambda n: n.endswith("checksums.txt"))
    finally:
        transport.close()
    assert got and cache.wheel_path(wheel.name).is_file() is kept
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_an_unchecked_wheel_is_never_sent(tmp_path):
    from repack.errors import PublishError
    from repack.publish.distfile import read_distfile
    from repack.publish.upload import form_fields

    dist = read_distfile(make_wheel(tmp_path, "demo", "1.0"), check_record=False, digests=("sha256",))
    with pytest.raises(PublishError, match="was not checked against its RECORD and hashed before sending"):
        form_fields(dist)


# -- errors from servers that blame the right thing -------------------------------------------------

class OddServer:
    """Answers every GET with a redirect to itself, or with a gzip-encoded 206."""

    def __init__(self, mode: str) -> None:
        import gzip
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits += 1
                if mode == "loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = gzip.compress(b"x" * 100)
                self.send_response(206)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Range", "bytes 0-99/1000")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("mode, words", [("loop", "the server redirects in a loop"),
                                         ("gzip", "answered with Content-Encoding: gzip")])
def test_server_faults_are_named_not_retried(mode, words, tmp_path):
    server = OddServer(mode)
    try:
        result = cli("build", "0.6.6", "--from", server.url + "cubin.whl", "--no-cache", "-o", str(tmp_path),
                     "--retries", "3")
    finally:
        server.close()
    assert result.returncode == 1 and words in result.stderr, result.stderr
    assert "--index-url" not in result.stderr and "dropped" not in result.stderr
    assert server.hits == 1 if mode == "gzip" else server.hits <= 31  # one request (and its redirects), no retry


def test_sdist_only_versions_say_so(file_server, tmp_path):
    sdist = tmp_path / "flashinfer_python-0.3.0.tar.gz"
    sdist.write_bytes(b"not really")
    file_server.serve_project("flashinfer-python", [sdist])
    result = cli("plan", "0.3.0", "--index-url", file_server.index_url, "--no-cache")
    assert result.returncode == 1
    assert "flashinfer-python 0.3.0 is on" in result.stderr and "only as a source distribution" in result.stderr


def test_conda_env_fix_is_conda_install():
    from dataclasses import replace

    from repack.environment.doctor import Advice, diagnose
    from tests.test_doctor import DEST_H, MISSING, snapshot_env

    env = snapshot_env(change={DEST_H: MISSING})
    fix = diagnose(env, Advice(conda_prefix="/opt/conda/envs/serve")).problems[0].fix
    assert fix == "conda install --prefix /opt/conda/envs/serve flashinfer-cubin-headers=0.6.6"
    cubin = diagnose(replace(env, interpreter=replace(env.interpreter, dists={
        k: v for k, v in env.interpreter.dists.items() if k != "flashinfer-cubin"})),
        Advice(conda_prefix="/opt/conda/envs/serve"))
    assert all("pip" not in p.fix for p in cubin.problems), cubin.problems


def test_python_given_a_conda_prefix_without_python_reads_it_as_prefix(tmp_path):
    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    result = cli("doctor", "--python", "env", "--json", cwd=tmp_path)
    data = json.loads(result.stdout)
    assert result.returncode == 1 and [p["code"] for p in data["problems"]] == ["no-flashinfer"]
    assert str(prefix) in data["target"]


def test_conversion_reports_progress(tmp_path):
    from repack.build.convert import convert_wheel

    wheel = make_wheel(tmp_path / "w", "demo", "1.0", files={"demo/__init__.py": b"", "demo/big.bin": b"x" * 5000})
    seen = []
    convert_wheel(wheel, tmp_path / "out", names={}, progress=lambda *a: seen.append(a))
    label, done, total = seen[-1]
    assert label == "convert demo-1.0-py3-none-any.whl" and done == total > 5000  # the payload and dist-info
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)


def test_a_resumed_download_says_so(file_server, small_cubin_wheel, tmp_path):
    import hashlib

    from repack.fetch.download import RESUMED, fetch_verified
    from repack.fetch.index import IndexFile
    from repack.fetch.transport import Transport

    wheel = small_cubin_wheel(synthetic.VERSION)
    data = wheel.read_bytes()
    url = file_server.serve_file(f"files/{wheel.name}", wheel)
    dest = tmp_path / wheel.name
    dest.with_name(wheel.name + ".part").write_bytes(data[: len(data) // 2])
    seen = []
    transport = Transport(retries=0, progress=lambda *a: seen.append(a))
    try:
        found = IndexFile(wheel.name, url, hashlib.sha256(data).hexdigest(), len(data))
        assert fetch_verified(transport, found, dest)[0] == RESUMED
    finally:
        transport.close()
    percent = (len(data) // 2) * 100 // len(data)
    assert seen and {label for label, _, _ in seen} == {f"{wheel.name} (resumed at {percent}%)"}
    assert seen[-1][1:] == (len(data), len(data))


def test_percent_encoded_password_from_pip_conf_reaches_the_server_decoded(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = http://bob:p%40ss%25w0rd@127.0.0.1:{httpd.server_address[1]}/simple/\n")
    try:
        result = cli("plan", "0.6.9", "--no-cache", "--retries", "0", env={"PIP_CONFIG_FILE": str(conf),
                                                                            "NETRC": "/nonexistent",
                                                                            "PIP_INDEX_URL": None})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert seen and base64.b64decode(seen[0].split()[-1]).decode() == "bob:p@ss%w0rd"
    assert "p%40ss" not in result.stderr and "p@ss" not in result.stderr


def test_a_damaged_plan_cache_entry_is_dropped_and_read_again(tmp_path):
    """A cached plan edited after it was written (here: the pin) is a miss with a warning, never a plan."""
    from tests.support import synthetic

    args = ("plan", synthetic.VERSION, "--cache-dir", str(tmp_path), "--json")
    cold = cli(*args)
    assert cold.returncode == 0, cold.stderr
    entry = next((tmp_path / "plans").glob("*.json"))
    entry.write_text(entry.read_text().replace(synthetic.checksums_sha256(), "0" * 64))
    again = cli(*args)
    assert again.returncode == 0 and "dropping the damaged cache entry" in again.stderr
    assert json.loads(again.stdout)["plan"]["checksums_sha256"] == synthetic.checksums_sha256()
    assert json.loads(again.stdout)["transfer"]["requests"] > 0


@pytest.mark.parametrize("command", ["build", "publish --simple", "bundle", "publish --channel"])
def test_a_file_where_an_output_folder_s_parent_should_be_is_named_and_a_usage_error(command, tmp_path,
                                                                                       small_cubin_wheel):
    (tmp_path / "afile").write_text("not a folder\n")
    out = str(tmp_path / "afile" / "sub")
    wheel = make_wheel(tmp_path / "w", "fi-demo", "1.0")
    argv = {"build": ["build", synthetic.VERSION, "--from", str(small_cubin_wheel(synthetic.VERSION)), "--no-cache",
                      "-o", out],
            "publish --simple": ["publish", "--simple", out, str(wheel)],
            "bundle": ["bundle", synthetic.VERSION, "-o", out, "--index-url", "http://127.0.0.1:9/simple/",
                       "--retries", "0"],
            "publish --channel": ["publish", "--channel", out]}[command]
    if command == "publish --channel":
        built = cli("build", synthetic.VERSION, "--format", "conda", "-o", str(tmp_path / "c"), "--no-cache", "--json",
                    "--from", str(small_cubin_wheel(synthetic.VERSION)))
        assert built.returncode == 0, built.stderr
        argv.append(json.loads(built.stdout)["artifacts"][0]["path"])
    result = cli(*argv, "--json")
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)
    assert f"{tmp_path / 'afile'} is a file, not a folder" in error["error"], error
    assert "parents are folders" in error["hint"]


def test_an_interrupted_run_exits_at_once_though_a_thread_is_still_at_work(tmp_path):
    """After ^C/SIGTERM has unwound main (message and JSON written), the process ends: Python's exit would
    join a non-daemon thread still at work, or wait on a lock the interrupt left taken in concurrent.futures."""
    script = textwrap.dedent("""
        import threading, time
        import repack.cli as cli
        def main():
            threading.Thread(target=time.sleep, args=(300,)).start()  # non-daemon: joined at a normal exit
            print('{"ok": false}')
            return cli.EXIT_INTERRUPTED
        cli.main = main
        cli.run()
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=str(REPO))  # a run that waited for the thread would take 300 s
    assert result.returncode == 130 and result.stdout == '{"ok": false}\n', result.stderr
