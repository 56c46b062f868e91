"""Run an environment's own flashinfer start-up code for the export headers, and watch what it does.

    python live_probe.py --report FILE [--call MODULE:FUNCTION ...] [--script PATH]
                         [--deadline SECONDS] [--real-clock] [--allow-network]

:mod:`repack.environment.run` starts this file, by path, with the TARGET environment's interpreter
(which need not have flashinfer-repack installed): so it is stdlib only and imports nothing of this
project.  Before flashinfer is imported it installs an audit hook that

* refuses every name lookup and socket connection, and records it (``--allow-network`` only records:
  the benchmark measures downloads from a local server);
* records every file written, created, renamed, removed or linked (``open`` for writing, ``os.*``
  and ``shutil.*`` events), so that a write into site-packages is reported, not hidden;

and it records every HTTP request made through ``requests`` (flashinfer's downloader) or urllib, with
its URL, and cuts ``time.sleep`` short (flashinfer's retry backoff would take 35 s), counting what
was asked.  Then it runs two steps and says where it stopped:

``import``   ``import flashinfer`` and ``flashinfer.jit.env`` (where FLASHINFER_CUBIN_DIR is decided);
``headers``  each ``--call`` (a JIT-spec generator) in order, or ``--script`` (e.g. vLLM's snippet).

The JSON report goes to ``--report``; the exit status is 0 if every step succeeded, 1 if not.
"""

from __future__ import annotations  # annotations stay text: the target may be Python 3.8

import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

