"""The RECORD check of a publish, which inflates members straight from the file (repack.publish.members):
every damaged or forged member is refused as zipfile would refuse it, and the digests of a file to be
sent come from one pass beside the check."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import struct
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from repack.errors import IntegrityError
from repack.publish.checked import CheckedWheels
from repack.publish.distfile import check_record, read_distfile, ready_to_upload
from tests.support.tinywheel import make_wheel, tamper


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


# -- a pass is remembered only for the bytes checked, and only from private state ----------------------

def test_a_wheel_swapped_between_its_hash_and_its_check_is_never_remembered(tmp_path):
    """The sha256 of bad bytes must not be remembered because good bytes were checked (the file swapped)."""
    (tmp_path / "g").mkdir()
    good = wheel(tmp_path / "g", {MEMBER: CONTENT})
    bad = tamper(good, tmp_path / "b" / good.name, "data.bin")
    published = tmp_path / good.name
    published.write_bytes(bad.read_bytes())
    checked = CheckedWheels(tmp_path / "checked")
    dist = read_distfile(published, check_record=False, digests=("sha256",))  # the bad bytes' sha256
    os.replace(shutil.copy(good, tmp_path / "swap"), published)               # a writer swaps a good wheel in
    for verify in (lambda: ready_to_upload(dist, None, checked), lambda: check_record(dist, None, checked)):
        with pytest.raises(IntegrityError, match="changed while it was being published"):
            verify()
    assert not checked.passed(dist.sha256, dist.size) and not (tmp_path / "checked").exists()
    published.write_bytes(bad.read_bytes())  # the bad bytes again: checked in full, and refused
    with pytest.raises(IntegrityError, match="does not match its own RECORD"):
        ready_to_upload(read_distfile(published, check_record=False, digests=("sha256",)), None, checked)


def test_a_file_written_to_during_its_check_is_refused_and_not_remembered(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    os.utime(path, ns=(10**18, 10**18))  # any write from now on changes the mtime, however coarse the clock
    dist = read_distfile(path, check_record=False, digests=("sha256",))
    checked = CheckedWheels(tmp_path / "checked")

    def rewrite(_label: str, _done: int, _total: int | None) -> None:
        with open(path, "r+b") as fh:  # the same bytes, in place: the inode stays, the times do not
            fh.write(fh.read(4))

    with pytest.raises(IntegrityError, match="written to during its check"):
        ready_to_upload(dist, rewrite, checked)
    assert not checked.passed(dist.sha256, dist.size)


def test_a_pass_is_kept_in_a_private_folder_as_a_private_file(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    checked = CheckedWheels(tmp_path / "cache" / "checked")
    dist = check_record(read_distfile(path, check_record=False), None, checked)
    entry = tmp_path / "cache" / "checked" / f"{dist.sha256}.json"
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700 and stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert checked.passed(dist.sha256, dist.size)


def test_a_folder_of_ours_made_under_a_loose_umask_is_made_private_and_used(tmp_path):
    """A folder an earlier version made 0775 (umask 002) would otherwise count for nothing for ever."""
    path = wheel(tmp_path, {MEMBER: CONTENT})
    folder = tmp_path / "cache" / "checked"
    folder.mkdir(parents=True)
    folder.chmod(0o775)
    checked = CheckedWheels(folder)
    dist = check_record(read_distfile(path, check_record=False), None, checked)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and checked.passed(dist.sha256, dist.size)


def _plant(folder: Path, dist) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    entry = folder / f"{dist.sha256}.json"
    entry.write_text(json.dumps({"sha256": dist.sha256, "size": dist.size}))
    entry.chmod(0o600)
    return entry


def _untrusted_group_writable_folder(folder: Path, entry: Path) -> None:
    folder.chmod(0o770)


def _untrusted_symlinked_entry(folder: Path, entry: Path) -> None:
    real = folder.parent / "elsewhere.json"
    os.replace(entry, real)
    entry.symlink_to(real)


def _untrusted_group_writable_entry(folder: Path, entry: Path) -> None:
    entry.chmod(0o620)


def _untrusted_entry_of_another_user(folder: Path, entry: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(entry, 12345, 12345)


def _untrusted_folder_of_another_user(folder: Path, entry: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    os.chown(folder, 12345, 12345)


def _untrusted_symlinked_folder(folder: Path, entry: Path) -> None:
    os.replace(folder, folder.with_name("real"))
    folder.symlink_to(folder.with_name("real"))


@pytest.mark.parametrize("untrust", [_untrusted_group_writable_folder, _untrusted_symlinked_entry,
                                     _untrusted_group_writable_entry, _untrusted_entry_of_another_user,
                                     _untrusted_folder_of_another_user, _untrusted_symlinked_folder])
def test_a_planted_pass_outside_private_state_counts_for_nothing(tmp_path, untrust):
    """Whoever can write the cache could plant a pass for a tampered wheel: only private state is trusted."""
    good = wheel(tmp_path, {MEMBER: CONTENT})
    bad = tamper(good, tmp_path / "bad" / good.name, "data.bin")
    dist = read_distfile(bad, check_record=False, digests=("sha256",))
    folder = tmp_path / "checked"
    checked = CheckedWheels(folder)
    entry = _plant(folder, dist)
    assert checked.passed(dist.sha256, dist.size)  # the same entry, private: trusted (the control)
    untrust(folder, entry)
    assert not checked.passed(dist.sha256, dist.size)
    for verify in (lambda: check_record(dist, None, checked), lambda: ready_to_upload(dist, None, checked)):
        with pytest.raises(IntegrityError, match="does not match its own RECORD"):
            verify()


# -- what pip's installer (zipfile) refuses is refused here too ----------------------------------------

def test_a_wrong_crc32_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    patch(path, MEMBER, 14, 16, b"\xde\xad\xbe\xef")  # CRC-32, local and central: RECORD's sha256 still matches
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() == MEMBER  # zipfile (pip's installer) cannot read it
    assert f"{MEMBER}: CRC-32 " in refusal(path) and "the central directory says efbeadde" in refusal(path)


def test_a_wrong_crc32_in_a_record_signature_is_refused(tmp_path):
    """RECORD.jws has no hash in RECORD, but pip reads it whole: its CRC-32 is checked all the same."""
    info = "demo-1.0.dist-info/"
    files = {info + "METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             info + "WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},sha256={b64(d)},{len(d)}\n" for n, d in files.items())
    record += f"{info}RECORD.jws,,\n{info}RECORD,,\n"
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**files, info + "RECORD.jws": b'{"signatures": []}' * 64, info + "RECORD": record.encode()}.items():
            zf.writestr(name, data, zipfile.ZIP_DEFLATED)
    read_distfile(path)  # sound as made
    patch(path, info + "RECORD.jws", 14, 16, b"\xde\xad\xbe\xef")
    assert f"{info}RECORD.jws: CRC-32 " in refusal(path)


def _central(path: Path) -> tuple[bytearray, int, int, int, int]:
    data = bytearray(path.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    count, size, offset = struct.unpack("<HII", data[eocd + 10: eocd + 20])
    return data, eocd, count, size, offset


def test_a_name_twice_in_the_central_directory_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    data, eocd, count, size, offset = _central(path)
    cd = data[offset: offset + size]
    at = cd.index(MEMBER.encode()) - 46
    entry = cd[at: at + 46 + sum(struct.unpack("<HHH", cd[at + 28: at + 34]))]
    end = bytearray(data[eocd:])
    end[8:16] = struct.pack("<HHI", count + 1, count + 1, size + len(entry))
    path.write_bytes(bytes(data[:offset] + cd + entry + end))
    message = refusal(path)
    assert "is not a sound zip" in message and f"{MEMBER} is in the central directory twice" in message


def test_a_member_whose_data_overlaps_the_next_local_header_is_refused(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT, "demo/other.bin": CONTENT[:1000]})
    with zipfile.ZipFile(path) as zf:
        longer = zf.getinfo(MEMBER).compress_size + 40  # deflate ends where it ends: the rest is never read
    patch(path, MEMBER, 18, 20, longer.to_bytes(4, "little"))
    assert f"{MEMBER}: its data" in refusal(path) and "overlaps what follows" in refusal(path)


def test_the_last_member_may_not_reach_into_the_central_directory(tmp_path):
    path = wheel(tmp_path, {MEMBER: CONTENT})
    with zipfile.ZipFile(path) as zf:
        last = max(zf.infolist(), key=lambda i: i.header_offset)
        longer = last.compress_size + 20
    patch(path, last.filename, 18, 20, longer.to_bytes(4, "little"))
    assert f"{last.filename}: its data" in refusal(path)


def test_a_row_without_a_hash_is_refused_except_record_and_its_signatures(tmp_path):
    info = "demo-1.0.dist-info/"
    files = {"demo/__init__.py": b"import os\n", info + "METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             info + "RECORD.jws": b"{}"}
    for unhashed in ("demo/__init__.py", None):
        path = tmp_path / str(unhashed is None) / "demo-1.0-py3-none-any.whl"
        path.parent.mkdir()
        rows = [f"{n},,\n" if n in (unhashed, info + "RECORD.jws") else f"{n},sha256={b64(d)},{len(d)}\n"
                for n, d in files.items()]
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
            zf.writestr(info + "RECORD", "".join(rows) + f"{info}RECORD,,\n{info}RECORD.p7s,,\n")
        if unhashed:
            assert "demo/__init__.py: RECORD gives it no hash" in refusal(path)
        else:
            assert read_distfile(path).record_checked


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 7])
def test_fd_digests_on_two_threads_are_hashlib_s(tmp_path, size):
    import os

    from repack.fetch.digest import fd_digests, file_digests

    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "f"
    path.write_bytes(data)
    want = {"sha256": hashlib.sha256(data).hexdigest(), "blake2_256": hashlib.blake2b(data, digest_size=32).hexdigest(),
            "md5": hashlib.md5(data).hexdigest()}
    assert file_digests(path, ("sha256", "blake2_256", "md5")) == want
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError, match=f"ends at {size} bytes, {size + 1} expected"):
            fd_digests(fd, size + 1, ("sha256", "blake2_256"))
    finally:
        os.close(fd)


def test_a_record_check_run_beside_an_upload_shows_its_progress_while_waited_for(tmp_path, monkeypatch):
    import threading

    from repack.publish import distfile
    from repack.publish.distfile import RecordCheck

    dist = read_distfile(make_wheel(tmp_path, "demo", "1.0"), check_record=False)
    release = threading.Event()

    def slow(d, path, progress, checked, digests):
        progress(f"RECORD check {d.filename}", 5, 10)
        release.wait(30)
        return replace(d, record_checked=True), {"sha256": d.sha256}

    monkeypatch.setattr(distfile, "_verified", slow)
    shown: list[tuple[str, int, int | None]] = []

    expected = (f"RECORD check {dist.filename}", 5, 10)

    def progress(label, done, total):
        shown.append((label, done, total))
        if shown.count(expected) >= 2:
            release.set()

    check = RecordCheck([dist], None, progress)
    assert [d.record_checked for d in check.wait()] == [True]
    # the wait shows the check's state every tick: its first ticks may come before the check's first step
    assert shown.count(expected) >= 2 and set(shown) <= {expected, ("RECORD check", 0, None)}, shown


def test_a_record_check_cancelled_stops_at_its_next_step(tmp_path, monkeypatch):
    import threading
    import time

    from repack.publish import distfile
    from repack.publish.distfile import RecordCheck

    dist = read_distfile(make_wheel(tmp_path, "demo", "1.0"), check_record=False)
    steps: list[int] = []
    started = threading.Event()

    def endless(d, path, progress, checked, digests):
        while True:  # a check that only ends when a progress step raises
            progress("RECORD check", len(steps), None)
            steps.append(1)
            started.set()
            time.sleep(0.001)

    monkeypatch.setattr(distfile, "_verified", endless)
    check = RecordCheck([dist], None, None)
    assert started.wait(30)
    check.cancel()  # returns only once the thread has ended
    ended_at = len(steps)
    time.sleep(0.2)  # a check still running would take about 200 more steps meanwhile
    assert len(steps) == ended_at and check.failure() is None
