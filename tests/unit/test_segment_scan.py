"""The recovery scan resynchronizes after damage; quarantine copies are create-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lucidd.crypto import HEADER_SIZE, MAGIC, new_session_secret, open_record, seal_chunk
from lucidd.daemon.aggregator.repair import confirmed_prefix
from lucidd.daemon.segments import (
    DAMAGE_TORN,
    DAMAGE_UNAUTHENTIC,
    DAMAGE_UNFRAMEABLE,
    DamagedRange,
    ScannedRecord,
    quarantine_range,
    read_quarantine,
    scan_segment,
    write_quarantine,
)
from lucidd.daemon.store import IndexEntry, SessionPaths
from lucidd.errors import LucidError
from lucidd.merkle import leaf_hash

SID = bytes(range(16))
SECRET = new_session_secret()
SEGMENT = "w0-000000.seg"


def authenticate(found: ScannedRecord) -> int | None:
    try:
        return len(open_record(SECRET, SID, found.index, found.record))
    except LucidError:
        return None


def records(count: int) -> list[bytes]:
    return [seal_chunk(SECRET, SID, i, os.urandom(200 + i), "off") for i in range(count)]


def layout(parts: list[bytes]) -> list[int]:
    offsets, at = [], 0
    for part in parts:
        offsets.append(at)
        at += len(part)
    return offsets


def scan(
    tmp_path: Path, parts: list[bytes], start: int = 0
) -> tuple[list[int], list[DamagedRange]]:
    path = tmp_path / SEGMENT
    path.write_bytes(b"".join(parts))
    result = scan_segment(path, start, authenticate)
    assert result.size == path.stat().st_size
    return [r.index for r, _ in result.records], result.damaged


def test_garbage_between_records_is_skipped_and_every_record_after_it_is_found(
    tmp_path: Path,
) -> None:
    rs = records(4)
    garbage = b"\x00" * 50 + MAGIC + b"\xff" * 90  # a stray magic that does not parse
    parts = [rs[0], rs[1], garbage, rs[2], rs[3]]
    found, damaged = scan(tmp_path, parts)
    assert found == [0, 1, 2, 3]
    assert damaged == [DamagedRange(layout(parts)[2], len(garbage), DAMAGE_UNFRAMEABLE, False)]


def test_a_record_that_fails_authentication_is_one_range_and_the_scan_goes_on(
    tmp_path: Path,
) -> None:
    rs = records(3)
    bad = bytearray(rs[1])
    bad[HEADER_SIZE + 3] ^= 0x10  # ciphertext bit: framing intact
    parts = [rs[0], bytes(bad), rs[2]]
    found, damaged = scan(tmp_path, parts)
    assert found == [0, 2]
    assert damaged == [DamagedRange(layout(parts)[1], len(bad), DAMAGE_UNAUTHENTIC, False)]


def test_a_header_that_announces_too_much_does_not_swallow_the_records_behind_it(
    tmp_path: Path,
) -> None:
    rs = records(3)
    bad = bytearray(rs[0])
    bad[36] ^= 0x01  # body length + 16 MiB: past the end of the file
    parts = [bytes(bad), rs[1], rs[2]]
    found, damaged = scan(tmp_path, parts)
    assert found == [1, 2]
    assert [(d.offset, d.length, d.tail) for d in damaged] == [(0, len(bad), False)]


def test_a_torn_tail_is_reported_as_a_tail_and_nothing_is_cut(tmp_path: Path) -> None:
    rs = records(2)
    parts = [rs[0], rs[1][:100]]
    found, damaged = scan(tmp_path, parts)
    assert found == [0]
    assert damaged == [DamagedRange(len(rs[0]), 100, DAMAGE_TORN, True)]
    assert (tmp_path / SEGMENT).stat().st_size == len(rs[0]) + 100


def test_a_scan_from_an_offset_reads_only_what_follows(tmp_path: Path) -> None:
    rs = records(3)
    found, damaged = scan(tmp_path, rs, start=len(rs[0]))
    assert (found, damaged) == ([1, 2], [])


def test_quarantine_copies_are_create_only_and_a_second_copy_reuses_the_first(
    tmp_path: Path,
) -> None:
    paths = SessionPaths(tmp_path)
    (tmp_path / SEGMENT).write_bytes(b"A" * 10 + b"damaged" + b"B" * 10)
    damaged = DamagedRange(10, 7, DAMAGE_UNFRAMEABLE, False)
    first = quarantine_range(paths, SEGMENT, damaged)
    again = quarantine_range(paths, SEGMENT, damaged)
    assert first == again and first.file == f"{SEGMENT}-10"
    assert (tmp_path / "quarantine" / first.file).read_bytes() == b"damaged"
    (tmp_path / "quarantine" / first.file).chmod(0o600)
    (tmp_path / SEGMENT).write_bytes(b"A" * 10 + b"changed" + b"B" * 10)
    other = quarantine_range(paths, SEGMENT, damaged)  # never replaces the first copy
    assert other.file == f"{SEGMENT}-10.1"
    assert (tmp_path / "quarantine" / first.file).read_bytes() == b"damaged"
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        first.file,
        other.file,
    ]
    write_quarantine(paths, [first, other])
    assert read_quarantine(paths) == [first, other]


def _entry(leaf: bytes) -> IndexEntry:
    return IndexEntry(0, 0, 0, 100, leaf, 1)


@pytest.mark.parametrize(
    ("found", "indexed", "kept"),
    [
        ({0: "a", 1: "b", 2: "c"}, {}, 3),  # all confirmed
        ({0: "a", 2: "c"}, {}, 3),  # 1 is gone: kept (missing), 2 confirms it
        ({0: "a"}, {1: "b", 2: "c"}, 3),  # the old index confirms the gone ones
        ({0: "a"}, {}, 1),  # unconfirmed leaves after the last confirmed: garbage, dropped
        ({0: "a", 1: "x", 2: "c"}, {}, 1),  # a record contradicts leaf 1: trusted up to it
    ],
)
def test_a_rebuild_keeps_the_old_leaves_up_to_the_last_confirmed_one(
    found: dict[int, str], indexed: dict[int, str], kept: int
) -> None:
    old = [leaf_hash(x.encode()) for x in "abc"]
    by_index = {i: [_entry(leaf_hash(x.encode()))] for i, x in found.items()}
    old_index = {i: _entry(leaf_hash(x.encode())) for i, x in indexed.items()}
    assert confirmed_prefix(old, by_index, old_index) == kept
