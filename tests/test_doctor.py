"""doctor: unit checks on synthetic snapshots, and a truth table over real environments.

The truth table installs the real flashinfer-python 0.6.5, 0.6.6, 0.6.7,
0.6.7.post3 and 0.6.8 (and flashinfer-cubin of the same version, and our
wheel) from PyPI into one venv.  Every row holds its expected outcome (starts
or not, and the step where flashinfer fails: ``import`` or ``headers``) and
asserts that the ground truth meets it, and that doctor's static verdict
(exit 0 / 1) and ``doctor --run`` (exit code, step) equal it.  The ground
truth is what flashinfer's own header code does with
FLASHINFER_CUBINS_REPOSITORY at a closed port, measured by the test: the JIT
spec generators of that version and, for the versions that have it, vLLM's
snippet.  The table is printed (``-s``) and written as markdown.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from packaging.version import Version

from repack.environment.doctor import diagnose
from repack.environment.probe import (
    MISSING,
    CubinDir,
    CubinDirFacts,
    Dist,
    Environment,
    FileState,
    Interpreter,
    resolve_cubin_dir,
)
from repack.rules.plan import Plan, shipped_plan
from tests.conftest import AFFECTED
from tests.support.envs import PROJECTS

REPO = Path(__file__).resolve().parents[1]
ART = shipped_plan("0.6.6").artifact_path
NOBODY = "65534"


# -- synthetic snapshots ---------------------------------------------------------------------

def rules_for(version: str = "0.6.6", mode: str = "download") -> Plan:
    plan = shipped_plan("0.6.6")
    return replace(plan, version=version, build_version=version, mode=mode, needed=mode == "download",
                   reason="test", header_sha256=dict(plan.header_sha256) if mode == "download" else {},
                   cubin_env_first=Version(version) >= Version("0.6.16"))


def good(sha: str, data: bytes | None = None, writable: bool = True) -> FileState:
    return FileState(exists=True, readable=True, sha256=sha, data=data, writable=writable)


def healthy_files(rules: Plan, root: str = "/c", writable: bool = True) -> dict[str, FileState]:
    plan = shipped_plan("0.6.6")
    listed = dict(plan.header_sha256, **{"flashinferMetaInfo.h": "m" * 64})
    files = {rules.checksums_path: good(rules.checksums_sha256, writable=writable),
             rules.metainfo_path: good("m" * 64, writable=writable)}
    for h in rules.headers:
        files[rules.artifact_header(h)] = good(listed[h], writable=writable)
    if rules.mode == "download":
        for h in rules.headers:
            files[rules.dest_path(h)] = good(listed[h], writable=writable)
        files[rules.dest_path(rules.marker_name)] = good("x", rules.artifact_path.encode(), writable=writable)
    if rules.mode == "symlink":
        target = f"{root}/{rules.artifact_path}include/trtllmGen_bmm_export"
        files[rules.dest_dir] = FileState(exists=True, readable=True, is_dir=True, writable=writable, link_to=target)
        files[rules.dest_dir + ".lock"] = FileState(exists=True, readable=True, writable=writable)
    return files, listed


def snapshot_env(version="0.6.6", mode="download", cubin=True, headers_pkg=None, env_vars=None, change=None,
                 locks=(), import_error=None, namespace=None) -> Environment:
    rules = rules_for(version, mode)
    files, listed = healthy_files(rules)
    for path, state in (change or {}).items():
        files[path] = state
    dists = {"flashinfer-python": Dist(version, "/site")}
    if cubin:
        dists["flashinfer-cubin"] = Dist(version, "/site")
    if headers_pkg:
        dists["flashinfer-cubin-headers"] = Dist(headers_pkg, "/site")
    interp = Interpreter(python="/env/bin/python", python_version="3.11.7", site_packages="/site", dists=dists,
                         cubin_module=("/site/flashinfer_cubin",) if cubin or namespace else None,
                         env=env_vars or {}, home="/home/u")
    where = CubinDir("/c", "flashinfer-cubin package", import_error=import_error, cubin_version=version)
    return Environment(target="python /env/bin/python", interpreter=interp, rules=rules, cubin_dir=where,
                       files=CubinDirFacts(root="/c", files=files, locks=tuple(locks), listed=listed),
                       namespace_dir=namespace)


R = rules_for()
DEST_H = R.dest_path("KernelParams.h")
MARKER = R.dest_path(R.marker_name)
TAMPERED = good("0" * 64)
S = rules_for("0.6.8", "symlink")

CASES = [
    # name, snapshot, expected problem codes, starts offline
    ("healthy 0.6.6", snapshot_env(), [], True),
    ("header missing", snapshot_env(change={DEST_H: MISSING}), ["headers-missing"], False),
    ("header tampered", snapshot_env(change={DEST_H: TAMPERED}), ["headers-missing"], False),
    ("header unreadable", snapshot_env(change={DEST_H: FileState(exists=True, readable=False)}),
     ["headers-missing"], False),
    ("tampered, checksums disabled", snapshot_env(change={DEST_H: TAMPERED},
                                                  env_vars={"FLASHINFER_CUBIN_CHECKSUM_DISABLED": "1"}), [], True),
    ("marker newline, writable", snapshot_env(change={MARKER: good("x", ART.encode() + b"\n")}),
     ["marker-not-exact"], True),
    ("marker newline, read-only", snapshot_env(change={MARKER: good("x", ART.encode() + b"\n", writable=False)}),
     ["marker-read-only"], False),
    ("marker missing, writable", snapshot_env(change={MARKER: FileState(exists=False, writable=True)}),
     ["marker-not-exact"], True),
    ("marker missing, read-only", snapshot_env(change={MARKER: MISSING}), ["marker-read-only"], False),
    ("marker of another artifact", snapshot_env(change={MARKER: good("x", b"abc/other/")}), ["marker-mismatch"], False),
    ("checksums.txt missing", snapshot_env(change={R.checksums_path: MISSING}), ["checksums-missing"], False),
    ("metainfo missing", snapshot_env(change={R.metainfo_path: MISSING}), ["metainfo-missing"], False),
    ("stale locks", snapshot_env(locks=[R.dest_path("Enums.h.lock")]), ["stale-locks"], True),
    ("namespace package", snapshot_env(cubin=False, headers_pkg="0.6.6", namespace="/site/flashinfer_cubin",
                                       import_error="AttributeError: x"), ["namespace-package"], False),
    ("cubin version mismatch", snapshot_env(import_error="RuntimeError: flashinfer-cubin version (0.6.5) does not "
                                                         "match"), ["cubin-version-mismatch"], False),
    ("headers of another version", snapshot_env(headers_pkg="0.6.5"),
     ["headers-version-mismatch", "headers-cubin-mismatch"], True),
    ("0.6.8 healthy symlink", snapshot_env("0.6.8", "symlink"), [], True),
    ("0.6.8 headers package not needed", snapshot_env("0.6.8", "symlink", headers_pkg="0.6.7"),
     ["headers-not-needed", "headers-cubin-mismatch"], True),
    ("0.6.8 read-only, link missing", snapshot_env("0.6.8", "symlink", change={
        S.dest_dir: MISSING, S.dest_dir + ".lock": MISSING}), ["read-only"], False),
    ("0.6.8 read-only, link already right", snapshot_env("0.6.8", "symlink", change={
        S.dest_dir + ".lock": FileState(exists=True, readable=True)}), ["read-only"], False),
    ("0.6.8 directory to replace", snapshot_env("0.6.8", "symlink", change={
        S.dest_dir: FileState(exists=True, readable=True, is_dir=True, writable=True)}),
     ["dir-replaced-by-symlink"], True),
    ("0.6.8 header missing at artifact", snapshot_env("0.6.8", "symlink", change={
        S.artifact_header("Enums.h"): MISSING}), ["headers-missing"], False),
]


@pytest.mark.parametrize("name, env, codes, offline", CASES, ids=[c[0] for c in CASES])
def test_diagnosis_of_synthetic_snapshots(name, env, codes, offline):
    diagnosis = diagnose(env)
    assert [p.code for p in diagnosis.problems] == codes
    assert diagnosis.starts_offline is offline
    for p in diagnosis.problems:
        assert p.what and p.consequence and p.fix, p


def test_fixes_are_exact_commands():
    missing = diagnose(snapshot_env(change={DEST_H: MISSING})).problems[0]  # the package first (issue 12)
    assert missing.fix == ("flashinfer-repack build 0.6.6 -o dist && /env/bin/python -m pip install "
                           "dist/flashinfer_cubin_headers-0.6.6-py3-none-any.whl")
    namespace = diagnose(snapshot_env(cubin=False, headers_pkg="0.6.6", namespace="/site/flashinfer_cubin",
                                      import_error="AttributeError: x")).problems[0]
    assert namespace.fix == "/env/bin/python -m pip install flashinfer-cubin==0.6.6"
    sums = diagnose(snapshot_env(change={R.checksums_path: MISSING})).problems[0]
    assert sums.fix == "/env/bin/python -m pip install --force-reinstall flashinfer-cubin==0.6.6"


def test_no_flashinfer_is_a_problem():
    env = snapshot_env()
    env = replace(env, rules=None, interpreter=replace(env.interpreter, dists={}))
    diagnosis = diagnose(env)
    assert [p.code for p in diagnosis.problems] == ["no-flashinfer"] and not diagnosis.starts_offline


# -- FLASHINFER_CUBIN_DIR, per version ---------------------------------------------------

def package(tmp_path: Path, version: str | None, init: bool = True) -> str:
    folder = tmp_path / "site" / "flashinfer_cubin"
    folder.mkdir(parents=True)
    if init:
        (folder / "__init__.py").write_text("")
    if version:
        (folder / "_build_meta.py").write_text(f'__version__ = "{version}"\n')
    return str(folder)


@pytest.mark.parametrize("version, cubin, init, env, want, error", [
    ("0.6.6", None, True, {}, "{home}/.cache/flashinfer/cubins", None),
    ("0.6.6", None, True, {"FLASHINFER_WORKSPACE_BASE": "/ws"}, "/ws/.cache/flashinfer/cubins", None),
    ("0.6.6", None, True, {"FLASHINFER_CUBIN_DIR": "/d"}, "/d", None),
    ("0.6.6", "0.6.6", True, {"FLASHINFER_CUBIN_DIR": "/d"}, "{pkg}/cubins", None),
    ("0.6.6", "0.6.5", True, {}, "{pkg}/cubins", "RuntimeError"),
    ("0.6.6", "0.6.5", True, {"FLASHINFER_DISABLE_VERSION_CHECK": "1"}, "{pkg}/cubins", None),
    ("0.6.6", None, False, {"FLASHINFER_DISABLE_VERSION_CHECK": "1"}, None, "AttributeError"),
    ("0.6.16", "0.6.16", True, {"FLASHINFER_CUBIN_DIR": "/d"}, "/d", None),
    ("0.6.16", "0.6.16", True, {}, "{pkg}/cubins", None),
])
def test_cubin_dir_follows_each_versions_precedence(tmp_path, version, cubin, init, env, want, error):
    spot = package(tmp_path, cubin, init) if (cubin or not init) else None
    interp = Interpreter(python=None, python_version="3.11", site_packages=str(tmp_path / "site"),
                         dists={}, cubin_module=(spot,) if spot else None, env=env, home="/home/u")
    rules = rules_for(version)
    where = resolve_cubin_dir(interp, rules)
    assert where.path == (want.format(home="/home/u", pkg=spot) if want else None)
    assert (where.import_error or "").startswith(error or "")
    assert bool(where.import_error) == bool(error)


# -- the command line --------------------------------------------------------------------

def test_doctor_usage_errors(run_cli, tmp_path):
    assert run_cli("doctor", "--python", str(tmp_path / "nope")).returncode == 2
    assert run_cli("doctor", "--python", sys.executable, "--prefix", str(tmp_path)).returncode == 2
    result = run_cli("doctor", "--prefix", str(tmp_path))
    assert result.returncode == 2 and "not a conda prefix" in result.stderr


def test_doctor_without_flashinfer_exits_1(run_cli):
    result = run_cli("doctor", "--python", sys.executable, "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 1 and data["problems"][0]["code"] == "no-flashinfer"


# -- the truth table over real environments ----------------------------------------------

@dataclass
class Row:
    version: str
    cubin: bool
    ours: str
    state: str
    expect: tuple[bool, str]   # (starts offline, the step flashinfer reaches: "done", "import" or "headers")
    doctor_ok: bool = False
    codes: list = field(default_factory=list)
    probe: dict = field(default_factory=dict)
    snippet: dict | None = None
    live: dict = field(default_factory=dict)   # doctor --run: {"exit": code, "step": ..., "summary": ...}

    @property
    def truth(self) -> tuple[bool, str]:
        return bool(self.probe.get("ok")), str(self.probe.get("step"))

    @property
    def agrees(self) -> bool:
        snippet_ok = self.snippet is None or (self.snippet["ok"], self.snippet["step"]) == self.expect
        live = (self.live.get("exit") == 0, self.live.get("step"))
        return self.truth == self.expect == live and self.doctor_ok == self.expect[0] and snippet_ok


def outcome(report: dict | None, paths: dict[str, str]) -> str:
    """One cell: starts or fails (at which step, the error with this machine's paths replaced), connections."""
    if report is None:
        return "n/a"
    if report["ok"]:
        return f"starts ({len(report['connects'])} connects)"
    error = (report.get("error") or "").split("\n")[0]
    for path, name in paths.items():
        error = error.replace(path, name)
    error = error if len(error) <= 100 else error[:97] + "..."
    tried = f" ({len(report['connects'])} connects)" if report.get("connects") else ""
    return f"fails at {report.get('step')}: {error.replace('|', '/')}{tried}"


def live_cell(row: Row) -> str:
    live = row.live
    return f"exit {live.get('exit')}: " + ("starts" if live.get("exit") == 0 else f"fails at {live.get('step')}")


def markdown(rows: list[Row], paths: dict[str, str]) -> str:
    head = ("| flashinfer-python | flashinfer-cubin | our wheel | state | expected | doctor | problems found | "
            "doctor --run | flashinfer's JIT-spec header code | vLLM snippet | agree |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r.version} | {'yes' if r.cubin else 'no'} | {r.ours or 'no'} | {r.state} | "
             f"{'starts' if r.expect[0] else 'fails at ' + r.expect[1]} | "
             f"{'exit 0: offline' if r.doctor_ok else 'exit 1: not offline'} | {', '.join(r.codes) or '-'} | "
             f"{live_cell(r)} | {outcome(r.probe, paths)} | {outcome(r.snippet, paths)} | "
             f"{'yes' if r.agrees else '**NO**'} |"
             for r in rows]
    return head + "\n".join(lines) + "\n"


STARTS, FAILS_AT_IMPORT, FAILS_AT_HEADERS = (True, "done"), (False, "import"), (False, "headers")


class Table:
    """Runs doctor, doctor --run and the ground truth on the venv in its current state, one row at a time."""

    def __init__(self, fenv, shared: Path) -> None:
        self.fenv, self.shared, self.rows = fenv, shared, []
        self.site = fenv.site_packages()

    def judge(self, version: str, cubin: bool, ours: str, state: str, expect: tuple[bool, str],
              user: str | None = None) -> Row:
        home = self.shared / f"home{len(self.rows)}"
        home.mkdir()
        os.chmod(home, 0o777)
        env = {"HOME": str(home)}
        row = Row(version, cubin, ours, state, expect)
        doctor = run_doctor(self.fenv.python, env, user)
        data = json.loads(doctor.stdout)
        row.doctor_ok, row.codes = doctor.returncode == 0, [p["code"] for p in data["problems"]]
        assert doctor.returncode in (0, 1), doctor.stderr
        live = run_doctor(self.fenv.python, env, user, "--run")
        assert live.returncode in (0, 1), live.stderr
        report = json.loads(live.stdout)["live"]
        row.live = {"exit": live.returncode, "step": report["step"], "summary": report["summary"]}
        row.probe = self.fenv.run_header_code(fast_clock=True, env=env, user=user, cwd=self.shared)
        if version in AFFECTED:
            row.snippet = self.fenv.run_snippet(fast_clock=True, env=env, user=user, cwd=self.shared)
        self.rows.append(row)
        return row

    def fresh(self, version: str) -> None:
        """Only flashinfer-python==version: nothing of ours, nothing that a runtime left in flashinfer_cubin/."""
        self.fenv.remove(*PROJECTS)
        shutil.rmtree(self.site / "flashinfer_cubin", ignore_errors=True)
        self.fenv.use(version, cubin=False)

    def pip_install(self, *wheels: Path) -> None:
        self.fenv.pip("install", "-q", "--no-deps", *map(str, wheels))


def as_user(user: str | None, cmd: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *cmd] if user else cmd


def python_for(user: str | None, python: Path) -> Path:
    """The venv's interpreter as ``user``'s processes can start it.

    A venv links to its base interpreter; when that lies in a directory
    ``user`` cannot enter (pyenv under /root), a process of that user cannot
    exec it (setpriv itself can, which is how the ground truth runs).  Then a
    link in the venv's bin/ to the system Python of the same version runs the
    same environment (pyvenv.cfg, site-packages), as the ground truth's does.
    """
    probe = subprocess.run(as_user(user, ["sh", "-c", f'exec "{python}" -c ""']), capture_output=True)
    if not user or probe.returncode == 0:
        return python
    version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    system = shutil.which(f"python{version}", path="/usr/bin:/bin:/usr/local/bin")
    if system is None:
        pytest.skip(f"user {user} cannot start {python} and there is no system python{version}")
    link = python.parent / f"python{version}-as-{user}"
    if not link.exists():
        link.symlink_to(system)
    return link


def run_doctor(python: Path, env: dict, user: str | None, *extra: str) -> subprocess.CompletedProcess:
    cmd = as_user(user, [sys.executable, "-m", "repack", "doctor", "--python", str(python_for(user, python)), "--json",
                         *extra])
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "PYTHON"))}
    run_env.update(env)
    return subprocess.run(cmd, capture_output=True, text=True, env=run_env, cwd=REPO, timeout=120)


