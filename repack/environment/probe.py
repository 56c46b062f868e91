"""A snapshot of a target environment, as its flashinfer would see it at start-up.

Nothing of FlashInfer (or torch) is imported.  The target interpreter runs a
small stdlib-only script (``python -c``, from ``/``, with the caller's
PYTHONPATH and the like, as flashinfer's own process would) that reports its version,
site-packages, the distributions' metadata and what ``find_spec`` finds for
``flashinfer_cubin``; a conda prefix without a Python is read from its files.
Then flashinfer-python's own source is read statically to learn that
version's header rules, ``FLASHINFER_CUBIN_DIR`` is resolved with that
version's precedence, and the files the rules name are looked at there.

The environment variables are always passed in: this module never reads
``os.environ``.  Writability is judged for the user running the probe (run
doctor as the user that runs flashinfer).
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from packaging.version import InvalidVersion, Version

from repack.errors import PlanError, SourceError, UsageError

PROJECTS = ("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers")
#: The variables flashinfer's header code reads (env.py, cubin_loader.py).
ENV_VARS = ("FLASHINFER_CUBIN_DIR", "FLASHINFER_WORKSPACE_BASE", "FLASHINFER_DISABLE_VERSION_CHECK",
            "FLASHINFER_CUBIN_CHECKSUM_DISABLED", "FLASHINFER_CUBINS_REPOSITORY", "FLASHINFER_NO_DOWNLOAD", "HOME")
#: Variables that decide what the target interpreter imports and finds; passed to it, not judged.
PASSED = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
          "PYTHONSAFEPATH", "USER", "LOGNAME")
#: Where the BMM export headers are included from (a directory or, from 0.6.7.post1, a symlink).
DEST_DIR = "flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"
MARKER = ".artifact_hash"
HEADER_DIR = "include/trtllmGen_bmm_export"
METAINFO = "include/flashinferMetaInfo.h"
#: From this version FLASHINFER_CUBIN_DIR wins over an installed flashinfer-cubin (flashinfer/jit/env.py).
ENV_FIRST_FROM = Version("0.6.16")
#: From this version the include symlink lives under FLASHINFER_GEN_SRC_DIR, which this probe does not model.
GEN_SRC_FROM = Version("0.6.16")
SMALL_FILE = 4096

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
    "dists": {n: dist(n) for n in %r}, "home": home,
    "flashinfer_cubin": None if spec is None else list(spec.submodule_search_locations or [spec.origin]),
}))
""" % (PROJECTS,)


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
class HeaderRules:
    """How one flashinfer-python version treats the BMM export headers, read from its code.

    ``mode``: ``download`` (0.6.5-0.6.7: headers + marker at ``dest_dir``,
    downloaded when missing), ``symlink`` (0.6.7.post1+: headers at the
    artifact path, ``dest_dir`` made a symlink to them at every start),
    ``none`` (older: only checksums.txt and flashinferMetaInfo.h are read).
    """

    version: str
    build_version: str
    mode: str
    reason: str
    artifact_path: str = ""
    checksums_sha256: str = ""
    headers: tuple[str, ...] = ()
    header_sha256: Mapping[str, str] = field(default_factory=dict)
    dest_dir: str = DEST_DIR
    marker_name: str = MARKER

    @property
    def env_var_first(self) -> bool:
        return _version(self.version) >= ENV_FIRST_FROM

    @property
    def symlink_modelled(self) -> bool:
        return _version(self.version) < GEN_SRC_FROM

    @property
    def checksums_path(self) -> str:
        return self.artifact_path + "checksums.txt"

    @property
    def metainfo_path(self) -> str:
        return self.artifact_path + METAINFO

    def artifact_header(self, name: str) -> str:
        return f"{self.artifact_path}{HEADER_DIR}/{name}"

    def dest_path(self, name: str) -> str:
        return f"{self.dest_dir}/{name}"


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
    rules: HeaderRules | None
    cubin_dir: CubinDir | None
    files: CubinDirFacts | None
    namespace_dir: str | None = None  # a flashinfer_cubin folder without __init__.py

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
    rules = header_rules(interp)
    where = resolve_cubin_dir(interp, rules) if rules else None
    files = cubin_dir_facts(Path(where.path), rules) if where and where.path else None
    return Environment(target=target, interpreter=interp, rules=rules, cubin_dir=where, files=files,
                       namespace_dir=namespace_dir(interp))


