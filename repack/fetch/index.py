"""A package index's simple API: PEP 691 JSON, falling back to PEP 503 HTML.

:func:`project_files` lists a project's files; :func:`find_wheel` picks the
pure wheel of one version.  Pure functions parse the two formats so they can be
tested without a server.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from repack.errors import SourceError, UnknownVersionError
from repack.fetch.transport import PAGE_LIMIT, HTTPStatusError
from repack.fetch.urlpolicy import check_link, redact
from repack.fs import is_safe_relpath

if TYPE_CHECKING:
    from repack.fetch.transport import Transport

PYPI = "https://pypi.org/simple/"
ACCEPT = ("application/vnd.pypi.simple.v1+json, "
          "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01")


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    requires_python: str | None = None
    yanked: bool = False


def project_url(index_url: str, project: str) -> str:
    return index_url.rstrip("/") + "/" + canonicalize_name(project) + "/"


def project_files(transport: Transport, index_url: str, project: str) -> list[IndexFile]:
    """Every file the index lists for ``project`` (absolute URLs)."""
    url = project_url(index_url, project)
    transport.add_index(index_url)  # keyring is asked under the index URL first, as pip asks it
    try:
        resp = transport.get(url, headers={"Accept": ACCEPT}, limit=PAGE_LIMIT)
    except HTTPStatusError as exc:
        if exc.status == 404:
            raise UnknownVersionError(f"the index {redact(index_url)} has no project {project}",
                                      "check the index URL; the project must be published there",
                                      status=exc.status, setting="index_url") from exc
        raise
    ctype = resp.header("Content-Type").split(";")[0].strip().lower()
    if ctype.endswith("+json") or ctype == "application/json":
        return parse_json_page(resp.body, resp.url)
    return parse_html_page(resp.body, resp.url)


def find_wheel(files: list[IndexFile], project: str, version: str, index_url: str) -> IndexFile:
    """The py3-none-any wheel of exactly ``version``."""
    want = Version(version)
    matches = []
    for f in files:
        try:
            name, ver, _build, _tags = parse_wheel_filename(wheel_filename(f.filename))
        except (InvalidWheelFilename, InvalidVersion):
            continue
        if name == canonicalize_name(project) and ver == want:
            matches.append(f)
    if not matches:
        sdists = [f.filename for f in files if _sdist_version(f.filename, project) == want]
        if sdists:
            raise UnknownVersionError(f"{project} {version} is on {redact(index_url)} only as a source "
                                      f"distribution ({sdists[0]}), and its code is read from a wheel",
                                      "choose a version published as a wheel")
        versions = sorted({v for v in map(_version_of, (f.filename for f in files)) if v is not None}, key=Version)
        near = ", ".join(versions[-6:]) or "none"
        hint = "check the version" + ("; flashinfer-cubin is on PyPI for 0.6.0 to 0.6.13"
                                      if canonicalize_name(project) == "flashinfer-cubin" else "")
        raise UnknownVersionError(f"{project} {version} is not on {redact(index_url)} (latest there: {near})", hint)
    return matches[0]


#: A wheel file name as the binary distribution format spells it, checked by us: every
#: ``packaging`` release from 23.2 to 26.0 accepts names with ``/`` and ``..`` in them.
WHEEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?-[A-Za-z0-9_.!+]+(?:-[0-9][A-Za-z0-9_]*)?"
                        r"-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl")


def wheel_filename(filename: str) -> str:
    """``filename`` if it is a plain wheel file name (one path component), else InvalidWheelFilename."""
    if not WHEEL_NAME.fullmatch(filename) or not is_safe_relpath(filename):
        raise InvalidWheelFilename(f"not a plain wheel file name: {filename!r}")
    return filename
def _sdist_version(filename: str, project: str) -> Version | None:
    try:
        name, version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion):
        return None
    return version if name == canonicalize_name(project) else None


def _version_of(filename: str) -> str | None:
    try:
        return str(parse_wheel_filename(wheel_filename(filename))[1])
    except (InvalidWheelFilename, InvalidVersion):
        return None


def parse_json_page(body: bytes, page_url: str) -> list[IndexFile]:
    try:  # a malformed page (files not a list, an entry without url...) is the server's fault, not ours
        files = json.loads(body)["files"]
        return [_json_entry(f, page_url) for f in files]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise SourceError(f"{redact(page_url)} is not a PEP 691 project page: {type(exc).__name__}",
                          "the index URL must be a simple-API root (ending in /simple/)") from exc


def _json_entry(f: dict[str, Any], page_url: str) -> IndexFile:
    url = _link(page_url, f["url"])
    size = f.get("size")
    if size is not None and (type(size) is not int or size < 0):
        raise TypeError(f"size {size!r}")
    return IndexFile(filename=_text(f["filename"]), url=url, sha256=_sha256((f.get("hashes") or {}).get("sha256")),
                     size=size, requires_python=f.get("requires-python"), yanked=bool(f.get("yanked")))


def parse_html_page(body: bytes, page_url: str) -> list[IndexFile]:
    parser = _Anchors()
    try:
        parser.feed(body.decode("utf-8", "replace"))
        parser.close()
    except AssertionError as exc:  # html.parser's way of giving up on what is not HTML
        raise SourceError(f"{redact(page_url)} is not an HTML project page",
                          "the index URL must be a simple-API root") from exc
    out = []
    for href, attrs in parser.anchors:
        url = _link(page_url, href)
        parts = urllib.parse.urlsplit(url)
        fragment = urllib.parse.parse_qs(parts.fragment)
        filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        try:
            sha256 = _sha256(fragment["sha256"][0] if fragment.get("sha256") else None)
        except TypeError as exc:
            raise SourceError(f"{redact(page_url)} lists {filename!r} with a malformed sha256",
                              "the index is damaged; use another source") from exc
        out.append(IndexFile(filename=filename, url=parts._replace(fragment="").geturl(), sha256=sha256,
                             requires_python=attrs.get("data-requires-python"), yanked="data-yanked" in attrs))
    return out


def _link(page_url: str, href: object) -> str:
    """An absolute link, by the scheme policy: a remote page may link only to http(s)."""
    url = urllib.parse.urljoin(page_url, _text(href))
    check_link(page_url, url)
    return url


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _sha256(value: object) -> str | None:
    """A sha256 as lower-case hex (pip compares case-insensitively), or None when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise TypeError("a sha256 must be 64 hex digits")
    return value.lower()


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            d = dict(attrs)
            href = d.get("href")
            if href:
                self.anchors.append((href, d))