def set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode):
            os.chmod(path, (mode | stat.S_IWUSR) if writable else (mode & ~0o222))


def ours_for(version: str) -> str:
    """Our wheel of that version; for the fixed versions the last affected one, installed by mistake."""
    return version if version in AFFECTED else AFFECTED[-1]


def version_rows(t: Table, version: str, cubin_wheel, headers_wheel) -> None:
    ours = headers_wheel(ours_for(version))
    export = t.site / "flashinfer_cubin" / "cubins" / "flashinfer"
    t.fresh(version)
    t.judge(version, False, "", "as installed", FAILS_AT_HEADERS)
    t.pip_install(ours)
    # the bare flashinfer_cubin/ folder: find_spec finds it, reading __version__ fails inside `import flashinfer`
    t.judge(version, False, ours_for(version), "our wheel without flashinfer-cubin", FAILS_AT_IMPORT)
    t.fenv.remove("flashinfer-cubin-headers")
    shutil.rmtree(t.site / "flashinfer_cubin", ignore_errors=True)
    t.pip_install(cubin_wheel(version))
    if version == "0.6.8":
        read_only_row(t, version, False, "", "read-only, as an unprivileged user", FAILS_AT_HEADERS)
    t.judge(version, True, "", "as installed", FAILS_AT_HEADERS if version in AFFECTED else STARTS)
    shutil.rmtree(export, ignore_errors=True)  # only a runtime writes there: back to the installed state
    t.pip_install(ours)
    t.judge(version, True, ours_for(version), "as installed", STARTS)