#: audit events that change the filesystem: event -> indexes of the path arguments it changes
WRITE_EVENTS = {"os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,),
                "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,), "os.truncate": (0,),
                "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Deadline(BaseException):
    """Raised in the main thread when the probe's time is up (a BaseException: flashinfer must not swallow it)."""


class Watch:
    """What the child did: connections, lookups, requests, writes, sleeps."""

    def __init__(self, allow_network: bool, real_clock: bool) -> None:
        self.allow_network, self.active = allow_network, True
        self.connects: list[str] = []
        self.lookups: list[str] = []
        self.requests: list[str] = []
        self.writes: list[dict[str, str]] = []
        self.sleeps, self.slept = 0, 0.0
        sys.addaudithook(self.audit)  # before flashinfer is imported: nothing escapes it
        if not real_clock:
            time.sleep = self.sleep  # type: ignore[assignment]  # flashinfer's backoff sleeps are counted, not slept

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            self.connects.append(repr(args[1]))
            if not self.allow_network:
                raise ConnectionRefusedError(111, "connection refused by flashinfer-repack's live check")
        elif event == "socket.getaddrinfo":
            self.lookups.append(f"{args[0]}:{args[1]}")
            if not self.allow_network and not _numeric(args[0]):
                raise socket.gaierror(socket.EAI_NONAME, "name lookup refused by flashinfer-repack's live check")
        elif event == "urllib.Request":
            self.requests.append(str(args[0]))
        elif event == "open":
            self._open(args)
        elif event == "os.mkdir" and os.path.isdir(args[0]):
            return  # makedirs(exist_ok=True) over an existing folder: it will fail, nothing changes
        elif event in WRITE_EVENTS:
            for i in WRITE_EVENTS[event]:
                self._wrote(event, args[i] if len(args) > i else None)

    def _open(self, args: tuple[Any, ...]) -> None:
        path, mode, flags = ([*list(args), None, None, 0])[:3]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        if writes:
            self._wrote("open", path)

    def _wrote(self, event: str, path: object) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, (str, os.PathLike)):
            self.writes.append({"event": event, "path": os.path.abspath(os.fspath(path))})

    def sleep(self, seconds: float | None) -> None:
        self.sleeps += 1
        self.slept += float(seconds or 0)

    def watch_requests(self) -> None:
        """Record the URL of every request flashinfer makes through ``requests`` (its downloader)."""
        try:
            # flashinfer's own HTTP client, watched inside its process, not a second transport of ours
            import requests.sessions  # noqa: TID251
        except ImportError:
            return
        original, requests_seen = requests.sessions.Session.request, self.requests

        def request(session: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            requests_seen.append(str(url))
            return original(session, method, url, *args, **kwargs)

        # flashinfer's client is wrapped in flashinfer's own process: the point of the live check
        requests.sessions.Session.request = request  # type: ignore[method-assign,assignment]


def _numeric(host: object) -> bool:
    if host is None:
        return True
    host = os.fsdecode(host) if isinstance(host, bytes) else str(host)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return host == "localhost"


def parse(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"report": None, "calls": [], "script": None, "deadline": 120.0, "real_clock": False,
            "allow_network": False}
    it = iter(argv)
    for arg in it:
        if arg in ("--report", "--script"):
            opts[arg[2:]] = next(it)
        elif arg == "--call":
            opts["calls"].append(next(it))
        elif arg == "--deadline":
            opts["deadline"] = float(next(it))
        elif arg in ("--real-clock", "--allow-network"):
            opts[arg[2:].replace("-", "_")] = True
        else:
            raise SystemExit(f"live_probe: unknown argument {arg!r}")
    return opts


def run_steps(opts: dict[str, Any], watch: Watch, result: dict[str, Any]) -> None:
    result["step"] = "import"
    # the target environment's flashinfer, not a dependency of ours: untyped here
    import flashinfer  # type: ignore[import-not-found]
    from flashinfer.jit import env as jit_env  # type: ignore[import-not-found]

    result["version"] = str(getattr(flashinfer, "__version__", ""))
    result["cubin_dir"] = str(getattr(jit_env, "FLASHINFER_CUBIN_DIR", ""))
    result["imported_at"] = time.perf_counter()
    result["step"] = "headers"
    watch.watch_requests()
    if opts["script"]:
        import runpy
        runpy.run_path(opts["script"], run_name="__main__")
        result["calls"].append(opts["script"])
    for call in opts["calls"]:
        generate = _generator(call)
        if generate is None:
            result["absent"].append(call)  # this version has no such code path
            continue
        generate()
        result["calls"].append(call)
    result["step"] = "done"


def _generator(call: str) -> Callable[[], object] | None:
    """MODULE:FUNCTION, or None when this version has no such module or function (a missing
    dependency of a module that exists is a failure, not an absence)."""
    module, _, name = call.partition(":")
    try:
        loaded = __import__(module, fromlist=[name])
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise
    found: Callable[[], object] | None = getattr(loaded, name, None)
    return found


def main(argv: list[str]) -> int:
    opts = parse(argv)
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "10.0a")  # JIT specs need no GPU; both callers accept it
    result: dict[str, Any] = {"ok": False, "step": "start", "error": None, "traceback": "", "version": None,
                              "cubin_dir": "",
              "calls": [], "absent": [], "arch_list": os.environ["FLASHINFER_CUDA_ARCH_LIST"]}
    watch = Watch(opts["allow_network"], opts["real_clock"])
    started = result["imported_at"] = time.perf_counter()

    def out_of_time(signum: int, frame: object) -> None:
        raise Deadline(f"the live check ran out of its {opts['deadline']:g} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, opts["deadline"])
    try:
        run_steps(opts, watch, result)
        result["ok"] = True
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}".strip()
        result["traceback"] = traceback.format_exc()[-3000:]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        watch.active = False  # the report's own write is not flashinfer's
    finished = time.perf_counter()
    result.update(seconds=finished - started, snippet_seconds=finished - result.pop("imported_at"),
                  connects=watch.connects, lookups=watch.lookups, requests=watch.requests, writes=watch.writes,
                  sleeps=watch.sleeps, slept_seconds=watch.slept)
    with open(opts["report"], "w") as fh:
        json.dump(result, fh)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    # flushed and exited hard: flashinfer's or torch's threads and atexit handlers must not hang the check
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
