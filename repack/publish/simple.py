"""A static simple-API tree: a package index that is only files.

Layout (every page regenerated, atomically, each time a file is added)::

    DIR/index.html                     PEP 503 project list
    DIR/index.json                     PEP 691 project list
    DIR/<project>/index.html           PEP 503 page: #sha256= fragments, data-requires-python,
                                       data-core-metadata / data-dist-info-metadata (PEP 658/714)
    DIR/<project>/index.json           PEP 691 (api 1.1) page: hashes, size, core-metadata, versions
    DIR/<project>/<wheel>              the files themselves, beside their page
    DIR/<project>/<wheel>.metadata     the wheel's METADATA (PEP 658)

``<project>`` is the PEP 503 normalised name.  pip, uv and this package read
the HTML pages over ``file://`` and from any static web server (a directory URL
serves its ``index.html``).  A static server cannot negotiate content types, so
the PEP 691 JSON lies beside the HTML as ``index.json``: clients that want JSON
ask for it by name, or a server maps ``Accept: application/vnd.pypi.simple.v1+json``
to it.  Pages hold no timestamps: the same files give the same bytes.

A name already in the tree with other bytes is refused; with the same bytes it
is skipped.  One writer at a time (an advisory lock on ``DIR/.lock``).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from repack.errors import InputError, IntegrityError, PublishError, RepackError
from repack.fetch.digest import file_sha256
from repack.fs import (
    NotRegularFileError,
    atomic_write,
    check_filename,
    identity,
    locked,
    not_a_folder_hint,
    read_regular,
    remove_stale_temporaries,
    safe_join,
)
from repack.publish.distfile import DistFile, read_distfile

API_VERSION = "1.1"


@dataclass(frozen=True)
class Added:
    filename: str
    action: str          # "added" or "skipped" (already there, identical bytes)
    sha256: str
    path: Path

    def to_json(self) -> dict[str, str]:
        return {"filename": self.filename, "action": self.action, "sha256": self.sha256, "path": str(self.path)}


@dataclass(frozen=True)
class Entry:
    """One file as its project page lists it."""

    filename: str
    sha256: str
    size: int
    requires_python: str | None
    metadata_sha256: str | None


#: ``check(dist, staged_copy)``: the checked ``dist``, or an error; run on the copy before it is placed.
Check = Callable[[DistFile, Path], DistFile]


def publish_simple(root: Path, dists: Sequence[DistFile], *, link: bool = False,
                   check: Check | None = None) -> list[Added]:
    """Add ``dists`` to the tree at ``root`` and regenerate its pages.

    Each new file is first copied beside its place under a temporary name and hashed there, so the
    sha256 on the pages (and ``check``, the RECORD check of a publish) is of the bytes served.  Only
    when every file is staged, checked and free of conflict is any of them renamed into place: a
    failed publish leaves the tree as it was.  ``link`` hard-links files into the tree where the
    filesystem allows (a bundle keeps one copy of a 270 MB wheel), copying otherwise.
    """
    root = Path(root)
    names = [d.filename for d in dists]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:  # two files, one name: the second would replace the first unseen
        raise InputError(f"{twice} is given more than once", "give each file once", value=twice)
    _make_root(root)
    with _locked(root):
        remove_stale_temporaries(root)  # copies staged by a run that was killed (none is live: the lock)
        staged: list[tuple[DistFile, Path | None]] = []
        try:
            for d in dists:
                staged.append(_stage(root, d, link, check))
            for project in sorted({d.project for d in dists}):  # the pages must be writable before any rename:
                _check_project_folder(root, project)             # a damaged wheel already there stops it here
            results = [_commit(root, d, tmp) for d, tmp in staged]
        finally:
            for _, tmp in staged:  # renamed into place already, unless something failed
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
        for project in sorted({d.project for d in dists}):
            write_project_pages(root, project)
        write_root_pages(root)
    return results


def project_folder(root: Path, project: str) -> Path:
    """The project's folder in the tree (it may not exist yet); IntegrityError where something else has its
    path: a file, or a link (what it points to is not the tree's to write or remove)."""
    folder = root / check_filename(project, "project name")
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise IntegrityError(f"the tree holds {folder}, which is not a folder" +
                             (" (a link)" if folder.is_symlink() else ""),
                             "remove it from the tree (then publish again)", path=str(folder))
    return folder


def _check_project_folder(root: Path, project: str) -> None:
    """IntegrityError unless the project's folder is missing, or a real folder whose every wheel can be listed.

    Checked for every project before any file is renamed into place: a failed publish leaves the tree as it was.
    """
    if project_folder(root, project).is_dir():
        project_entries(root, project)


def _make_root(root: Path) -> None:
    """The tree's folder, created if missing; InputError where something else has its path."""
    if (root.exists() or root.is_symlink()) and not root.is_dir():
        raise InputError(f"{root} is not a directory: the simple tree must be a folder",
                         "give the folder of the tree (it is created if missing), not a file in it",
                         path=str(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:  # a file where one of its parents should be
        raise InputError(f"cannot create the simple tree {root}: {not_a_folder_hint(root, exc) or exc.strerror}",
                         "give a folder whose parents are folders", path=str(root)) from exc
    except OSError as exc:
        raise PublishError(f"cannot create the simple tree {root}: {exc.strerror}",
                           "choose a writable directory") from exc


def _stage(root: Path, dist: DistFile, link: bool, check: Check | None) -> tuple[DistFile, Path | None]:
    """``dist`` as it will be published, and its staged copy (None when the tree has these bytes)."""
    target = _target(root, dist)
    if target.exists():
        hashed = dist if dist.sha256 else replace(dist, sha256=file_sha256(dist.path))
        _check_free(root, hashed)
        return hashed, None
    tmp = _copy_beside(dist.path, root, link)
    try:
        staged = replace(dist, sha256=file_sha256(tmp), size=tmp.stat().st_size)
        if dist.sha256 and staged.sha256 != dist.sha256:
            raise PublishError(f"{dist.path} changed while it was being published (sha256 {staged.sha256}, "
                               f"was {dist.sha256})", "publish it again once nothing writes to it")
        return (check(staged, tmp) if check else staged), tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def already_there(root: Path, dist: DistFile) -> bool:
    """The tree serves ``dist``'s bytes already.

    The sha256 recorded when the file was last hashed counts only while the file is exactly that file
    (size, mtime, inode and ctime, see :data:`STATE`); otherwise the file is hashed again.
    """
    target = _target(Path(root), dist)
    if not target.is_file() or target.stat().st_size != dist.size:
        return False
    known = _read_state(target.parent / STATE).get(dist.filename)
    fresh = isinstance(known, dict) and known.get("stamp") == _stamp(target) and isinstance(known.get("sha256"), str)
    have = str(known["sha256"]) if fresh and isinstance(known, dict) else file_sha256(target)
    return have.lower() == dist.sha256.lower()


def _check_free(root: Path, dist: DistFile) -> None:
    """Refuse a different file under a name the tree already serves."""
    target = _target(root, dist)
    if not target.exists() or (target.samefile(dist.path)) or already_there(root, dist):
        return
    have = file_sha256(target)
    if have != dist.sha256:
        raise PublishError(f"{root} already has {dist.project}/{dist.filename} with sha256 {have}; the local "
                           f"file {dist.path} has sha256 {dist.sha256}",
                           "an index must never serve two files under one name: publish a new version, "
                           "or find out why the bytes differ")


def _target(root: Path, dist: DistFile) -> Path:
    return safe_join(root, f"{check_filename(dist.project, 'project name')}/{check_filename(dist.filename)}")


def _commit(root: Path, dist: DistFile, tmp: Path | None) -> Added:
    target = _target(root, dist)
    if tmp is None:  # _stage saw the same bytes there
        _write_metadata(target, dist.metadata)
        return Added(dist.filename, "skipped", dist.sha256, target)
    try:
        target.parent.mkdir(exist_ok=True)
        os.replace(tmp, target)
    except OSError as exc:
        raise PublishError(f"cannot write {target}: {exc.strerror}", "choose a writable directory") from exc
    _write_metadata(target, dist.metadata)
    _remember(target, dist.sha256, dist)  # hashed when staged: the pages need not read the file again
    return Added(dist.filename, "added", dist.sha256, target)


def _copy_beside(source: Path, root: Path, link: bool) -> Path:
    """A copy (or hard link) of ``source`` under a temporary name in ``root``: never a partial file.

    In the tree's root, so that the rename into place stays on one filesystem, and a refused publish
    leaves no new project directory behind.
    """
    fd, name = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".tmp", dir=root)
    os.close(fd)
    tmp = Path(name)
    try:
        if link:
            try:
                tmp.unlink()
                os.link(source, tmp)
            except OSError:
                link = False
        if not link:
            shutil.copyfile(source, tmp)  # the kernel's copy (copy_file_range/sendfile): no bytes through Python
            os.chmod(tmp, 0o644)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PublishError(f"cannot write in {root}: {exc.strerror}", "choose a writable directory") from exc
    return tmp


def _remember(target: Path, sha256: str, dist: DistFile) -> None:
    """Record the placed file's sha256 and stamp, so that the pages reuse it."""
    state = _read_state(target.parent / STATE)
    state[target.name] = {"stamp": _stamp(target), "sha256": sha256, "size": target.stat().st_size,
                          "requires_python": dist.requires_python, "metadata_sha256": dist.metadata_sha256}
    atomic_write(target.parent / STATE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


def _write_metadata(target: Path, metadata: bytes) -> None:
    path = target.with_name(target.name + ".metadata")
    try:
        same = read_regular(path, len(metadata)) == metadata
    except (OSError, NotRegularFileError):  # missing, not a file, or larger: not the same
        same = False
    if not same:
        atomic_write(path, metadata)


def _locked(root: Path) -> AbstractContextManager[None]:
    return locked(root / ".lock")


# -- pages ---------------------------------------------------------------------------

#: Beside each project's files (hidden, so no page or manifest lists it): what each file was when it was
#: last hashed.  An entry is reused only while size, mtime, inode and ctime all still match; else re-hashed.
STATE = ".entries.json"


def project_entries(root: Path, project: str) -> list[Entry]:
    """Every wheel in the project's directory, re-hashed unless it is exactly the file hashed before."""
    folder = root / project
    state = _read_state(folder / STATE)
    entries, fresh = [], {}
    for path in sorted(folder.glob("*.whl")):
        stamp = _stamp(path)
        known = state.get(path.name)
        metadata = path.with_name(path.name + ".metadata")
        if not (isinstance(known, dict) and known.get("stamp") == stamp and known.keys() >= _FIELDS
                and metadata.is_file()):
            try:
                dist = read_distfile(path, check_record=False, digests=("sha256",))
            except RepackError as exc:  # damaged or replaced in the tree: say which file of the tree
                raise IntegrityError(f"the tree holds {path}, which cannot be listed: {exc}",
                                     "remove it from the tree (then publish that wheel again)",
                                     path=str(path)) from exc
            _write_metadata(path, dist.metadata)
            known = {"stamp": stamp, "sha256": dist.sha256, "size": dist.size,
                     "requires_python": dist.requires_python, "metadata_sha256": dist.metadata_sha256}
        fresh[path.name] = known
        entries.append(Entry(path.name, known["sha256"], known["size"], known["requires_python"],
                             known["metadata_sha256"]))
    atomic_write(folder / STATE, (json.dumps(fresh, indent=1, sort_keys=True) + "\n").encode())
    return sorted(entries, key=lambda e: (_version(e.filename), e.filename))


_FIELDS = {"sha256", "size", "requires_python", "metadata_sha256"}


def _stamp(path: Path) -> list[int]:
    return list(identity(path))


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(path, 64 << 20))
    except (OSError, ValueError, NotRegularFileError):
        return {}
    return data if isinstance(data, dict) else {}


def _version(filename: str) -> Version:
    return parse_wheel_filename(filename)[1]


def write_project_pages(root: Path, project: str) -> None:
    entries = project_entries(root, project)
    atomic_write(root / project / "index.html", project_html(project, entries).encode("utf-8"))
    atomic_write(root / project / "index.json", project_json(project, entries).encode("utf-8"))


def write_root_pages(root: Path) -> None:
    projects = sorted(p.name for p in root.iterdir()
                      if p.is_dir() and p.name == canonicalize_name(p.name) and any(p.glob("*.whl")))
    atomic_write(root / "index.html", root_html(projects).encode("utf-8"))
    atomic_write(root / "index.json", root_json(projects).encode("utf-8"))


def project_html(project: str, entries: Sequence[Entry]) -> str:
    lines = ["<!DOCTYPE html>", "<html>", "  <head>", '    <meta name="pypi:repository-version" content="1.1">',
             f"    <title>Links for {html.escape(project)}</title>", "  </head>", "  <body>",
             f"    <h1>Links for {html.escape(project)}</h1>"]
    for e in entries:
        attrs = f' href="{urllib.parse.quote(e.filename)}#sha256={e.sha256}"'
        if e.requires_python:
            attrs += f' data-requires-python="{html.escape(e.requires_python, quote=True)}"'
        if e.metadata_sha256:
            attrs += f' data-dist-info-metadata="sha256={e.metadata_sha256}"'
            attrs += f' data-core-metadata="sha256={e.metadata_sha256}"'
        lines.append(f"    <a{attrs}>{html.escape(e.filename)}</a><br>")
    return "\n".join([*lines, "  </body>", "</html>", ""])


def project_json(project: str, entries: Sequence[Entry]) -> str:
    files = []
    for e in entries:
        f = {"filename": e.filename, "url": urllib.parse.quote(e.filename), "hashes": {"sha256": e.sha256},
             "size": e.size, "yanked": False}
        if e.requires_python:
            f["requires-python"] = e.requires_python
        if e.metadata_sha256:
            f["core-metadata"] = f["dist-info-metadata"] = {"sha256": e.metadata_sha256}
        files.append(f)
    versions = sorted({str(_version(e.filename)) for e in entries}, key=Version)
    data = {"meta": {"api-version": API_VERSION}, "name": project, "versions": versions, "files": files}
    return json.dumps(data, indent=1) + "\n"


def root_html(projects: Sequence[str]) -> str:
    links = [f'    <a href="{urllib.parse.quote(p)}/">{html.escape(p)}</a><br>' for p in projects]
    return "\n".join(["<!DOCTYPE html>", "<html>", "  <head>",
                      '    <meta name="pypi:repository-version" content="1.1">',
                      "    <title>Simple index</title>", "  </head>", "  <body>", *links, "  </body>", "</html>", ""])


def root_json(projects: Sequence[str]) -> str:
    return json.dumps({"meta": {"api-version": API_VERSION}, "projects": [{"name": p} for p in projects]},
                      indent=1) + "\n"
