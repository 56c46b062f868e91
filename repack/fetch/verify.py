"""Check fetched bytes against flashinfer's pins and make the verified Payload.

The chain: sha256 of ``checksums.txt`` equals the CheckSumHash that
flashinfer-python pins; each header's sha256 equals the line of that file the
runtime itself would pick (``get_meta_hash``: first line whose name matches on
a path-segment boundary, case-insensitively).  A :class:`Payload` is only ever
made by :func:`verified_payload`, so nothing unverified reaches a builder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from repack.errors import IntegrityError
from repack.fetch.provenance import Provenance
from repack.fs import check_relpath, is_safe_relpath
from repack.rules.plan import Plan


@dataclass(frozen=True)
class PayloadFile:
    """One file to install, at ``path`` relative to FLASHINFER_CUBIN_DIR."""

    path: str
    data: bytes
    sha256: str


@dataclass(frozen=True)
class Payload:
    """The verified files of one version: the headers and the exact marker.

    ``extras`` holds runtime files that flashinfer-cubin normally ships
    (``checksums.txt``, ``flashinferMetaInfo.h``) when they were asked for,
    at their artifact paths relative to FLASHINFER_CUBIN_DIR.
    """

    plan: Plan
    files: tuple[PayloadFile, ...]
    extras: tuple[PayloadFile, ...] = ()
    source: str = ""
    #: where the bytes came from, for the artifacts' SBOM (None: a cache entry from before provenance was kept)
    provenance: Provenance | None = None
    #: whether the plan's pins were read from (or checked against) flashinfer-python's own code; None: not said
    pins_checked: bool | None = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_checksums(text: bytes, label: str = "checksums.txt") -> list[tuple[str, str]]:
    """``[(sha256, name), ...]`` in file order; names must be safe relative paths."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise IntegrityError(f"{label} is not UTF-8 text", "the file is damaged") from exc
    out, bad = [], []
    for number, line in enumerate(lines, 1):
        fields = line.strip().split()
        if not fields:
            continue
        if len(fields) != 2 or len(fields[0]) != 64:
            bad.append(f"line {number}: not '<sha256>  <name>'")
            continue
        if not is_safe_relpath(fields[1]):
            bad.append(f"line {number}: unsafe path {fields[1]!r}")
            continue
        out.append((fields[0].lower(), fields[1]))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise IntegrityError(f"{label} is malformed: {bad[0]}{more}",
                             "refusing a checksum list with unsafe or malformed lines", problems=tuple(bad))
    return out


def runtime_hash(entries: list[tuple[str, str]], target: str) -> str | None:
    """The sha256 flashinfer's ``get_meta_hash`` picks for ``target``, or None."""
    t = target.lower()
    for digest, name in entries:
        n = name.lower()
        if n == t or n.endswith("/" + t):
            return digest
    return None


def check_checksums_file(plan: Plan, data: bytes) -> list[tuple[str, str]]:
    """Verify checksums.txt against the pinned hash; return its parsed lines."""
    actual = sha256(data)
    if actual != plan.checksums_sha256:
        raise IntegrityError(
            f"{plan.checksums_path}: sha256 {actual} ({len(data)} bytes) does not match "
            f"the CheckSumHash pinned by flashinfer-python {plan.version}: {plan.checksums_sha256}",
            "the source serves other or tampered bytes; use another source",
            value=actual, expected=plan.checksums_sha256, path=plan.checksums_path)
    return parse_checksums(data, plan.checksums_path)


def expected_hashes(plan: Plan, entries: list[tuple[str, str]]) -> dict[str, str]:
    """Header name -> sha256 as the runtime will check it; all missing names reported."""
    found = {h: runtime_hash(entries, h) for h in plan.headers}
    missing = [h for h, d in found.items() if d is None]
    if missing:
        raise IntegrityError(f"{plan.checksums_path} has no line for {len(missing)} header(s): {', '.join(missing)}",
                             "the checksum list does not belong to this version", problems=tuple(missing))
    disagree = [h for h, d in found.items() if plan.header_sha256 and plan.header_sha256.get(h) != d]
    if disagree:
        raise IntegrityError(f"{plan.checksums_path} disagrees with the shipped plan for {', '.join(disagree)}",
                             "the shipped plan of this package is wrong; report it", problems=tuple(disagree))
    return found  # type: ignore[return-value]


def verified_payload(plan: Plan, checksums: bytes, headers: Mapping[str, bytes],
                     extras: Mapping[str, bytes] | None = None, source: str = "") -> Payload:
    """Check every byte; raise one IntegrityError listing every problem, or return the Payload.

    ``headers`` maps header names (``trtllm/gen/MmaDecl.h``) to bytes;
    ``extras`` maps artifact-relative names (``include/flashinferMetaInfo.h``).
    """
    entries = check_checksums_file(plan, checksums)
    want = expected_hashes(plan, entries)
    problems = []
    for name in plan.headers:
        data = headers.get(name)
        if data is None:
            problems.append(f"{name}: missing")
        elif sha256(data) != want[name]:
            problems.append(f"{name}: sha256 {sha256(data)} != {want[name]}")
    extra_files = []
    for name, data in sorted((extras or {}).items()):
        digest = plan.checksums_sha256 if name == "checksums.txt" else runtime_hash(entries, name)
        if digest is None or sha256(data) != digest:
            problems.append(f"{name}: sha256 {sha256(data)} != {digest}")
        extra_files.append(PayloadFile(plan.artifact_path + name, data, sha256(data)))
    if problems:
        raise IntegrityError(f"{len(problems)} file(s) from {source or 'the source'} fail verification: "
                             + "; ".join(problems),
                             "the source serves other or tampered bytes; nothing was written",
                             problems=tuple(problems))
    files = [PayloadFile(plan.dest_path(h), headers[h], want[h]) for h in sorted(plan.headers)]
    files.append(PayloadFile(plan.dest_path(plan.marker_name), plan.marker_bytes, sha256(plan.marker_bytes)))
    # the paths come from flashinfer's code: every builder and install writes them, so they pass the gate here
    for f in files + extra_files:
        check_relpath(f.path, "payload path")
    return Payload(plan=plan, files=tuple(files), extras=tuple(extra_files), source=source)
