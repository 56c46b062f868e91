"""The index that build and plan read: a username without a password is completed as pip completes it
(``~/.netrc``, then keyring under the index URL, then under the host), against a local server that
needs the password.  keyring is real, with a tiny backend chosen by ``PYTHON_KEYRING_BACKEND``."""

from __future__ import annotations

import base64
import os
import stat
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from repack.fetch.keyringauth import keyring_password
from tests.conftest import cli

PASSWORD = "k3y/r1ng:p@ss"


@pytest.fixture
def auth_index():
    """A server on 127.0.0.1 that answers 401 to any request without bob's password (all it serves)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            sent = self.headers.get("Authorization", "")
            seen.append(base64.b64decode(sent.split()[-1]).decode() if sent else "")
            self.send_response(404 if seen[-1] == f"bob:{PASSWORD}" else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.seen = seen
    httpd.host = f"127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def backend(tmp_path, service: str, password: str = PASSWORD) -> dict[str, str]:
    """The environment that makes keyring answer ``password`` for (``service``, bob) and nothing else."""
    (tmp_path / "fixedkeyring.py").write_text(textwrap.dedent(f"""
        import keyring.backend
        class Fixed(keyring.backend.KeyringBackend):
            priority = 1
            def get_password(self, service, username):
                return {password!r} if (service, username) == ({service!r}, "bob") else None
            def set_password(self, service, username, password):
                raise NotImplementedError
            def delete_password(self, service, username):
                raise NotImplementedError
        """))
    return {"PYTHON_KEYRING_BACKEND": "fixedkeyring.Fixed", "PYTHONPATH": str(tmp_path), "NETRC": "/nonexistent"}


def plan(index: str, env: dict[str, str]):
    return cli("plan", "0.6.9", "--no-cache", "--retries", "0", "--index-url", index, env=env)


@pytest.mark.parametrize("stored_under", ["index URL", "host"])
def test_plan_completes_a_username_from_keyring_as_pip_does(auth_index, tmp_path, stored_under):
    index = f"http://{auth_index.host}/simple/"
    service = index if stored_under == "index URL" else auth_index.host
    result = plan(f"http://bob@{auth_index.host}/simple/", backend(tmp_path, service))
    # the page is then a 404 (no such project): what matters is what was sent, and that it is not shown
    assert auth_index.seen and set(auth_index.seen) == {f"bob:{PASSWORD}"}, result.stderr
    assert result.returncode == 1 and "Traceback" not in result.stderr and PASSWORD not in result.stderr


def test_without_a_keyring_password_the_username_goes_alone_and_the_refusal_is_shown(auth_index, tmp_path):
    result = plan(f"http://bob@{auth_index.host}/simple/", backend(tmp_path, "http://elsewhere/simple/"))
    assert set(auth_index.seen) == {"bob:"}
    assert result.returncode != 0 and "401" in result.stderr and "Traceback" not in result.stderr


def test_netrc_comes_before_keyring_as_in_pip(auth_index, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login bob password {PASSWORD}\n")
    netrc.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = {**backend(tmp_path, f"http://{auth_index.host}/simple/", "not-this-one"), "NETRC": str(netrc)}
    plan(f"http://bob@{auth_index.host}/simple/", env)
    assert set(auth_index.seen) == {f"bob:{PASSWORD}"}


def test_the_keyring_command_is_asked_when_the_package_is_not_used(tmp_path, monkeypatch):
    """pip's subprocess provider: ``keyring get SERVICE USER`` on PATH, its one line the password."""
    command = tmp_path / "bin" / "keyring"
    command.parent.mkdir()
    command.write_text(f"#!{sys.executable}\nimport sys\n"
                       f"sys.exit(print({PASSWORD!r}) if sys.argv[1:] == ['get', 'https://h/simple/', 'bob'] else 1)\n")
    command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{command.parent}{os.pathsep}{os.environ['PATH']}")
    assert keyring_password(["https://h/simple/"], "bob", "subprocess") == PASSWORD
    assert keyring_password(["https://other/simple/", "h"], "bob", "subprocess") is None
    assert keyring_password(["https://h/simple/"], "bob", "disabled") is None
    with pytest.raises(ValueError, match="not one of"):
        keyring_password(["https://h/simple/"], "bob", "sometimes")


