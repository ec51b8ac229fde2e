"""Repair never deletes authentic data (issue 11, item 7).

Real daemons on temporary folders: records are damaged in place, segments cut, metadata
broken and the disk filled; after a restart every authentic record must still be indexed and
readable, what was lost must be reported as damaged (info, sessions, health, metrics, check),
and damaged bytes must be copied to the session's quarantine, never cut away.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lucidd import cli
from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.crypto import HEADER_SIZE, parse_header
from lucidd.daemon.segments import (
    DAMAGE_UNAUTHENTIC,
    QUARANTINE_DIR,
    QUARANTINE_LIST_FILE,
    read_quarantine,
)
from lucidd.daemon.store import LEDGER_STATE_FILE, SessionPaths, read_meta, write_meta
from lucidd.errors import DamagedSessionError, IntegrityError
from tests.conftest import Daemon

CHUNKS = 50
#: Byte offset of the body length (u32) in a record header (docs/format.md).
BODY_LENGTH_AT = 36
EX_DATAERR = 65


def locate(state_dir: Path, session: bytes, index: int) -> tuple[Path, int, int]:
    """(segment, offset, length) of chunk ``index``'s record, parsed from the bytes alone."""
    paths = SessionPaths.of(state_dir, session)
    for name in paths.segments():
        data = paths.segment(name).read_bytes()
        offset = 0
        while offset + HEADER_SIZE <= len(data):
            header = parse_header(data[offset : offset + HEADER_SIZE])
            if header.index == index:
                return paths.segment(name), offset, header.record_length
            offset += header.record_length
    raise AssertionError(f"no record of chunk {index} on disk")


def flip(path: Path, at: int, mask: int = 0x01) -> bytes:
    """Flip bits of one byte in place; returns the file's new contents."""
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))
    return bytes(data)


