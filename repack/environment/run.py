"""The live check: run an environment's own flashinfer start-up code for headers, offline, and report.

doctor's verdict is a prediction from reading flashinfer's code; this is the measurement.  The
target interpreter runs :mod:`repack.environment.live_probe` (by path, stdlib only) in a child
process with

* every name lookup and socket connection refused and recorded (an audit hook), so that the run is
  the air-gapped start whatever the machine's network;
* ``time.sleep`` cut short (flashinfer's retry backoff), the number of sleeps and seconds asked kept;
* a scratch ``FLASHINFER_WORKSPACE_BASE`` (its JIT sources and logs land there, not in the home), with
  ``FLASHINFER_CUBIN_DIR`` pinned to where the environment would look without it, so the verdict is the
  environment's own; every other write recorded and sorted by where it landed (site-packages is reported);
* a deadline, inside the child (the step it reached is still reported) and outside it (a hard kill).

Which code runs (:func:`code_paths`): for versions that download the BMM headers (0.6.5-0.6.7) both
JIT-spec callers, ``gen_moe_utils_module`` and ``gen_trtllm_gen_fused_moe_sm100_module``; for every
other version those and the TRT-LLM GEMM generators, the code paths that read or link the BMM/GEMM
export headers.  A generator a version lacks is listed as absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repack.environment.probe import Environment
from repack.errors import LiveCheckError
from repack.fs import NotRegularFileError, read_regular

PROBE = Path(__file__).with_name("live_probe.py")
BMM_CALLERS = ("flashinfer.jit.moe_utils:gen_moe_utils_module",
               "flashinfer.jit.fused_moe:gen_trtllm_gen_fused_moe_sm100_module")
GEMM_CALLERS = ("flashinfer.jit.gemm:gen_trtllm_gen_gemm_module",
                "flashinfer.jit.gemm:gen_trtllm_low_latency_gemm_module")
DEFAULT_TIMEOUT = 300.0
#: the child's grace beyond its own deadline to write its report before it is killed
GRACE = 15.0


@dataclass(frozen=True)
class Write:
    path: str
    event: str
    where: str  # "scratch", "site-packages", "cubin dir", "elsewhere"


@dataclass(frozen=True)
class LiveResult:
    """What flashinfer did when it started, watched."""

    ok: bool
    step: str                          # where it stopped: "import", "headers", "done"
    error: str | None
    version: str | None                # flashinfer.__version__ as imported
    cubin_dir: str
    calls: tuple[str, ...]             # code paths that ran
    absent: tuple[str, ...]            # code paths this version does not have
    connects: tuple[str, ...]
    lookups: tuple[str, ...]
    requests: tuple[str, ...]          # URLs asked for (every attempt)
    writes: tuple[Write, ...]
    sleeps: int
    slept_seconds: float
    seconds: float
    snippet_seconds: float
    traceback: str = ""
    returncode: int | None = None
    stderr: str = ""
    timed_out: bool = False

    @property
    def imported(self) -> bool:
        return self.step != "import" and self.step != "start"

    @property
    def downloaded_files(self) -> list[str]:
        """The distinct file names asked for, in order."""
        return list(dict.fromkeys(url.rstrip("/").rsplit("/", 1)[-1] for url in self.requests))

    def writes_in(self, where: str) -> list[Write]:
        return [w for w in self.writes if w.where == where]

    def summary(self) -> str:
        """One line: started offline / tried N downloads of which files / failed at which step."""
        tried = ""
        if self.requests or self.connects:
            files = self.downloaded_files
            shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
            tried = (f"tried {len(self.requests)} download(s)" + (f" of {shown}" if files else "")
                     + f" ({len(self.connects)} connection attempt(s) refused)")
        if self.ok:
            return "started offline: " + (tried or "no download, no connection attempt")
        if self.timed_out:
            return f"did not finish: {self.error}" + (f"; {tried}" if tried else "")
        if not self.imported:
            return f"cannot import flashinfer: {self.error}"
        return (f"{tried}; then " if tried else "") + f"failed at the header step: {self.error}"

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "writes"}
        data.update(writes=[w.__dict__ for w in self.writes], summary=self.summary(), imported=self.imported,
                    downloaded_files=self.downloaded_files)
        for key in ("calls", "absent", "connects", "lookups", "requests"):
            data[key] = list(data[key])
        return data


def code_paths(env: Environment | None) -> tuple[str, ...]:
    """The generators the live check runs for that environment's flashinfer (see the module docstring)."""
    if env is not None and env.rules is not None and env.rules.mode == "download":
        return BMM_CALLERS
    return BMM_CALLERS + GEMM_CALLERS


def child_environment(env_vars: Mapping[str, str], scratch: Path, cubin_dir: str | None) -> dict[str, str]:
    """The child's environment: the target's, with a scratch workspace and no byte-code writes.

    ``cubin_dir`` is where the environment would look with its own workspace; it is pinned only when
    the caller resolved it from the workspace default (so a scratch workspace does not move it).
    """
    out = dict(env_vars)
    out["FLASHINFER_WORKSPACE_BASE"] = str(scratch)
    out["PYTHONDONTWRITEBYTECODE"] = "1"  # .pyc files are Python's writes, not flashinfer's
    if cubin_dir and "FLASHINFER_CUBIN_DIR" not in out:
        out["FLASHINFER_CUBIN_DIR"] = cubin_dir
    return out