def special_case(t: Table, version: str, cubin_wheel, headers_wheel) -> None:
    """The rows that start from a working install (flashinfer-cubin and our wheel): damage, then repair."""
    t.fresh(version)
    t.pip_install(cubin_wheel(version))
    t.pip_install(headers_wheel(version))  # the state version_rows ends in, judged there
    special_rows(t, version)


def read_only_row(t: Table, version: str, cubin: bool, ours: str, state: str, expect: tuple[bool, str]) -> None:
    package = t.site / "flashinfer_cubin"
    set_writable(package, False)
    try:
        t.judge(version, True, ours, state, expect, user=NOBODY)
    finally:
        set_writable(package, True)


def special_rows(t: Table, version: str) -> None:
    dest = t.site / "flashinfer_cubin" / "cubins" / "flashinfer" / "trtllm" / "batched_gemm" / "trtllmGen_bmm_export"
    header, marker = dest / "KernelParams.h", dest / ".artifact_hash"
    original = header.read_bytes()
    header.write_bytes(original + b"// tampered\n")
    t.judge(version, True, version, "one header tampered", FAILS_AT_HEADERS)
    header.write_bytes(original)
    t.judge(version, True, version, "header restored after that failed start", STARTS)
    for lock in dest.rglob("*.lock"):
        lock.unlink()
    read_only_row(t, version, True, version, "read-only, as an unprivileged user", STARTS)
    marker.write_bytes(marker.read_bytes() + b"\n")
    read_only_row(t, version, True, version, "marker with a newline; read-only, unprivileged user", FAILS_AT_HEADERS)
    t.judge(version, True, version, "marker with a newline; writable", STARTS)
    t.fenv.remove("flashinfer-cubin")
    t.judge(version, False, version, "flashinfer-cubin uninstalled after our wheel", FAILS_AT_IMPORT)


