"""Benchmark: how fast, and how many bytes, to get the BMM headers of one version.

    python benchmarks/bench_build.py [--version 0.6.6] [--venv DIR] [--skip-slow]

Prints one table, side by side:
  * ``flashinfer-repack build`` (the real CLI, a fresh process each time) from
    each source: the package index (PyPI, cold cache, HTTP ranges), the warm
    cache, a local index on 127.0.0.1 with and without Range support, a local
    wheel, an artifactory-layout server on 127.0.0.1, an artifactory-layout dir;
  * (a) a full download of the flashinfer-cubin wheel from PyPI;
  * (b) flashinfer's own ``download_trtllm_headers`` against the local
    artifactory-layout server (flashinfer-python installed, no flashinfer-cubin);
  * vLLM's Dockerfile snippet with our wheel, and without it (closed port:
    flashinfer's real retry backoff, about 35 s; ``--skip-slow`` leaves it out).

Bytes are those received by the client (``--json`` transfer stats) or served
by our local servers.  Figures, not assertions: targets live in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repack.fetch.index import PYPI, find_wheel, project_files  # noqa: E402
from repack.fetch.transport import Transport  # noqa: E402
from repack.rules.plan import shipped_plan  # noqa: E402
from tests.support.envs import FlashinferEnv, real_wheel  # noqa: E402
from tests.support.servers import FileServer  # noqa: E402


def cli_build(version: str, out: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHINFER_")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "repack", "build", version, "-o", str(out), "--json", *args],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"build {' '.join(args)} failed: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    return {"seconds": wall, "bytes": data["transfer"]["bytes"], "requests": data["transfer"]["requests"],
            "sha256": data["artifacts"][0]["sha256"], "source": data["source"]}


def make_layout(cubin: Path, version: str, dest: Path) -> Path:
    plan = shipped_plan(version)
    with zipfile.ZipFile(cubin) as zf:
        for name in [plan.checksums_path] + [plan.source_path(h) for h in plan.headers]:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read("flashinfer_cubin/cubins/" + name))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="0.6.6")
    parser.add_argument("--venv", type=Path, help="reuse this FlashinferEnv venv (created if missing)")
    parser.add_argument("--skip-slow", action="store_true", help="skip the 35 s failing snippet")
    args = parser.parse_args()
    version = args.version
    rows: list[tuple[str, float, int, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        cubin = real_wheel("flashinfer-cubin", version)
        layout = make_layout(cubin, version, tmp / "layout")
        cache = tmp / "cache"
        shas = set()

        def build(label: str, *extra: str) -> None:
            r = cli_build(version, tmp / f"out-{len(rows)}", *extra)
            shas.add(r["sha256"])
            rows.append((label, r["seconds"], r["bytes"], f"{r['requests']} requests, source {r['source']}"))

        build("build --from pypi (cold cache, ranges)", "--from", "pypi", "--cache-dir", str(cache))
        build("build from the warm cache", "--from", "pypi", "--cache-dir", str(cache))
        for ranges in (True, False):
            with FileServer() as server:
                server.ranges = ranges
                server.serve_project("flashinfer-cubin", [cubin])
                build(f"build --from local index ({'ranges' if ranges else 'no ranges: whole wheel'})",
                      "--from", f"index+{server.index_url}", "--no-cache")
        build("build --from local wheel", "--from", str(cubin), "--no-cache")
        with FileServer() as server:
            build("build --from artifactory server", "--from",
                  f"artifactory+{server.serve_tree('artifactory', layout)}", "--no-cache")
        build("build --from artifactory dir", "--from", str(layout), "--no-cache")
        assert len(shas) == 1, f"sources gave different wheels: {shas}"

        transport = Transport()
        started = time.perf_counter()
        found = find_wheel(project_files(transport, PYPI, "flashinfer-cubin"), "flashinfer-cubin", version, PYPI)
        transport.download(found.url, tmp / found.filename, size=found.size, sha256=found.sha256)
        rows.append(("(a) full flashinfer-cubin wheel download", time.perf_counter() - started,
                     transport.stats.bytes, "PyPI, sha256 checked"))
        (tmp / found.filename).unlink()

        env = FlashinferEnv(args.venv or tmp / "venv").create()
        env.use(version, cubin=False)
        # a failed run of an earlier benchmark leaves *.lock files that pip does not remove: a bare
        # flashinfer_cubin/ folder, which would break `import flashinfer` (the namespace hazard)
        shutil.rmtree(env.site_packages() / "flashinfer_cubin", ignore_errors=True)
        with FileServer() as server:
            base = server.serve_tree("artifactory", layout)
            r = env.run_snippet(env={"FLASHINFER_CUBINS_REPOSITORY": base,
                                     "FLASHINFER_CUBIN_DIR": str(tmp / "cubin-dir")}, network=True)
            rows.append(("(b) flashinfer download_trtllm_headers, local server", r["snippet_seconds"],
                         server.bytes_sent(), f"{server.requests()} requests, ok={r['ok']} {r['error'] or ''}"))
        our_wheel = next((tmp / "out-0").glob("*.whl"))
        env.use(version, extra=(our_wheel,))
        runs = [env.run_snippet() for _ in range(5)]
        best = min(r["snippet_seconds"] for r in runs)
        rows.append(("vLLM snippet with our wheel (best of 5)", best, 0,
                     f"ok={all(r['ok'] for r in runs)}, connects={sum(len(r['connects']) for r in runs)}"))
        if not args.skip_slow:
            env.remove("flashinfer-cubin-headers")
            r = env.run_snippet()
            rows.append(("vLLM snippet without it (closed port)", r["snippet_seconds"], 0,
                         f"ok={r['ok']}: {r['error']}"))
        if not args.venv:
            env.remove("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nflashinfer {version} on {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print(f"| {'what':52} | {'seconds':>8} | {'bytes':>12} | notes |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 14}|-------|")
    for label, seconds, nbytes, note in rows:
        note = note.replace(str(tmp), "<tmp>").replace(str(Path.home()), "~")
        print(f"| {label:52} | {seconds:8.3f} | {nbytes:12,} | {note} |")


if __name__ == "__main__":
    main()
