"""Will this environment's FlashInfer start with no network, and if not, why?

Pure analysis of a :class:`~repack.environment.probe.Environment` snapshot: each check
gives one :class:`Check` line and, for what is wrong, :class:`Problem`\\ s that
say what is wrong, what flashinfer will do because of it, and the exact
command that fixes it.  A fatal problem means flashinfer will reach for the
network, or fail, while it generates its fused-MoE JIT specs at start-up.

What is modelled, per flashinfer-python version (its rules read from its code
by :mod:`repack.environment.probe`): ``import flashinfer`` resolves FLASHINFER_CUBIN_DIR
and checks flashinfer-cubin's version; the JIT specs then read
``<artifact>/checksums.txt`` (pinned sha256) and
``<artifact>/include/flashinferMetaInfo.h``, and the 17 BMM export headers:
at ``dest_dir`` with an exact marker (0.6.5-0.6.7, ``download_trtllm_headers``)
or at the artifact path behind a symlink that every start re-makes under a
file lock (0.6.7.post1+, ``ensure_symlink``).  A file is accepted when it
exists, reads, and has its sha256 (``load_cubin``); anything else is downloaded.
"""

from __future__ import annotations

import contextvars
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from repack.environment.probe import MISSING, Environment, FileState
from repack.rules.plan import Plan

HEADERS_PROJECT = "flashinfer-cubin-headers"
METAINFO_NAME = "flashinferMetaInfo.h"


#: flashinfer-cubin 0.6.14 and later are not on PyPI: flashinfer publishes them on its own wheel index
#: (flashinfer's README and docs/installation.rst since flashinfer-ai/flashinfer#3853).
FLASHINFER_WHEEL_INDEX = "https://flashinfer.ai/whl"
FIRST_CUBIN_OFF_PYPI = (0, 6, 14)


@dataclass(frozen=True)
class Advice:
    """What the fixes need to know about where packages come from (the caller finds it; doctor only words it).

    ``index_url`` is what ``pip install`` in that environment would use, without credentials;
    ``conda_prefix`` is set when the environment is a conda environment whose flashinfer came from conda.
    """

    index_url: str | None = None
    index_is_pypi: bool = True
    conda_prefix: str | None = None


@dataclass(frozen=True)
class Problem:
    code: str
    what: str
    consequence: str
    fix: str
    fatal: bool = True


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "note" (only non-fatal problems) or "problem"
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != "problem"


@dataclass(frozen=True)
class Diagnosis:
    checks: tuple[Check, ...]
    problems: tuple[Problem, ...]

    @property
    def starts_offline(self) -> bool:
        return not any(p.fatal for p in self.problems)

    @property
    def verdict(self) -> str:
        """``offline``, ``not-offline``, or ``unknown`` (flashinfer's code was not understood: no guess)."""
        if any(p.code == "unknown" for p in self.problems):
            return "unknown"
        return "offline" if self.starts_offline else "not-offline"

    def to_json(self) -> dict[str, Any]:
        return {"starts_offline": self.starts_offline, "verdict": self.verdict,
                "checks": [dict(asdict(c), ok=c.ok) for c in self.checks],
                "problems": [asdict(p) for p in self.problems]}


class _Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.problems: list[Problem] = []

    def add(self, name: str, detail: str, problems: Sequence[Problem] = ()) -> None:
        status = "problem" if any(p.fatal for p in problems) else "note" if problems else "ok"
        self.checks.append(Check(name, status, detail))
        self.problems.extend(problems)


def diagnose(env: Environment, advice: Advice | None = None) -> Diagnosis:
    """Every check, in the order flashinfer meets them at start-up."""
    token = _ADVICE.set(advice or Advice())  # the fixes' wording reads it; the verdict never does
    try:
        return _diagnose(env)
    finally:
        _ADVICE.reset(token)


