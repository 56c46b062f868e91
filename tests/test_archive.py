"""Reading a few zip members through ranges: what is read, and what is refused.

A :class:`Recorder` is a ByteSource over bytes that logs every read, so the
tests see exactly the ranges that would go over HTTP.  The zips are made at
test time with :mod:`zipfile`, which also serves as the independent reader.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zipfile

import pytest

from repack.errors import SourceError
from repack.fetch.archive import COALESCE_GAP, LOCAL_HEADER_SLACK, SpanCache, is_safe_relpath, read_members


class Recorder:
    def __init__(self, data: bytes, label: str = "test.zip") -> None:
        self.data, self.label, self.size = data, label, len(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, start: int, end: int) -> bytes:
        assert 0 <= start < end <= self.size, (start, end)
        self.reads.append((start, end))
        return self.data[start:end]

    def overlaps(self) -> list:
        spans = sorted(self.reads)
        return [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]


def make_zip(members: list[tuple[str, bytes]], *, extra: dict[str, bytes] | None = None,
             stored: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            if extra and name in extra:
                info.extra = extra[name]
            zf.writestr(info, data)
    return buf.getvalue()


FILLER = os.urandom(COALESCE_GAP + 200_000)  # incompressible: keeps members far apart
TAIL = os.urandom(100_000)  # keeps c.h out of the end-of-archive read
LAYOUT = [("a.h", b"A" * 3000), ("b.h", b"B" * 5000), ("filler.bin", FILLER), ("c.h", b"C" * 4000),
          ("tail.bin", TAIL)]


def directory_reads(data: bytes) -> int:
    source = Recorder(data)
    read_members(source, [])
    return len(source.reads)


@pytest.mark.parametrize("wanted, extra_reads", [
    (["a.h"], 1),
    (["a.h", "b.h"], 1),          # neighbours: one coalesced read
    (["a.h", "c.h"], 2),          # more than COALESCE_GAP apart: two reads
    (["a.h", "b.h", "c.h"], 2),
])
def test_member_reads_are_coalesced(wanted, extra_reads):
    data = make_zip(LAYOUT, stored=True)
    source = Recorder(data)
    got = read_members(source, wanted)

    assert got == {name: dict(LAYOUT)[name] for name in wanted}
    assert len(source.reads) == directory_reads(data) + extra_reads
    assert source.overlaps() == []
    assert sum(b - a for a, b in source.reads) < len(FILLER) / 4


def test_a_member_longer_than_its_prefetched_span_is_completed_without_rereading():
    """A local extra field bigger than LOCAL_HEADER_SLACK pushes the data past the prefetched span."""
    body = os.urandom(20_000)
    extra = struct.pack("<HH", 0xCAFE, 3000) + b"x" * 3000
    assert len(extra) > LOCAL_HEADER_SLACK
    data = make_zip([("big.h", body), ("filler.bin", FILLER)], extra={"big.h": extra}, stored=True)
    source = Recorder(data)

    assert read_members(source, ["big.h"]) == {"big.h": body}
    assert source.overlaps() == []
    assert len(source.reads) == directory_reads(data) + 2  # the span, then only its missing tail


def test_span_cache_fetches_only_what_it_lacks():
    source = Recorder(bytes(range(256)) * 40)
    cache = SpanCache(source)
    cache.prefetch([(100, 200)])
    assert cache.read(150, 300) == source.data[150:300]
    assert cache.read(120, 180) == source.data[120:180]
    assert source.reads == [(100, 200), (200, 300)]


def with_zip64_end_records(data: bytes) -> bytes:
    """Replace the end record by ZIP64 ones whose classic fields say 'see ZIP64' (as past 4 GiB)."""
    eocd = data.rfind(b"PK\x05\x06")
    entries, cd_size, cd_offset = struct.unpack("<HII", data[eocd + 10: eocd + 20])
    body = data[:eocd]
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body), 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + record + locator + end


def test_zip64_end_records_are_followed():
    members = [("a.h", b"A" * 3000), ("c.h", b"C" * 4000)]
    data = with_zip64_end_records(make_zip(members))
    assert zipfile.ZipFile(io.BytesIO(data)).read("c.h") == b"C" * 4000  # the control: a valid zip
    assert read_members(Recorder(data), ["a.h", "c.h"]) == dict(members)


def test_predicate_selects_members():
    data = make_zip(LAYOUT)
    assert set(read_members(Recorder(data), lambda n: n.endswith(".h"))) == {"a.h", "b.h", "c.h"}


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def damaged(data: bytes) -> bytes:
    start = data.find(b"B" * 100)  # inside b.h's stored bytes: the CRC fails
    return data[:start] + b"X" + data[start + 1:]


@pytest.mark.parametrize("make, wanted, words", [
    (lambda: b"", ["a.h"], "not a zip archive (0 bytes)"),
    (lambda: b"<html>no</html>" * 100, ["a.h"], "no end-of-central-directory record"),
    (lambda: truncated(make_zip(LAYOUT, stored=True)), ["a.h"], "no end-of-central-directory record"),
    (lambda: make_zip(LAYOUT), ["missing.h"], "lacks 1 expected member(s), e.g. missing.h"),
    (lambda: damaged(make_zip(LAYOUT, stored=True)), ["b.h"], "member b.h is damaged"),
    (lambda: make_zip([*LAYOUT, ("../evil.h", b"x")]), ["a.h"], "escapes the archive: '../evil.h'"),
    (lambda: make_zip([*LAYOUT, ("/abs.h", b"x")]), ["a.h"], "escapes the archive: '/abs.h'"),
    (lambda: make_zip([*LAYOUT, ("a/./b.h", b"x")]), ["a.h"], "escapes the archive"),
], ids=["empty", "html", "truncated", "missing", "crc", "dotdot", "absolute", "dot"])
def test_bad_archives_are_refused(make, wanted, words):
    with pytest.raises(SourceError) as caught:
        read_members(Recorder(make()), wanted)
    assert words in str(caught.value) and caught.value.hint


@pytest.mark.parametrize("name, safe", [
    ("include/trtllmGen_bmm_export/Enums.h", True),
    ("a", True),
    ("", False),
    ("/etc/passwd", False),
    ("../x", False),
    ("a/../../x", False),
    ("a/./b", False),
    ("a//b", False),
    ("a\\b", False),
    ("C:/x", False),
    ("a/b\x00", False),
])
def test_is_safe_relpath(name, safe):
    assert is_safe_relpath(name) is safe
