"""The source language of a build: text such as ``pypi``, ``index+URL`` or ``x.whl`` -> a :class:`SourceSpec`.

Pure: no file is looked at and no server asked.  What a spec names is opened later, by
:func:`repack.pipeline.make_sources`, which also decides what "the default index" and "the
artifactory" are for this run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repack.errors import InputError

#: What a source spec can name, in the order the help lists them.
Kind = Literal["auto", "cache", "installed", "pypi", "index", "artifactory", "wheel", "directory"]

#: The specs that are a bare word.
NAMED: tuple[Kind, ...] = ("auto", "cache", "installed", "pypi", "index", "artifactory")
#: ``index+URL`` and ``artifactory+URL``: the kind said outright, for a URL whose shape would say otherwise.
PREFIXED: tuple[Kind, ...] = ("index", "artifactory")


@dataclass(frozen=True)
class SourceSpec:
    """One source of the header bytes, as the caller named it.

    ``location`` is the URL or path it names; None for the named sources, whose place is decided by
    the run (the index URL, ``$FLASHINFER_CUBINS_REPOSITORY``, this environment, the cache).
    """

    kind: Kind
    location: str | None = None

    @property
    def is_url(self) -> bool:
        return self.location is not None and "://" in self.location


def parse_source_spec(text: str) -> SourceSpec:
    """The :class:`SourceSpec` that ``text`` names (InputError when it names nothing)."""
    if text in NAMED:
        return SourceSpec(text)  # mypy narrows ``in NAMED`` to a Kind
    for kind in PREFIXED:
        if text.startswith(kind + "+"):
            return SourceSpec(kind, _location(text, text[len(kind) + 1:]))
    location = _location(text, text)
    is_url = "://" in location
    if location.endswith(".whl"):
        return SourceSpec("wheel", location)
    if is_url:
        # an index's URL ends in /simple/ by convention; any other URL is served in artifactory layout
        return SourceSpec("index" if location.rstrip("/").endswith("/simple") else "artifactory", location)
    return SourceSpec("directory", location)


def _location(text: str, location: str) -> str:
    if not location.strip():
        raise InputError(f"source {text!r} names no place", "give a known source, a URL, a .whl file or a directory",
                         value=text, expected="a source", setting="source")
    return location
