"""What every command shares: options, the environment it reads, and how it prints."""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from repack.errors import UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PYPI = "https://pypi.org/simple/"  # as index.PYPI; kept here so that --help imports nothing heavy
ZIP_TIME_LIMIT = 4354819200  # 2108-01-01: a zip stores years up to 2107

EPILOG = """\
sources for --from (repeatable; tried in the order given; default: auto):
  auto               cache, then an installed flashinfer-cubin of the same version,
                     then the package index, then $FLASHINFER_CUBINS_REPOSITORY if set
  pypi | index       the flashinfer-cubin wheel on PyPI | on --index-url, read by HTTP ranges
  index+URL          the flashinfer-cubin wheel on the simple index at URL
  PATH.whl | URL.whl a flashinfer-cubin wheel on disk or at a URL
  DIR                a directory in artifactory layout (e.g. site-packages/flashinfer_cubin/cubins)
  artifactory        $FLASHINFER_CUBINS_REPOSITORY, read as flashinfer reads it (default NVIDIA's)
  URL | artifactory+URL  a server in artifactory layout (a URL ending in /simple/ is an index)
  installed          flashinfer-cubin installed in this Python environment
  cache              the local cache only

environment:
  PIP_INDEX_URL, pip.conf index-url   default --index-url (as pip reads them)
  FLASHINFER_REPACK_CACHE_DIR         cache directory (default: $XDG_CACHE_HOME/flashinfer-repack)
  HTTPS_PROXY, NO_PROXY, ~/.netrc     proxies and credentials, as for pip
  SOURCE_DATE_EPOCH                   timestamp inside built archives (default 1980-01-01)
  FLASHINFER_CUBINS_REPOSITORY        the artifactory base URL or directory (as flashinfer reads it)

exit codes: 0 success, 1 failure, 2 usage error
"""


def common_options(p: argparse.ArgumentParser, network: bool = True, cache: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request and decision")
    if network:
        p.add_argument("--index-url", metavar="URL",
                       help="simple-API index (default: $PIP_INDEX_URL, pip.conf, then PyPI)")
        if cache:
            p.add_argument("--cache-dir", metavar="DIR", type=Path, help="cache directory")
            p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
        p.add_argument("--offline", action="store_true", help="use no network: cache and local sources only")
        p.add_argument("--timeout", type=positive_seconds, default=20.0, metavar="S",
                       help="connect and read timeout per request (default 20)")
        p.add_argument("--retries", type=int, default=3, metavar="N",
                       help="retries after a failed request, with backoff 0.5, 1, 2 s... (default 3)")


def source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="sources", action="append", metavar="SOURCE",
                   help="where to get the headers (repeatable; see below; default auto)")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 1e6):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


# -- environment ---------------------------------------------------------------------

def index_url(args) -> str:
    if getattr(args, "index_url", None):
        return args.index_url
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    return _pip_config_index() or PYPI


def _pip_config_index() -> str | None:
    files = []
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", os.path.expanduser("~/.config"))
        files += ["/etc/pip.conf", os.path.join(xdg, "pip", "pip.conf"), os.path.expanduser("~/.pip/pip.conf")]
        if os.environ.get("VIRTUAL_ENV"):
            files.append(os.path.join(os.environ["VIRTUAL_ENV"], "pip.conf"))
    found = None
    for path in files:
        config = configparser.ConfigParser()
        try:
            config.read(path)
        except configparser.Error:
            continue
        for section in ("global", "install", "download"):
            if config.has_option(section, "index-url"):
                found = config.get(section, "index-url")
    return found


def cache_dir(args) -> Path | None:
    if getattr(args, "no_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return args.cache_dir
    if os.environ.get("FLASHINFER_REPACK_CACHE_DIR"):
        return Path(os.environ["FLASHINFER_REPACK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "flashinfer-repack"


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) >= ZIP_TIME_LIMIT:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds before 2108",
                         "unset it or give seconds since 1970 (zip and tar timestamps end in 2107)")
    return int(value)


def cubins_repository() -> str:
    from repack.fetch.sources import NVIDIA_ARTIFACTORY

    return os.environ.get("FLASHINFER_CUBINS_REPOSITORY", NVIDIA_ARTIFACTORY)


# -- output --------------------------------------------------------------------------

def emit_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


_progress_shown = False


def progress_printer(args) -> Callable[[str, int, "int | None"], None] | None:
    if getattr(args, "quiet", False) or getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(label: str, done: int, total: int | None) -> None:
        global _progress_shown
        now = time.monotonic()
        if now - last[0] < 0.1 and (total is None or done < total):
            return
        last[0] = now
        _progress_shown = True
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            line = f"{label[:40]} [{bar}] {done / 1e6:.1f}/{total / 1e6:.1f} MB"
        else:
            line = f"{label[:40]} {done / 1e6:.1f} MB"
        sys.stderr.write("\r" + line.ljust(79)[:79])
        sys.stderr.flush()

    return show


def _clear_progress() -> None:
    global _progress_shown
    if _progress_shown:
        sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.flush()
        _progress_shown = False


def make_transport(args):
    from repack.fetch.transport import Transport

    if getattr(args, "offline", False):
        return None
    return Transport(timeout=args.timeout, retries=max(0, args.retries), progress=progress_printer(args))


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _target_python(path: str | None) -> str | None:
    if path is None:
        return None
    if not os.path.lexists(path) or os.path.isdir(path):  # a link this user cannot resolve may still run
        raise UsageError(f"--python {path}: no such file", "give the path of the environment's python")
    return path
