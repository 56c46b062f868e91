"""A snapshot of a target environment, as its flashinfer would see it at start-up.

Nothing of FlashInfer (or torch) is imported.  The target interpreter runs a
small stdlib-only script (``python -c``, from ``/``, with the caller's
PYTHONPATH and the like, as flashinfer's own process would) that reports its version,
site-packages, the distributions' metadata and what ``find_spec`` finds for
``flashinfer_cubin``; a conda prefix without a Python is read from its files.
Then flashinfer-python's own source is read by the one reader
(:mod:`repack.rules.reader`) into that version's :class:`~repack.rules.plan.Plan`,
``FLASHINFER_CUBIN_DIR`` is resolved with the precedence the plan read from that
version's ``jit/env.py``, and the files the plan names are looked at there.  Code
the reader cannot tell about leaves ``Environment.unknown`` set, never a guess.

The environment variables are always passed in: this module never reads
``os.environ``.  Writability is judged for the user running the probe (run
doctor as the user that runs flashinfer).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from repack.errors import InputError, PlanError, SourceError
from repack.fs import NotRegularFileError, read_regular
from repack.rules.plan import METAINFO, Plan

PROJECTS = ("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers")
#: The variables flashinfer's header code reads (env.py, cubin_loader.py).
ENV_VARS = ("FLASHINFER_CUBIN_DIR", "FLASHINFER_WORKSPACE_BASE", "FLASHINFER_DISABLE_VERSION_CHECK",
            "FLASHINFER_CUBIN_CHECKSUM_DISABLED", "FLASHINFER_CUBINS_REPOSITORY", "FLASHINFER_NO_DOWNLOAD", "HOME")
#: Variables that decide what the target interpreter imports and finds; passed to it, not judged.
PASSED = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
          "PYTHONSAFEPATH", "USER", "LOGNAME")
SMALL_FILE = 4096
#: the most doctor reads of one file under FLASHINFER_CUBIN_DIR (checksums.txt is 321 kB, a header < 100 kB)
READ_LIMIT = 16 << 20

_SCRIPT = r"""
import importlib.metadata as m, importlib.util as u, json, pathlib, sys, sysconfig
sys.path[:] = [p for p in sys.path if p]  # not the probe's cwd: flashinfer's process has its own
def dist(name):
    try:
        d = m.distribution(name)
    except m.PackageNotFoundError:
        return None
    return {"version": d.version, "location": str(d.locate_file(""))}
spec = u.find_spec("flashinfer_cubin")
try:
    home = str(pathlib.Path.home())
except Exception:
    home = None
print(json.dumps({
    "executable": sys.executable, "version": ".".join(map(str, sys.version_info[:3])),
    "purelib": sysconfig.get_paths()["purelib"], "sys_path": [p for p in sys.path if p],
    "dists": {n: dist(n) for n in @PROJECTS@}, "home": home,
    "flashinfer_cubin": None if spec is None else list(spec.submodule_search_locations or [spec.origin]),
}))
""".replace("@PROJECTS@", repr(PROJECTS))


# -- the snapshot --------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """An installed distribution: its version and the site directory that holds it."""

    version: str
    location: str


@dataclass(frozen=True)
class Interpreter:
    """What the target's Python reports (or what its prefix holds, read from disk)."""

    python: str | None
    python_version: str
    site_packages: str
    dists: Mapping[str, Dist]
    #: The directories ``find_spec("flashinfer_cubin")`` finds (a namespace package may span several).
    cubin_module: tuple[str, ...] | None
    env: Mapping[str, str]
    home: str | None
    #: project -> the conda package (name-version-build) that installed it, in a conda prefix.
    conda_packages: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CubinDir:
    """FLASHINFER_CUBIN_DIR as that version resolves it; ``import_error`` if ``import flashinfer`` fails there."""

    path: str | None
    source: str
    import_error: str | None = None
    cubin_version: str | None = None


@dataclass(frozen=True)
class FileState:
    """One path under FLASHINFER_CUBIN_DIR, as the current user sees it."""

    exists: bool
    readable: bool = False
    sha256: str = ""
    data: bytes | None = None  # only for small files (the marker)
    writable: bool = False     # could be (re)written: the file itself, or created in its directory
    is_dir: bool = False
    link_to: str | None = None  # the resolved target when the path is a symlink


MISSING = FileState(exists=False)