def _diagnose(env: Environment) -> Diagnosis:
    report = _Report()
    fp, rules = env.dist("flashinfer-python"), env.rules
    if fp is not None and env.unknown is not None:
        report.add("flashinfer-python", f"{fp.version} in {fp.location}: unknown", [Problem(
            "unknown", env.unknown, "doctor cannot tell whether this flashinfer starts with no network, "
            "so it does not say that it will", "none known: report the file and line above; until then, "
            "treat this environment as one that needs the network")])
        return Diagnosis(tuple(report.checks), tuple(report.problems))
    if fp is None or rules is None:
        report.add("flashinfer-python", "not installed", [Problem(
            "no-flashinfer", f"flashinfer-python is not installed in {env.target}", "there is no FlashInfer to start",
            f"{_pip(env)} install flashinfer-python")])
        return Diagnosis(tuple(report.checks), tuple(report.problems))
    report.add("flashinfer-python", f"{fp.version} in {fp.location}" + _conda_owner(env, "flashinfer-python"))
    _check_packages(env, rules, report)
    _check_import(env, rules, report)
    if env.files is not None and env.cubin_dir is not None and env.cubin_dir.import_error is None:
        _check_files(env, rules, report)
    return Diagnosis(tuple(report.checks), tuple(report.problems))


# -- packages and import ---------------------------------------------------------------

def _check_packages(env: Environment, rules: Plan, report: _Report) -> None:
    cubin, headers = env.dist("flashinfer-cubin"), env.dist(HEADERS_PROJECT)
    report.add("flashinfer-cubin", (f"{cubin.version} (distribution metadata)" if cubin else "not installed")
               + _conda_owner(env, "flashinfer-cubin"))
    problems = []
    if headers is not None and rules.mode != "download":
        problems.append(Problem(
            "headers-not-needed", f"{HEADERS_PROJECT} {headers.version} is installed, but flashinfer "
            f"{rules.version} does not read headers from {rules.dest_dir}/",
            "nothing reads its files; flashinfer replaces that directory with a symlink at start-up",
            f"{_pip(env)} uninstall -y {HEADERS_PROJECT}", fatal=False))
    elif headers is not None and headers.version != rules.version:
        problems.append(Problem(
            "headers-version-mismatch", f"{HEADERS_PROJECT} {headers.version} is installed beside "
            f"flashinfer-python {rules.version}", "its files are another version's; flashinfer checks them "
            "against its own pins (see the header check)", _dest_fix(env, rules), fatal=False))
    if headers is not None and cubin is not None and headers.version != cubin.version:
        problems.append(Problem(
            "headers-cubin-mismatch", f"{HEADERS_PROJECT} {headers.version} is installed beside flashinfer-cubin "
            f"{cubin.version}", "pip reports a broken requirement: they are made to be installed together",
            _cubin_fix(env, rules.version), fatal=False))
    needed = (f"needed: {rules.version} looks for {len(rules.headers)} headers and a marker in "
              f"FLASHINFER_CUBIN_DIR/{rules.dest_dir}/" if rules.mode == "download"
              else f"not needed: {rules.reason}")
    report.add(HEADERS_PROJECT, f"{headers.version if headers else 'not installed'}; {needed}"
               + _conda_owner(env, HEADERS_PROJECT), problems)


def _conda_owner(env: Environment, project: str) -> str:
    """``; conda package NAME-VERSION-BUILD`` where conda-meta/ says conda installed ``project``."""
    label = env.interpreter.conda_packages.get(project)
    return f"; conda package {label}" if label else ""


def _check_import(env: Environment, rules: Plan, report: _Report) -> None:
    where = env.cubin_dir
    if where is None:  # an environment whose code was understood always has one (probe); say so if not
        report.add("FLASHINFER_CUBIN_DIR", "unknown")
        return
    problems = []
    if where.import_error and env.namespace_dir:
        problems.append(_namespace_problem(env, rules))
    elif where.import_error:
        problems.append(Problem(
            "cubin-version-mismatch", f"flashinfer-cubin {where.cubin_version} is installed beside "
            f"flashinfer-python {rules.build_version}", f"`import flashinfer` fails: {where.import_error}",
            _cubin_fix(env, rules.version)))
    report.add("FLASHINFER_CUBIN_DIR", f"{where.path or '(import fails)'}  [{where.source}]", problems)


def _namespace_problem(env: Environment, rules: Plan) -> Problem:
    cubin = env.dist("flashinfer-cubin")
    why = (f"{HEADERS_PROJECT} is installed without flashinfer-cubin" if env.dist(HEADERS_PROJECT) and not cubin
           else "files were left behind, e.g. by `pip uninstall flashinfer-cubin` after flashinfer or "
                f"{HEADERS_PROJECT} wrote there")
    return Problem(
        "namespace-package", f"{env.namespace_dir} has no __init__.py ({why}); find_spec('flashinfer_cubin') "
        "finds it as a namespace package", "`import flashinfer` fails: AttributeError: module 'flashinfer_cubin' "
        "has no attribute '__version__' (FLASHINFER_DISABLE_VERSION_CHECK does not help)",
        _cubin_fix(env, rules.version, force=cubin is not None))


