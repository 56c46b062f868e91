"""Passwords from keyring, asked the way pip asks it (``--keyring-provider auto``).

pip asks keyring for the password of a username given without one (``https://user@host/simple/``):
first for the index URL (without the userinfo), then for the host (``host[:port]``).  ``auto`` uses
the ``keyring`` package when it can be imported, else the ``keyring`` command on PATH (pip's
``import`` and ``subprocess`` providers); ``disabled`` never asks.  Publishing asks the same way for
an upload URL, as twine does.

A keyring that fails (no backend, a locked store, a command that errs) gives no password: the caller
goes on without one, and the server's refusal then says what was missing.  Passwords are never logged.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "import", "subprocess", "disabled")
#: A keyring that hangs (a locked store waiting for a prompt no one sees) is given up on (default seconds).
COMMAND_TIMEOUT = 30.0
#: Seconds without keyring's answer after which a wait with no bound (a person at a terminal) is said.
NOTICE_AFTER = 5.0
#: A password is one line; more than this is not a password (and is never held whole).
COMMAND_OUTPUT_LIMIT = 64 << 10
_NOT_INSTALLED = object()


def keyring_password(services: list[str], username: str, provider: str = "auto",
                     timeout: float | None = COMMAND_TIMEOUT) -> str | None:
    """The first password keyring holds for (service, ``username``), services asked in order; else None.

    Each answer of the ``keyring`` package (asked on a thread of its own) is waited for at most
    ``timeout`` seconds (the caller's ``--timeout``): a locked store prompting where no one sees it never
    hangs the tool.  ``timeout`` None waits as long as it takes, for a caller whose user can answer a
    prompt on a terminal.  The command (stdin closed: it cannot prompt) is always bounded, by ``timeout``
    or :data:`COMMAND_TIMEOUT`.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"keyring provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    for service in services:
        try:
            password = _ask(service, username, provider, timeout)
        except _KeyringHung:
            return None  # a command that hung once is not asked again for the next service
        if password:
            log.info("password for %s at %s from keyring", username, service)
            return password
    log.debug("keyring has no password for %s at %s", username, " or ".join(services))
    return None


def _ask(service: str, username: str, provider: str, timeout: float | None) -> str | None:
    if provider in ("auto", "import"):
        found = _imported(service, username, timeout)
        if found is not _NOT_INSTALLED:
            return found if isinstance(found, str) else None
        if provider == "import":
            return None
    if provider in ("auto", "subprocess"):
        return _command(service, username, COMMAND_TIMEOUT if timeout is None else timeout)
    return None


def _imported(service: str, username: str, timeout: float | None) -> object:
    """keyring's answer, asked on a daemon thread: one that does not come in ``timeout`` s is given up on."""
    try:
        import keyring
    except ImportError:
        return _NOT_INSTALLED
    answer: list[object] = []

    def ask() -> None:
        try:
            answer.append(keyring.get_password(service, username))
        except BaseException as exc:  # keyring backends raise anything; none of it may stop the caller
            log.info("keyring gave no password for %s (%s)", username, type(exc).__name__)
            answer.append(None)

    thread = threading.Thread(target=ask, daemon=True, name="keyring")
    thread.start()
    if timeout is None:  # a person may answer its prompt: wait, but never silently
        thread.join(NOTICE_AFTER)
        if thread.is_alive():
            log.warning("waiting for keyring's password for %s at %s: it may be asking on this terminal or in "
                        "a desktop dialog (^C stops)", username, service)
    thread.join(timeout)
    if thread.is_alive():
        log.warning("keyring did not answer within %.0f s (a locked store waiting for a prompt?): going on "
                    "without a password", timeout)
        raise _KeyringHung
    return answer[0] if answer else None


def _command(service: str, username: str, timeout: float = COMMAND_TIMEOUT) -> str | None:
    """``keyring get SERVICE USER`` as pip's subprocess provider runs it: the password, one line.

    Bounded like every input: at most :data:`COMMAND_OUTPUT_LIMIT` bytes and ``timeout``
    seconds, after which the command and every process it started (its own session) are killed.
    A command that hangs raises :class:`_KeyringHung`, so that no further service is asked of it.
    """
    command = shutil.which("keyring")
    if command is None:
        return None
    try:
        proc = subprocess.Popen([command, "get", service, username], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        log.info("the keyring command could not start (%s)", exc.strerror)
        return None
    try:
        output = _read_bounded(proc, time.monotonic() + timeout)
    finally:
        _kill_group(proc)
    if output is None:
        log.warning("the keyring command did not answer within %.0f s (or said too much): going on without "
                    "a password", timeout)
        raise _KeyringHung
    if proc.returncode != 0:
        return None
    return output.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r") or None


class _KeyringHung(Exception):
    """The keyring command overran its time or output bound."""


def _read_bounded(proc: subprocess.Popen[bytes], deadline: float) -> bytes | None:
    """The command's stdout once it exits; None past the deadline or past the output limit."""
    assert proc.stdout is not None
    out = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return None
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            out += chunk
            if len(out) > COMMAND_OUTPUT_LIMIT:
                return None
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None
    return bytes(out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The command and what it started, gone (a keyring backend may leave helpers behind).

    Signalled only while the command is unreaped: its process group id cannot then belong to another group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass  # already gone
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
