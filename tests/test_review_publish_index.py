"""Hostile review of ``publish --index`` (RECORD checks beside the upload, listings read on a thread).

Each test here showed one defect found in review (each failed before its fix), and keeps it fixed.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
from dataclasses import replace
from pathlib import Path

from tests.support.tinywheel import make_wheel, tamper

CREDS = {"FLASHINFER_REPACK_USERNAME": "alice", "FLASHINFER_REPACK_PASSWORD": "Pa55-w0rd-never-shown",
         "NETRC": "/nonexistent"}


class RawIndex:
    """An index on 127.0.0.1 spoken to over raw sockets, so that it can do what http.server will not.

    GET of ``/simple/<project>/`` answers the page in ``pages`` (else 404).  POST either reads the whole
    body and answers ``status`` (``early=False``), or answers ``status`` at once, before reading any of the
    body, and closes (``early=True``: a proxy refusing on its headers, a server that answers first).
    ``posts`` holds (Content-Length, bytes of the body read) for each POST.
    """

    def __init__(self, status: int = 200, *, early: bool = False, pages: dict[str, str] | None = None) -> None:
        self.status, self.early, self.pages = status, early, pages or {}
        self.posts: list[tuple[int, int]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.accepting = threading.Thread(target=self._serve, daemon=True)
        self.accepting.start()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes _serve's accept (a close alone does not, on Linux)
        except OSError:
            pass
        self.sock.close()
        self.accepting.join(10)
        for conn in self.conns:  # a kept-alive connection's handler waits in readline: end it
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(10)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, conn.makefile("rb") as f:
            while True:
                line = f.readline()
                if not line:
                    return
                headers = {}
                while (h := f.readline()) not in (b"\r\n", b""):
                    key, _, value = h.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                method, target = line.split()[:2]
                if method == b"GET":
                    page = self.pages.get(target.decode())
                    self._answer(conn, 200 if page else 404, (page or "no").encode(), "text/html")
                    continue
                length = int(headers["content-length"])
                if self.early:
                    self.posts.append((length, 0))
                    self._answer(conn, self.status, b"ok", "text/plain", close=True)
                    conn.shutdown(socket.SHUT_WR)
                    return
                got = len(f.read(length))
                self.posts.append((length, got))
                self._answer(conn, self.status, b"ok", "text/plain")

    @staticmethod
    def _answer(conn: socket.socket, status: int, body: bytes, ctype: str, close: bool = False) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"{'Connection: close' if close else ''}\r\n\r\n".encode() + body)


def big_wheel(out: Path, name: str, megabytes: int = 3) -> Path:
    """A wheel of several 1 MiB upload chunks, with an ``__init__.py`` that :func:`tamper` can alter."""
    blob = random.Random(megabytes).randbytes(megabytes << 20)
    mod = name.replace("-", "_")
    return make_wheel(out, name, "1.0", files={f"{mod}/blob.bin": blob, f"{mod}/__init__.py": b"X = 1\n"})


def publish(run_cli, *args: str):
    return run_cli("publish", *args, "--no-cache", "--json", env=CREDS)


# -- 1. the RECORD check's verdict is dropped when the gate is never reached ---------------------------

def test_review_a_damaged_wheel_is_never_reported_uploaded_when_the_index_answers_before_the_body(
        run_cli, tmp_path):
    """urllib3 swallows EPIPE/ECONNRESET while sending a body and reads the answer: a server (or proxy)
    that answers 200 before reading the body stops the body before ``gate`` is called, so RecordCheck.wait
    is never asked, and RecordCheck.cancel swallows its IntegrityError: exit 0, "uploaded".  (16 MB: more than
    the loopback socket buffers hold, so the body cannot reach the gate before the reset.)"""
    bad = tamper(big_wheel(tmp_path / "a", "fi-early-demo", 16), tmp_path / "bad" / "fi_early_demo-1.0-py3-none-any.whl",
                 "__init__.py")
    index = RawIndex(200, early=True)
    try:
        result = publish(run_cli, "--index", index.url, str(bad))
    finally:
        index.close()
    assert [got for _, got in index.posts] == [0]  # the set-up: it answered before reading a byte of the body
    assert result.returncode == 1, result.stdout
    assert json.loads(result.stdout)["error"].startswith(f"{bad.name} does not match its own RECORD")


def test_review_an_index_that_answers_200_before_the_body_ends_is_not_reported_as_an_upload(run_cli, tmp_path):
    sound = big_wheel(tmp_path / "a", "fi-early-demo", 16)
    index = RawIndex(200, early=True)
    try:
        result = publish(run_cli, "--index", index.url, str(sound))
    finally:
        index.close()
    assert [got for _, got in index.posts] == [0]  # the set-up: it answered before reading a byte of the body
    assert result.returncode == 1, result.stdout
    error = json.loads(result.stdout)
    assert error["error"] == (f"{index.url} answered HTTP 200 to the upload of {sound.name} before it had "
                              "received the whole file") and error["kind"] == "PublishError"


# -- 2. a clash known before anything is sent is refused only after the other wheels were sent -----------

def test_review_a_name_clash_listed_before_sending_is_refused_before_any_upload(run_cli, tmp_path):
    """The listings are read before anything is sent, yet the listed files are sorted last: a file the index
    already serves with other bytes is refused only after every new wheel was uploaded (and an upload cannot be
    taken back).  Given first on the command line, the clash used to stop the publish before any upload."""
    clash = make_wheel(tmp_path / "c", "fi-clash-demo", "1.0")
    new = big_wheel(tmp_path / "n", "fi-new-demo")
    other = hashlib.sha256(b"other bytes").hexdigest()
    page = f'<a href="../../packages/{clash.name}#sha256={other}">{clash.name}</a>'
    index = RawIndex(200, pages={"/simple/fi-clash-demo/": page})
    try:
        result = publish(run_cli, "--index", index.url, str(clash), str(new))
    finally:
        index.close()
    assert result.returncode == 1, result.stdout
    assert f"already has {clash.name} with sha256 {other}" in json.loads(result.stdout)["error"]
    assert index.posts == []  # nothing was sent: the refusal was known before the first byte


# -- 3. RecordCheck.wait on Python 3.10 -----------------------------------------------------------------

def test_review_a_record_check_slower_than_a_tick_is_waited_for(tmp_path, monkeypatch):
    """``wait`` polls with ``future.result(timeout=0.1)`` and catches the builtin TimeoutError; before Python
    3.11 concurrent.futures raises its own TimeoutError (not an alias), so on 3.10 (requires-python >= 3.10)
    every check still running when the largest wheel's body ends escapes as a traceback."""
    from repack.publish import distfile
    from repack.publish.distfile import RecordCheck, read_distfile

    dist = read_distfile(make_wheel(tmp_path, "demo", "1.0"), check_record=False)
    release = threading.Event()

    def slow(d, path, progress, checked, digests):
        release.wait(30)  # ended by the second progress line shown by wait(), not by a clock
        return replace(d, record_checked=True), {"sha256": d.sha256}

    monkeypatch.setattr(distfile, "_verified", slow)
    shown = []

    def progress(*state):
        shown.append(state)
        if len(shown) >= 2:
            release.set()

    check = RecordCheck([dist], None, progress)
    try:
        assert [d.record_checked for d in check.wait()] == [True]
    finally:
        release.set()
        check.cancel()