# -- files -----------------------------------------------------------------------------

def _check_files(env: Environment, rules: Plan, report: _Report) -> None:
    if not rules.artifact_path:
        report.add("artifacts", f"flashinfer {rules.version} pins no TRTLLM_GEN_BMM artifact: nothing to check")
        return
    skip = bool(env.interpreter.env.get("FLASHINFER_CUBIN_CHECKSUM_DISABLED"))
    checksums = _state_of(env, rules.checksums_path)
    sums_ok = _accepted(checksums, rules.checksums_sha256, skip)
    report.add("checksums.txt", f"{rules.checksums_path}: " + ("sha256 as pinned" if sums_ok else _state(checksums)),
               [] if sums_ok else [_download_problem(env, rules, "checksums-missing", [rules.checksums_path])])
    expected = dict(env.files.listed) if sums_ok and env.files is not None else dict(rules.header_sha256)
    if rules.mode == "download":
        _check_download_mode(env, rules, expected, skip, report)
    elif rules.mode == "symlink":
        _check_symlink_mode(env, rules, expected, skip, report)
    _check_metainfo(env, rules, expected.get(METAINFO_NAME), sums_ok, skip, report)
    _check_locks(env, report)


def _bad_headers(env: Environment, rules: Plan, path_of: Callable[[str], str], expected: dict[str, str],
                 skip: bool) -> list[str]:
    return [h for h in rules.headers if not _accepted(_state_of(env, path_of(h)), expected.get(h), skip)]


def _check_download_mode(env: Environment, rules: Plan, expected: dict[str, str], skip: bool,
                         report: _Report) -> None:
    marker_path = rules.dest_path(rules.marker_name)
    marker = _state_of(env, marker_path)
    content = marker.data or b""
    problems = []
    # download_trtllm_headers compares the stripped marker text with what it writes (read from its code)
    if marker.exists and (not marker.readable
                          or content.decode("utf-8", "replace").strip() != rules.marker_content.strip()):
        problems.append(Problem(
            "marker-mismatch", f"{_abs(env, marker_path)} holds {content[:80]!r}, not the artifact path "
            f"{rules.marker_content!r}", "download_trtllm_headers raises RuntimeError ('Detected inconsistent "
            "cached artifacts') at start-up",
            f"rm -f {shlex.quote(_abs(env, marker_path))} && {_dest_fix(env, rules)}"))
    bad = _bad_headers(env, rules, rules.dest_path, expected, skip)
    if bad:
        problems.append(_download_problem(env, rules, "headers-missing", [rules.dest_path(h) for h in bad]))
    elif not problems and content != rules.marker_bytes:
        problems.append(_marker_rewrite(env, rules, marker, content))
    good = f"{len(rules.headers)} headers with the pinned sha256 and the exact marker in {rules.dest_dir}/"
    report.add("BMM export headers", f"{len(bad)} of {len(rules.headers)} missing or wrong" if bad else good, problems)


def _marker_rewrite(env: Environment, rules: Plan, marker: FileState, content: bytes) -> Problem:
    path = _abs(env, rules.dest_path(rules.marker_name))
    what = (f"{path} is missing" if not marker.exists else
            f"{path} holds {content!r}: the right path, but not exactly its {len(rules.marker_bytes)} bytes")
    if marker.writable:
        return Problem("marker-not-exact", what, "flashinfer (re)writes it at the first start: a write, no network",
                       _dest_fix(env, rules), fatal=False)
    return Problem("marker-read-only", what + "; this user cannot write there",
                   "after the headers pass, flashinfer's write_if_different fails with PermissionError at start-up",
                   f"printf %s {shlex.quote(rules.marker_content)} > {shlex.quote(path)}  # as the owner")


def _check_symlink_mode(env: Environment, rules: Plan, expected: dict[str, str], skip: bool,
                        report: _Report) -> None:
    bad = _bad_headers(env, rules, rules.artifact_header, expected, skip)
    problems = []
    if bad:
        problems.append(_download_problem(env, rules, "headers-missing", [rules.artifact_header(h) for h in bad]))
    problems += _symlink_problems(env, rules)
    good = f"{len(rules.headers)} headers at the artifact path; {rules.dest_dir} links to them"
    report.add("BMM export headers", f"{len(bad)} of {len(rules.headers)} missing or wrong" if bad else good, problems)


