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
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement

STORE = Path(os.environ.get("FLASHINFER_REPACK_TEST_STORE",
                            Path.home() / ".cache" / "flashinfer-repack-tests"))
SNIPPET = Path(__file__).with_name("vllm_snippet.py")
TORCH = "torch==2.13.0"
GPU_ONLY = {"nvidia-cutlass-dsl", "nvidia-cudnn-frontend", "torch", "cuda-tile"}
PROJECTS = ("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers")


def real_wheel(project: str, version: str) -> Path:
    """The real wheel of ``project==version`` from PyPI, downloaded once."""
    dest = STORE / "wheels"
    prefix = f"{project.replace('-', '_')}-{version}-"
    found = sorted(dest.glob(prefix + "*.whl")) if dest.is_dir() else []
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--index-url", "https://pypi.org/simple/", "-d", str(dest), f"{project}=={version}"],
                       check=True)
        found = sorted(dest.glob(prefix + "*.whl"))
    return found[0]


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


class FlashinferEnv:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.python = self.root / "bin" / "python"

    def create(self) -> "FlashinferEnv":
        if not (self.root / ".ready").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.root)], check=True)
            self.pip("install", "-q", TORCH)
            (self.root / ".ready").write_text("ok")
        return self

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-m", "pip", "--disable-pip-version-check", *args],
                              check=True, capture_output=True, text=True)

    def site_packages(self) -> Path:
        out = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True)
        return Path(out.stdout.strip())

    def installed(self) -> dict[str, str]:
        out = self.pip("list", "--format=json")
        return {d["name"].lower(): d["version"] for d in json.loads(out.stdout)}

    def use(self, version: str, *, cubin: bool = True, extra: tuple[Path, ...] = ()) -> None:
        """Exactly flashinfer-python==version (+ flashinfer-cubin) (+ extra wheels), nothing else of ours."""
        self.remove(*PROJECTS)
        fp = real_wheel("flashinfer-python", version)
        self.pip("install", "-q", *light_requirements(fp))
        wheels = [fp] + ([real_wheel("flashinfer-cubin", version)] if cubin else []) + list(extra)
        self.pip("install", "-q", "--no-deps", *map(str, wheels))

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