#: one test per version (each starts from flashinfer-python alone), so that xdist workers share them out;
#: 0.6.6's damage-and-repair rows are a test of their own (they took as long as the rest of 0.6.6)
TRUTH_TABLE_VERSIONS = os.environ.get("TRUTH_TABLE_VERSIONS",
                                      "0.6.5,0.6.6,0.6.6:special,0.6.7,0.6.7.post3,0.6.8").split(",")


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("case", TRUTH_TABLE_VERSIONS)
def test_truth_table(case, flashinfer_env, cubin_wheel, headers_wheel, shared_tmp, tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("the read-only rows run flashinfer as an unprivileged user: needs root and setpriv")
    t = Table(flashinfer_env, shared_tmp)
    version, _, part = case.partition(":")
    (special_case if part == "special" else version_rows)(t, version, cubin_wheel, headers_wheel)
    table = markdown(t.rows, {str(t.site): "<site-packages>"})
    (tmp_path / "truth_table.md").write_text(table)
    print("\n" + table)
    disagree = [(r.version, r.state, r.expect, r.truth, r.doctor_ok, r.live, r.codes, r.probe.get("error"),
                 r.probe.get("traceback", "")[-600:]) for r in t.rows if not r.agrees]
    assert not disagree, disagree
    assert any(r.doctor_ok for r in t.rows) and any(not r.doctor_ok for r in t.rows)


# -- files doctor reads are bounded -------------------------------------------------------------

def test_doctor_reads_no_fifo_and_no_endless_file(tmp_path):
    """A header that is a FIFO (open would block) or a link to /dev/zero (read would never end) is judged
    unreadable at once, never read without bound; the rest of the directory is still judged."""
    import signal

    from repack.environment.probe import cubin_dir_facts
    from tests.support import synthetic

    plan = synthetic.plan()
    root = tmp_path / "cubins"
    dest = root / plan.dest_dir
    dest.mkdir(parents=True)
    fifo, endless, good = (dest / h for h in plan.headers[:3])
    os.mkfifo(fifo)
    endless.symlink_to("/dev/zero")
    good.write_bytes(synthetic.header_bytes(plan.headers[2]))
    (root / plan.checksums_path).parent.mkdir(parents=True)
    os.mkfifo(root / plan.checksums_path)

    def hang(signum, frame):  # why: a regression must fail this test, not hang the suite
        raise TimeoutError("doctor blocked on a FIFO or an endless file")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        facts = cubin_dir_facts(root, plan)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    states = {p.rsplit("/", 1)[-1]: s for p, s in facts.files.items()}
    assert states[fifo.name].exists and not states[fifo.name].readable
    assert states[endless.name].exists and not states[endless.name].readable
    assert states[good.name].readable and states[good.name].sha256 == plan.header_sha256[good.name]
    assert facts.listed == {}
