"""flashinfer-python's whole dependency set for a target, resolved by pip's own resolver, for a bundle.

pip decides what a target machine needs (``pip install --dry-run --ignore-installed --report`` with
``--only-binary=:all:`` and the target's ``--python-version`` / ``--platform`` options; it reads
metadata only, never a whole wheel).  Its report is untrusted input: every entry must be a wheel with
a sha256, a file name that is a wheel name of that project, and a URL; anything else is refused.
Excluded projects (``torch``, for sites that mirror it) are dropped with every project that only
they need: the report's own dependency metadata, evaluated in the target's marker environment,
tells which.  The files are then downloaded by :mod:`repack.fetch.download` (this project's
transport, checked against the sha256 the index gave pip).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from repack.errors import FetchError, InputError
from repack.fetch.index import IndexFile
from repack.fetch.urlpolicy import redact

log = logging.getLogger(__name__)

ROOTS = ("flashinfer-python", "flashinfer-cubin")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
PYTHON_VERSION = re.compile(r"^3\.\d{1,2}$")
PLATFORM_TAG = re.compile(r"^[a-z0-9_]+$")
PIP_TIMEOUT = 900


@dataclass(frozen=True)
class Target:
    """The machine the bundle is for; None / empty: this interpreter's version and platform."""

    python_version: str | None = None
    platforms: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def describe(self) -> str:
        python = f"Python {self.python_version}" if self.python_version else "this Python's version"
        platforms = ", ".join(self.platforms) if self.platforms else "this machine's platform"
        return f"{python} on {platforms}"


@dataclass
class Resolution:
    target: Target
    files: list[IndexFile] = field(default_factory=list)   # to download, one wheel a project
    kept: list[str] = field(default_factory=list)          # project==version, sorted
    dropped: list[str] = field(default_factory=list)       # excluded, and what only they needed

    def to_json(self) -> dict[str, Any]:
        return {"python_version": self.target.python_version, "platforms": list(self.target.platforms),
                "excluded": list(self.target.excludes), "dropped": self.dropped, "projects": self.kept}


def check_target(python_version: str | None, platforms: Sequence[str], excludes: Sequence[str]) -> Target:
    """The target from the user's values, refused when malformed (they reach pip's command line)."""
    if python_version is not None and not PYTHON_VERSION.match(python_version):
        raise InputError(f"Python version {python_version!r} is not X.Y", "give e.g. 3.12")
    bad = [p for p in platforms if not PLATFORM_TAG.match(p)]
    if bad:
        raise InputError(f"platform tag {bad[0]!r} is not a wheel platform tag", "give e.g. manylinux_2_28_x86_64")
    names = tuple(dict.fromkeys(canonicalize_name(n) for n in excludes))
    roots = [n for n in names if n in ROOTS]
    if roots:
        raise InputError(f"{roots[0]} cannot be excluded: it is what the bundle is for",
                         "exclude only third-party dependencies, such as torch")
    return Target(python_version, tuple(platforms), names)


def resolve(version: str, target: Target, index_url: str, *, run: Callable[..., Any] = subprocess.run) -> Resolution:
    """What pip would install for ``flashinfer-python==version flashinfer-cubin==version`` on ``target``."""
    report = pip_report(version, target, index_url, run)
    graph, items = dependency_graph(report)
    missing = [n for n in target.excludes if n not in items]
    if missing:
        raise InputError(f"{missing[0]} is not among the dependencies pip resolved for flashinfer {version}",
                         f"the resolution holds: {', '.join(sorted(items))}")
    keep = reachable(graph, ROOTS, set(target.excludes))
    out = Resolution(target, dropped=sorted(set(items) - keep))
    for name in sorted(keep):
        item = items[name]
        out.kept.append(f"{name}=={item['metadata']['version']}")
        if name not in ROOTS:  # the bundle fetches these itself
            out.files.append(wheel_file(name, item))
    return out


def pip_command(version: str, target: Target, index_url: str, report: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "--ignore-installed",
           "--only-binary=:all:", "--quiet", "--report", str(report), "--index-url", index_url]
    if target.python_version:
        cmd += ["--python-version", target.python_version]
    for tag in target.platforms:
        cmd += ["--platform", tag]
    return cmd + [f"{p}=={version}" for p in ROOTS]


