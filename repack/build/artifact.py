"""What a builder hands on: a finished file on disk and its identity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The distribution this project builds, and its one-line description.
DIST_NAME = "flashinfer-cubin-headers"
SUMMARY = ("The TRT-LLM BMM export headers of flashinfer-cubin, at the path flashinfer-python "
           "{version} searches, so that it starts with no network")
DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the zip epoch: the default for reproducible builds


@dataclass(frozen=True)
class Artifact:
    kind: str          # "wheel", "conda", ...
    path: Path
    sha256: str
    size: int

    @classmethod
    def of(cls, kind: str, path: Path) -> Artifact:
        data = path.read_bytes()
        return cls(kind, path, hashlib.sha256(data).hexdigest(), len(data))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "filename": self.path.name,
                "sha256": self.sha256, "size": self.size}
