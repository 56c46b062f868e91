"""A local conda channel: add packages, keep every index file of each subdir right.

Every package is read in full before the channel is touched, and its
``paths.json`` must vouch for every payload file: listed once, as a regular
file (``hardlink``), with its size and sha256 (compared case-insensitively),
and the archive member must be a regular file too.  Then, under a lock, a
package already there under the same name must have the same bytes (it is
skipped), and no file of a new package may be owned by a package of another
name that could share its environment.  Packages are copied in beside their
target and renamed, then the index is rewritten the same way: an interrupted
publish leaves at most an unindexed package, which the next publish indexes.

A repodata entry is the package's ``info/index.json`` plus ``size``,
``sha256`` and ``md5``.  An entry is reused only while the file's size, mtime
and inode all equal those recorded in ``.flashinfer-repack-index.json`` when
it was hashed; anything else is read and hashed again.

Besides ``repodata.json`` every subdir gets ``repodata.json.zst``, which conda
(``repodata_use_zst``) and rattler fetch first.  What conda-index left is kept
consistent: ``current_repodata.json`` (which conda reads before
``repodata.json``; rewritten as the full repodata, a valid superset),
compressed copies of both, and ``run_exports.json`` are rewritten;
``channeldata.json``, ``index.html``, ``rss.xml`` and sharded repodata, which
this module cannot render, are removed with a warning (conda-index rebuilds
them).  ``noarch`` and the platform subdirs conda asks for get a repodata even
when empty, as :data:`PLATFORMS` lists.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repack.build.conda_archive import (
    SUFFIXES,
    iter_entries,
    read_members,
    split_filename,
)
from repack.errors import InputError, PublishError, SourceError
from repack.fetch.digest import file_digests
from repack.fs import (
    NotRegularFileError,
    atomic_write,
    identity,
    is_safe_relpath,
    locked,
    not_a_folder_hint,
    read_regular,
)

log = logging.getLogger(__name__)

LOCK_NAME = ".flashinfer-repack.lock"
#: Per subdir: filename -> size, mtime, inode and the entry hashed from those bytes.
STAT_INDEX = ".flashinfer-repack-index.json"
#: The platforms FlashInfer publishes for: conda asks for ``<platform>/repodata.json`` beside noarch's.
PLATFORMS = ("linux-64", "linux-aarch64")
#: conda-index's files that are derived from every subdir and cannot be rendered here: removed when stale.
UNRENDERED_ROOT = ("channeldata.json", "index.html", "rss.xml")
UNRENDERED_SUBDIR = ("index.html", "repodata_shards.msgpack.zst")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
SUBDIR = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
SITE_PACKAGES = re.compile(r"^(?:site-packages|lib/python\d+\.\d+t?/site-packages|Lib/site-packages)/")
ARCHIVE_FIX = "build it again; publish checks every file against the package's own paths.json"


@dataclass(frozen=True)
class CondaPackage:
    """A conda package file that was read in full and found consistent."""

    path: Path
    index: Mapping[str, Any] = field(repr=False)
    paths: tuple[str, ...] = field(repr=False)
    sha256: str = ""
    md5: str = ""
    size: int = 0
    run_exports: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return str(self.index["name"])

    @property
    def subdir(self) -> str:
        return str(self.index["subdir"])

    def repodata_entry(self) -> dict[str, Any]:
        return {**self.index, "md5": self.md5, "sha256": self.sha256, "size": self.size}

    def owned_paths(self) -> set[str]:
        """Paths as installed, with every Python's site-packages folded into one, to compare packages."""
        noarch_python = _noarch_type(self.index) == "python"
        out = set()
        for p in self.paths:
            if noarch_python and p.startswith("python-scripts/"):
                p = "bin/" + p[len("python-scripts/"):]
            out.add(SITE_PACKAGES.sub("<site-packages>/", p))
        return out


@dataclass(frozen=True)
class ChannelResult:
    filename: str
    subdir: str
    action: str          # "added" or "skipped" (already there, same sha256)
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "subdir": self.subdir, "action": self.action,
                "sha256": self.sha256, "size": self.size}


# -- reading a package -------------------------------------------------------------------