def interpreter_facts(python: str, env: Mapping[str, str]) -> Interpreter:
    """Run the target interpreter with ``env``; the script imports nothing but the stdlib."""
    try:
        proc = subprocess.run([python, "-c", _SCRIPT], capture_output=True, text=True, env=dict(env),
                              cwd=os.path.abspath(os.sep), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run the interpreter {python}: {exc}",
                         "give --python the path of the environment's python (e.g. .venv/bin/python)") from None
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise UsageError(f"{python} did not answer as a Python >= 3.8 interpreter (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-300:]}", "give --python the path of a Python interpreter") from None
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
        raise UsageError(f"{prefix} is not a conda prefix (no conda-meta/ and no bin/python)",
                         "give --prefix the root of a conda environment, or --python its interpreter")
    sites = sorted(glob.glob(str(prefix / "lib" / "python3*" / "site-packages")))
    if not sites:
        raise UsageError(f"{prefix} has no lib/python3.*/site-packages", "is Python installed in that prefix?")
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
            return json.loads(meta.read_text())["version"]
        except (OSError, ValueError, KeyError):
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

def header_rules(interp: Interpreter) -> HeaderRules | None:
    """The header rules of the flashinfer-python installed in ``interp`` (None when it is not installed)."""
    from repack.rules.plan import shipped_plan
    from repack.rules.resolve import plan_from_installed

    dist = interp.dists.get("flashinfer-python")
    if dist is None:
        return None
    site = Path(dist.location)
    build = build_version(site / "flashinfer" / "_build_meta.py") or dist.version
    try:
        plan = plan_from_installed(dist.version, paths=[str(site)])
    except (PlanError, SourceError) as exc:  # a version older than the cubin artifacts, or a damaged install
        plan = shipped_plan(dist.version)  # never judge an affected version "not needed" for want of its code
        if plan is None:
            return _later_rules(site / "flashinfer", dist.version, build, f"its code was not understood: {exc}")
    if plan.needed:
        shipped = shipped_plan(dist.version)
        hashes = shipped.header_sha256 if shipped and shipped.artifact_path == plan.artifact_path else {}
        return HeaderRules(version=dist.version, build_version=build, mode="download", reason=plan.reason,
                           artifact_path=plan.artifact_path, checksums_sha256=plan.checksums_sha256,
                           headers=plan.headers, header_sha256=dict(hashes), dest_dir=plan.dest_dir,
                           marker_name=plan.marker_name)
    return _later_rules(site / "flashinfer", dist.version, build, plan.reason)


def _later_rules(package: Path, version: str, build: str, reason: str) -> HeaderRules:
    """A version that never downloads headers into dest_dir: symlink (0.6.7.post1+) or none (older)."""
    from repack.rules.plan import _artifact_constants

    try:
        consts = _artifact_constants(_parse(package / "artifacts.py"))
    except PlanError:
        consts = {}
    headers = _bmm_export_headers(package / "jit" / "fused_moe.py")
    links = "def ensure_symlink" in _text(package / "jit" / "cubin_loader.py")
    artifact = consts.get("ArtifactPath.TRTLLM_GEN_BMM", "")
    artifact = artifact.rstrip("/") + "/" if artifact else ""  # joined as f"{path}/name" (0.6.4 has no slash)
    return HeaderRules(version=version, build_version=build, mode="symlink" if links and headers else "none",
                       reason=reason, artifact_path=artifact,
                       checksums_sha256=consts.get("CheckSumHash.TRTLLM_GEN_BMM", ""), headers=headers)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(_text(path), filename=str(path))
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


