"""Plan + sources -> a verified Payload.

The cache is asked first (it is content-addressed, so a hit is as good as the
pin); then each source in turn, all needed files in one read so that range
requests can be coalesced.  A source that cannot answer (network, missing
file) passes the turn to the next; one that answers with wrong bytes stops the
build: tampering is reported, never routed around.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from repack.errors import FetchError, IntegrityError, SourceError, UnknownVersionError
from repack.fetch.cache import Cache
from repack.fetch.sources import Source
from repack.fetch.verify import (
    Payload,
    check_checksums_file,
    expected_hashes,
    runtime_hash,
    verified_payload,
)
from repack.fs import NotRegularFileError, UnsafePathError
from repack.rules.plan import ARTIFACT_EXTRAS, Plan, require_needed

log = logging.getLogger(__name__)


@dataclass
class FetchReport:
    """How the payload was obtained, for ``--json`` and the benchmark."""

    source: str = ""
    tried: list[tuple[str, str]] = field(default_factory=list)


def fetch_payload(plan: Plan, sources: Sequence[Source], cache: Cache, *, with_extras: bool = False,
                  report: FetchReport | None = None) -> Payload:
    """The verified payload of ``plan``, from the cache or the first source that has it."""
    require_needed(plan)
    report = report if report is not None else FetchReport()
    extras = ARTIFACT_EXTRAS if with_extras else ()
    payload = _from_cache(plan, cache, extras)
    if payload is not None:
        log.info("source: the cache %s (checksums.txt %s and every file by sha256)", cache.root,
                 plan.checksums_sha256[:16])
        report.source = "cache"
        return payload
    log.info("source: not in the cache %s; trying %s", cache.root or "(off)",
             ", ".join(s.label for s in sources) or "nothing else")
    if not sources:
        where = f"the cache {cache.root}" if cache.root is not None else "any cache (caching is off)"
        raise FetchError(f"the headers of flashinfer {plan.version} are not in {where}, and no other source "
                         "was to be tried", "name a source that holds them (a flashinfer-cubin wheel, a directory "
                         "in artifactory layout, an index or artifactory URL), or let the network be used once "
                         "to fill the cache")
    last: Exception | None = None
    for position, source in enumerate(sources, 1):
        try:
            payload, checksums = _from_source(plan, source, extras)
        except (FetchError, SourceError, UnknownVersionError) as exc:  # this source lacks it: try the next
            log.info("%s: %s", source.label, exc)
            report.tried.append((source.label, str(exc)))
            last = exc
            continue
        except (IntegrityError, UnsafePathError, NotRegularFileError) as exc:
            # why: bytes that fail verification are that source's failure, never shipped; the next source's
            # bytes are verified the same way, so trying it cannot weaken the check. Said aloud: it may be an attack
            if position < len(sources):  # the last one's failure is the error itself: said once, not twice
                log.warning("%s served what fails verification; trying the next source: %s", source.label, exc)
            report.tried.append((source.label, str(exc)))
            last = exc
            continue
        log.info("source: %s gave verified headers; caching them", source.label)
        report.source = source.label
        for blob in [checksums] + [f.data for f in payload.files + payload.extras]:
            cache.put(blob)
        if payload.provenance is not None:  # always, from a source (_from_source sets it)
            cache.put_provenance(plan.checksums_sha256, payload.provenance.to_bytes())
        return payload
    if len(report.tried) == 1 and isinstance(last, (IntegrityError, UnsafePathError, NotRegularFileError)):
        raise last  # one source, and it served bad bytes: that is the error, with its class and problems
    if len(report.tried) == 1:
        _label, message = report.tried[0]
        # the failing layer's hint is the specific one (403: credentials; 404: the URL)
        raise FetchError(message, getattr(last, "hint", "") or OTHER_SOURCE_HINT) from last
    summary = "; ".join(f"{label}: {msg}" for label, msg in report.tried)
    raise FetchError(f"no source could provide the headers of flashinfer {plan.version}: {summary}",
                     "give a flashinfer-cubin wheel, an artifactory mirror, or a reachable index as the source",
                     setting="source")


OTHER_SOURCE_HINT = ("check the network or the source, or give another source "
                     "(a flashinfer-cubin wheel, an artifactory-layout directory or URL, an index)")

def _paths(plan: Plan, extras: Sequence[str]) -> list[str]:
    # checksums.txt is always read (it is the trust anchor); as an extra it is also installed
    return list(dict.fromkeys([plan.checksums_path] + [plan.source_path(h) for h in plan.headers]
                              + [plan.artifact_path + e for e in extras]))


def _from_source(plan: Plan, source: Source, extras: Sequence[str]) -> tuple[Payload, bytes]:
    from repack.fetch.provenance import of_source

    data = source.read(_paths(plan, extras))
    try:
        payload = verified_payload(
            plan, data[plan.checksums_path],
            {h: data[plan.source_path(h)] for h in plan.headers},
            {e: data[plan.artifact_path + e] for e in extras}, source=source.label)
    except IntegrityError as exc:  # wrapped, never edited: say which source served the bytes
        raise IntegrityError(f"{source.label}: {exc}", exc.hint, exc.problems) from exc
    return replace(payload, provenance=of_source(source)), data[plan.checksums_path]


def _from_cache(plan: Plan, cache: Cache, extras: Sequence[str]) -> Payload | None:
    checksums = cache.get(plan.checksums_sha256)
    if checksums is None:
        return None
    try:
        entries = check_checksums_file(plan, checksums)
        want = expected_hashes(plan, entries)
    except IntegrityError:
        return None
    headers = {h: cache.get(d) for h, d in want.items()}
    extra = {e: checksums if e == "checksums.txt" else cache.get(runtime_hash(entries, e) or "") for e in extras}
    if any(v is None for v in headers.values()) or any(v is None for v in extra.values()):
        return None
    from repack.fetch.provenance import Provenance

    payload = verified_payload(plan, checksums, headers, extra, source="cache")  # type: ignore[arg-type]
    # the source that first provided these verified bytes, so that a rebuild from the cache is byte-identical
    stored = cache.get_provenance(plan.checksums_sha256)
    return replace(payload, provenance=(Provenance.from_bytes(stored) if stored else None)
                   or Provenance("cache", "a verified cache entry whose first source was not recorded"))
