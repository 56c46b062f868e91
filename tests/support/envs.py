"""Real FlashInfer environments for acceptance tests.

* :func:`real_wheel` downloads a wheel from PyPI once into a persistent store
  (``$FLASHINFER_REPACK_TEST_STORE``, default ``~/.cache/flashinfer-repack-tests``),
  with pip, the way a user would get it.
* :class:`FlashinferEnv` is one venv with the local CPU torch and flashinfer's
  light dependencies, into which a test swaps flashinfer-python /
  flashinfer-cubin / our wheel of any version with pip (``--no-deps``), and
  runs vLLM's Dockerfile snippet (``vllm_snippet.py``) or the JIT-spec generators under the
  library's live check (the same code as ``doctor --run``), with ``FLASHINFER_CUBINS_REPOSITORY``
  pointing at a closed port.

flashinfer imports without nvidia-cutlass-dsl and nvidia-cudnn-frontend (GPU
only), so those and torch (installed from the local CPU build) are skipped
from its Requires-Dist.

The venv's base (torch and flashinfer's light dependencies, about 2 minutes and a PyPI round trip to
make) is prepared once into the store (:func:`prepared_base`, a :mod:`tests.support.stored` tree:
keyed by everything that goes into it, checked against a manifest of every file before each use);
a session gets a hard-linked copy of it (:meth:`FlashinferEnv.from_base`).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from email.parser import HeaderParser
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from repack.fetch.digest import file_sha256
from tests.support import stored

DEFAULT_STORE = Path.home() / ".cache" / "flashinfer-repack-tests"
STORE = Path(os.environ.get("FLASHINFER_REPACK_TEST_STORE", DEFAULT_STORE))
SNIPPET = Path(__file__).with_name("vllm_snippet.py")
TORCH = "torch==2.13.0"
GPU_ONLY = {"nvidia-cutlass-dsl", "nvidia-cudnn-frontend", "torch", "cuda-tile"}
PYPI = "https://pypi.org/simple/"
PROJECTS = ("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers")
#: the flashinfer-python versions whose light requirements the prepared base holds (all the real tier uses)
BASE_VERSIONS = ("0.6.5", "0.6.6", "0.6.7", "0.6.7.post3", "0.6.8")
#: set per test by conftest: only tests marked ``real`` may fetch a real wheel
REAL_ALLOWED = True
#: how many times a real wheel was given out (conftest tells from it which fixtures were made from one)
REAL_GIVEN = 0


class RealWheelInFastTier(RuntimeError):
    """A test without the ``real`` marker asked for a real flashinfer wheel."""


def require_real(what: str) -> None:
    """Refuse a real wheel (or anything made from one) to a test without the ``real`` marker.
    Every accessor calls it first, before it looks in the store or in a memo: whether the store
    is warm must not decide whether the fast tier passes."""
    if not REAL_ALLOWED:
        raise RealWheelInFastTier(f"{what} is a real wheel: mark the test "
                                  "@pytest.mark.real, or use tests.support.synthetic's version")
    global REAL_GIVEN
    REAL_GIVEN += 1


def real_wheel(project: str, version: str) -> Path:
    """The real wheel of ``project==version`` from PyPI, downloaded once."""
    require_real(f"{project}=={version}")
    dest = STORE / "wheels"
    prefix = f"{project.replace('-', '_')}-{version}-"
    found = sorted(dest.glob(prefix + "*.whl")) if dest.is_dir() else []
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        # into a directory of its own, then renamed: a parallel worker never sees a half-written wheel
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--index-url", "https://pypi.org/simple/", "-d", tmp, f"{project}=={version}"],
                           check=True)
            for wheel in Path(tmp).glob(prefix + "*.whl"):
                os.replace(wheel, dest / wheel.name)
        found = sorted(dest.glob(prefix + "*.whl"))
    return found[0]


def trimmed_cubin_wheel(version: str) -> Path:
    """flashinfer-cubin==version without its kernels, kept in the store: every member of the real
    wheel except the ``*.cubin`` files (the BMM artifact's checksums.txt, flashinferMetaInfo.h and
    17 headers included), the real bytes, a RECORD that lists exactly them.  About 1 % of the real
    wheel: read by HTTP ranges from PyPI, or from the full wheel when the store already holds it.

    Enough for every test that installs flashinfer-cubin (flashinfer reads no kernel at import or
    when it checks the headers) or builds from it; flashinfer itself then checks each header it
    uses against checksums.txt, and checksums.txt against the sha256 its code pins.
    """
    require_real(f"flashinfer-cubin=={version}")  # before the store: a warm store must not hide the test
    dest = STORE / "trimmed" / f"flashinfer_cubin-{version}-py3-none-any.whl"
    if dest.is_file():
        return dest
    members = _cubin_members_without_kernels(version)
    info = f"flashinfer_cubin-{version}.dist-info/"
    members.pop(info + "RECORD")
    record = "".join(f"{n},sha256={_b64(d)},{len(d)}\n" for n, d in members.items()) + f"{info}RECORD,,\n"
    members[info + "RECORD"] = record.encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + f".{os.getpid()}.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    os.replace(partial, dest)  # another session may be making the same file: last one wins, same content
    return dest


def _cubin_members_without_kernels(version: str) -> dict[str, bytes]:
    from repack.fetch.cache import Cache
    from repack.fetch.index import find_wheel, project_files
    from repack.fetch.sources import read_local_wheel, read_remote_wheel
    from repack.fetch.transport import Transport

    keep = lambda name: not name.endswith(".cubin")  # noqa: E731
    full = STORE / "wheels" / f"flashinfer_cubin-{version}-py3-none-any.whl"
    if full.is_file():
        members = read_local_wheel(full, keep)
    else:
        transport = Transport(timeout=60, retries=3)
        found = find_wheel(project_files(transport, PYPI, "flashinfer-cubin"), "flashinfer-cubin", version, PYPI)
        members = read_remote_wheel(transport, Cache(None), found, keep)
    return dict(sorted(members.items()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def light_requirements(wheel: Path) -> list[str]:
    """flashinfer-python's Requires-Dist without extras and GPU-only packages."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(zf.read(meta).decode())
    out = []
    for line in headers.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None and req.name not in GPU_ONLY:
            out.append(str(req))
    return out


