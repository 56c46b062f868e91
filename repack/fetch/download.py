"""A whole file from a package index, verified against the index's sha256, resumable.

A file already at its destination with the index's sha256 is not fetched
again.  Over HTTP the bytes arrive in ranges appended to ``<name>.part``, so
a run that was interrupted (killed, network gone) goes on from where it
stopped; the ``.part`` becomes the file only after its sha256 matches.  A
server that ignores ranges gets one plain streamed download instead.  One
process at a time writes into a directory (a lock on the directory), so two
runs never append to one ``.part``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from repack.errors import FetchError, IntegrityError
from repack.fetch.digest import file_sha256
from repack.fetch.index import IndexFile
from repack.fetch.transport import WHEEL_LIMIT, Progress, RangesIgnored, Response, Transport
from repack.fetch.urlpolicy import redact
from repack.fs import locked

log = logging.getLogger(__name__)

RANGE_CHUNK = 16 << 20
PRESENT, DOWNLOADED, RESUMED = "present", "downloaded", "resumed"


def fetch_verified(transport: Transport, found: IndexFile, dest: Path) -> tuple[str, int]:
    """Make ``dest`` hold ``found``'s bytes; return (what happened, bytes transferred).

    One process at a time per destination directory (a lock on the directory itself): two runs into
    one directory never append to one ``.part``, and the second finds the first's verified file.
    """
    if not found.sha256:
        raise IntegrityError(f"the index lists no sha256 for {found.filename}, so it cannot be verified",
                             "use an index that publishes hashes (PEP 503 #sha256= fragments or PEP 691)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest.parent):
        return _fetch_locked(transport, found, dest, found.sha256.lower())


def _fetch_locked(transport: Transport, found: IndexFile, dest: Path, sha256: str) -> tuple[str, int]:
    if dest.is_file():
        if file_sha256(dest) == sha256:
            return PRESENT, 0
        log.info("%s differs from the index's %s: fetching it again", dest, sha256)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    before = transport.stats.bytes
    if found.url.startswith("file:"):
        transport.download(found.url, dest, size=found.size, sha256=sha256, label=found.filename)
        return DOWNLOADED, 0
    resumed = part.is_file() and part.stat().st_size > 0
    try:
        _append_ranges(transport, found, part)
    except RangesIgnored:
        part.unlink(missing_ok=True)
        transport.download(found.url, dest, size=found.size, sha256=sha256, label=found.filename)
        return DOWNLOADED, transport.stats.bytes - before
    if file_sha256(part) != sha256:
        part.unlink()
        if resumed:  # the partial bytes were of another file (the index changed): start over once
            return _fetch_locked(transport, found, dest, sha256)[0], transport.stats.bytes - before
        raise IntegrityError(f"{found.filename} from {redact(found.url)} does not have the index's sha256 "
                             f"{sha256}", "the file was altered in transit or on the server; do not use it")
    os.replace(part, dest)
    return (RESUMED if resumed else DOWNLOADED), transport.stats.bytes - before


def _append_ranges(transport: Transport, found: IndexFile, part: Path) -> None:
    """Append the missing bytes to ``part`` in ranges, showing progress over the whole file."""
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    total = found.size if found.size is not None else _total(transport.get_range_response(found.url, 0, 1), found)
    if total > WHEEL_LIMIT:
        raise FetchError(f"{redact(found.url)} is {total} bytes, more than the {WHEEL_LIMIT} a wheel may be",
                         "the server sends something other than a flashinfer wheel; use another index")
    if offset > total:
        part.unlink()
        offset = 0
    progress, transport.progress = transport.progress, None  # one bar for the file, not one per range
    label = f"{found.filename} (resumed at {offset * 100 // max(total, 1)}%)" if offset else found.filename
    try:
        with open(part, "ab") as fh:
            while offset < total:
                resp = transport.get_range_response(found.url, offset, min(total, offset + RANGE_CHUNK))
                fh.write(resp.body)
                fh.flush()
                offset += len(resp.body)
                _show(progress, label, offset, total)
    finally:
        transport.progress = progress


def _total(resp: Response, found: IndexFile) -> int:
    total = resp.header("Content-Range").rpartition("/")[2]
    if not total.isdigit():
        raise FetchError(f"{redact(found.url)} gave no file size in its Content-Range",
                         "the server must answer Range requests with the total size")
    return int(total)


def _show(progress: Progress | None, label: str, done: int, total: int) -> None:
    if progress is not None:
        progress(label, done, total)
