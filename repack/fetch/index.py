"""A package index's simple API: PEP 691 JSON, falling back to PEP 503 HTML.

:func:`project_files` lists a project's files; :func:`find_wheel` picks the
pure wheel of one version.  Pure functions parse the two formats so they can be
tested without a server.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from repack.errors import FetchError, SourceError, UnknownVersionError
from repack.fetch.transport import redact

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


def project_files(transport, index_url: str, project: str) -> list[IndexFile]:
    """Every file the index lists for ``project`` (absolute URLs)."""
    url = project_url(index_url, project)
    try:
        resp = transport.get(url, headers={"Accept": ACCEPT})
    except FetchError as exc:
        if "HTTP 404" in str(exc):
            raise UnknownVersionError(f"the index {redact(index_url)} has no project {project}",
                                      "check --index-url; the project must be published there") from exc
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
            name, ver, _build, tags = parse_wheel_filename(f.filename)
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
        versions = sorted({_version_of(f.filename) for f in files} - {None}, key=Version)
        near = ", ".join(versions[-6:]) or "none"
        hint = "check the version" + ("; flashinfer-cubin is on PyPI for 0.6.0 to 0.6.13"
                                      if canonicalize_name(project) == "flashinfer-cubin" else "")
        raise UnknownVersionError(f"{project} {version} is not on {redact(index_url)} (latest there: {near})", hint)
    return matches[0]


def _sdist_version(filename: str, project: str) -> Version | None:
    try:
        name, version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, InvalidVersion):
        return None
    return version if name == canonicalize_name(project) else None


def _version_of(filename: str) -> str | None:
    try:
        return str(parse_wheel_filename(filename)[1])
    except (InvalidWheelFilename, InvalidVersion):
        return None


def parse_json_page(body: bytes, page_url: str) -> list[IndexFile]:
    try:  # a malformed page (files not a list, an entry without url...) is the server's fault, not ours
        return [IndexFile(filename=f["filename"], url=urllib.parse.urljoin(page_url, f["url"]),
                          sha256=(f.get("hashes") or {}).get("sha256"), size=f.get("size"),
                          requires_python=f.get("requires-python"), yanked=bool(f.get("yanked")))
                for f in json.loads(body)["files"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SourceError(f"{redact(page_url)} is not a PEP 691 project page: {exc!r}",
                          "is --index-url a simple-API root (ending in /simple/)?") from exc


def parse_html_page(body: bytes, page_url: str) -> list[IndexFile]:
    parser = _Anchors()
    try:
        parser.feed(body.decode("utf-8", "replace"))
        parser.close()
    except AssertionError as exc:  # html.parser's way of giving up on what is not HTML
        raise SourceError(f"{redact(page_url)} is not an HTML project page", "is --index-url a simple-API root?") from exc
    out = []
    for href, attrs in parser.anchors:
        url = urllib.parse.urljoin(page_url, href)
        parts = urllib.parse.urlsplit(url)
        fragment = urllib.parse.parse_qs(parts.fragment)
        filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        out.append(IndexFile(filename=filename, url=parts._replace(fragment="").geturl(),
                             sha256=(fragment.get("sha256") or [None])[0],
                             requires_python=attrs.get("data-requires-python"),
                             yanked="data-yanked" in attrs))
    return out


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            d = dict(attrs)
            if d.get("href"):
                self.anchors.append((d["href"], d))