def live_check(python: str, env_vars: Mapping[str, str], *, calls: Sequence[str] = BMM_CALLERS,
               script: Path | None = None, site_packages: str | None = None, cubin_dir: str | None = None,
               timeout: float = DEFAULT_TIMEOUT, cwd: Path | None = None, wrap: Sequence[str] = (),
               real_clock: bool = False, allow_network: bool = False, scratch_workspace: bool = True) -> LiveResult:
    """Run flashinfer's header code (``calls``, or ``script``) with ``python`` and watch it.

    ``wrap`` prefixes the command (e.g. to run it as another user); ``cubin_dir`` see
    :func:`child_environment`; ``real_clock``/``allow_network`` are for benchmarks only;
    ``scratch_workspace=False`` keeps ``env_vars``' own workspace (a test whose HOME is its own).
    """
    with tempfile.TemporaryDirectory(prefix="flashinfer-live-") as tmp:
        scratch = Path(tmp) / "workspace"
        scratch.mkdir()
        if wrap:  # a child running as another user writes its report and workspace here; sticky, like /tmp
            os.chmod(tmp, 0o1777)
            os.chmod(scratch, 0o1777)
        report = Path(tmp) / "report.json"
        cmd = [*wrap, python, "-B", str(PROBE), "--report", str(report), "--deadline", str(timeout)]
        cmd += [a for c in ([] if script else calls) for a in ("--call", c)]
        cmd += ["--script", str(script)] if script else []
        cmd += ["--real-clock"] * real_clock + ["--allow-network"] * allow_network
        child_env = child_environment(env_vars, scratch, cubin_dir)
        if not scratch_workspace:
            child_env.pop("FLASHINFER_WORKSPACE_BASE")
            child_env.update({k: v for k, v in env_vars.items() if k == "FLASHINFER_WORKSPACE_BASE"})
        proc, timed_out = _run(cmd, child_env, cwd or Path(tmp), timeout + GRACE)
        data = _read_report(report, proc, timed_out)
        return _result(data, proc, timed_out, scratch, site_packages)


def _run(cmd: list[str], env: dict[str, Any], cwd: Path,
         timeout: float) -> tuple[subprocess.CompletedProcess[str], bool]:
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout), False
    except subprocess.TimeoutExpired as exc:  # the child ignored its own deadline (stuck in C code)
        out = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return subprocess.CompletedProcess(cmd, -9, "", out), True
    except OSError as exc:
        raise LiveCheckError(f"cannot start {cmd[0]}: {exc.strerror}",
                             "give the environment's own Python interpreter") from exc


def _read_report(report: Path, proc: subprocess.CompletedProcess[str], timed_out: bool) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(report, 64 << 20))
    except (OSError, ValueError, NotRegularFileError):
        data = None
    if isinstance(data, dict):  # the child writes an object; anything else is no report
        return data
    why = "was killed after its deadline" if timed_out else f"exited {proc.returncode} without a report"
    last = (proc.stderr or "").strip().splitlines()[-1:] or [""]
    return {"ok": False, "step": "start", "error": f"the live check's child {why}: {last[0][:300]}".rstrip(": ")}


def _result(data: dict[str, Any], proc: subprocess.CompletedProcess[str], timed_out: bool, scratch: Path,
            site_packages: str | None) -> LiveResult:
    timed_out = timed_out or str(data.get("error") or "").startswith("Deadline")
    return LiveResult(
        ok=bool(data.get("ok")) and not timed_out, step=str(data.get("step", "start")), error=data.get("error"),
        version=data.get("version"), cubin_dir=str(data.get("cubin_dir") or ""),
        calls=tuple(data.get("calls", ())), absent=tuple(data.get("absent", ())),
        connects=tuple(data.get("connects", ())), lookups=tuple(data.get("lookups", ())),
        requests=tuple(data.get("requests", ())),
        writes=classify_writes(data.get("writes", ()), scratch, site_packages, str(data.get("cubin_dir") or "")),
        sleeps=int(data.get("sleeps", 0)), slept_seconds=float(data.get("slept_seconds", 0.0)),
        seconds=float(data.get("seconds", 0.0)), snippet_seconds=float(data.get("snippet_seconds", 0.0)),
        traceback=str(data.get("traceback", "")), returncode=proc.returncode, stderr=(proc.stderr or "")[-4000:],
        timed_out=timed_out)


def classify_writes(writes: list[dict[str, Any]], scratch: Path, site_packages: str | None,
                    cubin_dir: str) -> tuple[Write, ...]:
    """Each write once (first event), sorted by where it landed; scratch paths are made relative."""
    roots = [("scratch", os.path.realpath(scratch)), ("cubin dir", cubin_dir and os.path.realpath(cubin_dir)),
             ("site-packages", site_packages and os.path.realpath(site_packages))]
    seen: dict[str, Write] = {}
    for entry in writes:
        path = str(entry.get("path", ""))
        real = os.path.realpath(path)
        where = next((name for name, root in roots if root and (real == root or real.startswith(root + os.sep))),
                     "elsewhere")
        seen.setdefault(path, Write(path, str(entry.get("event", "")), where))
    return tuple(seen.values())


def live_check_environment(env: Environment, env_vars: Mapping[str, str], *,
                           timeout: float = DEFAULT_TIMEOUT) -> LiveResult:
    """The live check of the environment doctor just judged (its interpreter, its code paths)."""
    python = env.interpreter.python
    if not python:
        raise LiveCheckError(f"{env.target} has no Python interpreter to run flashinfer with",
                             "point the check at the environment's interpreter")
    pinned = env.cubin_dir.path if env.cubin_dir and env.cubin_dir.source.startswith("default") else None
    return live_check(python, env_vars, calls=code_paths(env), site_packages=env.interpreter.site_packages,
                      cubin_dir=pinned, timeout=timeout)
