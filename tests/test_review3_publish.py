"""Third hostile review of the publish path (``publish --index/--repository/--simple``, at 1333630).

Each test here failed on the reviewed tip and names one defect; each keeps its fix in place.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pexpect
import pytest

from tests.support.tinywheel import make_wheel
from tests.test_upload import Misbehaving, big_wheel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sent_credentials(server: Misbehaving) -> str:
    import base64

    return base64.b64decode(server.posts[0][0]["Authorization"].split()[-1]).decode()


# -- 1. the pypirc username is dropped when the password comes from the command line or the environment ------

@pytest.mark.parametrize("extra, env", [(["--password", "tok3n-xyz"], {}),
                                        ([], {"TWINE_PASSWORD": "tok3n-xyz"}),
                                        ([], {"FLASHINFER_REPACK_PASSWORD": "tok3n-xyz"})])
def test_review3_a_pypirc_username_goes_with_a_password_given_elsewhere(run_cli, tmp_path, extra, env):
    """twine (and the epilog's order) take the username from the first of 1-5 that has one and the password
    from the first that has one: ``[internal] username = bob`` with the token in TWINE_PASSWORD (a CI secret)
    uploads as bob.  upload_target reads the pypirc username, finds a password elsewhere, then hands only
    --username/--password to find_credentials, which never sees pypirc: 'a password was given but no username'
    (exit 2) although the username is in the file the user named."""
    wheel = make_wheel(tmp_path, "demo", "1.0")
    server = Misbehaving(200)
    try:
        rc = tmp_path / "pypirc"
        rc.write_text(f"[distutils]\nindex-servers = internal\n\n[internal]\nrepository = {server.url}\n"
                      "username = bob\n")
        result = run_cli("publish", str(wheel), "--repository", "internal", "--config-file", str(rc), "--no-cache",
                         *extra, env={"NETRC": os.devnull, "TWINE_USERNAME": None, "TWINE_PASSWORD": None,
                                      "FLASHINFER_REPACK_USERNAME": None, "FLASHINFER_REPACK_PASSWORD": None, **env})
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert sent_credentials(server) == "bob:tok3n-xyz"


# -- 2. an option that takes a value, given before its command, gets argparse's bare error ----------------------

@pytest.mark.parametrize("argv", [("--index", "http://127.0.0.1:9/", "publish", "x.whl"),
                                  ("--index=http://127.0.0.1:9/", "publish", "x.whl"),
                                  ("--username", "bob", "publish", "x.whl", "--index", "http://127.0.0.1:9/")])
def test_review3_an_option_with_a_value_before_its_command_says_where_it_goes(run_cli, argv):
    """9e23f25 says where a flag given before its command goes (``--json doctor``), but an option with a value
    never reaches that hint: ``--index URL publish`` is "argument COMMAND: invalid choice: 'http://...'" (the
    value taken for the command), and ``--index=URL publish x.whl`` is "one of the arguments --index ... is
    required" (it was given), both without a hint."""
    result = run_cli(*argv)
    assert result.returncode == 2, result.stderr
    hints = [line for line in result.stderr.splitlines() if line.strip().startswith("hint:")]
    option = argv[0].split("=")[0]
    assert hints and option in hints[0] and "after 'publish'" in hints[0], result.stderr


# -- 3. --simple: a new file is placed, then the pages fail on another file: placed but never listed -----------

def test_review3_a_simple_tree_never_holds_a_file_its_pages_do_not_list(run_cli, tmp_path):
    """publish_simple renames every staged file into place, then regenerates the pages, which re-read every
    wheel of the project; one damaged wheel already in the tree (a half-finished rsync, a full disk) makes that
    an IntegrityError after the new file was placed: exit 1, the new file served by name but on no page, and
    every later publish 'skips' it and fails the same way.  The docstring promises "a failed publish leaves
    the tree as it was"; and the error names only a file name, not which tree file is damaged."""
    tree = tmp_path / "tree"
    old = make_wheel(tmp_path / "a", "demo", "1.0")
    new = make_wheel(tmp_path / "b", "demo", "2.0")
    assert run_cli("publish", str(old), "--simple", str(tree), "--no-cache").returncode == 0
    placed_old = tree / "demo" / old.name
    placed_old.write_bytes(placed_old.read_bytes()[:100])  # damaged in the tree
    result = run_cli("publish", str(new), "--simple", str(tree), "--no-cache")
    placed = (tree / "demo" / new.name).exists()
    listed = new.name in (tree / "demo" / "index.html").read_text()
    assert placed == listed, (result.returncode, result.stderr)
    if result.returncode != 0:
        assert str(placed_old) in result.stderr, result.stderr  # which file of the tree is damaged


# -- 4. --json and an interrupt: no JSON object at all -------------------------------------------------------

def test_review3_an_interrupted_publish_still_prints_its_json_object(tmp_path):
    """The README: "--json prints one JSON object on stdout, errors (argparse's too) included".  A publish
    stopped by SIGTERM (docker stop, a CI cancel: turned into KeyboardInterrupt) or ^C returns 130 from
    main's ``except KeyboardInterrupt`` with nothing on stdout, so a caller parsing stdout gets no object."""
    wheel = make_wheel(tmp_path, "demo", "1.0")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    arrived = threading.Event()
    held: list[socket.socket] = []

    def hold() -> None:  # an index that accepts and never answers
        conn, _ = listener.accept()
        held.append(conn)
        arrived.set()

    threading.Thread(target=hold, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "TWINE_"))}
    proc = subprocess.Popen([sys.executable, "-m", "repack", "publish", str(wheel), "--index",
                             f"http://127.0.0.1:{listener.getsockname()[1]}/", "--json", "--no-cache",
                             "--timeout", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "NETRC": os.devnull}, cwd=REPO)
    try:
        assert arrived.wait(120), "the index was never asked"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for conn in held:
            conn.close()
        listener.close()
    assert proc.returncode == 130, err
    data = json.loads(out)
    assert data["ok"] is False and data["exit_code"] == 130


