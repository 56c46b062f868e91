"""The RECORD check of a publish, which inflates members straight from the file (repack.publish.members):
every damaged or forged member is refused as zipfile would refuse it, and the digests of a file to be
sent come from one pass beside the check."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from repack.errors import IntegrityError
from repack.publish.checked import CheckedWheels
from repack.publish.distfile import check_record, read_distfile, ready_to_upload
from tests.support.tinywheel import tamper


@pytest.fixture(autouse=True, params=["installed", "zlib"])
def inflater(request, monkeypatch):
    """Every check runs with the inflater this venv has (ISA-L, when installed) and with plain zlib."""
    import zlib

    from repack.publish import members

    if request.param == "zlib":
        monkeypatch.setattr(members, "_inflate", zlib)
    return members._inflate

MEMBER = "demo/data.bin"
CONTENT = bytes(range(256)) * 4096  # 1 MiB that deflate shrinks well: a forged size is easy to make


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel(tmp_path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """demo 1.0 holding ``members`` beside a RECORD that is right for them."""
    info = "demo-1.0.dist-info/"
    files = {**members, info + "METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             info + "WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},sha256={b64(d)},{len(d)}\n" for n, d in files.items()) + f"{info}RECORD,,\n"
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data, compress_type=compression if name in members else zipfile.ZIP_DEFLATED)
        zf.writestr(info + "RECORD", record)
    return path


def patch(path: Path, name: str, local_at: int, central_at: int, value: bytes) -> None:
    """Overwrite bytes at ``local_at`` in the member's local header and ``central_at`` in its central entry."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(name).header_offset
    central = data.index(b"PK\x01\x02")  # the first central entry; ours is found by its name after it
    central = data.index(name.encode(), central) - 46
    if local_at >= 0:
        data[local + local_at: local + local_at + len(value)] = value
    if central_at >= 0:
        data[central + central_at: central + central_at + len(value)] = value
    path.write_bytes(bytes(data))


def refusal(path: Path) -> str:
    with pytest.raises(IntegrityError) as caught:
        read_distfile(path)
    return str(caught.value)


def test_a_member_that_inflates_past_its_declared_size_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    patch(path, MEMBER, 22, 24, (1000).to_bytes(4, "little"))  # uncompressed size, local and central
    message = refusal(path)
    assert "does not match its own RECORD" in message and f"{MEMBER} inflates past its declared 1000 bytes" in message


def test_a_member_whose_stream_is_cut_short_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    with zipfile.ZipFile(path) as zf:
        short = zf.getinfo(MEMBER).compress_size // 2
    patch(path, MEMBER, 18, 20, short.to_bytes(4, "little"))  # compressed size
    assert f"{MEMBER}: inflates to" in refusal(path)


def test_a_local_header_naming_another_member_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    patch(path, MEMBER, 30, -1, b"evil")  # the local header's name, same length: "evil/data.bin"
    assert f"{MEMBER}: its local header names b'evil/data.bin'" in refusal(path)


def test_a_stored_member_whose_sizes_disagree_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT}, zipfile.ZIP_STORED)
    patch(path, MEMBER, 22, 24, (1000).to_bytes(4, "little"))
    assert f"{MEMBER}: stored, yet {len(CONTENT)} bytes hold 1000" in refusal(path)


def test_a_member_in_a_method_no_wheel_uses_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT}, zipfile.ZIP_BZIP2)
    assert f"{MEMBER}: compression method 12 is not deflate or stored" in refusal(path)


def test_stored_deflated_and_empty_members_of_a_sound_wheel_pass(tmp_path):
    many = {f"demo/m{i}.bin": CONTENT[: i * 997] for i in range(200)}  # from empty to 200 KB, on every thread
    for compression in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        folder = tmp_path / str(compression)
        folder.mkdir()
        assert read_distfile(wheel(folder, many, compression)).record_checked


def test_ready_to_upload_gives_the_digests_of_the_file(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    dist = ready_to_upload(read_distfile(path, check_record=False, digests=("sha256",)))
    data = path.read_bytes()
    assert dist.record_checked
    assert (dist.sha256, dist.blake2_256) == (hashlib.sha256(data).hexdigest(),
                                              hashlib.blake2b(data, digest_size=32).hexdigest())


def test_a_file_rewritten_after_it_was_hashed_is_not_sent(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    dist = read_distfile(path, check_record=False, digests=("sha256",))
    wheel(tmp_path, {MEMBER: CONTENT[::-1]})  # the same name, other bytes, a RECORD right for them
    with pytest.raises(IntegrityError, match="changed while it was being published"):
        ready_to_upload(dist)
    with pytest.raises(IntegrityError, match="changed while it was being published"):
        check_record(dist)  # the check itself hashes what it reads: never a pass for bytes of another sha256
    assert check_record(read_distfile(path, check_record=False, digests=("sha256",))).record_checked


# -- a pass is remembered by sha256, so the same bytes are not inflated again -------------------------

def test_a_pass_is_remembered_and_the_same_bytes_are_not_inflated_again(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    checked = CheckedWheels(tmp_path / "checked")
    inflated: list[int] = []
    first = check_record(read_distfile(path, check_record=False), lambda _l, done, _t: inflated.append(done),
                         checked)
    assert first.record_checked and inflated
    inflated.clear()
    again = check_record(read_distfile(path, check_record=False), lambda _l, done, _t: inflated.append(done),
                         checked)
    assert again.record_checked and not inflated
    assert checked.passed(first.sha256, first.size) and not checked.passed(first.sha256, first.size + 1)


def test_a_failure_is_never_remembered_and_a_bad_entry_counts_for_nothing(tmp_path):
    good = wheel(tmp_path, {MEMBER: CONTENT})
    bad = tamper(good, tmp_path / "bad" / good.name, "data.bin")
    checked = CheckedWheels(tmp_path / "checked")
    dist = read_distfile(bad, check_record=False)
    for _ in range(2):
        with pytest.raises(IntegrityError, match="does not match its own RECORD"):
            check_record(dist, None, checked)
    assert not list((tmp_path / "checked").glob("*"))
    # entries that are not a pass of these bytes: another size, other JSON, not JSON, a directory
    for text in (f'{{"sha256": "{dist.sha256}", "size": 1}}', "[]", "not json"):
        (tmp_path / "checked").mkdir(exist_ok=True)
        (tmp_path / "checked" / f"{dist.sha256}.json").write_text(text)
        with pytest.raises(IntegrityError, match="does not match its own RECORD"):
            check_record(dist, None, checked)