@pytest.mark.parametrize("where", ["PIP_KEYRING_PROVIDER", "pip.conf"])
def test_pips_keyring_provider_setting_is_followed(auth_index, tmp_path, where):
    """``keyring-provider = disabled`` (pip's option, from its variable or its config) keeps keyring out."""
    env = backend(tmp_path, f"http://{auth_index.host}/simple/")
    if where == "pip.conf":
        conf = tmp_path / "pip.conf"
        conf.write_text("[global]\nkeyring-provider = disabled\n")
        env["PIP_CONFIG_FILE"] = str(conf)
    else:
        env["PIP_KEYRING_PROVIDER"] = "disabled"
    plan(f"http://bob@{auth_index.host}/simple/", env)
    assert set(auth_index.seen) == {"bob:"}


def test_a_keyring_provider_pip_does_not_know_is_a_usage_error(tmp_path):
    result = cli("plan", "0.6.9", "--no-cache", "--index-url", "http://127.0.0.1:9/simple/",
                 env={"PIP_KEYRING_PROVIDER": "sometimes"})
    assert result.returncode == 2 and "keyring-provider 'sometimes'" in result.stderr and "PIP_KEYRING_PROVIDER" in result.stderr


def _keyring_command(tmp_path, monkeypatch, body: str) -> Path:
    command = tmp_path / "bin" / "keyring"
    command.parent.mkdir(exist_ok=True)
    command.write_text(f"#!/bin/sh\n{body}\n")
    command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{command.parent}{os.pathsep}{os.environ['PATH']}")
    return command


def test_a_keyring_command_that_never_stops_talking_is_cut_off(tmp_path, monkeypatch):

    _keyring_command(tmp_path, monkeypatch, "exec yes AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert keyring_password(["https://h/simple/"], "bob", "subprocess", timeout=20) is None  # cut at 64 KiB


def test_a_hung_keyring_command_is_killed_with_its_children_and_asked_once(tmp_path, monkeypatch):

    asked = tmp_path / "asked"
    child_pid = tmp_path / "child.pid"
    _keyring_command(tmp_path, monkeypatch, f'echo "$2" >> {asked}; sleep 300 & echo $! > {child_pid}; wait')
    assert keyring_password(["https://h/simple/", "h"], "bob", "subprocess", timeout=1) is None
    assert asked.read_text().split() == ["https://h/simple/"]  # the host is not asked of a command that hung
    stat_file = Path(f"/proc/{int(child_pid.read_text())}/stat")

    def stopped() -> bool:  # gone, or a zombie that its new parent has yet to reap
        try:
            return stat_file.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously; a kept `sleep 300` never stops
    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stopped()


def test_a_keyring_package_that_never_answers_is_given_up_on_after_the_timeout(tmp_path, monkeypatch):
    """A backend waiting on a prompt no one sees (a locked store): asked once, then the tool goes on; with a
    person to answer it (timeout None: stdin is a terminal), it is waited for."""
    import keyring

    asked, answer = [], threading.Event()

    class Prompting(keyring.backend.KeyringBackend):
        priority = 1

        def get_password(self, service, username):
            asked.append(service)
            return PASSWORD if answer.wait(300) else None

        def set_password(self, service, username, password):
            raise NotImplementedError

        def delete_password(self, service, username):
            raise NotImplementedError

    monkeypatch.setattr(keyring.core, "_keyring_backend", Prompting())
    found: list[str | None] = []
    asking = threading.Thread(target=lambda: found.append(
        keyring_password(["https://h/simple/", "h"], "bob", "import", timeout=5)))
    asking.start()
    asking.join(60)  # a hang fails here, not in CI's time limit
    assert not asking.is_alive() and found == [None] and asked == ["https://h/simple/"]

    asked.clear()
    threading.Timer(6, answer.set).start()  # the person types the master password, later than the bound above
    assert keyring_password(["https://h/simple/"], "bob", "import", timeout=None) == PASSWORD
    assert asked == ["https://h/simple/"]
