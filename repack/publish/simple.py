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

import hashlib
import html
import json
import os
import tempfile
import urllib.parse
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from repack.errors import PublishError
from repack.fetch.digest import file_sha256
from repack.fs import NotRegularFileError, atomic_write, check_filename, locked, read_regular, safe_join
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


def publish_simple(root: Path, dists: Sequence[DistFile], *, link: bool = False) -> list[Added]:
    """Add ``dists`` to the tree at ``root`` and regenerate its pages.

    ``link`` hard-links files into the tree where the filesystem allows (a bundle
    keeps one copy of a 270 MB wheel), copying otherwise.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        for d in dists:  # refuse before placing anything: a failed publish leaves the tree as it was
            _check_free(root, d)
        results = [_add(root, d, link) for d in dists]
        for project in sorted({d.project for d in dists}):
            write_project_pages(root, project)
        write_root_pages(root)
    return results


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


def _add(root: Path, dist: DistFile, link: bool) -> Added:
    target = _target(root, dist)
    if target.exists():  # _check_free saw the same bytes there
        _write_metadata(target, dist.metadata)
        return Added(dist.filename, "skipped", dist.sha256, target)
    copied = _place(dist.path, target, link)
    _write_metadata(target, dist.metadata)
    if copied is not None:  # hashed while copying: the pages need not read the file again
        _remember(target, copied, dist)
    return Added(dist.filename, "added", dist.sha256, target)


def _place(source: Path, target: Path, link: bool) -> str | None:
    """Put ``source`` at ``target`` through a temporary name beside it: never a partial file.

    Returns the sha256 of a copy (hashed as it is written), None for a hard link.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    digest = None
    try:
        if link:
            try:
                os.unlink(tmp)
                os.link(source, tmp)
            except OSError:
                link = False
        if not link:
            digest = _copy_hashing(source, Path(tmp))
        os.replace(tmp, target)
    except OSError as exc:
        raise PublishError(f"cannot write {target}: {exc.strerror}", "choose a writable directory") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return digest


def _copy_hashing(source: Path, tmp: Path) -> str:
    h = hashlib.sha256()
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            h.update(chunk)
            dst.write(chunk)
    os.chmod(tmp, 0o644)
    return h.hexdigest()


def _remember(target: Path, sha256: str, dist: DistFile) -> None:
    """Record the copy's sha256 for the pages; refuse a source that changed since it was checked."""
    if sha256 != dist.sha256:
        target.unlink(missing_ok=True)
        raise PublishError(f"{dist.path} changed while it was being published (sha256 {sha256}, was {dist.sha256})",
                           "publish it again once nothing writes to it")
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
            dist = read_distfile(path, check_record=False, digests=("sha256",))
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
    st = path.stat()
    # ctime too: an in-place rewrite can restore the mtime (os.utime), never the ctime
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


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
