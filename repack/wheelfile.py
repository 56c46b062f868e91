"""The wheel format's own small rules, in one place: the ``.dist-info`` finder, the RECORD reader and
the RECORD digest encoding.  Publishing checks a wheel with them, and the builders and the wheel->conda
converter write and read RECORD with them, so that the rules cannot drift apart.
"""

from __future__ import annotations

import base64
import csv
import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

from repack.errors import IntegrityError

#: The most read into memory of one metadata member (METADATA, WHEEL, RECORD, entry_points.txt):
#: the RECORD of the 268 MB flashinfer-cubin wheel, the largest met, is about 1 MB.
METADATA_LIMIT = 16 << 20


@dataclass(frozen=True)
class RecordRow:
    """One RECORD line: ``name``, its ``algorithm`` and urlsafe-b64 ``digest`` (empty if unhashed), ``size``."""

    name: str
    algorithm: str
    digest: str
    size: int | None


def urlsafe_b64(digest: bytes) -> str:
    """A digest as RECORD spells it: urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def dist_info_dir(names: Iterable[str], label: str) -> str:
    """The one top-level ``<name>.dist-info/`` holding METADATA; IntegrityError if there is not exactly one."""
    found = {n.split("/", 1)[0] + "/" for n in names
             if n.count("/") == 1 and n.endswith("/METADATA") and n.split("/", 1)[0].endswith(".dist-info")}
    if len(found) != 1:
        raise IntegrityError(f"{label} holds {len(found)} .dist-info directories, expected 1",
                             "this is not a well-formed wheel")
    return found.pop()


def read_record(data: bytes, label: str) -> list[RecordRow]:
    """The rows of a RECORD file (blank lines skipped); IntegrityError if it is not UTF-8 CSV."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise IntegrityError(f"{label}: RECORD is not UTF-8 CSV", "the wheel is damaged; rebuild it") from exc
    out = []
    for row in rows:
        if not row or not row[0]:
            continue
        name, digest, size = ([*row, "", "", ""])[:3]
        algorithm, _, value = digest.partition("=")
        out.append(RecordRow(name, algorithm, value, int(size) if size.isdigit() else None))
    return out


def read_member(zf: zipfile.ZipFile, name: str, label: str, limit: int = METADATA_LIMIT) -> bytes:
    """The bytes of the metadata member ``name``, its declared size checked against ``limit`` before inflating.

    zipfile stops at the declared size and checks the CRC, so a member cannot inflate past what it declares.
    """
    try:
        info = zf.getinfo(name)
    except KeyError as exc:
        raise IntegrityError(f"{label} has no {name}", "this is not a well-formed wheel") from exc
    if info.file_size > limit:
        raise IntegrityError(f"{label}: {name} declares {info.file_size} bytes, more than the {limit} expected",
                             "the wheel is damaged or hostile; do not use it", value=info.file_size, expected=limit)
    with zf.open(info) as fh:
        return fh.read(limit + 1)
