"""Benchmark: the work a user waits for, beside the tools they would otherwise use (issue 12).

    python benchmarks/bench_ux.py [--version 0.6.6] [--skip-index] [--repeat 3]

Prints one table, side by side, every figure from this run on this machine:
  * ``plan VERSION`` cold (empty cache, the real index pip uses) and warm (the same cache);
  * ``publish --simple`` of the three wheels of VERSION (flashinfer-python, flashinfer-cubin, ours) into a
    fresh tree with an empty cache (every RECORD checked), again over it, and into another fresh tree with
    the verdicts remembered, against ``simple503`` (copy mode, PEP 658 metadata) into a fresh tree and again;
  * ``publish --index`` of the flashinfer-cubin wheel to a fresh local pypiserver (first check, then again),
    and to another with the verdict remembered, against ``twine upload`` of the same file to another fresh
    pypiserver (``--skip-index`` leaves these out).

Also the floor under a first publish: the RECORD check alone of those wheels (every member inflated
and hashed, on as many threads as publish uses), in this process.

Seconds are the wall time of the whole process (interpreter start-up included).  The files written
(about 1.7 GB a run: trees and index storage) go to the temporary directory: ``TMPDIR=/dev/shm`` keeps
the disk's writeback, which otherwise falls on whichever row comes next, out of the figures.  Each row is run
``--repeat`` times, the rows interleaved (ours, then theirs, then ours...) so that a slow moment of the
machine falls on both: the median is printed, with the fastest and the slowest.  Figures, not assertions.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.envs import real_wheel  # noqa: E402
from tests.test_upload import PASSWORD, USER, free_port, start_server, stop  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return seconds, proc


def repack(*args: str) -> list[str]:
    return [sys.executable, "-m", "repack", *args]


def bench_plan(version: str, tmp: Path) -> list[tuple[str, float, str]]:
    rows = []
    for label in ("cold", "warm"):
        seconds, proc = timed(repack("plan", version, "--json", "--cache-dir", str(tmp / "plan-cache")))
        transfer = json.loads(proc.stdout).get("transfer", {})
        rows.append((f"plan {version} ({label} cache)", seconds,
                     f"{transfer.get('requests', 0)} requests, {transfer.get('bytes', 0):,} bytes"))
    return rows


def bench_floor(wheels: list[Path]) -> list[tuple[str, float, str]]:
    from repack.publish.distfile import check_record, read_distfile

    started = time.perf_counter()
    for wheel in wheels:
        check_record(read_distfile(wheel, check_record=False, digests=()))
    return [("the RECORD check alone of those 3 wheels (no start-up, no copy)", time.perf_counter() - started,
             "the floor under a first publish: every member inflated and hashed")]


def bench_simple(wheels: list[Path], tmp: Path) -> list[tuple[str, float, str]]:
    rows = []
    tmp.mkdir()
    cache = ["--cache-dir", str(tmp / "publish-cache")]  # empty: no wheel has been checked before
    for label, tree, note in (("fresh tree, first check", "ours", "sha256 each, RECORD checked (1.2 GB inflated)"),
                              ("again, same tree", "ours", "sha256 each; nothing to send, RECORD not read"),
                              ("fresh tree, checked before", "ours2", "sha256 each, copy hashed; RECORD verdict "
                                                                     "remembered by sha256")):
        seconds, _ = timed(repack("publish", "--simple", str(tmp / tree), *map(str, wheels), "--json", *cache))
        rows.append((f"flashinfer-repack publish --simple, 3 wheels ({label})", seconds, note))
    origin = tmp / "origin"
    origin.mkdir()
    for w in wheels:  # simple503 moves or copies from its origin: give it its own
        shutil.copy(w, origin / w.name)
    for label in ("fresh tree", "again"):
        seconds, _ = timed([str(BIN / "simple503"), "--copy", "--sort", "--extract-metadata", str(origin),
                            str(tmp / "theirs")])
        rows.append((f"simple503 --copy --sort --extract-metadata, 3 wheels ({label})", seconds, "no RECORD check"))
    return rows


def pypiserver(tmp: Path, name: str):
    from passlib.apache import HtpasswdFile

    root = tmp / name
    (root / "packages").mkdir(parents=True)
    htpasswd = HtpasswdFile(str(root / "htpasswd"), new=True)
    htpasswd.set_password(USER, PASSWORD)
    htpasswd.save()
    port = free_port()
    proc = start_server([str(BIN / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(port), "-P",
                         str(root / "htpasswd"), "-a", "update", "--disable-fallback", str(root / "packages")],
                        f"http://127.0.0.1:{port}/health", root / "log")
    return proc, f"http://127.0.0.1:{port}/"


def bench_index(wheel: Path, tmp: Path, run: int) -> list[tuple[str, float, str]]:
    """Each upload to a fresh pypiserver of its own; every other run in the reverse order (no row always first)."""
    tmp.mkdir()
    creds = {"FLASHINFER_REPACK_USERNAME": USER, "FLASHINFER_REPACK_PASSWORD": PASSWORD,
             "TWINE_USERNAME": USER, "TWINE_PASSWORD": PASSWORD, "NETRC": "/nonexistent"}
    size = f"{wheel.stat().st_size / 1e6:.0f} MB"
    twine = [str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar", "--repository-url"]
    steps = [  # (row, server, command after the URL, note, again)
        (f"flashinfer-repack publish --index ({size}, first check)", "ours", None, ["--no-cache"],
         "2-digest pass; RECORD checked while it is sent; listing"),
        (f"flashinfer-repack publish --index ({size}, checked before)", "ours2", None,
         ["--cache-dir", str(tmp.parent / "publish-cache")], "2-digest pass (verdict remembered), upload, listing"),
        (f"twine upload ({size})", "twine", twine, [], "2-digest pass, upload; no RECORD check")]
    rows = []
    for what, server, command, options, note in (steps if run % 2 == 0 else steps[::-1]):
        proc, url = pypiserver(tmp, server)
        try:
            cmd = ([*command, url, str(wheel)] if command else
                   repack("publish", "--index", url, str(wheel), "--json", *options))
            seconds, _ = timed(cmd, creds)
            rows.append((what, seconds, note))
            if server == "ours":
                seconds, _ = timed(cmd, creds)
                rows.append(("flashinfer-repack publish --index (again: already there)", seconds,
                             "sha256 compared, not sent"))
        finally:
            stop(proc)
    return rows  # the table keeps the first run's order of rows


def alternate(wheel: Path, times: int) -> None:
    """publish --index (verdict remembered) and twine upload, one after the other, ``times`` each."""
    creds = {"FLASHINFER_REPACK_USERNAME": USER, "FLASHINFER_REPACK_PASSWORD": PASSWORD,
             "TWINE_USERNAME": USER, "TWINE_PASSWORD": PASSWORD, "NETRC": "/nonexistent"}
    seen: dict[str, list[float]] = {"flashinfer-repack publish --index (checked before)": [], "twine upload": []}
    with tempfile.TemporaryDirectory(prefix="bench-ux-") as tmp_name:
        tmp = Path(tmp_name)
        cache = tmp / "publish-cache"
        timed(repack("publish", "--simple", str(tmp / "tree"), str(wheel), "--cache-dir", str(cache)))  # the verdict
        for _ in range(times):
            for what in seen:
                proc, url = pypiserver(tmp, f"{len(seen[what])}-{what.split()[0]}")
                try:
                    cmd = (repack("publish", "--index", url, str(wheel), "--json", "--cache-dir", str(cache))
                           if what.startswith("flashinfer") else
                           [str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar",
                            "--repository-url", url, str(wheel)])
                    seen[what].append(timed(cmd, creds)[0])
                finally:
                    stop(proc)
                shutil.rmtree(tmp / f"{len(seen[what]) - 1}-{what.split()[0]}")
    for what, values in seen.items():
        print(f"{what:<52} " + " ".join(f"{v:.2f}" for v in sorted(values)))


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", default="0.6.6")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each row (default 3): the median is shown")
    parser.add_argument("--alternate", type=int, default=0, metavar="N",
                        help="only the upload of a wheel checked before against twine's, alternated N times each; "
                             "every time printed, sorted (pypiserver's receive time is bimodal: medians mislead)")
    args = parser.parse_args()
    cubin, python = real_wheel("flashinfer-cubin", args.version), real_wheel("flashinfer-python", args.version)
    if args.alternate:
        return alternate(cubin, args.alternate)
    figures: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ux-") as tmp_name:
        tmp = Path(tmp_name)
        _, proc = timed(repack("build", args.version, "-o", str(tmp / "dist"), "--from", str(cubin), "--no-cache",
                               "--json"))
        ours = Path(json.loads(proc.stdout)["artifacts"][0]["path"])
        for run in range(args.repeat):
            rows = bench_plan(args.version, tmp / f"plan{run}") + bench_floor([python, cubin, ours])
            rows += bench_simple([python, cubin, ours], tmp / f"simple{run}")
            if not args.skip_index:  # after the --simple rows: "checked before" uses the verdicts they left
                rows += bench_index(cubin, tmp / f"simple{run}" / "index", run)
            for what, seconds, note in rows:
                figures.setdefault(what, []).append(seconds)
                notes[what] = note
            for used in (tmp / f"plan{run}", tmp / f"simple{run}"):  # 1.7 GB a run: gone before the next
                shutil.rmtree(used)
    print(f"{'what':<72} {'median':>7} {'fastest':>7} {'slowest':>7}  notes  ({args.repeat} runs each)")
    for what, values in figures.items():
        print(f"{what:<72} {statistics.median(values):7.3f} {min(values):7.3f} {max(values):7.3f}  {notes[what]}")


if __name__ == "__main__":
    main()
