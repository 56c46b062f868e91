"""Everything an air-gapped site needs for one FlashInfer version, in one directory.

Layout of ``-o DIR``::

    wheels/            flashinfer-python, flashinfer-cubin (from the index, verified against its
                       sha256) and flashinfer-cubin-headers: pip install --no-index --find-links DIR/wheels;
                       with a dependency target (:mod:`repack.publish.dependencies`), also every wheel
                       flashinfer-python needs on that target, less the excluded projects
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

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repack import __version__
from repack.errors import BuildError
from repack.fetch.cache import Cache
from repack.fetch.digest import file_sha256
from repack.fetch.download import PRESENT, fetch_verified
from repack.fetch.index import find_wheel, project_files
from repack.fetch.transport import Progress, Transport
from repack.fs import (
    NotRegularFileError,
    atomic_write,
    check_filename,
    locked,
    read_regular,
    remove_stale_temporaries,
    safe_join,
)
from repack.publish.channel import PLATFORMS
from repack.rules.plan import Plan, require_needed

if TYPE_CHECKING:
    from repack.fetch.verify import Payload
    from repack.publish.dependencies import Resolution, Target

log = logging.getLogger(__name__)

PYTHON_PROJECT, CUBIN_PROJECT = "flashinfer-python", "flashinfer-cubin"
MANIFEST = "manifest.json"

#: ``step(message)``: what the bundle is doing now, for the CLI to show.
Step = Callable[[str], None]


@dataclass
class BundleReport:
    root: Path
    version: str
    fetched: dict[str, str] = field(default_factory=dict)   # wheel -> present / downloaded / resumed
    transferred: int = 0                                      # bytes of wheels that crossed the wire
    files: list[dict[str, Any]] = field(default_factory=list)         # the manifest's entries
    verified: dict[str, str] = field(default_factory=dict)  # bundle path -> the sha256 it was verified with
    dependencies: dict[str, Any] | None = None                          # the resolution, when dependencies were bundled

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "version": self.version, "fetched": self.fetched,
                "transferred_bytes": self.transferred, "files": self.files, "dependencies": self.dependencies}


def bundle(version: str, out_dir: Path, transport: Transport, index_url: str, *, epoch: int | None = None,
           names: Mapping[str, str | None] | None = None, step: Step | None = None,
           target: Target | None = None) -> BundleReport:
    """Fill ``out_dir`` with the bundle of ``version`` (see the module docstring); with ``target``,
    flashinfer-python's whole dependency set for that target too."""
    from repack.build.convert import load_name_map

    say = step or (lambda message: None)
    out = Path(out_dir)
    names = load_name_map() if names is None else dict(names)
    report = BundleReport(out, version)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):  # two bundle runs into one directory: one after the other, never interleaved
        _fill(version, out, transport, index_url, epoch, names, say, report, target)
    return report


def _fill(version: str, out: Path, transport: Transport, index_url: str, epoch: int | None,
          names: dict[str, str | None], say: Step, report: BundleReport, target: Target | None) -> None:
    wheels = out / "wheels"
    remove_stale_temporaries(wheels)
    python = _fetch(transport, index_url, PYTHON_PROJECT, version, wheels, report, say)
    plan = _plan(version, python)
    cubin = _fetch(transport, index_url, CUBIN_PROJECT, version, wheels, report, say)
    say(f"building flashinfer-cubin-headers {version} from {cubin.name}")
    payload = _payload(plan, cubin)
    _drop_stale_own_wheel(out, payload, epoch)
    ours = _build_wheel(payload, wheels, epoch)
    resolution = _dependencies(version, target, transport, index_url, wheels, report, say)
    extra = [wheels / f.filename for f in resolution.files] if resolution else []
    say("writing the static simple index")
    _drop_stale_simple_copies(out / "simple", [python, cubin, ours, *extra])
    _write_simple(out / "simple", [python, cubin, ours, *extra])
    _write_channel(out / "conda", payload, [python, cubin], names, epoch, say, transport.progress)
    atomic_write(out / "conda-map.json", (json.dumps({"names": names}, indent=1, sort_keys=True) + "\n").encode())
    atomic_write(out / "README.txt", readme(plan, [python.name, cubin.name, ours.name], resolution).encode())
    say("writing manifest.json")
    report.files = write_manifest(out, version, report.verified)