def pip_report(version: str, target: Target, index_url: str, run: Callable[..., Any]) -> dict[str, Any]:
    """pip's installation report (JSON), or FetchError with pip's last words (credentials removed)."""
    with tempfile.TemporaryDirectory(prefix="flashinfer-repack-pip-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = pip_command(version, target, index_url, report)
        log.info("resolving with pip: %s", " ".join(redact(a) for a in cmd))
        env = {k: v for k, v in os.environ.items() if k not in ("PIP_REPORT", "PIP_DRY_RUN", "PIP_TARGET")}
        try:
            done = run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT, env=env)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"pip did not resolve flashinfer {version} within {PIP_TIMEOUT} s",
                             "check the index and the network") from exc
        if done.returncode != 0:
            last = [redact(line) for line in (done.stderr or "").strip().splitlines()[-3:]]
            raise FetchError(f"pip could not resolve flashinfer {version} for {target.describe()}: "
                             f"{' / '.join(last) or f'exit {done.returncode}'}",
                             "check the target (Python version, platform tags) and that the index has wheels "
                             "for it")
        try:
            data = json.loads(report.read_bytes()[:50_000_000])
        except (OSError, ValueError) as exc:
            raise FetchError("pip wrote no readable installation report", "upgrade pip to 23 or later") from exc
    if not isinstance(data, dict) or not isinstance(data.get("install"), list):
        raise FetchError("pip's installation report has no 'install' list", "upgrade pip to 23 or later")
    return data


Node = tuple[str, str]  # (project name, extra): ("nvidia-cutlass-dsl", "cu13") is that project's [cu13] extra


def dependency_graph(report: dict[str, Any]) -> tuple[dict[Node, set[Node]], dict[str, dict[str, Any]]]:
    """(name, extra) -> the (name, extra) nodes it requires on the target, markers evaluated in pip's
    target environment with that extra; a requirement ``b[x]`` leads to ``(b, "")`` and ``(b, "x")``."""
    environment: dict[str, Any] = report["environment"] if isinstance(report.get("environment"), dict) else {}
    items: dict[str, dict[str, Any]] = {}
    for item in report["install"]:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta.get("version"):
            raise FetchError("pip's report has an entry without a name and version", "report it, with pip's version")
        items[canonicalize_name(meta["name"])] = item
    graph: dict[Node, set[Node]] = {}
    for name, item in items.items():
        extras = {""} | {canonicalize_name(e) for e in item["metadata"].get("provides_extra") or []}
        for extra in extras:
            graph[(name, extra)] = {n for n in _requires(item["metadata"], environment, extra) if n[0] in items}
    return graph, items


def _requires(meta: dict[str, Any], environment: dict[str, Any], extra: str) -> set[Node]:
    out: set[Node] = set()
    for line in meta.get("requires_dist") or []:
        try:
            req = Requirement(str(line))
            if req.marker is None or req.marker.evaluate({**environment, "extra": extra}):
                name = canonicalize_name(req.name)
                out |= {(name, "")} | {(name, canonicalize_name(x)) for x in req.extras}
        except (InvalidRequirement, InvalidMarker, UndefinedEnvironmentName):
            log.info("%s: ignoring the requirement %r pip's report holds", meta.get("name"), line)
    return out


def reachable(graph: dict[Node, set[Node]], roots: Sequence[str], excluded: set[str]) -> set[str]:
    """Every project reachable from ``roots`` without passing through an excluded one."""
    seen: set[Node] = set()
    todo: list[Node] = [(r, "") for r in roots if (r, "") in graph]
    while todo:
        node = todo.pop()
        if node in seen or node[0] in excluded:
            continue
        seen.add(node)
        todo.extend(graph.get(node, ()))
    return {name for name, _ in seen}


def wheel_file(name: str, item: dict[str, Any]) -> IndexFile:
    """The entry's wheel as an IndexFile; refused unless it is a wheel of ``name`` with a sha256 and a URL."""
    info: dict[str, Any] = item["download_info"] if isinstance(item.get("download_info"), dict) else {}
    url = str(info.get("url") or "")
    hashes = (info.get("archive_info") or {}).get("hashes") or {} if isinstance(info.get("archive_info"), dict) else {}
    digest = str(hashes.get("sha256", "")).lower()
    filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    try:
        wheel_name = canonicalize_name(parse_wheel_filename(filename)[0])
    except InvalidWheelFilename:
        wheel_name = None
    problems = [what for what, bad in (("no URL", not url), ("no sha256 from the index", not SHA256.match(digest)),
                                       (f"{filename!r} is not a wheel of {name}", wheel_name != name))
                if bad]
    if problems:
        raise FetchError(f"pip resolved {name} to {redact(url) or 'nothing'}: {'; '.join(problems)}",
                         "the bundle takes only wheels whose sha256 the index states; use an index that gives hashes")
    return IndexFile(filename, url, digest)
