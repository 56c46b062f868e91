"""A local conda channel: add packages, keep each ``<subdir>/repodata.json`` right.

Every package is read in full and checked against its own ``paths.json``
before the channel is touched; then, under a lock, a package already there
under the same name must have the same bytes (it is skipped), and no file of
a new package may be owned by a package of another name that could share its
environment.  Packages are copied in beside their target and renamed, then
``repodata.json`` is rewritten the same way: an interrupted publish leaves at
most an unindexed package, which the next publish indexes.

A repodata entry is the package's ``info/index.json`` plus ``size``,
``sha256`` and ``md5``, which is what conda, mamba and rattler read.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from repack.build.conda_archive import (
    SUFFIXES,
    iter_members,
    read_members,
    split_filename,
)
from repack.errors import PublishError, SourceError
from repack.fetch.digest import file_digests
from repack.fs import atomic_write

log = logging.getLogger(__name__)

LOCK_NAME = ".flashinfer-repack.lock"
SUBDIR = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
SITE_PACKAGES = re.compile(r"^(?:site-packages|lib/python\d+\.\d+t?/site-packages|Lib/site-packages)/")
ARCHIVE_FIX = "build it again; publish checks every file against the package's own paths.json"


@dataclass(frozen=True)
class CondaPackage:
    """A conda package file that was read in full and found consistent."""

    path: Path
    index: Mapping = field(repr=False)
    paths: tuple[str, ...] = field(repr=False)
    sha256: str = ""
    md5: str = ""
    size: int = 0

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return self.index["name"]

    @property
    def subdir(self) -> str:
        return self.index["subdir"]

    def repodata_entry(self) -> dict:
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

    def to_json(self) -> dict:
        return {"filename": self.filename, "subdir": self.subdir, "action": self.action,
                "sha256": self.sha256, "size": self.size}


# -- reading a package -------------------------------------------------------------------

def inspect_package(path: Path) -> CondaPackage:
    """Read ``path`` completely and check it; PublishError names the first problem."""
    path = Path(path)
    try:
        name, version, build, _ = split_filename(path.name)
    except ValueError as exc:
        raise PublishError(f"{path}: {exc}", "give conda packages named NAME-VERSION-BUILD.conda or .tar.bz2") from None
    try:
        hashes = _file_hashes(path)
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc.strerror}", "check the path of the package") from exc
    info, payload = _scan(path)
    index = _index_json(path, info, (name, version, build))
    return CondaPackage(path, index, _checked_paths(path, info, payload), *hashes)


def _scan(path: Path) -> tuple[dict[str, bytes], dict[str, tuple[int, str]]]:
    """One streamed pass: the ``info/`` files, and (size, sha256) of every other file."""
    info, payload = {}, {}
    try:
        for name, data in iter_members(path):
            if name.startswith("info/"):
                info[name] = data
            else:
                payload[name] = (len(data), hashlib.sha256(data).hexdigest())
    except SourceError as exc:
        raise PublishError(str(exc), exc.hint) from exc
    return info, payload


def _index_json(path: Path, members: dict[str, bytes], expected: tuple[str, str, str]) -> dict:
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
        raise PublishError(f"{path.name}: info/index.json says {'-'.join(found)}, the file name says {'-'.join(expected)}",
                           "do not rename conda packages; conda identifies them by their file name")
    subdir = index.get("subdir") or ("noarch" if index.get("noarch") else None)
    if not isinstance(subdir, str) or not SUBDIR.match(subdir):
        raise PublishError(f"{path.name}: info/index.json has no valid subdir ({index.get('subdir')!r})", ARCHIVE_FIX)
    return {**index, "subdir": subdir}


def _checked_paths(path: Path, info: dict[str, bytes], payload: dict[str, tuple[int, str]]) -> tuple[str, ...]:
    """The package's files, each checked against paths.json (size and sha256) when it has one."""
    if "info/paths.json" not in info:
        return tuple(sorted(payload))
    try:
        listed = {e["_path"]: e for e in json.loads(info["info/paths.json"])["paths"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"{path.name}: info/paths.json is malformed ({exc})", ARCHIVE_FIX) from exc
    problems = [f"{p}: in the archive, not in paths.json" for p in sorted(set(payload) - set(listed))]
    for p, entry in sorted(listed.items()):
        if p not in payload:
            problems.append(f"{p}: in paths.json, not in the archive")
        elif entry.get("path_type", "hardlink") == "hardlink" and not _matches(payload[p], entry):
            problems.append(f"{p}: size or sha256 differs from paths.json")
    if problems:
        raise PublishError(f"{path.name} is inconsistent: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), ARCHIVE_FIX)
    return tuple(sorted(listed))


def _matches(found: tuple[int, str], entry: dict) -> bool:
    size, digest = found
    return entry.get("size_in_bytes", size) == size and entry.get("sha256", digest) == digest


def _noarch_type(index: Mapping) -> str | None:
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
        for subdir in sorted({p.subdir for p in incoming} | {"noarch"}):
            write_repodata(channel / subdir, subdir)
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
    results, new = [], {}
    for pkg in incoming:
        key = f"{pkg.subdir}/{pkg.filename}"
        there = present.get(key)
        if there is not None and there.sha256 != pkg.sha256:
            raise PublishError(f"{channel / key} already exists with other bytes (sha256 {there.sha256}, "
                               f"yours {pkg.sha256})",
                               "conda caches packages by file name: raise the --build-number instead of replacing it")
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
    try:
        paths = tuple(e["_path"] for e in json.loads(members["info/paths.json"])["paths"])
    except (KeyError, ValueError, TypeError):
        paths = tuple(members.get("info/files", b"").decode("utf-8", "replace").split())
    return CondaPackage(path, index, paths, *_file_hashes(path))


def _file_hashes(path: Path) -> tuple[str, str, int]:
    digests = file_digests(path, ("sha256", "md5"))
    return digests["sha256"], digests["md5"], path.stat().st_size


@contextmanager
def _locked(channel: Path) -> Iterator[None]:
    """Serialise publishers of one channel; the lock file also proves the channel is writable."""
    try:
        channel.mkdir(parents=True, exist_ok=True)
        fh = open(channel / LOCK_NAME, "a")
    except OSError as exc:
        raise PublishError(f"cannot write to the channel {channel}: {exc.strerror}",
                           "choose a directory you can write, or fix its permissions") from exc
    with fh:
        try:
            import fcntl
            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # no flock on this platform: publishers must take turns themselves
            pass
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

def write_repodata(subdir_path: Path, subdir: str) -> dict:
    """Rewrite ``repodata.json`` of one subdir from the packages in it, atomically; return it."""
    repodata = repodata_for(subdir_path, subdir)
    data = (json.dumps(repodata, indent=2, sort_keys=True) + "\n").encode("utf-8")
    target = subdir_path / "repodata.json"
    try:
        if not target.is_file() or target.read_bytes() != data:
            atomic_write(target, data)
        _refresh_variants(subdir_path, data)
    except OSError as exc:
        raise PublishError(f"cannot write {target}: {exc.strerror}",
                           "check the space and permissions of the channel directory; publish again to repair") from exc
    return repodata


def repodata_for(subdir_path: Path, subdir: str) -> dict:
    """Entries for every package file in the subdir, reusing known entries whose size still matches."""
    known = _read_repodata(subdir_path / "repodata.json")
    groups: dict[str, dict] = {".tar.bz2": {}, ".conda": {}}
    for path in sorted(subdir_path.glob("*")) if subdir_path.is_dir() else []:
        suffix = next((s for s in SUFFIXES if path.name.endswith(s)), None)
        if suffix is None or path.name.startswith("."):
            continue
        entry = known.get(path.name)
        if entry is None or entry.get("size") != path.stat().st_size:
            try:
                entry = _inspect_metadata(path).repodata_entry()
            except (PublishError, OSError, ValueError) as exc:
                log.warning("leaving unreadable %s out of the index: %s", path, exc)
                continue
        groups[suffix][path.name] = entry
    return {"info": {"subdir": subdir}, "packages": groups[".tar.bz2"], "packages.conda": groups[".conda"],
            "removed": [], "repodata_version": 1}


def _read_repodata(path: Path) -> dict[str, dict]:
    try:
        repodata = json.loads(path.read_bytes())
        return {**repodata.get("packages", {}), **repodata.get("packages.conda", {})}
    except (OSError, ValueError, AttributeError):
        return {}


def _refresh_variants(subdir_path: Path, data: bytes) -> None:
    """Compressed copies that another indexer left would shadow the new repodata.json: renew them."""
    variants = {"repodata.json.bz2": lambda d: bz2.compress(d, 9)}
    zst = subdir_path / "repodata.json.zst"
    if zst.exists():
        import zstandard

        variants["repodata.json.zst"] = zstandard.ZstdCompressor(level=19).compress
    for name, compress in variants.items():
        if (subdir_path / name).exists():
            atomic_write(subdir_path / name, compress(data))
    shards = subdir_path / "repodata_shards.msgpack.zst"
    if shards.exists():
        log.warning("removing stale sharded repodata %s (flashinfer-repack writes repodata.json only)", shards)
        shards.unlink()
