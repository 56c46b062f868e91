"""Shared fixtures: two tiers, an isolated home, the wheels (synthetic or real), one FlashInfer venv, the CLI.

Fast tier (the default ``pytest``): a synthetic flashinfer-python and flashinfer-cubin made at test
time (``tests/support/synthetic.py``), served by a session index on 127.0.0.1 that is every CLI run's
default index; no real wheel, no network.  Real tier (``pytest -m real``): the real wheels from PyPI,
a venv with real flashinfer.  A test that asks for a real wheel without the ``real`` marker fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import envs, synthetic
from tests.support.envs import FlashinferEnv, real_wheel, trimmed_cubin_wheel
from tests.support.isolation import Isolation

AFFECTED = ("0.6.5", "0.6.6", "0.6.7")
SYNTHETIC = (synthetic.VERSION, synthetic.FIXED)
#: the default index of every ``cli()`` run: the session's synthetic index (set by ``synthetic_index``)
DEFAULT_INDEX: list[str] = []


# -- tiers -------------------------------------------------------------------------------------------

def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the tests in reverse order (with -p no:randomly), to expose order dependence")


def pytest_collection_finish(session):
    if session.config.getoption("--reverse"):  # after every reordering plugin and the deselection
        session.items.reverse()


def pytest_collection_modifyitems(config, items):
    """``network`` and ``slow`` tests, and those in a real FlashInfer venv, belong to the real tier.
    (This conftest hook runs before the marker selection of ``-m``.)"""
    for item in items:
        if (item.get_closest_marker("network") or item.get_closest_marker("slow")
                or "flashinfer_env" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)


#: module- and session-scoped fixtures whose kept value was made from a real wheel (by a real test)
_MADE_FROM_REAL: set = set()


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: two workers per core for the fast tier, whose tests mostly wait on servers and child
    processes (on 2 cores: 68 s with 3 workers, 64 s with 4, 92 s with 2); one per core where real
    flashinfer runs (each start imports CPU torch: more workers than cores gain nothing there)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # the user's choice: xdist's own hook reads it
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 * cores if config.getoption("markexpr", "") == "not real" else cores


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """Only tests marked ``real`` may fetch a real wheel, so the fast tier can never need one.
    (Set before any fixture of the test, module and session ones included, is made.)  A fixture
    that a real test made from a real wheel is kept for its scope without being made again: a
    fast test that uses it fails too, once its fixtures are set up."""
    real = envs.REAL_ALLOWED = item.get_closest_marker("real") is not None
    yield
    # _fixtureinfo is pytest's own record of the fixtures the test uses, its dependencies' included
    made = sorted(name for name, defs in item._fixtureinfo.name2fixturedefs.items() if defs[-1] in _MADE_FROM_REAL)
    if made and not real:
        raise envs.RealWheelInFastTier(f"fixture {', '.join(made)} was made from a real wheel (for a real test): "
                                       "mark the test @pytest.mark.real, or use tests.support.synthetic's version")


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    given = envs.REAL_GIVEN
    try:
        return (yield)
    finally:
        real_wheels_in_it = envs.REAL_GIVEN - given
        if real_wheels_in_it and fixturedef.scope != "function":  # a function fixture is made (and guarded) anew
            _MADE_FROM_REAL.add(fixturedef)


def pytest_fixture_post_finalizer(fixturedef, request):
    _MADE_FROM_REAL.discard(fixturedef)  # made again, it passes the guard again


def pytest_runtest_teardown(item, nextitem):
    envs.REAL_ALLOWED = False


# -- isolation ---------------------------------------------------------------------------------------

_ISOLATION: list[Isolation] = []


def pytest_configure(config):
    """Point HOME, XDG_* and FLASHINFER_WORKSPACE_BASE into a temporary home before anything runs
    (a session fixture would be too late for modules that read them at import)."""
    if not hasattr(config, "workerinput"):
        # xdist workers start under the temporary home: named here, the store stays the real one for them
        os.environ["FLASHINFER_REPACK_TEST_STORE"] = str(envs.STORE)
        _ISOLATION.append(Isolation(envs.STORE, envs.DEFAULT_STORE).start())
    envs.REAL_ALLOWED = False  # collection must not download either


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything new appeared under the real home (the wheel store excepted)."""
    if not _ISOLATION:
        return
    written = _ISOLATION.pop().stop()
    if written:
        where: dict[str, int] = {}
        for path in written:
            top = "/".join(path.split("/")[:2])
            where[top] = where.get(top, 0) + 1
        shown = "\n  ".join(f"~/{top}: {n} file(s)" for top, n in sorted(where.items()))
        session.config.get_terminal_writer().line(
            f"FAILED: {len(written)} file(s) appeared under the real home during the run (another process "
            f"on this machine? see FLASHINFER_REPACK_TEST_HOME_IGNORE):\n  {shown}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- wheels ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def synthetic_wheels(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(project, version) -> the synthetic wheel, made once per session."""
    out = tmp_path_factory.mktemp("synthetic")
    return {("flashinfer-python", v): synthetic.python_wheel(out, v) for v in SYNTHETIC} | \
           {("flashinfer-cubin", synthetic.VERSION): synthetic.cubin_wheel(out)}


def per_version(project: str, make):
    """``make(version)`` once per version, kept for the session; a real version is refused to a fast-tier
    test on EVERY call, before the memo is looked at (a real test may have made it earlier)."""
    made: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in SYNTHETIC:
            envs.require_real(f"{project}=={version}")
        if version not in made:
            made[version] = make(version)
        return made[version]

    return get


def _wheel(project: str, synthetic_wheels, real=real_wheel):
    def get(version: str) -> Path:
        if version in SYNTHETIC:
            return synthetic_wheels[(project, version)]
        envs.require_real(f"{project}=={version}")
        return real(project, version)
    return get


@pytest.fixture(scope="session")
def cubin_wheel(synthetic_wheels):
    """``cubin_wheel(version)``: the synthetic wheel for a synthetic version, else the real
    flashinfer-cubin from PyPI without its kernels (``envs.trimmed_cubin_wheel``: every other member
    byte for byte, 10 MB instead of 250-300 MB)."""
    return _wheel("flashinfer-cubin", synthetic_wheels, lambda _, version: trimmed_cubin_wheel(version))


@pytest.fixture(scope="session")
def python_wheel(synthetic_wheels):
    """``python_wheel(version)``: the synthetic wheel for a synthetic version, else the real one from PyPI."""
    return _wheel("flashinfer-python", synthetic_wheels)


def plan_of(version: str):
    """The plan of a synthetic or shipped version (with header hashes)."""
    from repack.rules.plan import shipped_plan

    return synthetic.plan(version) if version in SYNTHETIC else shipped_plan(version)


@pytest.fixture(scope="session", autouse=True)
def synthetic_index(synthetic_wheels):
    """A simple index on 127.0.0.1 with the synthetic flashinfer-python and flashinfer-cubin, for the
    whole session; it is the default index of ``cli()``, so no test reaches PyPI by accident."""
    from tests.support.servers import FileServer

    with FileServer() as server:
        for (project, _), path in sorted(synthetic_wheels.items()):
            server.serve_project(project, [path])
        DEFAULT_INDEX.append(server.index_url)
        try:
            yield server
        finally:
            DEFAULT_INDEX.remove(server.index_url)


@pytest.fixture
def plan_server(synthetic_index):
    """The session's synthetic index with its log cleared: building a version that has no shipped
    plan reads flashinfer-python's code from it, and tests that count requests add these."""
    synthetic_index.log.clear()
    return synthetic_index


@pytest.fixture(scope="session")
def flashinfer_env() -> FlashinferEnv:
    """One venv with the local CPU torch and flashinfer's light dependencies, shared by the real-tier
    tests of a session (of an xdist worker), versions swapped with pip: a hard-linked copy of the base
    prepared once in the store (``envs.prepared_base``, checked against its manifest first).

    Tests that install anything else into it must restore it (``FlashinferEnv.restoring``).
    It lies in a world-readable temporary directory (pytest's are private to root, and so is the
    store in root's home) so that tests can run flashinfer as an unprivileged user.
    """
    base = envs.prepared_base()
    root = Path(tempfile.mkdtemp(prefix="flashinfer-env-"))
    os.chmod(root, 0o755)
    try:
        yield FlashinferEnv.from_base(base, root / "venv")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unprivileged_user() -> str:
    """The uid of 'nobody' (65534) for ``setpriv``; skips where the tests cannot switch users."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run flashinfer as an unprivileged user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux), to run flashinfer as an unprivileged user")
    return "65534"


@pytest.fixture
def shared_tmp():
    """A temporary directory every user may write to (for runs as an unprivileged user)."""
    path = Path(tempfile.mkdtemp(prefix="flashinfer-repack-"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def headers_wheel(tmp_path_factory, cubin_wheel):
    """``headers_wheel(version)``: our wheel, built by the CLI from the (synthetic or real) local
    flashinfer-cubin wheel."""
    def build(version: str) -> Path:
        out = tmp_path_factory.mktemp(f"headers-{version}")
        result = cli("build", version, "-o", str(out), "--from", str(cubin_wheel(version)), "--no-cache", "--json")
        assert result.returncode == 0, result.stderr
        return Path(json.loads(result.stdout)["artifacts"][0]["path"])

    return per_version("flashinfer-cubin", build)


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m repack ARGS`` as a user would.

    No FlashInfer variable and no index setting of the caller leaks in; the default index is the
    session's synthetic index (``env={"PIP_INDEX_URL": ...}`` or ``--index-url`` choose another).
    """
    run_env = {k: v for k, v in os.environ.items()  # COLUMNS/LINES: xdist's workers set them
               if not k.startswith(("FLASHINFER_", "PIP_INDEX_URL")) and k not in ("COLUMNS", "LINES")}
    if DEFAULT_INDEX:
        run_env["PIP_INDEX_URL"] = DEFAULT_INDEX[-1]
    for key, value in (env or {}).items():  # None removes a variable
        if value is None:
            run_env.pop(key, None)
        else:
            run_env[key] = value
    return subprocess.run([sys.executable, "-m", "repack", *args], capture_output=True, text=True,
                          env=run_env, cwd=cwd, timeout=timeout)


@pytest.fixture
def run_cli():
    return cli


# -- what the local servers serve, made at test time ------------------------------------------------

@pytest.fixture(scope="session")
def artifactory_tree(tmp_path_factory, cubin_wheel):
    """``artifactory_tree(version)``: a directory in NVIDIA's artifactory layout holding
    ``<artifact>/checksums.txt`` and the 17 headers, extracted from that version's flashinfer-cubin wheel."""
    from tests.support.servers import artifact_members, extract_tree

    def make(version: str) -> Path:
        paths = artifact_members(plan_of(version))
        return extract_tree(cubin_wheel(version), paths, tmp_path_factory.mktemp(f"artifactory-{version}"))

    return per_version("flashinfer-cubin", make)


@pytest.fixture(scope="session")
def small_cubin_wheel(tmp_path_factory, cubin_wheel):
    """``small_cubin_wheel(version)``: a small zip named like that version's flashinfer-cubin wheel,
    holding exactly its 19 members under the BMM artifact (checksums.txt, flashinferMetaInfo.h, 17 headers)."""
    from repack.rules.plan import ARTIFACT_EXTRAS
    from tests.support.servers import CUBIN_ROOT, artifact_members, copy_members

    def make(version: str) -> Path:
        source = cubin_wheel(version)
        names = [CUBIN_ROOT + p for p in artifact_members(plan_of(version), ARTIFACT_EXTRAS[1:])]
        return copy_members(source, names, tmp_path_factory.mktemp(f"small-{version}") / source.name)

    return per_version("flashinfer-cubin", make)


@pytest.fixture
def file_server():
    """A started :class:`tests.support.servers.FileServer` on 127.0.0.1, stopped after the test."""
    from tests.support.servers import FileServer

    with FileServer() as server:
        yield server
