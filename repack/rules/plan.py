"""What a FlashInfer version needs, read statically from flashinfer-python's own code.

A :class:`Plan` is pure data.  :func:`derive_plan` reads it out of the source
text of ``flashinfer/artifacts.py`` and ``flashinfer/jit/*.py`` (parsed with
:mod:`ast`, never imported); :func:`shipped_plan` returns the plans of the
affected versions that ship with this package, with every header's sha256.
Where the source text comes from (an installed distribution, a wheel on disk,
a wheel on an index) is ``resolve.py``'s business.
"""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from importlib import resources
from typing import Mapping

from repack.errors import PlanError, UnknownVersionError

#: The files of flashinfer-python that the derivation reads.
ARTIFACTS_MODULE = "flashinfer/artifacts.py"
LOADER_MODULE = "flashinfer/jit/cubin_loader.py"
JIT_PREFIX = "flashinfer/jit/"
HEADER_FUNCTION = "download_trtllm_headers"
CUBIN_DIR = "FLASHINFER_CUBIN_DIR"

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

    @property
    def marker_bytes(self) -> bytes:
        """The exact marker content: the artifact path, no newline."""
        return self.artifact_path.encode("utf-8")

    @property
    def checksums_path(self) -> str:
        return self.artifact_path + "checksums.txt"

    def source_path(self, header: str) -> str:
        """Where ``header`` lives relative to the artifactory root."""
        return f"{self.artifact_path}{self.header_dir}/{header}"

    def dest_path(self, name: str) -> str:
        """Where ``name`` must lie relative to ``FLASHINFER_CUBIN_DIR``."""
        return f"{self.dest_dir}/{name}"

    def to_json(self) -> dict:
        data = asdict(self)
        data["headers"] = list(self.headers)
        data["header_sha256"] = dict(sorted(self.header_sha256.items()))
        data["marker_bytes"] = self.marker_bytes.decode("utf-8")
        data["marker_size"] = len(self.marker_bytes)
        data["checksums_path"] = self.checksums_path if self.needed else ""
        return data

    def differences(self, other: "Plan") -> list[str]:
        """Fields where two plans of one version disagree (header hashes only if both know them)."""
        names = ["needed", "artifact_path", "checksums_sha256", "header_dir", "headers",
                 "dest_dir", "marker_name", "requires_python"]
        if self.header_sha256 and other.header_sha256:
            names.append("header_sha256")
        return [f"{n}: {getattr(self, n)!r} != {getattr(other, n)!r}"
                for n in names if getattr(self, n) != getattr(other, n)]


def plan_from_json(data: Mapping) -> Plan:
    return Plan(
        version=data["version"], needed=data["needed"], reason=data["reason"],
        requires_python=data.get("requires_python"), artifact_path=data["artifact_path"],
        checksums_sha256=data["checksums_sha256"], header_dir=data["header_dir"],
        headers=tuple(data["headers"]), dest_dir=data["dest_dir"],
        marker_name=data["marker_name"], header_sha256=dict(data.get("header_sha256") or {}),
    )


def shipped_versions() -> tuple[str, ...]:
    return tuple(_shipped())


def shipped_plan(version: str) -> Plan | None:
    """The plan shipped with this package for ``version``, or None."""
    data = _shipped().get(version)
    return plan_from_json(data) if data else None


def _shipped() -> dict:
    text = resources.files("repack.rules").joinpath("plans.json").read_text("utf-8")
    return json.loads(text)["plans"]


# -- derivation ----------------------------------------------------------------

class _Symbol(str):
    """A value known only by name, e.g. ``FLASHINFER_CUBIN_DIR``."""


class _Unresolved(Exception):
    pass


