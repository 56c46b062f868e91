"""Everything an air-gapped site needs for one FlashInfer version, in one directory.

Layout of ``-o DIR``::

    wheels/            flashinfer-python, flashinfer-cubin (from the index, verified against its
                       sha256) and flashinfer-cubin-headers: pip install --no-index --find-links DIR/wheels
    simple/            the same wheels as a static PEP 503/691 index (hard links where possible):
                       pip install --index-url file://DIR/simple/
    conda/noarch/      a conda channel: our package, and flashinfer-python and flashinfer-cubin
                       converted from their wheels (requirements named by conda-map.json)
    conda-map.json     the PyPI -> conda name table that was applied
    README.txt         how to install from here
    manifest.json      every file above with its sha256 and size

The stages run in order and each is idempotent: a re-run finds the wheels in
place with the right sha256 and downloads nothing, and an interrupted
download goes on from its ``.part`` (see :mod:`repack.fetch.download`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from repack import __version__
from repack.errors import BuildError
from repack.fetch.cache import Cache
from repack.fetch.digest import file_sha256
from repack.fetch.download import PRESENT, fetch_verified
from repack.fetch.index import find_wheel, project_files
from repack.fetch.transport import Transport
from repack.fs import atomic_write
from repack.rules.plan import Plan, require_needed

log = logging.getLogger(__name__)

PYTHON_PROJECT, CUBIN_PROJECT = "flashinfer-python", "flashinfer-cubin"
MANIFEST = "manifest.json"
#: The platforms FlashInfer publishes for; the channel answers for them (noarch packages only).
PLATFORMS = ("linux-64", "linux-aarch64")

#: ``step(message)``: what the bundle is doing now, for the CLI to show.
Step = Callable[[str], None]


@dataclass
class BundleReport:
    root: Path
    version: str
    fetched: dict[str, str] = field(default_factory=dict)   # wheel -> present / downloaded / resumed
    transferred: int = 0                                      # bytes of wheels that crossed the wire
    files: list[dict] = field(default_factory=list)         # the manifest's entries

    def to_json(self) -> dict:
        return {"root": str(self.root), "version": self.version, "fetched": self.fetched,
                "transferred_bytes": self.transferred, "files": self.files}


def bundle(version: str, out_dir: Path, transport: Transport, index_url: str, *, epoch: int | None = None,
           names: Mapping[str, str | None] | None = None, step: Step | None = None) -> BundleReport:
    """Fill ``out_dir`` with the bundle of ``version`` (see the module docstring)."""
    from repack.build.convert import load_name_map

    say = step or (lambda message: None)
    out = Path(out_dir)
    names = load_name_map() if names is None else dict(names)
    report = BundleReport(out, version)
    wheels = out / "wheels"
    _clear_stale_temporaries(wheels)
    python = _fetch(transport, index_url, PYTHON_PROJECT, version, wheels, report, say)
    plan = _plan(version, python)
    cubin = _fetch(transport, index_url, CUBIN_PROJECT, version, wheels, report, say)
    say(f"building flashinfer-cubin-headers {version} from {cubin.name}")
    payload = _payload(plan, cubin)
    _drop_stale_own_wheel(out, payload, epoch)
    ours = _build_wheel(payload, wheels, epoch)
    say("writing the static simple index")
    _write_simple(out / "simple", [python, cubin, ours])
    _write_channel(out / "conda", payload, [python, cubin], names, epoch, say)
    atomic_write(out / "conda-map.json", (json.dumps({"names": names}, indent=1, sort_keys=True) + "\n").encode())
    atomic_write(out / "README.txt", readme(plan, [python.name, cubin.name, ours.name]).encode())
    say("writing manifest.json")
    report.files = write_manifest(out, version)
    return report


# -- stages --------------------------------------------------------------------------------

def _clear_stale_temporaries(wheels: Path) -> None:
    """Temporaries of a killed streaming download (``.<name>.<pid>.part``); resumable ``<name>.part`` stay."""
    for path in wheels.glob(".*.part") if wheels.is_dir() else []:
        path.unlink(missing_ok=True)


def _fetch(transport: Transport, index_url: str, project: str, version: str, wheels: Path,
           report: BundleReport, say: Step) -> Path:
    found = find_wheel(project_files(transport, index_url, project), project, version, index_url)
    dest = wheels / found.filename
    if not dest.is_file():
        say(f"downloading {found.filename}" + (f" ({found.size / 1e6:.0f} MB)" if found.size else ""))
    what, transferred = fetch_verified(transport, found, dest)
    if what == PRESENT:
        say(f"{found.filename}: present, sha256 matches the index")
    report.fetched[found.filename] = what
    report.transferred += transferred
    return dest


def _plan(version: str, python_wheel: Path) -> Plan:
    """The plan read from the flashinfer-python wheel just downloaded, checked against the shipped one."""
    from repack.rules.resolve import checked_plan, plan_from_wheel

    # the wheel is at hand: the shipped plan must agree with its code (an edited table builds nothing)
    plan = checked_plan(version, [(python_wheel.name, lambda: plan_from_wheel(python_wheel, version))]).plan
    require_needed(plan)
    return plan


def _payload(plan: Plan, cubin: Path):
    from repack.fetch.payload import fetch_payload
    from repack.fetch.sources import WheelFile

    return fetch_payload(plan, [WheelFile(cubin)], Cache(None))


def _drop_stale_own_wheel(out: Path, payload, epoch: int | None) -> None:
    """Our wheel built earlier from other inputs (another SOURCE_DATE_EPOCH, another flashinfer-repack):
    the bundle owns it, so both copies go before the new one is written, and wheels/ and simple/ agree."""
    from repack.build.artifact import DEFAULT_EPOCH, DIST_NAME
    from repack.build.wheel import wheel_bytes, wheel_filename

    name = wheel_filename(payload.plan.version)
    fresh = wheel_bytes(payload, DEFAULT_EPOCH if epoch is None else epoch)
    for old in (out / "wheels" / name, out / "simple" / DIST_NAME / name):
        if old.is_file() and old.read_bytes() != fresh:
            log.info("replacing %s, built from other inputs", old)
            old.unlink()
            old.with_name(old.name + ".metadata").unlink(missing_ok=True)


def _build_wheel(payload, wheels: Path, epoch: int | None) -> Path:
    from repack.build.wheel import build_wheel

    return build_wheel(payload, wheels, epoch).path


def _write_simple(root: Path, wheels: list[Path]) -> None:
    from repack.publish.distfile import read_distfile
    from repack.publish.simple import publish_simple

    # the downloads were verified against the index's sha256 and ours was just built: no RECORD pass
    publish_simple(root, [read_distfile(w, check_record=False) for w in wheels], link=True)


def _write_channel(channel: Path, payload, wheels: list[Path], names: Mapping[str, str | None],
                   epoch: int | None, say: Step) -> None:
    from repack.build.conda import build_conda
    from repack.build.convert import conda_name, convert_wheel, package_filename
    from repack.publish.channel import write_repodata

    noarch = channel / "noarch"
    keep = []
    for wheel in wheels:
        target = noarch / package_filename(wheel, names)
        if not target.is_file():  # written atomically: present means complete
            say(f"converting {wheel.name} to {target.name}")
            convert_wheel(wheel, noarch, names=names, epoch=epoch)
        keep.append(target.name)
    renamed = {p: conda_name(p, names) or p for p in (PYTHON_PROJECT, CUBIN_PROJECT)}
    say("building the flashinfer-cubin-headers conda package")
    keep.append(build_conda(payload, noarch, epoch, "conda", dependency_names=renamed).path.name)
    _remove_other_builds(noarch, keep)
    for subdir in ("noarch",) + PLATFORMS:  # conda asks for the platform's repodata too: an empty one answers
        write_repodata(channel / subdir, subdir)


def _remove_other_builds(noarch: Path, keep: list[str]) -> None:
    """Builds of the same packages and version made earlier with another name map would compete in a solve."""
    prefixes = {name.rsplit("-", 1)[0] + "-" for name in keep}
    for path in noarch.glob("*.conda"):
        if path.name not in keep and any(path.name.startswith(p) for p in prefixes):
            log.info("removing %s, an earlier build of a package in this bundle", path)
            path.unlink()


# -- manifest and readme ---------------------------------------------------------------------

def write_manifest(root: Path, version: str) -> list[dict]:
    """``manifest.json``: every file of the bundle (hidden ones aside) with its sha256 and size."""
    files = []
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        if rel == MANIFEST or any(part.startswith(".") for part in rel.split("/")):
            continue
        path = root / rel
        files.append({"path": rel, "sha256": file_sha256(path), "size": path.stat().st_size})
    data = {"flashinfer_version": version, "generator": f"flashinfer-repack {__version__}", "files": files}
    try:
        atomic_write(root / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())
    except OSError as exc:
        raise BuildError(f"cannot write {root / MANIFEST}: {exc.strerror}", "check the output directory") from exc
    return files


def readme(plan: Plan, wheels: list[str]) -> str:
    v = plan.version
    return f"""flashinfer {v}, bundled by flashinfer-repack {__version__} for sites without network access.

Check the copy:   python -c "import json,hashlib; [print('BAD', f['path']) for f in json.load(open('manifest.json'))['files'] if hashlib.sha256(open(f['path'],'rb').read()).hexdigest() != f['sha256']]"

pip (torch and flashinfer's other requirements must come from your own mirror or wheels):
  pip install --no-index --find-links wheels flashinfer-python=={v} flashinfer-cubin=={v} flashinfer-cubin-headers=={v}
or serve simple/ with any web server (or use file://) as an index:
  pip install --index-url file://$PWD/simple/ --extra-index-url <your mirror> flashinfer-cubin-headers=={v}

conda / mamba / pixi (pytorch and the other requirements from your conda-forge mirror):
  conda install -c file://$PWD/conda -c <your conda-forge mirror> flashinfer-cubin-headers={v}

The headers then lie where flashinfer-python {v} looks for them
(site-packages/flashinfer_cubin/cubins/{plan.dest_dir}/), and it starts without network.

Files: {", ".join(wheels)}
"""