# -- the base venv and the dependency wheels, made once and kept in the store -----------------------

def base_recipe() -> dict:
    """Everything that decides the base venv before pip resolves: the interpreter, torch, flashinfer's
    light requirements (read from the real flashinfer-python wheels of ``BASE_VERSIONS``) and the code
    that makes it.  (What pip then picks is recorded in the manifest, with each file's sha256.)"""
    requirements = {r for v in BASE_VERSIONS for r in light_requirements(real_wheel("flashinfer-python", v))}
    code = "".join(inspect.getsource(f) for f in (base_recipe, _build_base, _sources))
    return {"python": sys.version, "interpreter": os.path.realpath(sys.executable), "torch": TORCH,
            "requirements": sorted(requirements), "code": hashlib.sha256(code.encode()).hexdigest()}


def prepared_base() -> Path:
    """The base venv (CPU torch, flashinfer's light dependencies) in the store, made once
    (:func:`tests.support.stored.stored_tree`: checked against its manifest before every use)."""
    recipe = base_recipe()
    return stored.stored_tree(STORE / "venvs", recipe, lambda partial: _build_base(partial, recipe))


def _build_base(partial: Path, recipe: dict) -> dict:
    """torch first (what it brings is a clean venv with torch, see :meth:`FlashinferEnv.torch_only`), then the rest."""
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, requirements in enumerate(([TORCH], recipe["requirements"])):
            report = Path(tmp) / f"report{i}.json"
            subprocess.run([str(partial / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install",
                            "-q", "--report", str(report), *requirements], check=True)
            steps.append(_sources(json.loads(report.read_text())))
    return {"sources": steps[0] + steps[1], "light_only": sorted(d["name"] for d in steps[1])}


def _sources(report: dict) -> list[dict]:
    """Each installed distribution with the sha256 of the file it came from (pip's report; computed
    here for a local file, which pip's report has no digest for)."""
    out = []
    for item in report["install"]:
        url = item["download_info"]["url"]
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        local = stored.local_path(url)
        if local:
            digest = file_sha256(local)
        if not digest:
            raise RuntimeError(f"pip installed {url} into the base venv without a sha256 to record")
        out.append({"name": item["metadata"]["name"], "version": item["metadata"]["version"],
                    "url": url, "sha256": digest})
    return sorted(out, key=lambda d: d["name"].lower())


def dependency_wheels() -> list[Path]:
    """The wheels of flashinfer's light requirements (``base_recipe``'s, resolved by pip for this
    interpreter, transitive ones included), downloaded once from PyPI into the store: what a local
    mirror serves where a test needs flashinfer-python's real dependencies but not PyPI."""
    recipe = {key: value for key, value in base_recipe().items() if key in ("python", "requirements")}

    def download(partial: Path) -> dict:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--index-url", PYPI,
                        "-d", str(partial), *recipe["requirements"]], check=True,
                       env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""})
        return {}

    return sorted(stored.stored_tree(STORE / "deps", recipe, download).glob("*.whl"))


