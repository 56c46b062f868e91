"""What every command shares: options, the environment it reads, and how it prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from repack.errors import InputError, RepackError

if TYPE_CHECKING:
    from repack.fetch.transport import Transport
    from repack.pipconfig import IndexSettings

log = logging.getLogger("repack.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141

#: The one table of exit codes: --help, the README and the tests print or read this.
EXIT_CODES = (
    (EXIT_OK, "success (doctor: flashinfer will start with no network)"),
    (EXIT_FAIL, "the work failed: network, integrity, unknown version (doctor: it will reach for the network)"),
    (EXIT_USAGE, "usage error: a bad option, value, path or config file"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); a later run resumes"),
    (EXIT_PIPE, "stdout was closed early, e.g. by `| head`; nothing else is printed"),
)
EXIT_TABLE = "exit codes:\n" + "".join(f"  {code:<4} {text}\n" for code, text in EXIT_CODES)


class UsageError(InputError):
    """The command line itself makes no sense: options that do not go together, a malformed option value."""


#: The one map from an error's class to its exit code: the first row whose class matches wins.
#: The library's InputError (a value the caller gave is malformed) is a usage error here, as ours is.
ERROR_EXIT_CODES: tuple[tuple[type[RepackError], int], ...] = (
    (InputError, EXIT_USAGE),
    (RepackError, EXIT_FAIL),
)

#: The option that gives each setting a library error may name (RepackError.setting): the library says
#: what to do in words, and the CLI names its own option beside the hint.
OPTION_OF_SETTING = {
    "build_number": "--build-number",
    "conda_dep_name": "--conda-dep-name",
    "conda_map": "--conda-map",
    "format": "--format",
    "index_url": "--index-url",
    "offline": "--offline",
    "output": "-o",
    "prefix": "--prefix",
    "python": "--python",
    "simple_url": "--simple-url",
    "source": "--from",
    "target": "--target",
    "upload_url": "--index",
}


def exit_code_of(exc: RepackError) -> int:
    """The exit code of ``exc``, from :data:`ERROR_EXIT_CODES`."""
    return next(code for cls, code in ERROR_EXIT_CODES if isinstance(exc, cls))


def hint_of(exc: RepackError) -> str:
    """The library's hint, with the option that gives the setting it concerns (when the error names one)."""
    option = OPTION_OF_SETTING.get(exc.setting or "")
    if option and exc.hint and option not in exc.hint:
        return f"{exc.hint} ({option})"
    return exc.hint
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
  PIP_INDEX_URL, PIP_CONFIG_FILE,     default --index-url: the files and variables pip reads, in pip's
  pip.conf (global, user, site)       order (-v says which one gave it)
  FLASHINFER_REPACK_CACHE_DIR         cache directory (default: $XDG_CACHE_HOME/flashinfer-repack)
  HTTPS_PROXY, NO_PROXY, ~/.netrc     proxies and credentials, as for pip
  SOURCE_DATE_EPOCH                   timestamp inside built archives (default 1980-01-01)
  FLASHINFER_CUBINS_REPOSITORY        the artifactory base URL or directory (as flashinfer reads it)
"""


def common_options(p: argparse.ArgumentParser, network: bool = True, cache: bool = True) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    verbose_option(p)
    if network:
        p.add_argument("--index-url", metavar="URL",
                       help="simple-API index (default: $PIP_INDEX_URL, pip.conf, then PyPI)")
        if cache:
            p.add_argument("--cache-dir", metavar="DIR", type=Path, help="cache directory")
            p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
        p.add_argument("--offline", action="store_true", help="use no network: cache and local sources only")
        p.add_argument("--timeout", type=positive_seconds, default=20.0, metavar="S",
                       help="seconds for a connection and for each read; a reply's headers must also arrive "
                            "within three times that, and a body must keep pace; also the longest wait for "
                            "keyring's answer (default 20)")
        p.add_argument("--retries", type=retry_count, default=3, metavar="N",
                       help="retries after a failed request, with backoff 0.5, 1, 2 s... (default 3)")


def verbose_option(p: argparse.ArgumentParser) -> None:
    """-v before or after the command: SUPPRESS keeps a subcommand's default from erasing the earlier one."""
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="log decisions (source, cache, plan, index and why); -vv also every request")


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


def retry_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of retries from 0 to 100")
    return value


# -- environment ---------------------------------------------------------------------

def index_url(args: argparse.Namespace) -> str:
    """--index-url, else what ``pip install`` would use (logged once, with where it came from)."""
    from repack.fetch.urlpolicy import check_url

    if getattr(args, "index_url", None):
        return check_url(args.index_url, "index_url")
    settings = index_settings(args)
    try:
        return check_url(settings.index_url)
    except InputError as exc:  # pip's setting, not our option: say where it came from
        raise InputError(f"{exc} (pip's index, from {settings.index_origin})",
                         "fix that setting, or give the index as an option", value=exc.value,
                         expected=exc.expected) from None


def index_settings(args: argparse.Namespace, site_prefix: str | None = None) -> IndexSettings:
    """pip's index settings for the environment ``pip`` would run in (see :mod:`repack.pipconfig`)."""
    from repack.pipconfig import resolve_index

    cached: IndexSettings | None = getattr(args, "_pip_index", None)
    if cached is not None and site_prefix is None:
        return cached
    prefix = site_prefix or os.environ.get("VIRTUAL_ENV") or os.environ.get("CONDA_PREFIX") or sys.prefix
    settings = resolve_index(os.environ, prefix)
    if log.isEnabledFor(logging.INFO):
        _log_index(settings)
    if site_prefix is None:
        args._pip_index = settings
    return settings