# -- 5. the upload's progress never reaches its total --------------------------------------------------------

def test_review3_the_upload_progress_ends_at_its_total(tmp_path):
    """MultipartBody reports ``done`` in bytes of the file but ``total`` as the whole body's length (form
    fields, part headers and the closing boundary): the upload bar of a wheel stops short of 100 % (a small
    wheel with a long description at a fraction of it), and progress_printer never draws it finished."""
    from repack.publish.distfile import read_distfile, ready_to_upload
    from repack.publish.upload import Credentials, Uploader

    wheel = big_wheel(tmp_path / "w", megabytes=2)
    dist = ready_to_upload(read_distfile(wheel, check_record=False))
    seen: list[tuple[str, int, int | None]] = []
    server = Misbehaving(200)
    try:
        Uploader(server.url, Credentials("u", "p-secret", "test"), retries=0,
                 progress=lambda label, done, total: seen.append((label, done, total))).publish([dist])
    finally:
        server.close()
    uploads = [(done, total) for label, done, total in seen if label.startswith("upload ")]
    assert uploads and uploads[-1][0] == uploads[-1][1], uploads[-1:]


# -- 6. keyring waited for without bound at a terminal, without a word --------------------------------------

def test_review3_a_keyring_wait_at_a_terminal_is_said(tmp_path):
    """9e23f25: at a terminal keyring is waited for "as long as a person takes".  A backend whose prompt is not
    on this terminal (a desktop unlock dialog over ssh, ``docker run -t``, a CI agent that allocates a pty)
    then leaves the command silent for ever: nothing says it waits, for what, or that ^C stops it.
    The backend here answers only once the test has seen the word 'keyring' on the terminal."""
    released = tmp_path / "released"
    (tmp_path / "slowkeyring.py").write_text(textwrap.dedent(f"""\
        import os, time
        import keyring.backend
        class Slow(keyring.backend.KeyringBackend):
            priority = 1
            def get_password(self, service, username):
                for _ in range(600):  # at most 60 s: the test's own bound
                    if os.path.exists({str(released)!r}):
                        break
                    time.sleep(0.1)
                return None
            def set_password(self, *a):
                raise NotImplementedError
            def delete_password(self, *a):
                raise NotImplementedError
        """))
    wheel = make_wheel(tmp_path, "demo", "1.0")
    server = Misbehaving(401)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "TWINE_"))}
    env.update({"PYTHON_KEYRING_BACKEND": "slowkeyring.Slow", "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}",
                "NETRC": os.devnull})
    child = pexpect.spawn(sys.executable, ["-m", "repack", "publish", str(wheel), "--index", server.url,
                                           "--username", "carol", "--no-cache"],
                          env=env, cwd=REPO, dimensions=(24, 80), encoding="utf-8", timeout=30)
    try:
        said = child.expect(["waiting for keyring", pexpect.TIMEOUT, pexpect.EOF])
    finally:
        released.touch()
        child.expect(pexpect.EOF, timeout=120)
        child.close()
        server.close()
    assert said == 0, child.before