def inspect_package(path: Path) -> CondaPackage:
    """Read ``path`` completely and check it; PublishError names the first problem."""
    path = Path(path)
    try:
        name, version, build, _ = split_filename(path.name)
    except ValueError as exc:
        # a file that is no conda package is the caller's mistake, as a non-wheel given for an index is
        raise InputError(f"{path}: {exc}", "give conda packages named NAME-VERSION-BUILD.conda or .tar.bz2",
                         value=path.name, expected="NAME-VERSION-BUILD.conda or .tar.bz2", path=str(path)) from None
    if not path.is_file():  # as read_distfile says of a wheel that is not there
        raise InputError(f"{path}: no such file", "give the path of a built conda package", path=str(path))
    try:
        before = identity(path)
        hashes = _file_hashes(path)
        info, payload = _scan(path)
        after = identity(path)
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc.strerror}", "check the path of the package") from exc
    if before != after or after[1] != hashes[2]:  # the bytes scanned must be the bytes hashed (and copied)
        raise PublishError(f"{path} changed while it was being checked",
                           "publish it again once nothing writes to it or replaces it")
    index = _index_json(path, info, (name, version, build))
    return CondaPackage(path, index, _checked_paths(path, info, payload), *hashes,
                        run_exports=_run_exports(path, info))


@dataclass(frozen=True)
class Found:
    """A payload member as the archive holds it."""

    kind: str        # "file", "symlink" or "hardlink" (conda_archive.iter_entries)
    size: int
    sha256: str


def _scan(path: Path) -> tuple[dict[str, bytes], dict[str, Found]]:
    """One streamed pass: the ``info/`` files, and kind, size and sha256 of every other member."""
    info, payload = {}, {}
    try:
        for name, kind, data in iter_entries(path):
            if name.startswith("info/"):
                info[name] = data
            else:
                payload[name] = Found(kind, len(data), hashlib.sha256(data).hexdigest())
    except SourceError as exc:
        raise PublishError(str(exc), exc.hint) from exc
    return info, payload


def _run_exports(path: Path, info: Mapping[str, bytes]) -> dict[str, Any]:
    """``info/run_exports.json`` (what conda-index lists in run_exports.json), or {}."""
    if "info/run_exports.json" not in info:
        return {}
    try:
        found = json.loads(info["info/run_exports.json"])
    except ValueError as exc:
        raise PublishError(f"{path.name}: info/run_exports.json is not JSON ({exc})", ARCHIVE_FIX) from exc
    if not isinstance(found, dict):
        raise PublishError(f"{path.name}: info/run_exports.json is not a JSON object", ARCHIVE_FIX)
    return found


def _index_json(path: Path, members: dict[str, bytes], expected: tuple[str, str, str]) -> dict[str, Any]:
    try:
        index = json.loads(members["info/index.json"])
    except KeyError:
        raise PublishError(f"{path.name} has no info/index.json", ARCHIVE_FIX) from None
    except ValueError as exc:
        raise PublishError(f"{path.name}: info/index.json is not JSON ({exc})", ARCHIVE_FIX) from exc
    if not isinstance(index, dict):
        raise PublishError(f"{path.name}: info/index.json is not a JSON object", ARCHIVE_FIX)
    found = tuple(str(index.get(k, "")) for k in ("name", "version", "build"))
    if found != expected:
        raise PublishError(f"{path.name}: info/index.json says {'-'.join(found)}, "
                           f"the file name says {'-'.join(expected)}",
                           "do not rename conda packages; conda identifies them by their file name")
    subdir = index.get("subdir") or ("noarch" if index.get("noarch") else None)
    if not isinstance(subdir, str) or not SUBDIR.match(subdir):
        raise PublishError(f"{path.name}: info/index.json has no valid subdir ({index.get('subdir')!r})", ARCHIVE_FIX)
    return {**index, "subdir": subdir}


@dataclass(frozen=True)
class PathEntry:
    """One entry of ``info/paths.json``; ``sha256`` lower-case, or None (like ``size``) when not given."""

    path: str
    path_type: str
    sha256: str | None
    size: int | None


