"""Benchmark: peak memory of ``flashinfer-repack build`` against good and hostile servers.

    python benchmarks/bench_memory.py [--version 0.6.6]

Each build is the real CLI in a fresh child process; its peak resident memory is the child's own
high-water mark (``VmHWM`` of its address space after exec, read as it exits: ``ru_maxrss`` would
inherit this script's peak across fork and exec).  Servers run on 127.0.0.1:

* normal, ranges:      the real flashinfer-cubin wheel on a simple index, read by HTTP ranges;
* normal, no ranges:   the same, the server ignoring Range (the whole wheel is streamed to disk);
* zip bomb:            a wheel whose checksums.txt inflates to 2 GiB (about 2 MB on the wire);
* endless stream:      the index gives the real size, the server ignores Range and sends zeros forever;
* 100 MB page:         a project page of 100 MB with no Content-Length.

Targets (issue 10): at most 100 MB for a normal build, 200 MB for a hostile one.  Figures, not
assertions: the README quotes them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repack.fetch.digest import file_sha256  # noqa: E402
from repack.rules.plan import shipped_plan  # noqa: E402
from tests.support.envs import real_wheel  # noqa: E402
from tests.support.hostile import HostileServer  # noqa: E402
from tests.support.servers import FileServer  # noqa: E402

TARGETS = {"normal": 100, "hostile": 200}


#: The child: the real CLI, reporting its own peak (kB) into the file named by its first argument at exit.
CHILD = """
import atexit, sys
report = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as fh:
        kb = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(report, "w") as fh:
        fh.write(kb)
atexit.register(peak)
from repack.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def build(version: str, index_url: str, out: Path) -> tuple[int, float, float, str]:
    """(exit code, peak MB, seconds, first stderr line) of one build in a fresh child process."""
    report = out.parent / f"{out.name}.peak"
    cmd = [sys.executable, "-c", CHILD, str(report), "build", version, "-o", str(out), "--from",
           "index+" + index_url, "--no-cache", "--timeout", "10", "--retries", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHINFER_", "PIP_INDEX_URL"))}
    env["TMPDIR"] = str(out.parent)
    started = time.monotonic()
    child = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    return child.returncode, int(report.read_text()) / 1024, time.monotonic() - started, (lines[0] if lines else "")


def zip_bomb(version: str, inflated: int = 2 << 30) -> bytes:
    """A wheel-named zip holding every wanted member; its checksums.txt inflates to ``inflated`` zero bytes."""
    plan = shipped_plan(version)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for header in plan.headers:
            zf.writestr("flashinfer_cubin/cubins/" + plan.source_path(header).replace("//", "/"), b"// x\n")
        info = zipfile.ZipInfo("flashinfer_cubin/cubins/" + plan.checksums_path)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            block = bytes(16 << 20)
            for _ in range(inflated // len(block)):
                fh.write(block)
    return buf.getvalue()


def entry(url: str, filename: str, size: int, sha256: str) -> dict:
    return {"filename": filename, "url": url, "size": size, "hashes": {"sha256": sha256}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="0.6.6")
    args = parser.parse_args()
    wheel = real_wheel("flashinfer-cubin", args.version)
    digest = file_sha256(wheel)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, FileServer() as good, HostileServer() as bad:
        good.serve_project("flashinfer-cubin", [wheel])
        rows.append(("normal", "normal, ranges", *build(args.version, good.index_url, Path(tmp) / "a")))
        good.ranges = False
        whole = build(args.version, good.index_url, Path(tmp) / "b")
        rows.append(("normal", "normal, no ranges (whole wheel)", *whole))
        rows += hostile_rows(args.version, bad, wheel, digest, Path(tmp))
    print(f"{'build':<36} {'exit':>4} {'peak MB':>8} {'target':>7} {'s':>6}  first stderr line")
    for kind, label, code, peak, seconds, line in rows:
        said = line.replace("flashinfer-repack: error: ", "")[:100]
        print(f"{label:<36} {code:>4} {peak:>8.1f} {TARGETS[kind]:>7} {seconds:>6.1f}  {said}")


def hostile_rows(version: str, server: HostileServer, wheel: Path, digest: str, tmp: Path) -> list[tuple]:
    rows = []
    name = wheel.name
    data = zip_bomb(version)
    url = server.file(f"bomb/{name}", data)
    server.page("flashinfer-cubin", [entry(url, name, len(data), hashlib.sha256(data).hexdigest())])
    rows.append(("hostile", f"zip bomb ({len(data) / 1e6:.1f} MB -> 2 GiB)", *build(version, server.url + "simple/",
                                                                                  tmp / "c")))
    url = server.endless(f"endless/{name}")
    server.page("flashinfer-cubin", [entry(url, name, wheel.stat().st_size, digest)])
    rows.append(("hostile", "endless stream, Range ignored", *build(version, server.url + "simple/", tmp / "d")))
    server.file("simple/flashinfer-cubin/", b" " * (100 << 20), length=False,
                ctype="application/vnd.pypi.simple.v1+json")
    rows.append(("hostile", "100 MB page, no Content-Length", *build(version, server.url + "simple/", tmp / "e")))
    return rows


if __name__ == "__main__":
    main()
