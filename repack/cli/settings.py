"""The command line and the environment, parsed once into :class:`Settings`, which library calls are given.

Only here (and in :mod:`repack.cli.common`) are argv's Namespace and ``os.environ`` read for build,
install and bundle; what the library gets is typed and frozen.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repack.cli.common import UsageError, cache_dir, index_url, source_date_epoch

if TYPE_CHECKING:  # why: the parser registers every command at start-up; the pipeline loads when one runs
    from repack.pipeline import SourceSettings


@dataclass(frozen=True)
class Settings:
    """What one build, install or bundle run asks for.

    ``conda`` holds build_conda's checked keyword arguments (empty unless a conda format is asked for).
    """

    sources: SourceSettings
    output: Path | None = None
    formats: tuple[str, ...] = ()
    epoch: int | None = None
    conda: Mapping[str, Any] = field(default_factory=dict)


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Settings:
    """``args`` and ``environ`` as :class:`Settings`; a malformed value is a UsageError before any work."""
    formats = parse_formats(args.format) if getattr(args, "format", None) else ()
    conda = conda_options_of(args) if any(f != "wheel" for f in formats) else {}
    epoch = source_date_epoch()
    return Settings(sources=source_settings(args, environ), output=getattr(args, "output", None),
                    formats=formats, epoch=epoch, conda=conda)


def source_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> SourceSettings:
    """The --from specs (default auto), --index-url (else pip's, asked only when needed) and the cache."""
    from repack.fetch.sourcespec import parse_source_spec
    from repack.pipeline import SourceSettings

    specs = tuple(parse_source_spec(text) for text in (getattr(args, "sources", None) or ["auto"]))
    return SourceSettings(sources=specs, index_url=getattr(args, "index_url", None) or None,
                          pip_index_url=lambda: index_url(args),
                          cubins_repository=environ.get("FLASHINFER_CUBINS_REPOSITORY") or None,
                          cache_dir=cache_dir(args))


def parse_formats(text: str) -> tuple[str, ...]:
    """``wheel,conda`` -> ("wheel", "conda"): known formats, each once, in the order given."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    from repack.pipeline import FORMATS

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown format {unknown[0] if unknown else text!r}",
                         f"choose from {', '.join(FORMATS)}, comma-separated")
    return tuple(dict.fromkeys(formats))


def conda_options_of(args: argparse.Namespace) -> dict[str, Any]:
    """build_conda's keyword arguments from ``build``'s --conda-* options."""
    from repack.build.conda import conda_options

    number = getattr(args, "build_number", 0) or 0
    if number < 0:  # the library refuses it too, but in its words: this names the option
        raise UsageError(f"--build-number {number} is negative", "give 0, 1, 2...")
    return conda_options(number, getattr(args, "conda_dep_name", None) or [],
                         not getattr(args, "conda_no_flashinfer_deps", False))