# -- stages --------------------------------------------------------------------------------

def _fetch(transport: Transport, index_url: str, project: str, version: str, wheels: Path,
           report: BundleReport, say: Step) -> Path:
    found = find_wheel(project_files(transport, index_url, project), project, version, index_url)
    dest = safe_join(wheels, check_filename(found.filename, "wheel file name"), "wheel file name")
    if not dest.is_file():
        say(f"downloading {found.filename}" + (f" ({found.size / 1e6:.0f} MB)" if found.size else ""))
    what, transferred = fetch_verified(transport, found, dest)
    if what == PRESENT:
        say(f"{found.filename}: present, sha256 matches the index")
    report.fetched[found.filename] = what
    report.verified[f"wheels/{found.filename}"] = (found.sha256 or "").lower()
    report.transferred += transferred
    return dest


def _dependencies(version: str, target: Target | None, transport: Transport, index_url: str, wheels: Path,
                  report: BundleReport, say: Step) -> Resolution | None:
    """pip's resolution for ``target`` (None: no dependencies bundled), each wheel fetched and verified."""
    from repack.publish.dependencies import resolve

    if target is None:
        return None
    say(f"resolving flashinfer {version}'s dependencies with pip for {target.describe()}")
    resolution = resolve(version, target, index_url)
    for found in resolution.files:
        dest = safe_join(wheels, check_filename(found.filename, "wheel file name"), "wheel file name")
        if not dest.is_file():
            say(f"downloading {found.filename}")
        what, transferred = fetch_verified(transport, found, dest)
        report.fetched[found.filename] = what
        report.verified[f"wheels/{found.filename}"] = (found.sha256 or "").lower()
        report.transferred += transferred
    report.dependencies = resolution.to_json()
    return resolution


def _plan(version: str, python_wheel: Path) -> Plan:
    """The plan read from the flashinfer-python wheel just downloaded, checked against the shipped one."""
    from repack.rules.resolve import checked_plan, plan_from_wheel

    # the wheel is at hand: the shipped plan must agree with its code (an edited table builds nothing)
    plan = checked_plan(version, [(python_wheel.name, lambda: plan_from_wheel(python_wheel, version))]).plan
    require_needed(plan)
    return plan


def _payload(plan: Plan, cubin: Path) -> Payload:
    from repack.fetch.payload import fetch_payload
    from repack.fetch.sources import WheelFile

    # the plan was checked against the flashinfer-python wheel of this bundle (_plan)
    return dataclasses.replace(fetch_payload(plan, [WheelFile(cubin)], Cache(None)), pins_checked=True)


def _drop_stale_own_wheel(out: Path, payload: Payload, epoch: int | None) -> None:
    """Our wheel built earlier from other inputs (another SOURCE_DATE_EPOCH, another flashinfer-repack):
    the bundle owns it, so both copies go before the new one is written, and wheels/ and simple/ agree."""
    from repack.build.artifact import DEFAULT_EPOCH, DIST_NAME
    from repack.build.wheel import wheel_bytes, wheel_filename

    name = wheel_filename(payload.plan.version)
    fresh = wheel_bytes(payload, DEFAULT_EPOCH if epoch is None else epoch)
    for old in (out / "wheels" / name, _in_tree(out / "simple", DIST_NAME, name)):
        if old.is_file() and old.read_bytes() != fresh:
            log.info("replacing %s, built from other inputs", old)
            old.unlink()
            old.with_name(old.name + ".metadata").unlink(missing_ok=True)


def _in_tree(simple: Path, project: str, filename: str) -> Path:
    """simple/PROJECT/FILE, which the bundle may replace: refused (as publish_simple refuses it) where the
    project's folder is a link, before anything behind the link could be removed."""
    from repack.publish.simple import project_folder

    return project_folder(simple, project) / filename


def _drop_stale_simple_copies(simple: Path, wheels: list[Path]) -> None:
    """simple/ is the bundle's own: a copy there that differs from the verified wheel (left by a run
    that was interrupted or raced) goes, so that a rerun repairs the bundle instead of refusing."""
    from packaging.utils import canonicalize_name

    for wheel in wheels:
        old = _in_tree(simple, canonicalize_name(wheel.name.split("-", 1)[0]), wheel.name)
        if old.is_file() and not old.samefile(wheel) and file_sha256(old) != file_sha256(wheel):
            log.info("replacing %s, which differs from the verified %s", old, wheel)
            old.unlink()
            old.with_name(old.name + ".metadata").unlink(missing_ok=True)


