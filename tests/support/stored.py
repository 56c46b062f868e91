"""Directories made once and kept in the test store: the prepared flashinfer venv, downloaded wheels.

A stored tree is named by the digest of its recipe (everything that goes into it).  It is built
beside its final name (``<key>.<pid>.part``) and renamed when complete, with its manifest written
last: the recipe, every file's mode, size and sha256, every link's target, and what the builder adds
(``sources``: the files it was made from, with their sha256).  Before every use it is checked against
that manifest; one that is partial, damaged or made another way is removed and made again, never
trusted.  A lock per key serialises xdist workers and concurrent sessions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from repack.fetch.digest import file_sha256

MANIFEST = ".stored-manifest.json"


def stored_tree(area: Path, recipe: dict, build: Callable[[Path], dict]) -> Path:
    """The tree of ``recipe`` under ``area``, made with ``build(partial_dir) -> manifest extras`` when
    there is none that passes :func:`problem_of`.  Trees of other recipes that nobody is making nor was
    handed lately are removed when one is made (a prepared venv is about 1 GB), see :func:`_prune`."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    area.mkdir(parents=True, exist_ok=True)
    final = area / key
    with open(area / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.utime(lock.fileno())  # "in use now": no other session's make removes it for IN_USE seconds
        if problem_of(final, recipe) is None:
            return final
        shutil.rmtree(final, ignore_errors=True)
        _prune(area, keep=key)
        partial = area / f"{key}.{os.getpid()}.part"
        extra = build(partial)
        manifest = {**extra, "recipe": recipe, "files": tree_files(partial)}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.rename(partial, final)
    return final


def manifest_of(tree: Path) -> dict:
    return json.loads((tree / MANIFEST).read_text())


def problem_of(tree: Path, recipe: dict) -> str | None:
    """Why the stored tree cannot be used as it is (None: it can)."""
    try:
        manifest = manifest_of(tree)
    except (OSError, ValueError) as exc:
        return f"no readable manifest ({exc.__class__.__name__}): not made, or its making was cut off"
    if manifest.get("recipe") != recipe:
        return "made from another recipe"
    for source in manifest.get("sources", ()):  # a local file (torch's wheel) may be replaced under its name
        local = local_path(source["url"])
        if local and (not local.is_file() or file_sha256(local) != source["sha256"]):
            return f"{source['url']} is not the file it was made from"
    if tree_files(tree) != manifest.get("files"):
        return "its files differ from its manifest"
    return None


#: A tree handed out this recently may still be being copied by the session that asked for it (a session
#: copies its trees while it sets up, and CI ends a run at 90 minutes): another recipe's make leaves it.
IN_USE = 3 * 3600


def _prune(area: Path, keep: str) -> None:
    """Remove what a killed run left of ``keep`` and the trees of other recipes that no one is making
    now nor used in the last :data:`IN_USE` seconds (a session copies a tree (hard links) once it is
    handed out, outside the lock, so the time of its last hand-out stands for "in use")."""
    for stale in area.glob(f"{keep}.*.part"):  # the caller holds keep's lock: nobody else is making it
        shutil.rmtree(stale, ignore_errors=True)
    for lock_path in area.glob("*.lock"):
        other = lock_path.name.removesuffix(".lock")
        if other == keep or time.time() - lock_path.stat().st_mtime < IN_USE:
            continue
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being made or checked by another session: leave it
            for path in [area / other, *area.glob(f"{other}.*.part")]:
                shutil.rmtree(path, ignore_errors=True)
            # the lock file stays: a session already waiting on it would otherwise hold a lock on a removed
            # file while a newcomer locks a new one, and both would build


def tree_files(root: Path) -> dict[str, list]:
    """Every file and link under root (the manifest excepted): file -> [mode, size, sha256], link -> [target]."""
    out: dict[str, list] = {}
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = [os.readlink(path)]
            elif path.is_file() and rel != MANIFEST:
                st = path.stat()
                out[rel] = [st.st_mode & 0o7777, st.st_size, file_sha256(path)]
    return out


def local_path(url: str) -> Path | None:
    """The file a ``file://`` URL names (percent-decoded: torch's ``+cpu`` is ``%2Bcpu``), else None."""
    return Path(url2pathname(urlsplit(url).path)) if url.startswith("file://") else None


