"""Second hostile review of the ``publish --index`` follow-ups (commits after 9d429db).

Each test here fails on the reviewed tip and names one defect; see the review report for the fix.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import pytest

from tests.support.tinywheel import make_wheel
from tests.test_upload import PASSWORD, USER, Misbehaving, big_wheel

# -- 1. a file that grows while it is sent reaches the index whole (Content-Length bytes) ----------------------

def test_review2_a_file_grown_while_it_is_sent_never_reaches_the_index_whole(tmp_path):
    """MultipartBody announces the size the file had when the body was made, then sends the file to its
    end, whatever that is: a file appended to while it is sent fills the announced Content-Length before
    the held-back last chunk and the sha256 verdict, so the index holds a request of its full declared
    length (head, the old file, then the start of what was appended) before the connection drops."""
    from repack.errors import IntegrityError, PublishError
    from repack.publish.distfile import read_distfile, ready_to_upload
    from repack.publish.upload import Credentials, Uploader

    wheel = big_wheel(tmp_path / "w")  # 3 MiB: several 1 MiB chunks
    dist = ready_to_upload(read_distfile(wheel, check_record=False, digests=("sha256",)))
    grown = []

    def append_once(_label, _done, _total):
        if not grown:  # the first chunk is on its way: a writer appends 3 MiB (a build writing the same path)
            with open(wheel, "ab") as fh:
                fh.write(os.urandom(3 << 20))
            grown.append(True)

    server = Misbehaving(200)
    try:
        uploader = Uploader(server.url, Credentials(USER, PASSWORD, "test"), retries=0, progress=append_once)
        with pytest.raises((IntegrityError, PublishError)):
            uploader.publish([dist])
    finally:
        server.close(posts=1)  # the post the client began has arrived; the handlers are joined
    assert grown
    assert server.posts and all(len(body) < int(headers["Content-Length"]) for headers, body in server.posts), \
        "the index read a body of its whole declared length"


# -- 2. an option given before its command is said to be an option of other commands, "not of" its own -------

@pytest.mark.parametrize("argv, command, option", [(("--offline", "build", "0.6.6"), "build", "--offline"),
                                                   (("--json", "doctor"), "doctor", "--json")])
def test_review2_an_option_given_before_its_command_is_not_said_to_belong_elsewhere(run_cli, argv, command,
                                                                                      option):
    result = run_cli(*argv)
    assert result.returncode == 2, result.stderr
    hint = next(line for line in result.stderr.splitlines() if line.strip().startswith("hint:"))
    assert f"not of {command}" not in hint, hint  # it IS an option of that command: only its place is wrong
    assert option in hint and command in hint


# -- 3. ^C while the checks finish after a failed upload does not stop them ------------------------------------

def test_review2_an_interrupt_while_the_checks_finish_after_a_failed_upload_stops_them(tmp_path, monkeypatch):
    """After a failed upload cmd_publish waits for every RECORD check (``check.failure(wait=True)``) inside its
    ``except RepackError`` handler; a ^C there escapes that handler, so the sibling ``except BaseException``
    never cancels the checks: their (non-daemon) thread runs on, and the interpreter's exit joins it, so the
    interrupted command does not stop until every wheel was inflated."""
    from repack import cli
    from repack.errors import PublishError
    from repack.publish import distfile, upload

    wheel = make_wheel(tmp_path, "fi-upload-demo", "1.0")
    steps: list[int] = []
    stop = threading.Event()
    checking = threading.Event()

    def endless(d, path, progress, checked, digests):  # a long check: ends at a progress step that raises
        while not stop.is_set():
            progress("RECORD check", len(steps), None)
            steps.append(1)
            checking.set()
            time.sleep(0.001)
        return replace(d, record_checked=True), {"sha256": d.sha256}

    real_failure = distfile.RecordCheck.failure

    def interrupted(self, wait=False):
        if wait:  # the user presses ^C while the checks are finished
            assert checking.wait(30)
            raise KeyboardInterrupt
        return real_failure(self, wait)

    def upload_fails(self, dists, listings=None, ready=None):  # the index refuses (no network needed)
        raise PublishError(f"{self.server} answered HTTP 500 to the upload", "the index failed")

    monkeypatch.setattr(distfile, "_verified", endless)
    monkeypatch.setattr(distfile.RecordCheck, "failure", interrupted)
    monkeypatch.setattr(upload.Uploader, "listed_file", lambda self, project, filename: None)
    monkeypatch.setattr(upload.Uploader, "publish", upload_fails)
    for key, value in {"FLASHINFER_REPACK_USERNAME": USER, "FLASHINFER_REPACK_PASSWORD": PASSWORD,
                       "NETRC": "/nonexistent"}.items():
        monkeypatch.setenv(key, value)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(["publish", "--index", "http://127.0.0.1:9/", str(wheel), "--no-cache", "-q"])
        assert code == 130
        ended_at = len(steps)
        time.sleep(0.3)  # a check still running takes about 300 more steps meanwhile
        assert len(steps) == ended_at, "the checks ran on after the interrupt"
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, sigterm)


# -- 4. file_digests names a file cut while read, but not one rewritten while read (as its docstring says) ------

def test_review2_a_file_rewritten_in_place_while_it_is_hashed_is_not_given_a_digest(tmp_path, monkeypatch):
    """file_digests promises IntegrityError for a file "cut or rewritten while it is read (its bytes are no
    single version of it)", but only a file that became shorter is noticed: a tail rewritten in place after the
    head was hashed gives the sha256 of bytes that never were the file, without a word."""
    from repack.errors import IntegrityError
    from repack.fetch import digest

    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * (3 << 20))  # three 1 MiB reads
    os.utime(path, (0, 0))  # so that the rewrite shows in the mtime whatever the clock's granularity
    real_pread = os.pread
    rewritten = []

    def pread(fd, n, offset):
        if offset and not rewritten:  # the head is hashed: a writer rewrites the tail, size kept
            with open(path, "r+b") as fh:
                fh.seek(-100, os.SEEK_END)
                fh.write(b"b" * 100)
            rewritten.append(True)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(IntegrityError, match="changed while it was being read"):
        digest.file_sha256(path)
    assert rewritten