def _build_wheel(payload: Payload, wheels: Path, epoch: int | None) -> Path:
    from repack.build.wheel import build_wheel

    return build_wheel(payload, wheels, epoch).path


def _write_simple(root: Path, wheels: list[Path]) -> None:
    from repack.publish.distfile import read_distfile
    from repack.publish.simple import publish_simple

    # the downloads were verified against the index's sha256 and ours was just built: no RECORD pass;
    # publish_simple hashes each file as it links it in
    publish_simple(root, [read_distfile(w, check_record=False, digests=()) for w in wheels], link=True)


def _write_channel(channel: Path, payload: Payload, wheels: list[Path], names: Mapping[str, str | None],
                   epoch: int | None, say: Step, progress: Progress | None = None) -> None:
    """The conda channel; ``progress`` (the transport's display) also follows each conversion."""
    from repack.build.conda import build_conda
    from repack.build.convert import conda_name, convert_wheel, package_filename
    from repack.publish.channel import write_repodata

    noarch = channel / "noarch"
    keep, stamps = [], _read_stamps(noarch)
    for wheel in wheels:
        target = noarch / package_filename(wheel, names)
        inputs = {"wheel_sha256": file_sha256(wheel), "epoch": epoch, "tool": __version__,
                  "names_sha256": hashlib.sha256(json.dumps(dict(names), sort_keys=True).encode()).hexdigest()}
        if not _still_converted(target, stamps.get(target.name), inputs):
            say(f"converting {wheel.name} to {target.name}")
            convert_wheel(wheel, noarch, names=names, epoch=epoch, progress=progress)
            stamps[target.name] = {"inputs": inputs, "sha256": file_sha256(target)}
        keep.append(target.name)
    _write_stamps(noarch, {k: v for k, v in stamps.items() if k in keep})
    renamed = {p: conda_name(p, names) or p for p in (PYTHON_PROJECT, CUBIN_PROJECT)}
    say("building the flashinfer-cubin-headers conda package")
    keep.append(build_conda(payload, noarch, epoch, "conda", dependency_names=renamed).path.name)
    _remove_other_builds(noarch, keep)
    for subdir in ("noarch", *PLATFORMS):  # conda asks for the platform's repodata too: an empty one answers
        write_repodata(channel / subdir, subdir)


#: Beside the converted packages (hidden: no index or manifest lists it): what each was converted from, and its
#: sha256 then.  A package is reused only when this run would convert the same wheel bytes with the same
#: settings into it and its bytes are still those; anything else (tampered, stale, another epoch) is converted again.
STAMPS = ".converted.json"


def _read_stamps(noarch: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(noarch / STAMPS, 1 << 20))
    except (OSError, ValueError, NotRegularFileError):
        return {}
    return data if isinstance(data, dict) else {}


def _still_converted(target: Path, stamp: object, inputs: dict[str, Any]) -> bool:
    if not isinstance(stamp, dict) or stamp.get("inputs") != inputs or not target.is_file():
        return False
    return bool(stamp.get("sha256") == file_sha256(target))


def _write_stamps(noarch: Path, stamps: dict[str, Any]) -> None:
    atomic_write(noarch / STAMPS, (json.dumps(stamps, indent=1, sort_keys=True) + "\n").encode())


def _remove_other_builds(noarch: Path, keep: list[str]) -> None:
    """Builds of the same packages and version made earlier with another name map would compete in a solve."""
    prefixes = {name.rsplit("-", 1)[0] + "-" for name in keep}
    for path in noarch.glob("*.conda"):
        if path.name not in keep and any(path.name.startswith(p) for p in prefixes):
            log.info("removing %s, an earlier build of a package in this bundle", path)
            path.unlink()


# -- manifest and readme ---------------------------------------------------------------------