def _symlink_problems(env: Environment, rules: Plan) -> list[Problem]:
    """ensure_symlink takes ``<dest>.lock`` and, unless the link is right, (re)makes ``dest`` at every start."""
    if not rules.symlink_modelled:
        return [Problem("symlink-not-modelled", f"flashinfer {rules.version} links the headers under "
                        "FLASHINFER_GEN_SRC_DIR, which doctor does not inspect",
                        "that directory must be writable at start-up", "-", fatal=False)]
    link, lock = _state_of(env, rules.dest_dir), _state_of(env, rules.dest_dir + ".lock")
    target = os.path.realpath(_abs(env, rules.artifact_path + "include/trtllmGen_bmm_export"))
    correct = link.link_to is not None and link.link_to.rstrip("/") == target.rstrip("/")
    problems = []
    blocked = ([_abs(env, rules.dest_dir + ".lock")] if not lock.writable else []) + (
        [_abs(env, rules.dest_dir)] if not correct and not link.writable else [])
    if blocked:
        action = "take a file lock and make the include symlink" if not correct else "take a file lock"
        problems.append(_read_only(env, rules, " and ".join(blocked), action))
    elif link.exists and not correct:
        problems.append(Problem(
            "dir-replaced-by-symlink", f"{_abs(env, rules.dest_dir)} is "
            + ("a directory" if link.link_to is None else f"a symlink to {link.link_to}"),
            "flashinfer deletes it (shutil.rmtree) and links it to the artifact path at start-up",
            f"{_pip(env)} uninstall -y {HEADERS_PROJECT}" if env.dist(HEADERS_PROJECT) else "none needed",
            fatal=False))
    return problems


def _read_only(env: Environment, rules: Plan, path: str, action: str) -> Problem:
    return Problem("read-only", f"{path} cannot be written by this user, and flashinfer {rules.version} must "
                   f"{action} there at every start", "ensure_symlink fails with PermissionError at start-up",
                   f"chown -R \"$(id -u)\" {shlex.quote(_root(env))}  # or run flashinfer as its owner")


def _check_metainfo(env: Environment, rules: Plan, digest: str | None, sums_ok: bool, skip: bool,
                    report: _Report) -> None:
    meta = _state_of(env, rules.metainfo_path)
    if not sums_ok and not skip:
        report.add(METAINFO_NAME, "not checked: no valid checksums.txt to check it against")
        return
    if _accepted(meta, digest, skip):
        report.add(METAINFO_NAME, f"{rules.metainfo_path}: sha256 as listed")
        return
    report.add(METAINFO_NAME, f"{rules.metainfo_path}: {_state(meta)}",
               [_download_problem(env, rules, "metainfo-missing", [rules.metainfo_path])])


def _check_locks(env: Environment, report: _Report) -> None:
    locks = env.files.locks if env.files is not None else ()
    if not locks:
        report.add("lock files", "no stale *.lock files")
        return
    report.add("lock files", f"{len(locks)} stale", [Problem(
        "stale-locks", f"{len(locks)} *.lock file(s) left by an earlier start that tried to download: "
        + ", ".join(locks[:3]) + (" ..." if len(locks) > 3 else ""),
        "harmless to flashinfer (the locks are advisory), but that start reached for the network; "
        "left inside flashinfer_cubin/ they outlive `pip uninstall flashinfer-cubin`",
        "rm -f " + " ".join(shlex.quote(_abs(env, p)) for p in locks), fatal=False)])


# -- helpers ---------------------------------------------------------------------------

def _accepted(state: FileState, digest: str | None, skip_hash: bool) -> bool:
    """flashinfer's load_cubin: the file exists, reads, and has the sha256 (unless checksums are disabled)."""
    if not (state.exists and state.readable) or state.is_dir:
        return False
    return skip_hash or (digest is not None and state.sha256 == digest)


def _download_problem(env: Environment, rules: Plan, code: str, paths: list[str]) -> Problem:
    first = _state_of(env, paths[0])
    names = ", ".join(p.rsplit("/", 1)[-1] for p in paths[:3])
    names += f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    where = os.path.dirname(_abs(env, paths[0]))
    repo = env.interpreter.env.get("FLASHINFER_CUBINS_REPOSITORY") or "NVIDIA's artifactory"
    fix = _dest_fix(env, rules) if paths[0].startswith(rules.dest_dir + "/") else _artifact_fix(env, rules)
    return Problem(code, f"{names} in {where}: {_state(first)}",
                   f"flashinfer downloads {'it' if len(paths) == 1 else 'them'} from {repo} at start-up; offline "
                   f"that fails after about 35 s of retries ({_OFFLINE_ERROR[code]})", fix)