@dataclass(frozen=True)
class CubinDirFacts:
    """The paths the header rules look at, relative to FLASHINFER_CUBIN_DIR, plus stray ``*.lock`` files."""

    root: str
    files: Mapping[str, FileState]
    locks: tuple[str, ...] = ()
    #: name -> sha256 as flashinfer's get_meta_hash picks it from the checksums.txt on disk (headers, metainfo)
    listed: Mapping[str, str] = field(default_factory=dict)

    def state(self, relpath: str) -> FileState:
        return self.files.get(relpath, MISSING)


@dataclass(frozen=True)
class Environment:
    """Everything doctor judges: the interpreter, its flashinfer's rules, where it looks, what lies there."""

    target: str
    interpreter: Interpreter
    rules: Plan | None
    cubin_dir: CubinDir | None
    files: CubinDirFacts | None
    namespace_dir: str | None = None  # a flashinfer_cubin folder without __init__.py
    #: why the installed flashinfer-python's code could not be read (then ``rules`` is None): doctor says "unknown"
    unknown: str | None = None

    def dist(self, project: str) -> Dist | None:
        return self.interpreter.dists.get(project)


# -- gathering -----------------------------------------------------------------------

def snapshot(env: Mapping[str, str], python: str | None = None, prefix: str | None = None) -> Environment:
    """The Environment of ``--python PATH`` or ``--prefix PATH`` (one of them), under ``env``."""
    env = {k: v for k, v in env.items() if k in ENV_VARS + PASSED}
    if prefix is not None:
        interp, target = prefix_facts(Path(prefix), env), f"prefix {prefix}"
    else:
        interp, target = interpreter_facts(python or "python3", env), f"python {python}"
    try:
        rules, unknown = header_rules(interp), None
    except (PlanError, SourceError) as exc:  # cannot tell: never judged "not needed" for want of its code
        rules, unknown = None, str(exc)
    where = resolve_cubin_dir(interp, rules) if rules else None
    files = cubin_dir_facts(Path(where.path), rules) if rules and where and where.path else None
    return Environment(target=target, interpreter=interp, rules=rules, cubin_dir=where, files=files,
                       namespace_dir=namespace_dir(interp), unknown=unknown)


def interpreter_facts(python: str, env: Mapping[str, str]) -> Interpreter:
    """Run the target interpreter with ``env``; the script imports nothing but the stdlib."""
    try:
        proc = subprocess.run([python, "-c", _SCRIPT], capture_output=True, text=True, env=dict(env),
                              cwd=os.path.abspath(os.sep), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"cannot run the interpreter {python}: {exc}",
                         "give the path of the environment's python (e.g. .venv/bin/python)",
                         value=python, setting="python") from None
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InputError(f"{python} did not answer as a Python >= 3.8 interpreter (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-300:]}", "give the path of a Python interpreter",
                         value=python, setting="python") from None
    dists = {name: Dist(d["version"], d["location"]) for name, d in data["dists"].items() if d}
    return Interpreter(python=data["executable"], python_version=data["version"], site_packages=data["purelib"],
                       dists=dists, cubin_module=tuple(data["flashinfer_cubin"]) if data["flashinfer_cubin"] else None,
                       env=_judged(env), home=data["home"])


def prefix_facts(prefix: Path, env: Mapping[str, str]) -> Interpreter:
    """A conda prefix: its own python if it has one, else its conda-meta and site-packages read from disk."""
    for candidate in (prefix / "bin" / "python", prefix / "python.exe"):
        if candidate.exists():
            return with_conda_meta(interpreter_facts(str(candidate), env), prefix)
    if not (prefix / "conda-meta").is_dir():
        raise InputError(f"{prefix} is not a conda prefix (no conda-meta/ and no bin/python)",
                         "give the root of a conda environment, or the path of its interpreter",
                         value=str(prefix), setting="prefix")
    sites = sorted(glob.glob(str(prefix / "lib" / "python3*" / "site-packages")))
    if not sites:
        raise InputError(f"{prefix} has no lib/python3.*/site-packages", "is Python installed in that prefix?")
    site = sites[-1]
    return with_conda_meta(Interpreter(
        python=None, python_version=_conda_python(prefix) or Path(site).parent.name[6:], site_packages=site,
        dists=_dists_on(site), cubin_module=_find_package(site, "flashinfer_cubin"), env=_judged(env),
        home=env.get("HOME") or _home_of_this_user()), prefix)


