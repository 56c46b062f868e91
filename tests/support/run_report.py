"""What ``vllm_snippet.py`` and ``header_probe.py`` share: run flashinfer's code and report on it.

Imported by those scripts (by path, inside a venv with the real flashinfer), never by this project:
an audit hook records every socket connection attempt; ``--fast-clock`` makes time.sleep a no-op
(flashinfer's retry backoff); ``--report FILE`` receives the JSON report (ok, error, seconds,
snippet_seconds, connects, cubin_dir), printed to stdout otherwise.  Stdlib only.
"""

import json
import sys
import time
import traceback


class RunReport:
    def __init__(self, **fields) -> None:
        self.connects: list[str] = []
        sys.addaudithook(self._audit)  # before flashinfer is imported: every connection is seen
        if "--fast-clock" in sys.argv:
            time.sleep = lambda seconds: None
        self.path = sys.argv[sys.argv.index("--report") + 1] if "--report" in sys.argv else None
        self.result = {"ok": False, "error": None, **fields}
        self.started = self.imported = time.perf_counter()

    def _audit(self, event, args) -> None:
        if event == "socket.connect":
            self.connects.append(repr(args[1]))

    def mark_imported(self) -> None:
        self.imported = time.perf_counter()

    def failed(self, exc: BaseException) -> None:
        self.result["error"] = f"{type(exc).__name__}: {exc}"
        self.result["traceback"] = traceback.format_exc()[-2000:]

    def finish(self) -> None:
        """Write the report and exit 0 if the run succeeded, 1 if not."""
        finished = time.perf_counter()
        self.result.update(seconds=finished - self.started, snippet_seconds=finished - self.imported,
                           connects=self.connects,
                           cubin_dir=str(getattr(sys.modules.get("flashinfer.jit.env"), "FLASHINFER_CUBIN_DIR", "")))
        text = json.dumps(self.result)
        if self.path:
            with open(self.path, "w") as fh:
                fh.write(text)
        else:
            print(text)
        sys.exit(0 if self.result["ok"] else 1)
