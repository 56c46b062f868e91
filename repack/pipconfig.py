"""The package index that ``pip install`` would use, found exactly as pip finds it.

An air-gapped site points pip at its mirror in a config file or ``PIP_INDEX_URL``; a tool that
reads other files, or reads them differently, goes to the public index instead.  This module
follows pip 26's ``pip/_internal/configuration.py`` and ``cli/parser.py``:

* files, lowest priority first: *global* (each ``$XDG_CONFIG_DIRS`` entry, default
  ``/etc/xdg``, then ``/etc``, each ``/pip.conf`` with ``pip/`` for XDG), *user*
  (``~/.pip/pip.conf``, then ``$XDG_CONFIG_HOME/pip/pip.conf``, default ``~/.config``),
  *site* (``<prefix>/pip.conf`` of the environment whose pip runs: the target venv, activated
  or not), then *env* (``$PIP_CONFIG_FILE``).  When ``$PIP_CONFIG_FILE`` names an existing
  file, the user files are skipped; when it is ``os.devnull``, no file is read at all.
* every file is read with ``RawConfigParser``: no ``%`` interpolation, so a percent-encoded
  password in a URL is kept as written (``requests`` decodes it when it sends it).
* within the merged files ``[install]`` beats ``[global]``; ``PIP_*`` variables beat both.
  Names are normalised as pip does (lower case, ``_`` -> ``-``), and empty values are ignored.
* ``extra-index-url`` is split on whitespace, and a later source replaces an earlier list.

Credentials are not looked up here: they stay in the URL (``user:password@``) or come from
``~/.netrc`` in the transport, as pip does without keyring.
"""

from __future__ import annotations

import configparser
import logging
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from repack.errors import InputError
from repack.fetch.keyringauth import PROVIDERS

log = logging.getLogger(__name__)

PYPI = "https://pypi.org/simple/"
COMMAND = "install"  # the pip command whose settings we mirror: the one our advice prints


@dataclass(frozen=True)
class ConfigFile:
    kind: str  # "global", "user", "site" or "env", pip's names
    path: str


@dataclass(frozen=True)
class IndexSettings:
    """Where ``pip install`` would look, and which file or variable said so."""

    index_url: str
    index_origin: str
    extra_index_urls: tuple[str, ...] = ()
    extra_origin: str = ""
    files_read: tuple[str, ...] = ()
    #: pip's keyring-provider: where a password for an index URL that names only a user comes from
    keyring_provider: str = "auto"


def config_files(environ: Mapping[str, str], site_prefix: str | None) -> list[ConfigFile]:
    """pip's config files in override order (last wins), as ``pip config debug`` lists them."""
    env_file = environ.get("PIP_CONFIG_FILE")
    files = [ConfigFile("global", posixpath.join(d, "pip.conf")) for d in _site_config_dirs(environ)]
    if not (env_file and os.path.exists(env_file)):  # pip skips the user files only for a file that exists
        home = _home(environ)
        config_home = _xdg_dir(environ, "XDG_CONFIG_HOME") or posixpath.join(home, ".config")
        files += [ConfigFile("user", posixpath.join(home, ".pip", "pip.conf")),
                  ConfigFile("user", posixpath.join(config_home, "pip", "pip.conf"))]
    if site_prefix:
        files.append(ConfigFile("site", os.path.join(site_prefix, "pip.conf")))
    if env_file is not None:
        files.append(ConfigFile("env", env_file))
    return files


def resolve_index(environ: Mapping[str, str], site_prefix: str | None) -> IndexSettings:
    """The index URL and extra index URLs of ``pip install`` run in the environment at ``site_prefix``."""
    files = config_files(environ, site_prefix)
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        log.debug("PIP_CONFIG_FILE is %s: pip reads no config file", os.devnull)
        files = []
    values: dict[str, dict[str, tuple[str, str]]] = {"global": {}, COMMAND: {}}
    read = []
    for f in files:
        if _read_into(f, values):
            read.append(f.path)
    values[":env:"] = {_normalize(k[4:]): (v, k) for k, v in environ.items()
                       if k.startswith("PIP_") and k[4:].lower() not in ("version", "help")}
    index, index_origin = _pick(values, "index-url") or (PYPI, "pip's default (PyPI)")
    extra, extra_origin = _pick(values, "extra-index-url") or ("", "")
    provider, provider_origin = _pick(values, "keyring-provider") or ("auto", "pip's default")
    if provider not in PROVIDERS:
        raise InputError(f"pip's keyring-provider {provider!r} (from {provider_origin}) is not one of "
                         f"{', '.join(PROVIDERS)}", "set it to a value pip accepts; pip refuses this one too",
                         value=provider, expected=" or ".join(PROVIDERS))
    settings = IndexSettings(index, index_origin, tuple(extra.split()), extra_origin, tuple(read), provider)
    log.debug("pip config files read: %s", ", ".join(read) or "none")
    return settings


def _read_into(f: ConfigFile, values: dict[str, dict[str, tuple[str, str]]]) -> bool:
    if not os.path.exists(f.path):
        return False
    parser = configparser.RawConfigParser()  # pip's parser: a '%' is data, not interpolation
    import locale  # why here: only a config file that exists is decoded

    encoding = locale.getpreferredencoding(False)
    try:
        parser.read(f.path, encoding=encoding)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise InputError(f"pip's config file {f.path} cannot be read: {' '.join(str(exc).split())}",
                         "fix or remove that file; pip itself refuses to run with it") from exc
    except OSError as exc:
        raise InputError(f"pip's config file {f.path} cannot be read: {exc.strerror}",
                         "make it readable by this user, as pip needs it too") from exc
    for section in parser.sections():
        if section in values:
            for name, value in parser.items(section):
                values[section][_normalize(name)] = (value, f"{f.path} [{section}]")
    return True


def _pick(values: dict[str, dict[str, tuple[str, str]]], key: str) -> tuple[str, str] | None:
    """pip's override order of sections: [global], then the command's, then PIP_* (empty values skipped)."""
    found = None
    for section in ("global", COMMAND, ":env:"):
        value = values.get(section, {}).get(key)
        if value is not None and value[0]:
            found = value
    return found


def _normalize(name: str) -> str:
    name = name.lower().replace("_", "-")
    return name[2:] if name.startswith("--") else name


def _site_config_dirs(environ: Mapping[str, str]) -> list[str]:
    dirs = [p.strip() for p in environ.get("XDG_CONFIG_DIRS", "").split(os.pathsep)]
    dirs = [p for p in dirs if posixpath.isabs(p)] or ["/etc/xdg"]
    return [posixpath.join(d, "pip") for d in dirs] + ["/etc"]


def _xdg_dir(environ: Mapping[str, str], name: str) -> str | None:
    path = environ.get(name, "").strip()
    return path if posixpath.isabs(path) else None  # platformdirs ignores a relative XDG path


def _home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME")
    if home:
        return home
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir  # expanduser's fallback for an unset or empty HOME