def parse_paths_json(data: bytes, label: str) -> dict[str, PathEntry]:
    """``info/paths.json`` of ``label`` by path; PublishError for anything malformed, never another error."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PublishError(f"{label}: info/paths.json is not JSON ({exc})", ARCHIVE_FIX) from exc
    if not isinstance(doc, dict) or doc.get("paths_version") != 1:
        version = doc.get("paths_version") if isinstance(doc, dict) else None
        raise PublishError(f"{label}: info/paths.json has paths_version {version!r}, expected 1", ARCHIVE_FIX)
    if not isinstance(doc.get("paths"), list):
        raise PublishError(f"{label}: info/paths.json's 'paths' is not a list", ARCHIVE_FIX)
    out: dict[str, PathEntry] = {}
    for raw in doc["paths"]:
        entry = _path_entry(raw, label)
        if entry.path in out:
            raise PublishError(f"{label}: info/paths.json: {entry.path!r} is listed twice", ARCHIVE_FIX)
        out[entry.path] = entry
    return out


def _path_entry(raw: object, label: str) -> PathEntry:
    def refuse(what: str) -> PublishError:
        return PublishError(f"{label}: info/paths.json: {what}", ARCHIVE_FIX)

    if not isinstance(raw, dict) or not isinstance(raw.get("_path"), str):
        raise refuse(f"entry {str(raw)[:80]!r} has no '_path' string")
    path = raw["_path"]
    if not is_safe_relpath(path):
        raise refuse(f"{path!r} is not a safe relative path")
    if not isinstance(raw.get("path_type"), str):
        raise refuse(f"{path}: no path_type")
    sha256, size = raw.get("sha256"), raw.get("size_in_bytes")
    if sha256 is not None and (not isinstance(sha256, str) or not SHA256.match(sha256)):
        raise refuse(f"{path}: {str(sha256)[:80]!r} is not a sha256")
    if size is not None and (type(size) is not int or size < 0):
        raise refuse(f"{path}: {str(size)[:80]!r} is not a size")
    return PathEntry(path, raw["path_type"], sha256.lower() if sha256 else None, size)


def _checked_paths(path: Path, info: dict[str, bytes], payload: dict[str, Found]) -> tuple[str, ...]:
    """The package's files: paths.json must list each as a regular file with its size and sha256."""
    if "info/paths.json" not in info:
        raise PublishError(f"{path.name} has no info/paths.json, so nothing vouches for its files", ARCHIVE_FIX)
    listed = parse_paths_json(info["info/paths.json"], path.name)
    problems = [f"{p}: in the archive, not in paths.json" for p in sorted(set(payload) - set(listed))]
    for p, entry in sorted(listed.items()):
        problems += _path_problems(p, entry, payload.get(p))
    if problems:
        raise PublishError(f"{path.name} is inconsistent: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), ARCHIVE_FIX)
    return tuple(sorted(listed))


def _path_problems(p: str, entry: PathEntry, found: Found | None) -> list[str]:
    """Why ``entry`` does not vouch for ``found`` (empty when it does)."""
    if found is None:
        return [f"{p}: in paths.json, not in the archive"]
    if entry.path_type != "hardlink":
        return [f"{p}: paths.json lists it as {entry.path_type!r}, not as a regular file"]
    if found.kind != "file":
        return [f"{p}: a {found.kind} in the archive, not a regular file"]
    if entry.sha256 is None:
        return [f"{p}: paths.json gives no sha256"]
    if entry.size is None:
        return [f"{p}: paths.json gives no size_in_bytes"]
    if (entry.size, entry.sha256) != (found.size, found.sha256):
        return [f"{p}: size or sha256 differs from paths.json"]
    return []


def _noarch_type(index: Mapping[str, Any]) -> str | None:
    noarch = index.get("noarch")
    return noarch.get("type") if isinstance(noarch, dict) else noarch


# -- the channel ---------------------------------------------------------------------------

def publish_channel(channel: Path, files: list[Path]) -> list[ChannelResult]:
    """Add ``files`` to the channel directory ``channel`` (created if missing); idempotent."""
    channel = Path(channel)
    incoming = [inspect_package(f) for f in files]  # nothing is touched unless every file is sound
    _refuse_duplicates(incoming)
    with _locked(channel):
        present = _channel_packages(channel)
        results, new = _classify(incoming, present, channel)
        _refuse_collisions(new, present)
        for pkg in new:
            _atomic_copy(pkg, channel / pkg.subdir / pkg.filename)
        for subdir in sorted({p.subdir for p in incoming} | {"noarch", *PLATFORMS}):
            write_repodata(channel / subdir, subdir)
        _remove_unrendered(channel, UNRENDERED_ROOT)
    return results


def _refuse_duplicates(incoming: list[CondaPackage]) -> None:
    seen: dict[str, CondaPackage] = {}
    for pkg in incoming:
        other = seen.setdefault(pkg.filename, pkg)
        if other.sha256 != pkg.sha256:
            raise PublishError(f"two different files named {pkg.filename} were given ({other.path}, {pkg.path})",
                               "publish one of them")


def _classify(incoming: list[CondaPackage], present: dict[str, CondaPackage],
              channel: Path) -> tuple[list[ChannelResult], list[CondaPackage]]:
    results: list[ChannelResult] = []
    new: dict[str, CondaPackage] = {}
    for pkg in incoming:
        key = f"{pkg.subdir}/{pkg.filename}"
        there = present.get(key)
        if there is not None and there.sha256 != pkg.sha256:
            raise PublishError(f"{channel / key} already exists with other bytes (sha256 {there.sha256}, "
                               f"yours {pkg.sha256})",
                               "conda caches packages by file name: raise the build number instead of replacing it",
                               path=str(channel / key), setting="build_number")
        if there is None:
            new.setdefault(key, pkg)  # the same file given twice is copied once
        results.append(ChannelResult(pkg.filename, pkg.subdir, "skipped" if there else "added", pkg.sha256, pkg.size))
    return results, list(new.values())


def _refuse_collisions(new: list[CondaPackage], present: dict[str, CondaPackage]) -> None:
    """A file of a new package must not belong to a package of another name in the same environment."""
    others = list(present.values()) + new
    for pkg in new:
        mine = pkg.owned_paths()
        for other in others:
            if other.name == pkg.name or not _may_share_env(pkg, other):
                continue
            clash = sorted(mine & other.owned_paths())
            if clash:
                raise PublishError(f"{pkg.filename} would overwrite {clash[0]}"
                                   + (f" (and {len(clash) - 1} more)" if len(clash) > 1 else "")
                                   + f", a file of {other.subdir}/{other.filename}",
                                   "one file can belong to only one package; remove it from one of them")


def _may_share_env(a: CondaPackage, b: CondaPackage) -> bool:
    return a.subdir == b.subdir or "noarch" in (a.subdir, b.subdir)


def _channel_packages(channel: Path) -> dict[str, CondaPackage]:
    """Every readable package in the channel, by ``subdir/filename`` (metadata only)."""
    out = {}
    for path in sorted(channel.glob("*/*")):
        if not path.name.endswith(SUFFIXES) or not SUBDIR.match(path.parent.name):
            continue
        try:
            out[f"{path.parent.name}/{path.name}"] = _inspect_metadata(path)
        except (PublishError, OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s in the channel: %s", path, exc)
    return out


def _inspect_metadata(path: Path) -> CondaPackage:
    """A package already in the channel: its metadata and hashes, without re-checking its payload."""
    try:
        members = read_members(path, info_only=True)
    except SourceError as exc:
        raise PublishError(str(exc), exc.hint) from exc
    name, version, build, _ = split_filename(path.name)
    index = _index_json(path, members, (name, version, build))
    if "info/paths.json" in members:
        paths = tuple(parse_paths_json(members["info/paths.json"], path.name))
    else:  # an old package: its file list is all there is (publish refuses such packages; they may be there)
        paths = tuple(members.get("info/files", b"").decode("utf-8", "replace").split())
    return CondaPackage(path, index, paths, *_file_hashes(path), run_exports=_run_exports(path, members))


def _file_hashes(path: Path) -> tuple[str, str, int]:
    digests = file_digests(path, ("sha256", "md5"))
    return digests["sha256"], digests["md5"], path.stat().st_size


@contextmanager
def _locked(channel: Path) -> Iterator[None]:
    """Serialise publishers of one channel; taking the lock also proves the channel is writable."""
    with ExitStack() as stack:
        try:  # only taking the lock is this error; an OSError of the block below stays its own
            channel.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked(channel / LOCK_NAME))
        except OSError as exc:
            if blocked := not_a_folder_hint(channel, exc):  # a mistake in the command line
                raise InputError(f"cannot create the channel {channel}: {blocked}",
                                 "give a folder (it is created if missing) whose parents are folders",
                                 path=str(channel)) from exc
            raise PublishError(f"cannot write to the channel {channel}: {exc.strerror}",
                               "choose a directory you can write, or fix its permissions") from exc
        yield


def _atomic_copy(pkg: CondaPackage, dest: Path) -> None:
    """Copy beside the target, check the bytes, rename: never a partial package under its name."""
    hint = "check the space and permissions of the channel directory"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise PublishError(f"cannot write into {dest.parent}: {exc.strerror}", hint) from exc
    try:
        with os.fdopen(fd, "wb") as out, open(pkg.path, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
        if _file_hashes(Path(tmp))[0] != pkg.sha256:
            raise PublishError(f"{pkg.path} changed while it was being published", "publish it again")
        os.replace(tmp, dest)
    except OSError as exc:
        raise PublishError(f"cannot copy {pkg.filename} into {dest.parent}: {exc.strerror}", hint) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after a successful rename


# -- repodata ------------------------------------------------------------------------------

def write_repodata(subdir_path: Path, subdir: str) -> dict[str, Any]:
    """Rewrite one subdir's index files from the packages in it, atomically; return the repodata."""
    entries = subdir_entries(subdir_path)
    repodata = _repodata(entries, subdir)
    run_exports = {"info": {"subdir": subdir},
                   **_by_format(entries, lambda e: {"run_exports": e.get("run_exports", {})})}
    data = _json_bytes(repodata)
    try:
        subdir_path.mkdir(parents=True, exist_ok=True)
        _write_with_variants(subdir_path / "repodata.json", data, always=(".zst",))
        if (subdir_path / "current_repodata.json").exists():  # conda reads it first: the full set is a valid one
            _write_with_variants(subdir_path / "current_repodata.json", data, always=())
        if (subdir_path / "run_exports.json").exists():
            _write_if_changed(subdir_path / "run_exports.json", _json_bytes(run_exports))
        _remove_unrendered(subdir_path, UNRENDERED_SUBDIR)
        _write_if_changed(subdir_path / STAT_INDEX, _json_bytes({"files": entries, "version": 1}))
    except OSError as exc:
        raise PublishError(f"cannot write the index of {subdir_path}: {exc.strerror}",
                           "check the space and permissions of the channel directory; publish again to repair") from exc
    return repodata


def repodata_for(subdir_path: Path, subdir: str) -> dict[str, Any]:
    """The repodata of one subdir as write_repodata would write it (entries re-hashed unless unchanged)."""
    return _repodata(subdir_entries(subdir_path), subdir)


def _repodata(entries: dict[str, dict[str, Any]], subdir: str) -> dict[str, Any]:
    """What conda, mamba and rattler read: each package's index.json plus size, sha256 and md5."""
    return {"info": {"subdir": subdir}, "removed": [], "repodata_version": 1,
            **_by_format(entries, lambda e: e["entry"])}


def subdir_entries(subdir_path: Path) -> dict[str, dict[str, Any]]:
    """filename -> {size, mtime_ns, ino, entry, run_exports} for every readable package of the subdir.

    A recorded entry is reused only while size, mtime and inode all match:
    other bytes under the same name and size are read and hashed again.
    """
    known = _read_stat_index(subdir_path / STAT_INDEX)
    out = {}
    for path in sorted(subdir_path.glob("*")) if subdir_path.is_dir() else []:
        if path.name.startswith(".") or not path.name.endswith(SUFFIXES):
            continue
        try:
            st = path.stat()
        except OSError as exc:  # removed meanwhile by someone else: nothing to index
            log.warning("leaving %s out of the index: %s", path, exc)
            continue
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        recorded = known.get(path.name)
        if isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in stamp.items()) \
                and isinstance(recorded.get("entry"), dict):
            out[path.name] = recorded
            continue
        try:
            pkg = _inspect_metadata(path)
        except (PublishError, OSError, ValueError) as exc:
            log.warning("leaving unreadable %s out of the index: %s", path, exc)
            continue
        out[path.name] = {**stamp, "entry": pkg.repodata_entry(), "run_exports": dict(pkg.run_exports)}
    return out


def _by_format(entries: dict[str, dict[str, Any]], value: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {"packages": {}, "packages.conda": {}}
    for name, recorded in entries.items():
        groups["packages.conda" if name.endswith(".conda") else "packages"][name] = value(recorded)
    return groups


def _read_stat_index(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(read_regular(path, 256 << 20)).get("files", {})
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError, AttributeError, NotRegularFileError):
        return {}


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_if_changed(target: Path, data: bytes) -> None:
    if not _same_bytes(target, data):
        atomic_write(target, data)


def _same_bytes(target: Path, data: bytes) -> bool:
    try:
        return read_regular(target, len(data)) == data
    except (OSError, NotRegularFileError):  # missing, not a file, or larger: not the same
        return False


def _write_with_variants(target: Path, data: bytes, always: tuple[str, ...]) -> None:
    """``target`` and its compressed copies: those in ``always``, and any another indexer left (they shadow it)."""
    _write_if_changed(target, data)
    for suffix, compress in (".zst", _zstd_compress), (".bz2", lambda d: bz2.compress(d, 9)):
        variant = target.with_name(target.name + suffix)
        if suffix in always or variant.exists():
            _write_if_changed(variant, compress(data))  # fixed levels: the same data, the same bytes


def _zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(data)


def _remove_unrendered(directory: Path, names: tuple[str, ...]) -> None:
    """conda-index's derived files this module cannot render: stale now, so removed, and said so."""
    for name in names:
        stale = directory / name
        if stale.is_file():
            stale.unlink()
            log.warning("removed %s: it no longer matches the channel and flashinfer-repack cannot render it "
                        "(run conda-index on the channel to rebuild it)", stale)