def write_manifest(root: Path, version: str, verified: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """``manifest.json``: every file of the bundle (hidden ones aside) with its sha256 and size.

    The digests are taken now, after every file's final write, and each file in ``verified`` must
    still have the digest it was verified with: the manifest never vouches for other bytes.
    """
    files = []
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        if rel == MANIFEST or any(part.startswith(".") for part in rel.split("/")):
            continue
        path = root / rel
        files.append({"path": rel, "sha256": file_sha256(path), "size": path.stat().st_size})
    have = {f["path"]: f["sha256"] for f in files}
    changed = [rel for rel, digest in (verified or {}).items() if have.get(rel) != digest]
    if changed:
        raise BuildError(f"{', '.join(changed)} changed after it was verified",
                         "another process is writing into the bundle directory; run the bundle again alone")
    data = {"flashinfer_version": version, "generator": f"flashinfer-repack {__version__}", "files": files}
    try:
        atomic_write(root / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())
    except OSError as exc:
        raise BuildError(f"cannot write {root / MANIFEST}: {exc.strerror}", "check the output directory") from exc
    return files


#: The README's one-line check of a copied bundle: every file against manifest.json's sha256.
_CHECK_COMMAND = ("""python -c "import json,hashlib; [print('BAD', f['path']) for f in """
                  """json.load(open('manifest.json'))['files'] if hashlib.sha256(open(f['path'],'rb').read())"""
                  """.hexdigest() != f['sha256']]\"""")


def _three(v: str, pin: str) -> str:
    """The three flashinfer packages of version ``v``, pinned with ``pin`` (pip ``==``, conda ``=``)."""
    return " ".join(f"{name}{pin}{v}" for name in ("flashinfer-python", "flashinfer-cubin", "flashinfer-cubin-headers"))


def readme(plan: Plan, wheels: list[str], resolution: Resolution | None = None) -> str:
    v = plan.version
    install = (f"  pip install --no-index --find-links wheels flashinfer-python=={v} flashinfer-cubin=={v} "
               f"flashinfer-cubin-headers=={v}")
    return f"""flashinfer {v}, bundled by flashinfer-repack {__version__} for sites without network access.

Check the copy:   {_CHECK_COMMAND}

Name all three packages, with both installers: a package that was only pulled in as a requirement
is removed with the one that pulled it in (conda prunes it; pip-autoremove and uv sync do the same).

{_pip_section(v, install, resolution)}
or serve simple/ with any web server (or use file://) as an index:
  pip install --index-url file://$PWD/simple/ --extra-index-url <your mirror> {_three(v, "==")}

conda / mamba / pixi (pytorch and the other requirements from your conda-forge mirror; the conda
channel holds only the three flashinfer packages):
  conda install -c file://$PWD/conda -c <your conda-forge mirror> {_three(v, "=")}
Later, "conda remove flashinfer-cubin-headers" leaves flashinfer-python and flashinfer-cubin installed.

The headers then lie where flashinfer-python {v} looks for them
(site-packages/flashinfer_cubin/cubins/{plan.dest_dir}/), and it starts without network.

Files: {", ".join(wheels)}
"""


def _pip_section(v: str, install: str, resolution: Resolution | None) -> str:
    if resolution is None:
        return f"""pip: this bundle holds flashinfer-python, flashinfer-cubin and flashinfer-cubin-headers ONLY.
flashinfer's third-party dependencies (torch, numpy, apache-tvm-ffi, requests, ...) are not in it:
they must come from your site's mirror, or `--no-index` fails on a clean machine:
  pip install --find-links wheels --index-url <your mirror> {_three(v, "==")}
(A bundle made with its dependencies holds every wheel, and then the --no-index command works.)"""
    target = resolution.target
    dropped = resolution.dropped
    head = (f"pip: wheels/ holds everything flashinfer-python needs on {target.describe()}"
            f" ({len(resolution.kept)} projects, resolved by pip)")
    if not dropped:
        return f"{head}. On a clean machine of that platform, with no index at all:\n{install}"
    one = len(target.excludes) == 1
    only_theirs = ", ".join(n for n in dropped if n not in target.excludes) or "nothing else"
    return (f"{head}, except {', '.join(target.excludes)}: install {'it' if one else 'them'} "
            f"first from your site's mirror (with what only {'it needs' if one else 'they need'}: "
            f"{only_theirs}), then, with no index at all:\n{install}")
