"""A FlashInfer version -> its Plan, from flashinfer-python's own code.

The code is read, never imported: from an installed distribution, a wheel on
disk, or the wheel on a package index read with Range requests (its Python
files, about 0.7 MB of a 8 MB wheel).  The shipped plans of the affected
versions let ``build`` work offline; :func:`checked_plan` compares them with
the code wherever the code is at hand, and refuses on disagreement.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import parse_wheel_filename
from packaging.version import InvalidVersion, Version

from repack.errors import FetchError, InputError, PlanError, SourceError, UnknownVersionError
from repack.fetch.cache import Cache
from repack.fetch.index import find_wheel, project_files
from repack.fetch.sources import read_local_wheel, read_remote_wheel
from repack.fetch.transport import Transport
from repack.fs import read_regular
from repack.rules import plancache
from repack.rules.plan import (
    ARTIFACTS_MODULE,
    PACKAGE_PREFIX,
    Plan,
    derive_plan,
    shipped_plan,
)
from repack.rules.scope import DATA_PREFIX

PYTHON_PROJECT = "flashinfer-python"
#: the most read of one flashinfer module (the largest is about 100 kB)
SOURCE_LIMIT = 4 << 20
logger = logging.getLogger(__name__)


def check_version(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion:
        raise InputError(f"{version!r} is not a version", "give a FlashInfer version such as 0.6.6") from None


def _wanted(name: str) -> bool:
    """Every Python file of the flashinfer package (a caller may live anywhere in it), and METADATA."""
    return ((name.startswith(PACKAGE_PREFIX) and name.endswith(".py") and not name.startswith(DATA_PREFIX))
            or (name.endswith(".dist-info/METADATA") and name.count("/") == 1))


def plan_from_code(version: str, files: dict[str, bytes], label: str) -> Plan:
    metadata = next((v.decode("utf-8", "replace") for k, v in files.items() if k.endswith("/METADATA")), None)
    sources = {k: v.decode("utf-8", "replace") for k, v in files.items() if k.endswith(".py")}
    if ARTIFACTS_MODULE not in sources:
        raise SourceError(f"{label} holds no {ARTIFACTS_MODULE}", "is this a flashinfer-python wheel?")
    return derive_plan(version, sources, metadata)


def plan_from_wheel(path: Path, version: str | None = None) -> Plan:
    """From a flashinfer-python wheel on disk; its file name must be of ``version`` when one is given."""
    name = Path(path).name
    try:
        _, wheel_version, _, _ = parse_wheel_filename(name)
    except Exception:
        raise SourceError(f"{name} is not a wheel file name", "give a flashinfer_python-*.whl") from None
    if version is not None and Version(version) != wheel_version:
        raise InputError(f"{name} is flashinfer-python {wheel_version}, not {version}",
                         "give the wheel of the version you asked for")
    return plan_from_code(str(wheel_version), read_local_wheel(Path(path), _wanted), name)


def plan_from_index(transport: Transport | None, index_url: str, version: str, cache: Cache | None = None) -> Plan:
    """From the flashinfer-python wheel on the index, read by ranges; the derived plan is kept in ``cache``.

    A warm cache answers with no request at all (a file on an index is immutable; the key holds the
    index URL without credentials) and without parsing the code again (0.25 s of ``ast`` work).
    An entry that does not read back as a plan of this version is a miss, never an error.
    """
    cache = cache or Cache(None)
    cached = plancache.load(cache.root, index_url, version)
    if cached is not None:
        return cached[0]
    if transport is None:
        raise UnknownVersionError(f"flashinfer-python {version}'s code is not in the cache and the network is off",
                                  "read it once with the network, or give its wheel or an installed copy")
    files = project_files(transport, index_url, PYTHON_PROJECT)
    found = find_wheel(files, PYTHON_PROJECT, version, index_url)
    plan = plan_from_code(version, read_remote_wheel(transport, Cache(None), found, _wanted), found.filename)
    plancache.store(cache.root, index_url, found.filename, plan)
    return plan


def plan_from_installed(version: str | None = None, paths: list[str] | None = None) -> Plan:
    """From the flashinfer-python distribution installed on ``paths`` (default: sys.path)."""
    dists = list(importlib.metadata.distributions(name=PYTHON_PROJECT, path=paths)) if paths else \
        list(importlib.metadata.distributions(name=PYTHON_PROJECT))
    if not dists:
        raise UnknownVersionError("flashinfer-python is not installed in this environment",
                                  "install it, or read the code from the index or from a flashinfer-python wheel")
    dist = dists[0]
    if version is not None and Version(dist.version) != Version(version):
        raise UnknownVersionError(f"the installed flashinfer-python is {dist.version}, not {version}",
                                  "use the index or a wheel to read another version")
    # read the package directory itself, not RECORD: conda installs and copied trees may have none
    package = Path(str(dist.locate_file("flashinfer")))
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*.py")):
        name = "flashinfer/" + path.relative_to(package).as_posix()
        if _wanted(name) and path.is_file():
            files[name] = read_regular(path, SOURCE_LIMIT)
    text = dist.read_text("METADATA")
    if text:
        files[f"{PYTHON_PROJECT}.dist-info/METADATA"] = text.encode()
    return plan_from_code(dist.version, files, f"installed flashinfer-python {dist.version}")


#: A reader of one version's code: a label (where the code is) and the function that reads it.
CodeReader = tuple[str, Callable[[], Plan]]


@dataclass(frozen=True)
class PlanCheck:
    """The plan to build with, and whether (and against what) it was checked with the version's code."""

    plan: Plan
    checked: bool
    against: str   # where the code was read, or why no code was at hand

    @property
    def note(self) -> str:
        if self.checked:
            return f"plan checked against flashinfer-python's code ({self.against})"
        return f"plan shipped with flashinfer-repack, NOT checked against flashinfer-python's code ({self.against})"


def checked_plan(version: str, readers: Sequence[CodeReader]) -> PlanCheck:
    """The plan to build ``version`` with, checked against its own code wherever that code is at hand.

    ``readers`` are tried in order until one finds the code (one that raises UnknownVersionError,
    FetchError or SourceError did not).  With a shipped plan, the code's plan must agree with it
    (an edited table must not build a wrong package): a disagreement, or code the reader cannot
    tell about, is an error.  With no code at hand the shipped plan is used, and the result says
    that it was not checked.  Without a shipped plan, the code's plan is the answer.
    """
    shipped = shipped_plan(version)
    unavailable = []
    for label, read in readers:
        try:
            derived = read()
        except (UnknownVersionError, FetchError, SourceError) as exc:
            unavailable.append(f"{label}: {exc}")
            continue
        if shipped is None:
            return PlanCheck(derived, True, label)
        differences = shipped.differences(derived)
        if differences:
            raise PlanError(f"the plan shipped for flashinfer {version} disagrees with its code ({label}): "
                            + "; ".join(differences),
                            "the plan table of this flashinfer-repack was edited or is wrong; reinstall "
                            "flashinfer-repack, and report it if it persists")
        return PlanCheck(shipped, True, label)
    if shipped is None:
        raise UnknownVersionError(f"flashinfer {version} has no shipped plan and its code was not found"
                                  + (f" ({'; '.join(unavailable)})" if unavailable else ""),
                                  "allow the network so that flashinfer-python's code can be read from the index, "
                                  "or install that flashinfer-python here")
    check = PlanCheck(shipped, False, "; ".join(unavailable) or "no copy of that code was at hand")
    logger.info("flashinfer %s: %s", version, check.note)
    return check