def with_conda_meta(interp: Interpreter, prefix: Path) -> Interpreter:
    """Add what conda-meta/ knows: a conda package without a .dist-info is installed all the same."""
    from dataclasses import replace

    from repack.environment.condameta import read_records, records_by_name

    found = records_by_name(read_records(prefix), PROJECTS)
    dists = {**{name: Dist(r.version, interp.site_packages) for name, r in found.items()}, **interp.dists}
    return replace(interp, dists=dists, conda_packages={name: r.label for name, r in found.items()})


def _home_of_this_user() -> str:
    """What Path.home() falls back to without HOME: the password database."""
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir


def _judged(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in ENV_VARS}


def _conda_python(prefix: Path) -> str | None:
    for meta in sorted((prefix / "conda-meta").glob("python-3*.json")):
        try:
            return str(json.loads(read_regular(meta, 128 << 20))["version"])
        except (OSError, ValueError, KeyError, TypeError, NotRegularFileError):
            continue
    return None


def _dists_on(site: str) -> dict[str, Dist]:
    import importlib.metadata

    out = {}
    for project in PROJECTS:
        found = list(importlib.metadata.distributions(name=project, path=[site]))
        if found:
            out[project] = Dist(found[0].version, site)
    return out


def _find_package(site: str, name: str) -> tuple[str, ...] | None:
    """What find_spec would find on a path of one site directory: a package, or a namespace folder."""
    path = os.path.join(site, name)
    return (path,) if os.path.isdir(path) else None


def namespace_dir(interp: Interpreter) -> str | None:
    """The flashinfer_cubin folder without ``__init__.py`` that find_spec finds, if that is what it finds."""
    if not interp.cubin_module:
        return None
    if any(os.path.isfile(os.path.join(d, "__init__.py")) for d in interp.cubin_module):
        return None
    return interp.cubin_module[0]


# -- the version's rules, read from its code ---------------------------------------

def header_rules(interp: Interpreter) -> Plan | None:
    """The plan of the flashinfer-python installed in ``interp`` (None when it is not installed).

    Raises :class:`~repack.errors.PlanError` when its code cannot be read or is not understood.
    """
    from repack.rules.plan import shipped_plan
    from repack.rules.resolve import plan_from_installed

    dist = interp.dists.get("flashinfer-python")
    if dist is None:
        return None
    plan = plan_from_installed(dist.version, paths=[dist.location])
    shipped = shipped_plan(dist.version)
    if plan.needed and shipped is not None and not shipped.differences(plan):
        plan = dataclasses.replace(plan, header_sha256=dict(shipped.header_sha256))
    return plan


