"""Plans derived from an index, kept so that ``plan`` answers again with no request.

A file on an index is immutable, so the plan of flashinfer-python X read from index U stays true;
the key is U without credentials (a new password is the same index) and X.  An entry that does not
read back as a plan of X is a miss, never an error.  This module imports no network code, so a
warm ``plan`` starts no more than it needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from repack.fs import NotRegularFileError, read_regular
from repack.rules.plan import Plan, plan_from_json

log = logging.getLogger(__name__)
ENTRY_LIMIT = 1 << 20  # a plan is a few kB


def _digest(record: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def entry_path(root: Path | None, index_url: str, version: str) -> Path | None:
    if root is None:
        return None
    parts = urllib.parse.urlsplit(index_url.rstrip("/"))
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # the key never holds a password
    key = hashlib.sha256(bare.encode()).hexdigest()[:16]
    return Path(root) / "plans" / f"flashinfer-python-{version}-{key}.json"


def store(root: Path | None, index_url: str, wheel: str, plan: Plan) -> None:
    from repack.fetch.urlpolicy import redact
    from repack.fs import atomic_write

    entry = entry_path(root, index_url, plan.version)
    if entry is None:
        return
    record = {"wheel": wheel, "index": redact(index_url), "plan": plan.to_json()}
    record["sha256"] = _digest(record)
    try:
        atomic_write(entry, json.dumps(record, sort_keys=True, indent=1).encode())
        log.info("plan: derived from %s and cached as %s", wheel, entry)
    except OSError as exc:  # a read-only cache must not fail the command
        log.info("plan: derived from %s, not cached (%s)", wheel, exc)


def load(root: Path | None, index_url: str, version: str) -> tuple[Plan, str] | None:
    """The cached plan and the index it was read from (without credentials), or None."""
    entry = entry_path(root, index_url, version)
    if entry is None or not entry.is_file():
        return None
    try:
        record = json.loads(read_regular(entry, ENTRY_LIMIT))
        if record.pop("sha256", None) != _digest(record):  # damaged since it was written: a miss
            raise ValueError("its content does not match the digest recorded when it was written")
        plan, index = plan_from_json(record["plan"]), str(record["index"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotRegularFileError) as exc:
        log.warning("plan: dropping the damaged cache entry %s (%s)", entry, exc)
        entry.unlink(missing_ok=True)
        return None
    if plan.version != version:
        log.info("plan: ignoring the cache entry %s: it holds version %s", entry, plan.version)
        return None
    log.info("plan: from the cache entry %s (derived from %s on %s; 0 requests)", entry, record.get("wheel"), index)
    return plan, index