def quarantine_files(paths: SessionPaths) -> dict[str, bytes]:
    folder = paths.root / QUARANTINE_DIR
    if not folder.is_dir():
        return {}
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def lucidctl(capsys: pytest.CaptureFixture[str], d: Daemon, *args: str) -> tuple[int, Any]:
    """Run lucidctl in-process with --json; (exit status, the JSON object on stdout)."""
    capsys.readouterr()
    code = cli.main(["--runtime-dir", str(d.runtime_dir), "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def log_count(d: Daemon, needle: str) -> int:
    return d.log_path.read_text(errors="replace").count(needle)


@pytest.fixture
def stored(short_tmp: Path) -> tuple[Daemon, bytes, list[bytes], bytes]:
    """A stopped daemon whose state holds one session of 50 acknowledged chunks (and its
    root); stopped cleanly, so every record is indexed and every file synced."""
    rng = random.Random(11)
    d = Daemon(short_tmp / "d", workers=2)
    d.base.mkdir()
    d.start()
    session = new_session_id()
    payloads = [rng.randbytes(rng.randrange(100, 3000)) for _ in range(CHUNKS)]
    try:
        with DataClient(d.runtime_dir) as client:
            client.put_many(session, list(enumerate(payloads)), window=8)
        with ControlClient(d.runtime_dir) as control:
            root = control.root(session).root
    finally:
        assert d.stop() == 0, d.log()
    return d, session, payloads, root


def assert_all_but_readable(
    control: ControlClient, session: bytes, payloads: list[bytes], lost: set[int]
) -> None:
    for index, payload in enumerate(payloads):
        if index in lost:
            with pytest.raises(DamagedSessionError) as refused:
                control.read_chunk(session, index)
            assert refused.value.code == "damaged"
            assert f"chunk {index}" in refused.value.message
        else:
            assert control.read_chunk(session, index).data == payload, index


def test_a_flipped_header_bit_without_ledger_state_keeps_all_49_authentic_records(
    stored: tuple[Daemon, bytes, list[bytes], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's exact case: it used to cut the segment at chunk 20 and drop 30 records."""
    d, session, payloads, root = stored
    paths = SessionPaths.of(d.state_dir, session)
    segment, offset, length = locate(d.state_dir, session, 20)
    damaged = flip(segment, offset + BODY_LENGTH_AT)  # the header no longer frames the record
    (paths.root / LEDGER_STATE_FILE).unlink()
    d.start()
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert (info.damaged, info.missing, info.quarantined) == (True, [20], 1)
            assert info.size == CHUNKS and info.chunks == CHUNKS
            assert control.root(session).root == root  # chunk 20's acked leaf stays in the log
            assert_all_but_readable(control, session, payloads, {20})
            health = control.health()
            assert (health.status, health.damaged_sessions) == ("degraded", 1)
            assert control.metrics()["sessions_damaged"] == 1
        assert segment.read_bytes() == damaged  # nothing was cut or rewritten
        files = quarantine_files(paths)
        copy = f"{segment.name}-{offset}"
        assert set(files) == {copy, QUARANTINE_LIST_FILE}
        assert files[copy] == damaged[offset : offset + length]
        [entry] = read_quarantine(paths)
        assert (entry.segment, entry.offset, entry.length) == (segment.name, offset, length)
        code, result = lucidctl(capsys, d, "check", str(uuid.UUID(bytes=session)))
        assert (code, result["bad"], result["checked"], result["ok"]) == (
            EX_DATAERR,
            [20],
            CHUNKS,
            False,
        )
        code, shown = lucidctl(capsys, d, "info", str(uuid.UUID(bytes=session)))
        assert (code, shown["damaged"], shown["missing"]) == (0, True, [20])
    finally:
        assert d.stop() == 0, d.log()
    assert log_count(d, "event=segment_quarantined") == 1

    d.start()  # a second restart changes nothing and reports nothing new
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert (info.damaged, info.missing, info.quarantined) == (True, [20], 1)
            assert control.root(session).root == root
            assert_all_but_readable(control, session, payloads, {20})
    finally:
        assert d.stop() == 0, d.log()
    assert quarantine_files(paths) == files
    assert log_count(d, "event=segment_quarantined") == 1
    assert log_count(d, "event=ledger_rebuilt") == 1


def test_a_flipped_ciphertext_bit_is_found_by_check_and_quarantined_by_a_rebuild(
    stored: tuple[Daemon, bytes, list[bytes], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    d, session, payloads, root = stored
    paths = SessionPaths.of(d.state_dir, session)
    segment, offset, length = locate(d.state_dir, session, 7)
    flip(segment, offset + HEADER_SIZE + 5)  # framing intact, authentication fails
    d.start()  # the ledger state is intact: the indexed record is not rescanned at start
    try:
        with ControlClient(d.runtime_dir) as control:
            with pytest.raises(IntegrityError):  # never served
                control.read_chunk(session, 7)
            code, result = lucidctl(capsys, d, "check", str(uuid.UUID(bytes=session)))
            assert (code, result["bad"]) == (EX_DATAERR, [7])
            info = control.info(session)  # the scrub made it known, and copied it aside
            assert (info.damaged, info.missing, info.quarantined) == (True, [7], 1)
            assert_all_but_readable(control, session, payloads, {7})
    finally:
        assert d.stop() == 0, d.log()
    copies = quarantine_files(paths)
    assert copies[f"{segment.name}-{offset}"] == segment.read_bytes()[offset : offset + length]

    (paths.root / LEDGER_STATE_FILE).unlink()  # a rebuild reads every record again
    d.start()
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert (info.damaged, info.missing, info.quarantined) == (True, [7], 1)
            assert control.root(session).root == root
            assert_all_but_readable(control, session, payloads, {7})
    finally:
        assert d.stop() == 0, d.log()
    [entry] = read_quarantine(paths)  # the rebuild found the same range: not copied again
    assert (entry.offset, entry.length, entry.reason, entry.tail) == (
        offset,
        length,
        DAMAGE_UNAUTHENTIC,
        False,
    )
    assert quarantine_files(paths) == copies
    assert log_count(d, "event=segment_quarantined") == 1


def test_a_cut_segment_makes_the_session_damaged_and_check_lists_exactly_the_lost_chunks(
    stored: tuple[Daemon, bytes, list[bytes], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    d, session, payloads, _ = stored
    paths = SessionPaths.of(d.state_dir, session)
    segment = max((paths.segment(n) for n in paths.segments()), key=lambda p: p.stat().st_size)
    original = segment.read_bytes()
    records = [locate(d.state_dir, session, i) for i in range(CHUNKS)]
    mine = sorted((off, i) for i, (path, off, _) in enumerate(records) if path == segment)
    cut = mine[3][0] + 10  # inside this segment's fourth record
    lost = {i for off, i in mine if off + records[i][2] > cut}
    assert len(lost) >= 2
    with segment.open("r+b") as f:
        f.truncate(cut)
    d.start()
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert info.damaged and info.missing == sorted(lost)
            health = control.health()
            assert (health.status, health.damaged_sessions) == ("degraded", 1)
            assert_all_but_readable(control, session, payloads, lost)
            code, result = lucidctl(capsys, d, "check", str(uuid.UUID(bytes=session)))
            assert (code, result["bad"]) == (EX_DATAERR, sorted(lost))
            [listed] = control.sessions()
            assert listed.damaged and listed.missing == sorted(lost)
            assert info.quarantined == 1  # the cut record's remains, as a torn tail
    finally:
        assert d.stop() == 0, d.log()
    [tail] = read_quarantine(paths)
    assert (tail.segment, tail.offset, tail.length, tail.tail) == (
        segment.name,
        mine[3][0],
        10,
        True,
    )
    assert segment.stat().st_size == cut
    d.start()  # the next start finds nothing new and forgets nothing
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert (info.missing, info.quarantined) == (sorted(lost), 1)
            assert_all_but_readable(control, session, payloads, lost)
    finally:
        assert d.stop() == 0, d.log()
    assert log_count(d, "event=segment_quarantined") == 1

    segment.write_bytes(original)  # the segment comes back from a backup: the session heals
    d.start()
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert (info.damaged, info.missing, info.quarantined) == (False, [], 1)
            assert_all_but_readable(control, session, payloads, set())
            assert control.health().damaged_sessions == 0
    finally:
        assert d.stop() == 0, d.log()


def test_a_removed_segment_leaves_its_chunks_missing_and_the_session_writable(
    stored: tuple[Daemon, bytes, list[bytes], bytes],
) -> None:
    d, session, payloads, root = stored
    paths = SessionPaths.of(d.state_dir, session)
    segment = paths.segment(paths.segments()[0])
    lost = {i for i in range(CHUNKS) if locate(d.state_dir, session, i)[0] == segment}
    segment.unlink()
    d.start()
    try:
        with ControlClient(d.runtime_dir) as control:
            info = control.info(session)
            assert (info.damaged, info.missing) == (True, sorted(lost))
            assert control.root(session).root == root
            assert_all_but_readable(control, session, payloads, lost)
        with DataClient(d.runtime_dir) as client:
            client.put(session, CHUNKS, b"after the loss")
    finally:
        assert d.stop() == 0, d.log()
    d.start()
    try:
        with ControlClient(d.runtime_dir) as control:
            assert control.info(session).missing == sorted(lost)
            assert control.read_chunk(session, CHUNKS).data == b"after the loss"
            assert_all_but_readable(control, session, payloads, lost)
    finally:
        assert d.stop() == 0, d.log()


def test_a_session_with_damaged_meta_is_refused_while_another_is_fully_served(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Daemon(short_tmp / "d", workers=2)
    d.base.mkdir()
    d.start()
    broken, locked, healthy = new_session_id(), new_session_id(), new_session_id()
    try:
        with DataClient(d.runtime_dir) as client:
            for session in (broken, locked, healthy):
                client.put_many(session, [(i, b"chunk %d" % i) for i in range(3)])
    finally:
        assert d.stop() == 0, d.log()
    SessionPaths.of(d.state_dir, broken).meta.write_bytes(b"\x93not a session's metadata")
    locked_paths = SessionPaths.of(d.state_dir, locked)
    meta = read_meta(locked_paths)
    wrapped = bytearray(meta.wrapped_secret)
    wrapped[-1] ^= 0x01  # the keyring can no longer unwrap this one session's secret
    write_meta(locked_paths, msgspec.structs.replace(meta, wrapped_secret=bytes(wrapped)))
    d.start()
    try:
        with DataClient(d.runtime_dir) as client:
            client.put_many(healthy, [(i, b"chunk %d" % i) for i in range(3, 6)])
            with pytest.raises(DamagedSessionError):
                client.put(broken, 3, b"refused")
        with ControlClient(d.runtime_dir) as control:
            assert [control.read_chunk(healthy, i).data for i in range(6)] == [
                b"chunk %d" % i for i in range(6)
            ]
            assert control.finalize(healthy).size == 6
            with pytest.raises(DamagedSessionError) as refused:
                control.info(broken)
            assert str(uuid.UUID(bytes=broken)) in refused.value.message
            assert "metadata" in refused.value.message
            with pytest.raises(DamagedSessionError):
                control.read_chunk(broken, 0)
            with pytest.raises(DamagedSessionError) as refused:
                control.read_chunk(locked, 0)
            assert "secret" in refused.value.message
            listed = {s.session: s for s in control.sessions()}
            for session in (broken, locked):
                assert (listed[session].state, listed[session].damaged) == ("damaged", True)
            assert not listed[healthy].damaged
            health = control.health()
            assert (health.status, health.sessions, health.damaged_sessions) == (
                "degraded",
                3,
                2,
            )
            assert control.metrics()["sessions_damaged"] == 2
        code, result = lucidctl(capsys, d, "info", str(uuid.UUID(bytes=broken)))
        assert (code, result["error"]["code"]) == (EX_DATAERR, "damaged")
    finally:
        assert d.stop() == 0, d.log()


def test_a_full_disk_at_start_leaves_the_daemon_serving_reads(short_tmp: Path) -> None:
    """RLIMIT_FSIZE (writes past it fail with EFBIG, DESIGN §9) below what the start-up
    rebuild must write: index entries and the sync fail, are logged and retried."""
    base = short_tmp / "d"
    base.mkdir()
    d = Daemon(base, workers=1)
    d.start()
    session = new_session_id()
    payloads = [b"%d" % i * 8 for i in range(300)]  # 300 index entries: 19 200 bytes
    try:
        with DataClient(d.runtime_dir) as client:
            client.put_many(session, list(enumerate(payloads)), window=32)
        with ControlClient(d.runtime_dir) as control:
            root = control.root(session).root
    finally:
        assert d.stop() == 0, d.log()
    (SessionPaths.of(d.state_dir, session).root / LEDGER_STATE_FILE).unlink()
    small = {"LUCIDD_RING_SIZE": "16KiB", "LUCIDD_SLOT_SIZE": "4KiB"}
    small["LUCIDD_MAX_CHUNK_SIZE"] = "4KiB"
    full = Daemon(base, workers=1, env=small, fsize_limit=16 * 1024)
    full.start()
    try:
        with ControlClient(full.runtime_dir) as control:
            assert control.root(session).root == root
            for index, payload in enumerate(payloads):
                assert control.read_chunk(session, index).data == payload
            assert not control.info(session).damaged
        assert "event=ledger_sync_failed" in full.log()
    finally:
        assert full.stop() == 0, full.log()


def test_check_of_an_intact_session_exits_0(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    session = new_session_id()
    with DataClient(daemon.runtime_dir) as client:
        client.put_many(session, [(i, b"intact %d" % i) for i in range(20)])
    code, result = lucidctl(capsys, daemon, "check", str(uuid.UUID(bytes=session)))
    assert (code, result) == (
        0,
        {
            "session": str(uuid.UUID(bytes=session)),
            "size": 20,
            "checked": 20,
            "bad": [],
            "ok": True,
        },
    )
    capsys.readouterr()
    code = cli.main(["--runtime-dir", str(daemon.runtime_dir), "check", result["session"]])
    assert code == 0 and "result: ok" in capsys.readouterr().out
