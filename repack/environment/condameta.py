"""What a conda prefix's ``conda-meta/`` says: which conda package owns which files.

conda and rattler write one ``conda-meta/<name>-<version>-<build>.json`` per
installed package, with its ``files`` relative to the prefix.  A conda
package need not carry a ``.dist-info`` (``flashinfer-cubin-headers`` built by
flashinfer-repack or the recipes has none), so ``doctor --prefix`` would call
an installed package "not installed" if it looked at distribution metadata
only.  A record that cannot be read is skipped with a warning: conda-meta is
the prefix's own bookkeeping, and one bad file must not hide the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repack.fs import NotRegularFileError, read_regular

log = logging.getLogger(__name__)
#: the most read of one conda-meta record (pytorch's, the largest usual one, lists ~20,000 files in a few MB)
RECORD_LIMIT = 128 << 20

@dataclass(frozen=True)
class CondaRecord:
    """One installed conda package."""

    name: str
    version: str
    build: str
    files: tuple[str, ...]   # relative to the prefix

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"


def read_records(prefix: Path) -> list[CondaRecord]:
    """Every readable record of ``prefix/conda-meta`` (none when there is no such folder)."""
    out = []
    for path in sorted((Path(prefix) / "conda-meta").glob("*.json")):
        try:
            out.append(_record(json.loads(read_regular(path, RECORD_LIMIT))))
        except (OSError, ValueError, KeyError, TypeError, NotRegularFileError) as exc:
            log.warning("skipping unreadable conda-meta record %s: %s", path, exc)
    return out


def _record(data: dict[str, Any]) -> CondaRecord:
    files = data.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError("'files' is not a list of paths")
    name, version, build = (data[k] for k in ("name", "version", "build"))
    if not all(isinstance(v, str) and v for v in (name, version, build)):
        raise ValueError("name, version or build is not a string")
    return CondaRecord(name, version, build, tuple(files))


def records_by_name(records: Iterable[CondaRecord], names: Iterable[str]) -> dict[str, CondaRecord]:
    """The records of the packages named ``names`` (conda names equal the PyPI names here)."""
    wanted = set(names)
    return {r.name: r for r in records if r.name in wanted}
