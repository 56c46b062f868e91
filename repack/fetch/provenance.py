"""Where a payload's bytes came from, as the SBOM of every artifact records it.

A :class:`Provenance` is made from the source that answered (:func:`of_source`), before the
bytes are verified; it is data only (no credentials: URLs lose their userinfo, query and
fragment).  The cache keeps it beside the blobs, so a build from the cache names the source that
first provided them, and building twice from the same inputs gives the same bytes.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repack.fetch.digest import file_sha256

if TYPE_CHECKING:
    from repack.fetch.index import IndexFile
    from repack.fetch.sources import Source


@dataclass(frozen=True)
class Provenance:
    """``kind``: index, wheel, remote-wheel, artifactory, directory.  ``location``: the index or
    artifactory URL (no credentials), the wheel's URL, or the directory.  ``wheel_sha256`` is the
    sha256 of the whole wheel file: computed for a local wheel, the index's for an index wheel
    (``wheel_sha256_from`` says which), empty when nobody knows it (a plain URL read by ranges)."""

    kind: str
    location: str
    wheel_filename: str = ""
    wheel_sha256: str = ""
    wheel_sha256_from: str = ""

    def describe(self) -> str:
        wheel = f" {self.wheel_filename}" if self.wheel_filename else ""
        digest = f" (sha256 {self.wheel_sha256}, {self.wheel_sha256_from})" if self.wheel_sha256 else ""
        return f"{self.kind} {self.location}{wheel}{digest}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Provenance | None:
        """A stored record, or None when it is not one (a damaged record only loses the provenance)."""
        try:
            fields = json.loads(data)
            return cls(**{k: str(fields[k]) for k in cls.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError, KeyError):
            return None


def public_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: what may be written into an artifact."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def of_source(source: Source, located: IndexFile | None = None) -> Provenance:
    """The provenance of one of :mod:`repack.fetch.sources`' sources (``located``: the IndexFile an
    index source read, when it read one)."""
    from repack.fetch import sources as s

    if isinstance(source, s.WheelFile):
        path = Path(source.path)
        return Provenance("wheel", str(path.resolve().parent), path.name, file_sha256(path), "computed")
    if isinstance(source, s.IndexWheel):
        found = located or getattr(source, "found", None)
        return Provenance("index", public_url(source.index_url), found.filename if found else "",
                          (found.sha256 or "") if found else "", "index" if found and found.sha256 else "")
    if isinstance(source, s.RemoteWheel):
        name = urllib.parse.unquote(urllib.parse.urlsplit(source.url).path.rsplit("/", 1)[-1])
        return Provenance("remote-wheel", public_url(source.url), name)
    if isinstance(source, s.ArtifactoryURL):
        return Provenance("artifactory", public_url(source.base_url))
    if isinstance(source, s.ArtifactoryDir):
        return Provenance("directory", str(Path(source.root).resolve()))
    return Provenance("other", getattr(source, "label", type(source).__name__))
