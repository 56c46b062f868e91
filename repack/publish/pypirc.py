"""Repositories named in ``~/.pypirc``, read as twine reads them, and passwords from keyring.

Follows twine's ``utils.get_config`` and ``auth.Resolver``:

* the file is read with ``RawConfigParser`` (a ``%`` in a password is data);
* ``[distutils] index-servers`` lists the names (default ``pypi testpypi``); ``pypi`` and
  ``testpypi`` have their upload URLs built in; each named section may set ``repository``,
  ``username`` and ``password``; the obsolete ``[server-login]`` gives defaults;
* a username without a password asks keyring, when keyring is installed, for
  ``get_password(<repository URL>, <username>)``, as twine does.

The caller decides the order against flags and environment variables (twine: those first).
"""

from __future__ import annotations

import configparser
import logging
from dataclasses import dataclass, field
from pathlib import Path

from repack.errors import InputError

log = logging.getLogger(__name__)

PYPI_UPLOAD = "https://upload.pypi.org/legacy/"
TESTPYPI_UPLOAD = "https://test.pypi.org/legacy/"


@dataclass(frozen=True)
class Repository:
    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    source: str = ""  # the file it came from, for messages


def read_repository(path: Path, name: str) -> Repository:
    """The repository ``name`` of the pypirc file at ``path``; InputError when it is not there."""
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise InputError(f"repository {name!r} was asked for, but {path} does not exist",
                         "create it with a [distutils] index-servers list and a section per repository, "
                         "or give the index URL") from None
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        # the parser's message may quote a line holding a password: say where, not what
        line = getattr(exc, "lineno", None)
        raise InputError(f"cannot read {path}: not a valid pypirc file" + (f" (line {line})" if line else ""),
                         "fix the file as https://packaging.python.org/specifications/pypirc/ describes") from None
    servers = parser.get("distutils", "index-servers", fallback="pypi testpypi").split()
    builtin = {"pypi": PYPI_UPLOAD, "testpypi": TESTPYPI_UPLOAD if "testpypi" in servers else None}
    if name not in servers and name != "pypi":
        raise InputError(f"repository {name!r} is not in {path} (index-servers: {', '.join(servers) or 'none'})",
                         "add it to [distutils] index-servers with its own section, or check the spelling")
    url = parser.get(name, "repository", fallback=None) or builtin.get(name)
    if not url:
        raise InputError(f"the section [{name}] of {path} sets no repository URL",
                         "add a line 'repository = https://host/legacy/' to that section")
    return Repository(name, url,
                      parser.get(name, "username", fallback=parser.get("server-login", "username", fallback=None)),
                      parser.get(name, "password", fallback=parser.get("server-login", "password", fallback=None)),
                      str(path))


def keyring_password(url: str, username: str, timeout: float | None) -> str | None:
    """keyring's password for (``url``, ``username``) as twine asks it; None without keyring or a password
    (or without an answer in ``timeout`` seconds; None: no bound, a person answers its prompt)."""
    from repack.fetch.keyringauth import keyring_password as ask

    return ask([url], username, timeout=timeout)