def derive_plan(version: str, sources: Mapping[str, str], metadata: str | None = None) -> Plan:
    """Read the plan of ``version`` out of flashinfer-python's source text.

    ``sources`` maps wheel-relative paths (``flashinfer/jit/fused_moe.py``) to
    text; it must hold ``flashinfer/artifacts.py`` and ``flashinfer/jit/*.py``.
    ``metadata`` is the distribution's METADATA text (for Requires-Python).
    """
    requires_python = _requires_python(metadata)
    trees = {path: _parse(path, text) for path, text in sources.items()
             if path == ARTIFACTS_MODULE or path.startswith(JIT_PREFIX)}
    if ARTIFACTS_MODULE not in trees:
        raise PlanError(f"flashinfer-python {version} has no {ARTIFACTS_MODULE}",
                        "only flashinfer-python 0.6.x with cubin artifacts is understood")
    consts = _artifact_constants(trees[ARTIFACTS_MODULE])
    calls = [c for path, tree in sorted(trees.items()) for c in _header_calls(tree, consts)]
    if not calls:
        return Plan(version=version, needed=False, requires_python=requires_python,
                    reason=_not_needed_reason(version, trees))
    dests = {c[0] for c in calls}
    header_paths = {c[1] for c in calls}
    artifacts = {c[2] for c in calls}
    if len(dests) != 1 or len(header_paths) != 1 or len(artifacts) != 1:
        raise PlanError(f"flashinfer-python {version} calls {HEADER_FUNCTION}('bmm', ...) "
                        f"with differing arguments: {sorted(map(str, dests | header_paths))}",
                        "this version's layout is not understood; report it")
    dest, header_path, artifact = dests.pop(), header_paths.pop(), artifacts.pop()
    if not header_path.startswith(artifact.rstrip("/") + "/"):
        raise PlanError(f"header path {header_path!r} is not under artifact {artifact!r}")
    headers, marker = _loader_facts(trees.get(LOADER_MODULE), version)
    return Plan(
        version=version, needed=True, requires_python=requires_python,
        reason=(f"flashinfer-python {version} calls {HEADER_FUNCTION}('bmm', ...) at JIT-spec "
                f"generation and looks for {len(headers)} headers under FLASHINFER_CUBIN_DIR/{dest}/, "
                "a path no FlashInfer package ships; without them it downloads them from "
                "FLASHINFER_CUBINS_REPOSITORY at every start"),
        artifact_path=artifact,
        checksums_sha256=consts.get("CheckSumHash.TRTLLM_GEN_BMM", ""),
        header_dir=header_path[len(artifact.rstrip("/")) + 1:].strip("/"),
        headers=headers, dest_dir=dest, marker_name=marker,
    )


def _parse(path: str, text: str) -> ast.Module:
    try:
        return ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise PlanError(f"cannot parse {path}: {exc.msg} (line {exc.lineno})",
                        "the file is damaged, or of a Python newer than this interpreter") from exc


def _requires_python(metadata: str | None) -> str | None:
    if not metadata:
        return None
    return HeaderParser().parsestr(metadata).get("Requires-Python")


