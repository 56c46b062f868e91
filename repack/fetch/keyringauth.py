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
import shutil
import subprocess

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "import", "subprocess", "disabled")
#: A keyring command that hangs (a locked store waiting for a prompt no one sees) is given up on.
COMMAND_TIMEOUT = 30.0
_NOT_INSTALLED = object()


def keyring_password(services: list[str], username: str, provider: str = "auto") -> str | None:
    """The first password keyring holds for (service, ``username``), services asked in order; else None."""
    if provider not in PROVIDERS:
        raise ValueError(f"keyring provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    for service in services:
        password = _ask(service, username, provider)
        if password:
            log.info("password for %s at %s from keyring", username, service)
            return password
    log.debug("keyring has no password for %s at %s", username, " or ".join(services))
    return None


def _ask(service: str, username: str, provider: str) -> str | None:
    if provider in ("auto", "import"):
        found = _imported(service, username)
        if found is not _NOT_INSTALLED:
            return found if isinstance(found, str) else None
        if provider == "import":
            return None
    if provider in ("auto", "subprocess"):
        return _command(service, username)
    return None


def _imported(service: str, username: str) -> object:
    try:
        import keyring
    except ImportError:
        return _NOT_INSTALLED
    try:
        return keyring.get_password(service, username)
    except Exception as exc:  # keyring backends raise anything; none of it may stop the caller
        log.info("keyring gave no password for %s (%s)", username, type(exc).__name__)
        return None


def _command(service: str, username: str) -> str | None:
    """``keyring get SERVICE USER`` as pip's subprocess provider runs it: the password, one line."""
    command = shutil.which("keyring")
    if command is None:
        return None
    try:
        done = subprocess.run([command, "get", service, username], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("the keyring command gave no password for %s (%s)", username, type(exc).__name__)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r") or None
