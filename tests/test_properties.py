"""Property-based tests of the parsers at the trust boundary: random and adversarial input never
raises anything but the project's errors, never yields a path outside its target, and never yields
more than the documented caps."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.utils import InvalidWheelFilename

from repack.errors import RepackError
from repack.fetch.archive import MEMBER_LIMIT, TOTAL_LIMIT, read_members
from repack.fetch.index import find_wheel, parse_html_page, parse_json_page, wheel_filename
from repack.fetch.verify import parse_checksums
from repack.fs import safe_join

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROOT = Path("/nonexistent-target/root")


def stays_inside(name: str) -> bool:
    path = safe_join(ROOT, name)
    return path.is_relative_to(ROOT) and ".." not in path.relative_to(ROOT).parts


class Memory:
    """A ByteSource over bytes that counts what was read."""

    label = "memory"

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.read_bytes = data, len(data), 0

    def read(self, start: int, end: int) -> bytes:
        self.read_bytes += max(0, end - start)
        return self.data[start:end]


def small_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


BASE = small_zip({"a/b.h": b"int x;\n" * 40, "a/c.txt": b"hello\n", "d.bin": bytes(range(256))})
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)


@st.composite
def damaged_zips(draw) -> bytes:
    """A real zip with bytes flipped, cut or spliced anywhere (end records and directory included)."""
    data = bytearray(draw(st.sampled_from([BASE, small_zip(dict.fromkeys(draw(st.lists(names.filter(lambda n: "\x00" not in n), max_size=4, unique=True)), b"x"))])))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        data[at: at + 1] = draw(st.binary(min_size=0, max_size=8))
    return bytes(data)


def members_or_error(data: bytes) -> dict[str, bytes] | None:
    source = Memory(data)
    try:
        out = read_members(source, lambda name: True)
    except RepackError:
        return None
    assert all(len(v) <= MEMBER_LIMIT for v in out.values()) and sum(map(len, out.values())) <= TOTAL_LIMIT
    assert all(stays_inside(name.rstrip("/")) for name in out)
    return out


@SETTINGS
@given(damaged_zips())
def test_a_damaged_zip_gives_members_or_a_project_error(data):
    members_or_error(data)


def test_a_zip_of_a_version_zipfile_refuses_is_a_project_error():
    """Found by the property above: zipfile raises NotImplementedError for 'zip file version 6.4'."""
    data = bytearray(BASE)
    at = data.index(b"PK\x01\x02")
    data[at + 6: at + 8] = (64).to_bytes(2, "little")  # version needed to extract: 6.4
    assert members_or_error(bytes(data)) is None


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_are_never_taken_for_a_zip_silently(data):
    members_or_error(data)


@SETTINGS
@given(st.dictionaries(names.filter(lambda n: "\x00" not in n), st.binary(max_size=64), max_size=5))
def test_any_member_name_that_comes_out_stays_inside(members):
    members_or_error(small_zip(members))


line = st.one_of(st.just("a" * 64 + "  include/x.h"), st.text(max_size=120),
                 st.builds(lambda h, n: f"{h}  {n}", st.text("0123456789abcdefABCDEF", min_size=64, max_size=64), names))


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.lists(line, max_size=6).map(lambda ls: "\n".join(ls).encode())))
def test_checksum_lines_give_safe_names_or_a_project_error(text):
    try:
        entries = parse_checksums(text)
    except RepackError:
        return
    assert all(len(digest) == 64 and stays_inside(name) for digest, name in entries)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), names),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(names, inner, max_size=3)), max_leaves=12)
file_entries = st.fixed_dictionaries({"filename": st.one_of(names, json_values), "url": st.one_of(names, json_values)},
                                     optional={"size": json_values, "hashes": st.one_of(json_values, st.fixed_dictionaries(
                                         {"sha256": st.one_of(names, st.text("0123456789abcdefABCDEF", min_size=64,
                                                                             max_size=64))})),
                                         "yanked": json_values, "requires-python": json_values})
pages = st.one_of(json_values.map(json.dumps), st.lists(file_entries, max_size=4).map(lambda f: json.dumps({"files": f})),
                  st.text(max_size=200))


def check_listing(files) -> None:
    for f in files:
        assert f.url.split(":", 1)[0] in ("http", "https")  # a remote page links only to http(s)
        assert f.size is None or (type(f.size) is int and f.size >= 0)
        assert f.sha256 is None or (len(f.sha256) == 64 and f.sha256 == f.sha256.lower())
        try:
            assert stays_inside(wheel_filename(f.filename)) and "/" not in f.filename
        except InvalidWheelFilename:
            pass
    try:
        chosen = find_wheel(files, "flashinfer-cubin", "0.6.6", "http://127.0.0.1/simple/")
    except RepackError:
        return
    assert stays_inside(chosen.filename)


@SETTINGS
@given(pages)
def test_a_json_page_gives_checked_entries_or_a_project_error(page):
    try:
        files = parse_json_page(page.encode(), "http://127.0.0.1/simple/flashinfer-cubin/")
    except RepackError:
        return
    check_listing(files)


hrefs = st.one_of(names, st.sampled_from(["file:///dev/zero", "../../x.whl", "..%2F..%2Fflashinfer_cubin-0.6.6-py3-none-any.whl",
                                          "javascript:x", "//evil/x.whl", "flashinfer_cubin-0.6.6-py3-none-any.whl#sha256=AB"]))


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.lists(st.tuples(hrefs, names), max_size=5).map(
    lambda links: "".join(f'<a href="{h}" data-yanked>{t}</a>' for h, t in links))))
def test_an_html_page_gives_checked_entries_or_a_project_error(page):
    try:
        files = parse_html_page(page.encode(), "https://127.0.0.1/simple/flashinfer-cubin/")
    except RepackError:
        return
    check_listing(files)


@SETTINGS
@given(st.one_of(names, st.builds(lambda a, b: f"{a}-0.6.6-py3-none-any.whl{b}", names, st.sampled_from(["", "/", "\x00"])),
                 st.builds(lambda a: f"{a}/flashinfer_cubin-0.6.6-py3-none-any.whl", names)))
def test_a_wheel_file_name_is_one_safe_component_or_refused(name):
    try:
        checked = wheel_filename(name)
    except InvalidWheelFilename:
        return
    assert "/" not in checked and stays_inside(checked)
