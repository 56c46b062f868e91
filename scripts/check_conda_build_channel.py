"""Helpers of scripts/check_conda_build.sh, run by its scratch venv's Python.

    check_conda_build_channel.py WORK CHANNEL PY_WHEEL CUBIN_WHEEL WHEEL...   make the local channel
    check_conda_build_channel.py --compare PACKAGE...                         compare built packages

The channel: a linux-64 ``python`` package made from this interpreter (``python -m venv --copies``:
the binary and a ``pyvenv.cfg`` whose ``home`` is its base, so it runs from any prefix); every
WHEEL, flashinfer-python and flashinfer-cubin converted by flashinfer-repack's own converter; and
stand-ins (files that name them, nothing else) for the requirements nothing here provides, since
no conda-forge can be reached.  The stand-ins are made by rattler-build's assembler.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from repack.build.conda_archive import read_members
from repack.build.convert import convert_wheel, load_name_map
from repack.publish.channel import publish_channel

FIXED_TIME = datetime(2020, 1, 1, tzinfo=timezone.utc)


def python_package(out: Path) -> Path:
    """``python-X.Y.Z`` for linux-64: this interpreter as a relocatable venv tree."""
    from rattler_build import assemble_package

    stage = Path(tempfile.mkdtemp(dir=out)) / "python"
    subprocess.run([sys._base_executable, "-m", "venv", "--copies", "--without-pip", str(stage)], check=True)
    (stage / "lib64").unlink(missing_ok=True)  # a symlink to lib: not a file to package
    version = platform.python_version()
    for script in stage.glob("bin/[Aa]ctivate*"):  # they name the staging path; conda activates on its own
        script.unlink()
    keep = stage / f"lib/python{version.rsplit('.', 1)[0]}/site-packages/.keep"
    keep.write_text("")
    made = assemble_package("python", version, "linux-64", "venv_copies_0", out / "linux-64", files_dir=stage,
                            depends=[], license="PSF-2.0", timestamp=FIXED_TIME)
    return Path(made.path)


def standin(out: Path, name: str, version: str) -> Path:
    from rattler_build import assemble_package

    stage = Path(tempfile.mkdtemp(dir=out))
    (stage / "share" / "check-conda-build-standins").mkdir(parents=True)
    (stage / "share" / "check-conda-build-standins" / name).write_text(f"stand-in for {name} {version}\n")
    made = assemble_package(name, version, "noarch", "standin_0", out / "noarch", files_dir=stage, noarch="generic",
                            depends=[], license="Apache-2.0", timestamp=FIXED_TIME)
    return Path(made.path)


def lowest_version(spec: str) -> str:
    """A version a stand-in can carry to satisfy ``spec`` (the lowest ``>=`` bound, else 1.0)."""
    bound = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
    return bound.group(1) if bound else "1.0"


def make_channel(work: Path, channel: Path, wheels: list[Path]) -> None:
    out = work / "made"
    for sub in ("noarch", "linux-64"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = load_name_map()
    made = [python_package(out)]
    made += [convert_wheel(w, out / "noarch", names=names).path for w in wheels]
    provided = {json.loads(read_members(p, info_only=True)["info/index.json"])["name"] for p in made}
    wanted = {}
    for package in made:
        for dep in json.loads(read_members(package, info_only=True)["info/index.json"]).get("depends", []):
            name, _, spec = dep.partition(" ")
            if name not in provided:
                wanted[name] = lowest_version(spec)
    made += [standin(out, name, version) for name, version in sorted(wanted.items())]
    for result in publish_channel(channel, made):
        print(result.action, f"{result.subdir}/{result.filename}")
    print("stand-ins:", ", ".join(f"{n} {v}" for n, v in sorted(wanted.items())))


def describe(package: Path) -> dict:
    files = read_members(package)
    index = json.loads(files["info/index.json"])
    payload = {p: hashlib.sha256(d).hexdigest() for p, d in files.items() if not p.startswith("info/")}
    keep = ("name", "version", "noarch", "subdir", "license", "build_number")
    summary = {k: index.get(k) for k in keep}
    # conda-build writes an exact pin "x ==1" as "x 1" and sorts: the same requirement
    summary["depends"] = sorted(re.sub(r" ==([^,|*]+)$", r" \1", d) for d in index.get("depends", []))
    return {"payload": payload, "index": summary, "build": index.get("build"),
            "info": sorted(p for p in files if p.startswith("info/"))}


def compare(packages: list[Path]) -> int:
    described = {p.name: describe(p) for p in packages}
    first_name, first = next(iter(described.items()))
    same = True
    for name, d in described.items():
        payload_same = d["payload"] == first["payload"]
        index_same = d["index"] == first["index"]
        same = same and payload_same and index_same
        differs = sorted(k for k in d["index"] if d["index"][k] != first["index"].get(k))
        print(f"{name}: {len(d['payload'])} payload files, sha256 of the payload list "
              f"{hashlib.sha256(json.dumps(d['payload'], sort_keys=True).encode()).hexdigest()[:16]}, "
              f"payload {'=' if payload_same else '!='} {first_name}'s, index.json (build, timestamp aside) "
              f"{'=' if index_same else '!= in ' + ', '.join(differs)}, build {d['build']}")
    info_sets = {name: set(d["info"]) for name, d in described.items()}
    common = set.intersection(*info_sets.values())
    for name, info in info_sets.items():
        extra = sorted(p for p in info - common if not p.startswith("info/test/"))
        tests = sorted(p for p in info - common if p.startswith("info/test/"))
        print(f"  info/ of {name} beyond the common {len(common)}: {', '.join(extra) or '-'}"
              + (f"; {len(tests)} files under info/test/" if tests else ""))
    print("  depends:", ", ".join(first["index"]["depends"]))
    return 0 if same else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        return compare([Path(p) for p in argv[1:] if p])
    work, channel, *wheels = (Path(a) for a in argv)
    make_channel(work, channel, wheels)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