def _artifact_constants(tree: ast.Module) -> dict[str, str]:
    """``ClassName.ATTR`` -> string for the string constants of ArtifactPath and CheckSumHash."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ("ArtifactPath", "CheckSumHash"):
            for stmt in node.body:
                target = getattr(stmt, "target", None) or (stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
                value = getattr(stmt, "value", None)
                if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found[f"{node.name}.{target.id}"] = value.value
    if "ArtifactPath.TRTLLM_GEN_BMM" not in found or "CheckSumHash.TRTLLM_GEN_BMM" not in found:
        raise PlanError("flashinfer/artifacts.py pins no TRTLLM_GEN_BMM artifact path and checksum",
                        "this flashinfer-python version predates the BMM artifacts")
    return found


def _header_calls(tree: ast.Module, consts: Mapping[str, str]):
    """Yield (dest_dir, header_path, artifact_path) of each download_trtllm_headers('bmm', ...) call."""
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        env = {t.id: stmt.value for stmt in ast.walk(func) if isinstance(stmt, ast.Assign)
               for t in stmt.targets if isinstance(t, ast.Name)}
        for call in ast.walk(func):
            if not (isinstance(call, ast.Call) and _callee(call) == HEADER_FUNCTION and len(call.args) >= 4):
                continue
            try:
                op = _evaluate(call.args[0], env, consts)
                if op != "bmm":
                    continue
                dest = _evaluate(call.args[1], env, consts)
                header_path = _evaluate(call.args[2], env, consts)
                artifact = _evaluate(call.args[3], env, consts)
            except _Unresolved as exc:
                raise PlanError(f"cannot read the arguments of {HEADER_FUNCTION}() at line {call.lineno}: {exc}",
                                "this flashinfer-python version's code has an unexpected shape") from None
            if not (isinstance(dest, tuple) and dest[:1] == (_Symbol(CUBIN_DIR),)):
                raise PlanError(f"{HEADER_FUNCTION}() at line {call.lineno} writes outside FLASHINFER_CUBIN_DIR")
            yield "/".join(dest[1:]), header_path, artifact


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _evaluate(node: ast.AST, env: Mapping[str, ast.AST], consts: Mapping[str, str], depth: int = 0):
    """Evaluate the tiny subset of Python used for these arguments.

    Strings, f-strings, ``ArtifactPath.X`` constants, and ``pathlib`` ``/``
    chains rooted at ``FLASHINFER_CUBIN_DIR`` (returned as a tuple of parts).
    """
    if depth > 20:
        raise _Unresolved("too deep")
    ev = lambda n: _evaluate(n, env, consts, depth + 1)  # noqa: E731
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute):
        if node.attr == CUBIN_DIR:
            return (_Symbol(CUBIN_DIR),)
        if isinstance(node.value, ast.Name) and f"{node.value.id}.{node.attr}" in consts:
            return consts[f"{node.value.id}.{node.attr}"]
    if isinstance(node, ast.Name):
        if node.id == CUBIN_DIR:
            return (_Symbol(CUBIN_DIR),)
        if node.id in env:
            return ev(env[node.id])
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            part = ev(value.value) if isinstance(value, ast.FormattedValue) else ev(value)
            if not isinstance(part, str):
                raise _Unresolved(ast.unparse(node))
            parts.append(part)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = ev(node.left), ev(node.right)
        if isinstance(left, tuple) and isinstance(right, str):
            return left + tuple(p for p in right.split("/") if p)
    raise _Unresolved(ast.unparse(node))


def _loader_facts(tree: ast.Module | None, version: str) -> tuple[tuple[str, ...], str]:
    """The 'bmm' header list and the marker file name, from download_trtllm_headers itself."""
    func = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == HEADER_FUNCTION),
                None) if tree else None
    if func is None:
        raise PlanError(f"flashinfer-python {version} calls {HEADER_FUNCTION}() but {LOADER_MODULE} "
                        "does not define it")
    dest_param = func.args.args[1].arg
    headers: tuple[str, ...] = ()
    for node in ast.walk(func):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.comparators[0], ast.Constant) and node.test.comparators[0].value == "bmm"):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.List):
                    headers = tuple(e.value for e in stmt.value.elts if isinstance(e, ast.Constant))
    markers = {node.right.value for node in ast.walk(func)
               if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
               and isinstance(node.left, ast.Name) and node.left.id == dest_param
               and isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)}
    if not headers or len(markers) != 1:
        raise PlanError(f"cannot read the 'bmm' header list and marker name from {LOADER_MODULE} "
                        f"of flashinfer-python {version}", "this version's loader has an unexpected shape")
    return headers, markers.pop()


def _not_needed_reason(version: str, trees: Mapping[str, ast.Module]) -> str:
    links = any(isinstance(n, ast.FunctionDef) and n.name == "ensure_symlink"
                for tree in trees.values() for n in ast.walk(tree))
    how = ("links them from flashinfer-cubin's artifact path (<artifact>/include/trtllmGen_bmm_export)"
           if links else "does not look for them under FLASHINFER_CUBIN_DIR/flashinfer/")
    return (f"flashinfer-python {version} never calls {HEADER_FUNCTION}('bmm', ...): it {how}, "
            "so it needs no supplementary package")


def require_needed(plan: Plan) -> Plan:
    """Return ``plan`` if a package is needed for it, else raise NotNeededError."""
    from repack.errors import NotNeededError

    if not plan.needed:
        raise NotNeededError(f"flashinfer {plan.version} needs no flashinfer-cubin-headers package",
                             plan.reason)
    return plan


__all__ = ["Plan", "derive_plan", "shipped_plan", "shipped_versions", "plan_from_json",
           "require_needed", "UnknownVersionError", "ARTIFACT_EXTRAS"]