def _bmm_export_headers(path: Path) -> tuple[str, ...]:
    for node in _parse(path).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BMM_EXPORT_HEADERS" for t in node.targets)
                and isinstance(node.value, ast.List)):
            return tuple(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return ()


def build_version(path: Path) -> str | None:
    """``__version__`` of a ``_build_meta.py``, read without importing it (what ``__version__`` will be)."""
    for node in _parse(path).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    return None


# -- FLASHINFER_CUBIN_DIR -------------------------------------------------------------

def resolve_cubin_dir(interp: Interpreter, rules: HeaderRules) -> CubinDir:
    """``flashinfer.jit.env._get_cubin_dir()`` of that version, evaluated on the snapshot."""
    env = interp.env
    if rules.env_var_first and env.get("FLASHINFER_CUBIN_DIR"):
        return CubinDir(env["FLASHINFER_CUBIN_DIR"], "FLASHINFER_CUBIN_DIR (wins over flashinfer-cubin from 0.6.16)")
    if interp.cubin_module:
        return _from_cubin_package(interp, rules)
    if env.get("FLASHINFER_CUBIN_DIR"):
        return CubinDir(env["FLASHINFER_CUBIN_DIR"], "FLASHINFER_CUBIN_DIR")
    if "FLASHINFER_WORKSPACE_BASE" in env:
        base, how = env["FLASHINFER_WORKSPACE_BASE"], "$FLASHINFER_WORKSPACE_BASE"
    else:
        base, how = interp.home or "~", "$HOME"
    return CubinDir(os.path.join(base, ".cache", "flashinfer", "cubins"), f"default ({how}/.cache/flashinfer/cubins)")


def _from_cubin_package(interp: Interpreter, rules: HeaderRules) -> CubinDir:
    folder = interp.cubin_module[0]
    ignored = " (FLASHINFER_CUBIN_DIR is ignored)" if interp.env.get("FLASHINFER_CUBIN_DIR") else ""
    if namespace_dir(interp):
        return CubinDir(None, f"flashinfer_cubin found by find_spec at {folder}{ignored}",
                        import_error="AttributeError: module 'flashinfer_cubin' has no attribute '__version__'")
    cubin_version = build_version(Path(folder) / "_build_meta.py") or "0.0.0"
    path = os.path.join(folder, "cubins")
    checked = not interp.env.get("FLASHINFER_DISABLE_VERSION_CHECK") and not (
        rules.env_var_first and rules.build_version == "0.0.0+unknown")
    error = None
    if checked and cubin_version != rules.build_version:
        error = (f"RuntimeError: flashinfer-cubin version ({cubin_version}) does not match "
                 f"flashinfer version ({rules.build_version})")
    return CubinDir(path, f"flashinfer-cubin package{ignored}", import_error=error, cubin_version=cubin_version)


# -- the files -----------------------------------------------------------------------

def watched_paths(rules: HeaderRules) -> list[str]:
    """Every path under FLASHINFER_CUBIN_DIR that the rules read or write."""
    paths = [rules.checksums_path, rules.metainfo_path] + [rules.artifact_header(h) for h in rules.headers]
    if rules.mode in ("download", "symlink"):
        paths += [rules.dest_dir, rules.dest_dir + ".lock"]
    if rules.mode == "download":
        paths += [rules.dest_path(h) for h in rules.headers] + [rules.dest_path(rules.marker_name)]
    return [p for p in paths if p and not p.startswith("/")]


def cubin_dir_facts(root: Path, rules: HeaderRules) -> CubinDirFacts:
    files = {p: file_state(root / p) for p in watched_paths(rules)}
    return CubinDirFacts(root=str(root), files=files, locks=_stray_locks(root, rules),
                         listed=_listed(root / rules.checksums_path, rules) if rules.artifact_path else {})


def _listed(path: Path, rules: HeaderRules) -> dict[str, str]:
    """The hashes flashinfer would take from this checksums.txt for the files doctor judges."""
    from repack.errors import IntegrityError
    from repack.fetch.verify import parse_checksums, runtime_hash

    try:
        entries = parse_checksums(path.read_bytes(), str(path))
    except (OSError, IntegrityError):
        return {}
    names = list(rules.headers) + [METAINFO.rsplit("/", 1)[-1]]
    return {n: d for n in names if (d := runtime_hash(entries, n)) is not None}


def file_state(path: Path) -> FileState:
    link_to = os.path.realpath(path) if path.is_symlink() else None
    if path.is_dir():
        return FileState(exists=True, readable=os.access(path, os.R_OK | os.X_OK), is_dir=True,
                         writable=_can_write_in(path.parent), link_to=link_to)
    if not path.exists():
        return FileState(exists=False, writable=_can_write_in(path.parent), link_to=link_to)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
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


def _stray_locks(root: Path, rules: HeaderRules) -> tuple[str, ...]:
    """``*.lock`` files that filelock leaves beside downloads (the symlink's own lock is expected)."""
    found = set()
    for base in {rules.dest_dir, rules.artifact_path.rstrip("/")} - {""}:
        directory = root / base
        if directory.is_dir() and not directory.is_symlink():
            found.update(str(p.relative_to(root)) for p in directory.rglob("*.lock"))
    found.discard(rules.dest_dir + ".lock")
    return tuple(sorted(found))


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")