#: What flashinfer raises when the download fails (read from its code; seen in the truth table).
_OFFLINE_ERROR = {
    "checksums-missing": "ValueError: Invalid checksums.txt, no flashinferMetaInfo.h found",
    "headers-missing": "AssertionError: <header> not found",
    "metainfo-missing": "AssertionError: flashinferMetaInfo.h not found",
}


# Advice is a frozen dataclass, so the shared default cannot be mutated (B039 guards against mutable ones)
_ADVICE: contextvars.ContextVar[Advice] = contextvars.ContextVar("doctor_advice", default=Advice())  # noqa: B039


def _dest_fix(env: Environment, rules: Plan) -> str:
    """Headers at ``dest_dir``: our package where flashinfer-cubin is there to carry it, else ``install``.

    The package is preferred: pip owns its files, so an upgrade or uninstall removes them and leaves
    no namespace-package folder behind.  Without flashinfer-cubin the package cannot serve (it
    requires flashinfer-cubin of the same version, whose metadata flashinfer checks).
    """
    if env.dist("flashinfer-cubin") is None or env.files is None:
        return _install_route(env, rules)
    spec = f"{HEADERS_PROJECT}=={rules.version}"
    conda_prefix = _ADVICE.get().conda_prefix
    if conda_prefix:
        return f"conda install --prefix {shlex.quote(conda_prefix)} {HEADERS_PROJECT}={rules.version}"
    if _ADVICE.get().index_is_pypi:  # we publish nowhere public: build it, then install the file
        return (f"flashinfer-repack build {rules.version} -o dist && {_pip(env)} install "
                f"dist/flashinfer_cubin_headers-{rules.version}-py3-none-any.whl")
    return f"{_pip(env)} install {spec}  # from {_ADVICE.get().index_url}, the index pip uses there"


def _install_route(env: Environment, rules: Plan) -> str:
    python = env.interpreter.python
    where = f"--python {shlex.quote(python)}" if python else f"--target {shlex.quote(_root(env))}"
    return f"flashinfer-repack install {rules.version} {where}"


def _artifact_fix(env: Environment, rules: Plan) -> str:
    """Files at the artifact path come with flashinfer-cubin (or, for 0.6.5-0.6.7, with ``install``)."""
    cubin = env.dist("flashinfer-cubin")
    if cubin is None and rules.mode == "download":
        return _install_route(env, rules)
    return _cubin_fix(env, rules.version, force=cubin is not None)


def _cubin_fix(env: Environment, version: str, force: bool = False) -> str:
    """flashinfer-cubin of ``version`` from where it is published: PyPI up to 0.6.13, flashinfer's index after."""
    force_flag = "--force-reinstall " if force else ""
    conda_prefix = _ADVICE.get().conda_prefix
    if conda_prefix:
        prefix = shlex.quote(conda_prefix)
        return f"conda install --prefix {prefix} {force_flag}flashinfer-cubin={version}"
    index = f" --index-url {FLASHINFER_WHEEL_INDEX}" if _release(version) >= FIRST_CUBIN_OFF_PYPI else ""
    return f"{_pip(env)} install {force_flag}flashinfer-cubin=={version}{index}"


def _release(version: str) -> tuple[int, ...]:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).release
    except InvalidVersion:
        return ()


def _pip(env: Environment) -> str:
    python = env.interpreter.python
    return f"{shlex.quote(python)} -m pip" if python else "pip"


def _abs(env: Environment, relpath: str) -> str:
    return f"{_root(env).rstrip('/')}/{relpath}"


def _root(env: Environment) -> str:
    """The cubin directory, as the fixes name it (its variable where the probe could not locate it)."""
    return env.files.root if env.files is not None else "$FLASHINFER_CUBIN_DIR"


def _state_of(env: Environment, relpath: str) -> FileState:
    """What the cubin directory holds at ``relpath``: missing where the directory itself is unknown."""
    return env.files.state(relpath) if env.files is not None else MISSING


def _state(state: FileState) -> str:
    if not state.exists:
        return "missing"
    if state.is_dir:
        return "a directory, not a file"
    if not state.readable:
        return "unreadable by this user"
    return f"sha256 {state.sha256[:16]}... is not the pinned one"