class FlashinferEnv:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.python = self.root / "bin" / "python"
        self._site: Path | None = None

    def create(self) -> FlashinferEnv:
        if not (self.root / ".ready").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.root)], check=True)
            self.pip("install", "-q", TORCH)
            (self.root / ".ready").write_text("ok")
        return self

    @classmethod
    def from_base(cls, base: Path, root: Path) -> FlashinferEnv:
        """A venv at root made of hard links to the prepared base (seconds instead of a minute).  pip
        in it only removes links and writes new files, so the base is not changed through it; a test
        that wrote into a linked file in place would be seen by the next :func:`prepared_base` check."""
        shutil.copytree(base, root, symlinks=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns(stored.MANIFEST))
        return cls(root)

    @classmethod
    def torch_only(cls, root: Path) -> FlashinferEnv:
        """A venv with only the local CPU torch and what it requires, as ``pip install torch`` makes it in
        a new venv: a copy of the prepared base without what flashinfer's light requirements added."""
        base = prepared_base()
        light_only = stored.manifest_of(base)["light_only"]
        env = cls.from_base(base, root)
        env.pip("uninstall", "-q", "-y", *light_only)
        left = {canonicalize_name(n) for n in env.installed()} & {canonicalize_name(n) for n in light_only}
        assert not left, f"still installed after removing flashinfer's light dependencies: {sorted(left)}"
        return env

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-m", "pip", "--disable-pip-version-check", *args],
                              check=True, capture_output=True, text=True)

    def site_packages(self) -> Path:
        if self._site is None:  # asked by every use() and restore: one interpreter start, not one each
            out = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True)
            self._site = Path(out.stdout.strip())
        return self._site

    def installed(self) -> dict[str, str]:
        """name (lower case, as ``pip list`` shows it) -> version of each distribution in the venv: read
        from the metadata in site-packages, as ``pip list`` reads it, without starting pip."""
        found = distributions(path=[str(self.site_packages())])
        return {d.metadata["Name"].lower(): d.version for d in found}

    def unsatisfied(self, requirements: list[str]) -> list[str]:
        """Those of ``requirements`` that the venv's distributions do not meet."""
        have = {canonicalize_name(name): version for name, version in self.installed().items()}
        out = []
        for line in requirements:
            req = Requirement(line)
            version = have.get(canonicalize_name(req.name))
            if version is None or not req.specifier.contains(version, prereleases=True):
                out.append(line)
        return out

    def use(self, version: str, *, cubin: bool = True, extra: tuple[Path, ...] = ()) -> None:
        """Exactly flashinfer-python==version (+ flashinfer-cubin) (+ extra wheels), nothing else of ours,
        and no GPU-only package, whatever an earlier test left (with them, flashinfer 0.6.8's import
        asks CPU torch for a GPU)."""
        self.remove(*PROJECTS, *sorted(GPU_ONLY - {"torch"}))
        # what a runtime wrote under flashinfer_cubin/ (headers, locks, 0.6.7.post1+'s symlink) outlives
        # pip uninstall; left there, the next install or start fails with FileExistsError
        shutil.rmtree(self.site_packages() / "flashinfer_cubin", ignore_errors=True)
        fp = real_wheel("flashinfer-python", version)
        missing = self.unsatisfied(light_requirements(fp))  # none in a copy of the prepared base: no pip start
        if missing:
            self.pip("install", "-q", *missing)
        wheels = [fp] + ([trimmed_cubin_wheel(version)] if cubin else []) + list(extra)
        self.pip("install", "-q", "--no-deps", *map(str, wheels))

    @contextlib.contextmanager
    def restoring(self):
        """Put the venv's distributions back as they were, whatever the block installed or replaced:
        the venv is shared, and a leftover (e.g. the GPU-only nvidia-cutlass-dsl that a resolved
        install brings) changes what later tests see (flashinfer 0.6.8's import then needs a GPU)."""
        before = self.installed()
        try:
            yield self
        finally:
            after = self.installed()
            extra = sorted(set(after) - set(before))
            if extra:
                self.pip("uninstall", "-q", "-y", *extra)
            changed = [f"{name}=={version}" for name, version in sorted(before.items()) if after.get(name) != version]
            if changed:
                self.pip("install", "-q", "--no-deps", *changed)

    def remove(self, *projects: str) -> None:
        present = [p for p in projects if p in self.installed()]
        if present:
            self.pip("uninstall", "-q", "-y", *present)

    def run_snippet(self, *, fast_clock: bool = False, env: dict | None = None, user: str | None = None,
                    cwd: Path | None = None, timeout: float = 300, script: Path | None = SNIPPET,
                    network: bool = False) -> dict:
        """Run vLLM's snippet (``script=None``: the JIT-spec generators instead) under the library's live
        check (:func:`repack.environment.run.live_check`: connections refused and recorded unless
        ``network``, writes recorded), with the workspace the test's own environment gives (its HOME);
        return its JSON report (ok, step, error, seconds, connects, ...)."""
        from repack.environment.run import BMM_CALLERS, live_check

        run_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "PYTHON"))}
        run_env.update({"FLASHINFER_CUBINS_REPOSITORY": f"http://127.0.0.1:{closed_port()}/"})
        run_env.update(env or {})
        wrap = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] if user else []
        result = live_check(str(self.python), run_env, calls=BMM_CALLERS, script=script, cwd=cwd or self.root,
                            wrap=wrap, timeout=timeout, real_clock=not fast_clock, allow_network=network,
                            site_packages=str(self.site_packages()), scratch_workspace=False)
        return result.to_json()

    def run_header_code(self, **kwargs) -> dict:
        """flashinfer's own JIT-spec generators (both BMM header callers), watched like the snippet."""
        return self.run_snippet(script=None, **kwargs)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (instant, no space), or a copy where the store and the venv lie on two file systems
    (a tmpfs /tmp, a home on another volume)."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)
