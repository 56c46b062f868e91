"""What a FlashInfer version needs, and how its runtime finds it: the one model.

A :class:`Plan` is pure data: whether the version needs the supplementary package
(the header downloader's destination, headers, marker name and exact content, the
pinned checksum file), how the version's headers are read otherwise (``mode``), and
how its ``import flashinfer`` resolves FLASHINFER_CUBIN_DIR.  :func:`derive_plan`
reads it out of the source text of ``flashinfer/**.py`` with :mod:`repack.rules.reader`
(never imported); :func:`shipped_plan` returns the plans of the affected versions
that ship with this package, with every header's sha256.  Where the source text comes
from (an installed distribution, a wheel on disk, a wheel on an index) is
``resolve.py``'s business.  plan, build, install, bundle and doctor all use this model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from repack.errors import PlanError, UnknownVersionError

if TYPE_CHECKING:
    from repack.rules.reader import Download
    from repack.rules.scope import Codebase

#: The files of flashinfer-python that the derivation reads: all of its Python.
ARTIFACTS_MODULE = "flashinfer/artifacts.py"
PACKAGE_PREFIX = "flashinfer/"
HEADER_FUNCTION = "download_trtllm_headers"
CUBIN_DIR = "FLASHINFER_CUBIN_DIR"
#: Where the BMM export headers are included from (0.6.7.post1+: a symlink made there at every start).
DEST_DIR = "flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"
MARKER_NAME = ".artifact_hash"
METAINFO = "include/flashinferMetaInfo.h"
SYMLINK_HEADER_DIR = "include/trtllmGen_bmm_export"
#: From this version the include symlink lives under FLASHINFER_GEN_SRC_DIR, which doctor does not model
#: (stated from the 0.6.16 release; not derived from the code).
GEN_SRC_FROM = Version("0.6.16")

#: Files that flashinfer's fused-MoE code also reads at start-up from
#: ``FLASHINFER_CUBIN_DIR/<artifact>/`` (shipped by flashinfer-cubin).
ARTIFACT_EXTRAS = ("checksums.txt", "include/flashinferMetaInfo.h")


@dataclass(frozen=True)
class Plan:
    """Everything a build needs to know about one flashinfer-python version.

    Paths are POSIX.  ``artifact_path`` is relative to the artifactory root (and
    to ``flashinfer_cubin/cubins`` in the flashinfer-cubin wheel); ``dest_dir``
    is relative to ``FLASHINFER_CUBIN_DIR``; ``header_dir`` is relative to
    ``artifact_path``.  ``header_sha256`` is known only for shipped plans.

    ``mode``: ``download`` (0.6.5-0.6.7: headers and marker at ``dest_dir``,
    downloaded when missing), ``symlink`` (0.6.7.post1+: headers at the artifact
    path, ``dest_dir`` made a symlink to them at every start), ``none`` (older:
    only checksums.txt and flashinferMetaInfo.h are read).  ``marker_content`` is
    what the downloader writes to the marker (and compares it with), read from its
    code.  The ``cubin_*`` fields are how ``import flashinfer`` picks
    FLASHINFER_CUBIN_DIR (``flashinfer/jit/env.py``); ``build_version`` is what
    ``flashinfer.__version__`` will be (``_build_meta.py``).
    """

    version: str
    needed: bool
    reason: str
    requires_python: str | None = None
    artifact_path: str = ""
    checksums_sha256: str = ""
    header_dir: str = ""
    headers: tuple[str, ...] = ()
    dest_dir: str = ""
    marker_name: str = ""
    header_sha256: Mapping[str, str] = field(default_factory=dict)
    mode: str = "download"
    marker_content: str = ""
    build_version: str = ""
    cubin_env_first: bool = False
    cubin_mismatch: str = "import-fails"
    cubin_skips_unknown: bool = False

    @property
    def marker_bytes(self) -> bytes:
        """The exact marker content, as the downloader writes it (no newline)."""
        return self.marker_content.encode("utf-8")

    @property
    def metainfo_path(self) -> str:
        return self.artifact_path + METAINFO

    def artifact_header(self, name: str) -> str:
        """Where a header lies at the artifact path (where flashinfer-cubin ships it)."""
        return f"{self.artifact_path}{self.header_dir or SYMLINK_HEADER_DIR}/{name}"

    @property
    def env_var_first(self) -> bool:
        return self.cubin_env_first

    @property
    def symlink_modelled(self) -> bool:
        return _version(self.version) < GEN_SRC_FROM

    @property
    def checksums_path(self) -> str:
        return self.artifact_path + "checksums.txt"

    def source_path(self, header: str) -> str:
        """Where ``header`` lives relative to the artifactory root."""
        return f"{self.artifact_path}{self.header_dir}/{header}"

    def dest_path(self, name: str) -> str:
        """Where ``name`` must lie relative to ``FLASHINFER_CUBIN_DIR``."""
        return f"{self.dest_dir}/{name}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["headers"] = list(self.headers)
        data["header_sha256"] = dict(sorted(self.header_sha256.items()))
        data["marker_bytes"] = self.marker_bytes.decode("utf-8")
        data["marker_size"] = len(self.marker_bytes)
        data["checksums_path"] = self.checksums_path if self.needed else ""
        return data

    def differences(self, other: Plan) -> list[str]:
        """Fields where two plans of one version disagree (header hashes only if both know them)."""
        names = ["needed", "mode", "artifact_path", "checksums_sha256", "header_dir", "headers",
                 "dest_dir", "marker_name", "marker_content", "requires_python",
                 "cubin_env_first", "cubin_mismatch", "cubin_skips_unknown"]
        if self.header_sha256 and other.header_sha256:
            names.append("header_sha256")
        return [f"{n}: {getattr(self, n)!r} != {getattr(other, n)!r}"
                for n in names if getattr(self, n) != getattr(other, n)]


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    return Plan(
        version=data["version"], needed=data["needed"], reason=data["reason"],
        requires_python=data.get("requires_python"), artifact_path=data["artifact_path"],
        checksums_sha256=data["checksums_sha256"], header_dir=data["header_dir"],
        headers=tuple(data["headers"]), dest_dir=data["dest_dir"],
        marker_name=data["marker_name"], header_sha256=dict(data.get("header_sha256") or {}),
        mode=data["mode"], marker_content=data["marker_content"], build_version=data.get("build_version", ""),
        cubin_env_first=data["cubin_env_first"], cubin_mismatch=data["cubin_mismatch"],
        cubin_skips_unknown=data["cubin_skips_unknown"],
    )


def shipped_versions() -> tuple[str, ...]:
    return tuple(_shipped())


def shipped_plan(version: str) -> Plan | None:
    """The plan shipped with this package for ``version``, or None."""
    data = _shipped().get(version)
    return plan_from_json(data) if data else None


def _shipped() -> dict[str, Any]:
    text = resources.files("repack.rules").joinpath("plans.json").read_text("utf-8")
    plans: dict[str, Any] = json.loads(text)["plans"]
    return plans


# -- derivation ----------------------------------------------------------------

def derive_plan(version: str, sources: Mapping[str, str], metadata: str | None = None) -> Plan:
    """Read the plan of ``version`` out of flashinfer-python's source text (:mod:`repack.rules.reader`).

    ``sources`` maps wheel-relative paths (``flashinfer/jit/fused_moe.py``) to the text of every
    ``flashinfer/**.py``: a caller of the header downloader may live anywhere in the package.
    ``metadata`` is the distribution's METADATA text (for Requires-Python).  Raises
    :class:`~repack.rules.scope.CannotTellError` where the code is not understood.
    """
    from repack.rules import reader
    from repack.rules.scope import Codebase

    code = Codebase(sources)
    if ARTIFACTS_MODULE not in code.texts:
        raise PlanError(f"flashinfer-python {version} has no {ARTIFACTS_MODULE}",
                        "only flashinfer-python 0.6.x with cubin artifacts is understood")
    runtime = reader.read_cubin_dir_rules(code)
    common = {"version": version, "requires_python": _requires_python(metadata),
              "build_version": reader.build_version(code),
                  "cubin_env_first": runtime.env_var_first, "cubin_mismatch": runtime.mismatch,
                  "cubin_skips_unknown": runtime.skips_unknown_build}
    downloads = reader.Reader(code).read()
    if not downloads:
        return _not_needed(code, common)
    if len(set(downloads)) != 1:
        raise PlanError(f"flashinfer-python {version} calls {HEADER_FUNCTION}() with differing arguments: "
                        + "; ".join(sorted({f"{d.dest_dir} <- {d.header_path}" for d in downloads})),
                        "this version's layout is not understood; report it")
    return _needed(downloads[0], common)


def _needed(d: Download, common: dict[str, Any]) -> Plan:
    """The plan of one resolved download: the artifact is where its checksums.txt lies."""
    checksums = d.checksums.path
    if not checksums.endswith("/checksums.txt"):
        raise PlanError(f"the checksum file of {HEADER_FUNCTION}() is {checksums!r}, not <artifact>/checksums.txt",
                        "this version's layout is not understood; report it")
    artifact = checksums[: -len("checksums.txt")]
    header_dir = "/".join(p for p in d.header_path.split("/") if p)
    if not (header_dir + "/").startswith(artifact):
        raise PlanError(f"header path {d.header_path!r} is not under artifact {artifact!r}",
                        "this version's layout is not understood; report it")
    version = common["version"]
    return Plan(**common, needed=True, mode="download",
                reason=(f"flashinfer-python {version} calls {HEADER_FUNCTION}('bmm', ...) at JIT-spec "
                        f"generation and looks for {len(d.headers)} headers under FLASHINFER_CUBIN_DIR/"
                        f"{d.dest_dir}/, a path no FlashInfer package ships; without them it downloads them "
                        "from FLASHINFER_CUBINS_REPOSITORY at every start"),
                artifact_path=artifact, checksums_sha256=d.checksums.sha256,
                header_dir=header_dir[len(artifact):], headers=d.headers, dest_dir=d.dest_dir,
                marker_name=d.marker_name, marker_content=d.marker_content)


def _not_needed(code: Codebase, common: dict[str, Any]) -> Plan:
    """No header downloader, or none called: symlinked headers (0.6.7.post1+) or none read (older)."""
    from repack.rules import reader

    headers = reader.symlinked_headers(code)
    links = reader.links_headers(code) and bool(headers)
    how = ("links them from flashinfer-cubin's artifact path (<artifact>/include/trtllmGen_bmm_export)"
           if links else "does not look for them under FLASHINFER_CUBIN_DIR/flashinfer/")
    artifact = reader.artifact_constant(code, "ArtifactPath")
    return Plan(**common, needed=False, mode="symlink" if links else "none",
                reason=(f"flashinfer-python {common['version']} never calls {HEADER_FUNCTION}('bmm', ...): "
                        f"it {how}, so it needs no supplementary package"),
                artifact_path=artifact.rstrip("/") + "/" if artifact else "",  # joined as f"{path}/x" (0.6.4: no slash)
                checksums_sha256=reader.artifact_constant(code, "CheckSumHash"), headers=headers,
                dest_dir=DEST_DIR, marker_name=MARKER_NAME)


def _requires_python(metadata: str | None) -> str | None:
    if not metadata:
        return None
    from email.parser import HeaderParser  # why here: a plan from the cache reads no METADATA

    return HeaderParser().parsestr(metadata).get("Requires-Python")


def require_needed(plan: Plan) -> Plan:
    """Return ``plan`` if a package is needed for it, else raise NotNeededError."""
    from repack.errors import NotNeededError

    if not plan.needed:
        raise NotNeededError(f"flashinfer {plan.version} needs no flashinfer-cubin-headers package",
                             plan.reason)
    return plan


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


__all__ = [
    "ARTIFACT_EXTRAS",
    "Plan",
    "UnknownVersionError",
    "derive_plan",
    "plan_from_json",
    "require_needed",
    "shipped_plan",
    "shipped_versions",
]
