"""The SBOM of every artifact: a CycloneDX 1.6 JSON document of where the bytes came from.

The wheel carries it as ``<dist-info>/sboms/flashinfer-cubin-headers.cdx.json`` (PEP 770), the conda
package as ``info/sboms/flashinfer-cubin-headers.cdx.json``: the same bytes, made by one pure function
of the Payload.  It records

* the source: the flashinfer-cubin wheel (name, sha256 and the index it came from, credentials
  removed), or the artifactory URL or directory;
* flashinfer-python of that version, whose pins were checked (the artifact path and the
  ``CheckSumHash`` of checksums.txt);
* checksums.txt's sha256, and every shipped file with its sha256 and the checksums.txt line it matched.

No time, no host, no serial number: the same inputs give the same bytes (``SOURCE_DATE_EPOCH``
governs the archives' timestamps, and nothing here).
"""

from __future__ import annotations

import json
from typing import Any

from repack import __version__
from repack.build.artifact import DIST_NAME
from repack.fetch.verify import Payload
from repack.fs import NotRegularFileError, read_regular

SPEC_VERSION = "1.6"
SBOM_NAME = f"{DIST_NAME}.cdx.json"
SBOM_DIR = "sboms/"
PROPERTY = "flashinfer-repack:"


def purl(name: str, version: str) -> str:
    return f"pkg:pypi/{name}@{version}"


def sbom_document(payload: Payload, install_root: str) -> dict[str, Any]:
    """The CycloneDX document of ``payload``; file names are shown under ``install_root``
    (``flashinfer_cubin/cubins/``) as installed, so the wheel's and the conda package's agree."""
    plan, version = payload.plan, payload.plan.version
    ours = purl(DIST_NAME, version)
    components = [_source_component(payload), _pins_component(payload)]
    components += [_file(install_root + f.path, f.sha256) for f in payload.files]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "flashinfer-repack", "version": __version__}]},
            "component": {"type": "library", "bom-ref": ours, "name": DIST_NAME, "version": version, "purl": ours,
                          "description": f"the TRT-LLM BMM export headers of flashinfer-cubin {version}"},
            "properties": [_prop("checksums-txt-sha256", plan.checksums_sha256),
                           _prop("artifact-path", plan.artifact_path)],
        },
        "components": components,
        "dependencies": [{"ref": ours, "dependsOn": [c["bom-ref"] for c in components[:2]]}],
    }


def _source_component(payload: Payload) -> dict[str, Any]:
    """flashinfer-cubin (or the artifactory tree) that the bytes were read from."""
    version = payload.plan.version
    prov = payload.provenance
    ref = purl("flashinfer-cubin", version)
    properties = [_prop("source-kind", prov.kind if prov else "unknown"),
                  _prop("source", prov.location if prov else payload.source or "unknown")]
    out: dict[str, Any] = {"type": "library", "bom-ref": ref, "name": "flashinfer-cubin", "version": version,
                           "purl": ref, "properties": properties}
    if prov is not None and prov.wheel_filename:
        properties.append(_prop("wheel", prov.wheel_filename))
    if prov is not None and prov.wheel_sha256:
        out["hashes"] = [{"alg": "SHA-256", "content": prov.wheel_sha256}]
        properties.append(_prop("wheel-sha256-from", prov.wheel_sha256_from))
    if prov is not None and prov.kind in ("index", "remote-wheel", "artifactory"):
        out["externalReferences"] = [{"type": "distribution", "url": prov.location}]
    return out


def _pins_component(payload: Payload) -> dict[str, Any]:
    """flashinfer-python, whose pinned CheckSumHash every byte was verified against."""
    plan = payload.plan
    ref = purl("flashinfer-python", plan.version)
    return {"type": "library", "bom-ref": ref, "name": "flashinfer-python", "version": plan.version, "purl": ref,
            "properties": [_prop("pins-checked", "ArtifactPath.TRTLLM_GEN_BMM, CheckSumHash.TRTLLM_GEN_BMM"),
                           _prop("pins-from", PINS_FROM[payload.pins_checked]),
                           _prop("checksum-hash", plan.checksums_sha256)]}


#: Where the pins every byte was verified against came from (Payload.pins_checked).
PINS_FROM = {True: "flashinfer-python's own code (read, or the shipped plan checked against it)",
             False: "the plan shipped with flashinfer-repack, NOT checked against flashinfer-python's code",
             None: "not recorded"}


def _file(name: str, digest: str) -> dict[str, Any]:
    return {"type": "file", "bom-ref": f"file:{name}", "name": name, "hashes": [{"alg": "SHA-256", "content": digest}]}


def _prop(name: str, value: str) -> dict[str, Any]:
    return {"name": PROPERTY + name, "value": value}


def sbom_bytes(payload: Payload, install_root: str) -> bytes:
    return (json.dumps(sbom_document(payload, install_root), indent=1, sort_keys=True) + "\n").encode("utf-8")


def summarize(document: dict[str, Any]) -> dict[str, Any]:
    """What doctor shows of an installed package's SBOM: its source and the pins checked."""
    props: dict[str, Any] = {}
    for component in document.get("components", []):
        for p in component.get("properties", []) if isinstance(component, dict) else []:
            if isinstance(p, dict) and str(p.get("name", "")).startswith(PROPERTY):
                props.setdefault(str(p["name"])[len(PROPERTY):], str(p.get("value", "")))
    wheel_hash = next((h.get("content") for c in document.get("components", []) if c.get("name") == "flashinfer-cubin"
                       for h in c.get("hashes", [])), "")
    files = [c for c in document.get("components", []) if c.get("type") == "file"]
    return {"source_kind": props.get("source-kind", ""), "source": props.get("source", ""),
            "wheel": props.get("wheel", ""), "wheel_sha256": wheel_hash or "",
            "checksums_sha256": props.get("checksum-hash", ""), "files": len(files)}


def read_installed(site_packages: str, version: str) -> dict[str, Any] | None:
    """The SBOM of flashinfer-cubin-headers ``version`` installed in ``site_packages`` (its wheel's
    ``.dist-info/sboms/``), summarized; None when there is none (built before SBOMs, or not a wheel
    install), or ``{"error": ...}`` when it cannot be read."""
    from pathlib import Path

    from packaging.utils import canonicalize_version

    folder = Path(site_packages)
    want = canonicalize_version(version)
    for dist_info in sorted(folder.glob(DIST_NAME.replace("-", "_") + "-*.dist-info")):
        if canonicalize_version(dist_info.name[:-len(".dist-info")].rsplit("-", 1)[-1]) != want:
            continue
        path = dist_info / SBOM_DIR / SBOM_NAME
        if not path.is_file():
            return None
        try:
            return summarize(json.loads(read_regular(path, 4_000_000)))
        except (OSError, ValueError, AttributeError, TypeError, NotRegularFileError) as exc:
            return {"error": f"cannot read {path}: {exc}"}
    return None