def build_version(path: Path) -> str | None:
    """flashinfer-cubin's ``__version__`` from its ``_build_meta.py``, read without importing it."""
    import ast

    try:
        tree = ast.parse(read_regular(path, 1 << 20).decode("utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError, NotRegularFileError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    return None


# -- FLASHINFER_CUBIN_DIR -------------------------------------------------------------

def resolve_cubin_dir(interp: Interpreter, rules: Plan) -> CubinDir:
    """``flashinfer.jit.env._get_cubin_dir()`` of that version (rules read from its code), on the snapshot."""
    env = interp.env
    if rules.cubin_env_first and env.get("FLASHINFER_CUBIN_DIR"):
        return CubinDir(env["FLASHINFER_CUBIN_DIR"],
                        "FLASHINFER_CUBIN_DIR (wins over flashinfer-cubin in this version)")
    if interp.cubin_module:
        found = _from_cubin_package(interp, interp.cubin_module, rules)
        if found.import_error is None or rules.cubin_mismatch != "package-ignored" or namespace_dir(interp):
            return found
        return _default_cubin_dir(interp, f"flashinfer-cubin {found.cubin_version} is ignored (its version differs)")
    if env.get("FLASHINFER_CUBIN_DIR"):
        return CubinDir(env["FLASHINFER_CUBIN_DIR"], "FLASHINFER_CUBIN_DIR")
    return _default_cubin_dir(interp, "")


def _default_cubin_dir(interp: Interpreter, why: str) -> CubinDir:
    env = interp.env
    if "FLASHINFER_WORKSPACE_BASE" in env:
        base, how = env["FLASHINFER_WORKSPACE_BASE"], "$FLASHINFER_WORKSPACE_BASE"
    else:
        base, how = interp.home or "~", "$HOME"
    return CubinDir(os.path.join(base, ".cache", "flashinfer", "cubins"),
                    f"default ({how}/.cache/flashinfer/cubins)" + (f"; {why}" if why else ""))


def _from_cubin_package(interp: Interpreter, module: tuple[str, ...], rules: Plan) -> CubinDir:
    folder = module[0]
    ignored = " (FLASHINFER_CUBIN_DIR is ignored)" if interp.env.get("FLASHINFER_CUBIN_DIR") else ""
    if namespace_dir(interp):
        return CubinDir(None, f"flashinfer_cubin found by find_spec at {folder}{ignored}",
                        import_error="AttributeError: module 'flashinfer_cubin' has no attribute '__version__'")
    cubin_version = build_version(Path(folder) / "_build_meta.py") or "0.0.0"
    path = os.path.join(folder, "cubins")
    checked = not interp.env.get("FLASHINFER_DISABLE_VERSION_CHECK") and not (
        rules.cubin_skips_unknown and rules.build_version == "0.0.0+unknown")
    error = None
    if checked and cubin_version != rules.build_version:
        error = (f"RuntimeError: flashinfer-cubin version ({cubin_version}) does not match "
                 f"flashinfer version ({rules.build_version})")
    return CubinDir(path, f"flashinfer-cubin package{ignored}", import_error=error, cubin_version=cubin_version)


# -- the files -----------------------------------------------------------------------

def watched_paths(rules: Plan) -> list[str]:
    """Every path under FLASHINFER_CUBIN_DIR that the rules read or write."""
    paths = [rules.checksums_path, rules.metainfo_path] + [rules.artifact_header(h) for h in rules.headers]
    if rules.mode in ("download", "symlink"):
        paths += [rules.dest_dir, rules.dest_dir + ".lock"]
    if rules.mode == "download":
        paths += [rules.dest_path(h) for h in rules.headers] + [rules.dest_path(rules.marker_name)]
    return [p for p in paths if p and not p.startswith("/")]


def cubin_dir_facts(root: Path, rules: Plan) -> CubinDirFacts:
    files = {p: file_state(root / p) for p in watched_paths(rules)}
    return CubinDirFacts(root=str(root), files=files, locks=_stray_locks(root, rules),
                         listed=_listed(root / rules.checksums_path, rules) if rules.artifact_path else {})


def _listed(path: Path, rules: Plan) -> dict[str, str]:
    """The hashes flashinfer would take from this checksums.txt for the files doctor judges."""
    from repack.errors import IntegrityError
    from repack.fetch.verify import parse_checksums, runtime_hash

    try:
        entries = parse_checksums(read_regular(path, READ_LIMIT), str(path))
    except (OSError, IntegrityError, NotRegularFileError):
        return {}
    names = [*list(rules.headers), METAINFO.rsplit("/", 1)[-1]]
    return {n: d for n in names if (d := runtime_hash(entries, n)) is not None}


def file_state(path: Path) -> FileState:
    link_to = os.path.realpath(path) if path.is_symlink() else None
    if path.is_dir():
        return FileState(exists=True, readable=os.access(path, os.R_OK | os.X_OK), is_dir=True,
                         writable=_can_write_in(path.parent), link_to=link_to)
    if not path.exists():
        return FileState(exists=False, writable=_can_write_in(path.parent), link_to=link_to)
    try:  # why bounded: a header may be a FIFO (would hang) or a link to /dev/zero (would never end)
        data = read_regular(path, READ_LIMIT)
    except (NotRegularFileError, OSError):
        return FileState(exists=True, readable=False, writable=os.access(path, os.W_OK), link_to=link_to)
    return FileState(exists=True, readable=True, sha256=hashlib.sha256(data).hexdigest(),
                     data=data if len(data) <= SMALL_FILE else None, writable=os.access(path, os.W_OK),
                     link_to=link_to)


def _can_write_in(directory: Path) -> bool:
    """Whether a file could be created in ``directory`` (made first, if missing, under its nearest parent)."""
    d = directory
    while not d.exists() and d != d.parent:
        d = d.parent
    return d.is_dir() and os.access(d, os.W_OK | os.X_OK)


def _stray_locks(root: Path, rules: Plan) -> tuple[str, ...]:
    """``*.lock`` files that filelock leaves beside downloads (the symlink's own lock is expected)."""
    found: set[str] = set()
    for base in {rules.dest_dir, rules.artifact_path.rstrip("/")} - {""}:
        directory = root / base
        if directory.is_dir() and not directory.is_symlink():
            found.update(str(p.relative_to(root)) for p in directory.rglob("*.lock"))
    found.discard(rules.dest_dir + ".lock")
    return tuple(sorted(found))