def _log_index(settings: IndexSettings) -> None:
    from repack.fetch.urlpolicy import redact

    log.info("index %s, from %s", redact(settings.index_url), settings.index_origin)
    if settings.extra_index_urls:
        log.info("pip also searches %s (from %s); flashinfer-repack reads only the index",
                 ", ".join(redact(u) for u in settings.extra_index_urls), settings.extra_origin)


def cache_dir(args: argparse.Namespace) -> Path | None:
    if getattr(args, "no_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return Path(args.cache_dir)
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


def output_dir(path: Path, option: str = "-o") -> Path:
    """An output directory: created when missing, refused when a file stands there."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: a file is there, not a directory",
                         "give a directory (it is created if missing), or move the file away")
    return path


# -- output --------------------------------------------------------------------------

def emit_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


_progress_shown = False


def progress_printer(args: argparse.Namespace) -> Callable[[str, int, int | None], None] | None:
    """A one-line progress display on a terminal's stderr, redrawn at most 10 times a second."""
    if getattr(args, "quiet", False) or getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    last_drawn, last_finished = 0.0, ""

    def show(label: str, done: int, total: int | None) -> None:
        global _progress_shown
        nonlocal last_drawn, last_finished
        now = time.monotonic()
        finished = total is not None and done >= total
        if (now - last_drawn < 0.1 and not finished) or (finished and last_finished == label):
            return  # at most 10 redraws a second, and a finished step drawn once
        last_drawn, last_finished = now, label if finished else ""
        _progress_shown = True
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        sys.stderr.write("\r" + progress_line(label, done, total, width).ljust(width) + "\r")
        sys.stderr.flush()

    return show


def progress_line(label: str, done: int, total: int | None, width: int) -> str:
    """``label [####----] 42% 12.3 MB / 29.1 MB``, fitted into ``width`` columns.

    The numbers matter most, so the bar shrinks (then goes) first, and the label is cut last.
    """
    if not total:
        sizes = human_size(done)
        return (_fit_label(label, width - len(sizes) - 1) + " " + sizes).lstrip()[-width:]
    sizes = _sizes(done, total, width)
    room = width - len(sizes) - 1
    bar_width = min(30, room - min(len(label), 40) - 3)
    if bar_width >= 8:
        filled = bar_width * min(done, total) // total
        bar = " [" + "#" * filled + "-" * (bar_width - filled) + "]"
        return _fit_label(label, room - len(bar)) + bar + " " + sizes
    return (_fit_label(label, room) + " " + sizes).lstrip()


def _sizes(done: int, total: int, width: int) -> str:
    """The widest form of ``done / total`` that fits: with a percentage, without, then compact."""
    pct = f"{100 * min(done, total) // total:3d}%"
    forms = [f"{pct} {human_size(done)} / {human_size(total)}", f"{human_size(done)} / {human_size(total)}",
             f"{human_size(done).split()[0]}/{human_size(total)}"]
    return next((f for f in forms if len(f) <= width), forms[-1][:width])


def _fit_label(label: str, room: int) -> str:
    if room <= 0:
        return ""
    return label if len(label) <= room else label[:max(0, room - 1)] + "~"


def _clear_progress() -> None:
    """End a progress display so that the next line starts clean (errors, 'interrupted', results)."""
    global _progress_shown
    if _progress_shown:
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        sys.stderr.write("\r" + " " * width + "\r")
        sys.stderr.flush()
        _progress_shown = False


def make_transport(args: argparse.Namespace) -> Transport | None:
    from repack.fetch.transport import Transport

    if getattr(args, "offline", False):
        return None
    return Transport(timeout=args.timeout, retries=args.retries, progress=progress_printer(args),
                     keyring_provider=index_settings(args).keyring_provider, keyring_prompts=keyring_prompts())


def keyring_prompts() -> bool:
    """A person can answer a keyring backend's prompt (for its master password): stdin is a terminal.

    Then keyring is waited for as long as that takes; with no terminal (CI, a service), at most --timeout.
    """
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def human_size(size: int) -> str:
    n = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def resolve_python(given: str | None, cwd: str | None = None) -> str | None:
    """The interpreter a --python value means: a python file, a venv directory or a conda prefix.

    Relative paths are the user's, so they are made absolute against the user's working directory
    before anything is started elsewhere (doctor runs the interpreter from /).
    """
    if given is None:
        return None
    path = os.path.join(cwd or os.getcwd(), os.path.expanduser(given))
    if os.path.isdir(path):
        for candidate in ("bin/python", "bin/python3", "python.exe"):
            if os.path.lexists(os.path.join(path, candidate)):
                return os.path.normpath(os.path.join(path, candidate))
        raise UsageError(f"--python {given}: the directory {path} has no bin/python",
                         "give an environment's interpreter, its venv directory or its conda prefix")
    if not os.path.lexists(path):  # a link this user cannot resolve may still run
        raise UsageError(f"--python {given}: no such file or directory ({path})",
                         "give an environment's interpreter, its venv directory or its conda prefix")
    return os.path.normpath(path)


def _target_python(path: str | None) -> str | None:
    return resolve_python(path)
