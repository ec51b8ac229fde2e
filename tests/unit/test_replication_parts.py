"""The replication parts that need no server: packs, the progress file, held acks."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace as msgspec_replace

from lucidd import crypto
from lucidd.daemon import ipc
from lucidd.daemon.replication import layout
from lucidd.daemon.replication.pack_reader import read_pack
from lucidd.daemon.replication.progress import SessionProgress
from lucidd.daemon.store import SessionPaths, segment_name
from lucidd.daemon.supervisor.replication_link import ReplicationLink
from lucidd.errors import FormatError, LucidError, UnavailableError
from lucidd.merkle import leaf_hash

SESSION = uuid.uuid4().bytes


SECRET = os.urandom(crypto.KEY_SIZE)


def records(n: int) -> list[tuple[int, bytes]]:
    return [
        (i * 3, crypto.seal_chunk(SECRET, SESSION, i * 3, os.urandom(50 + i), "off"))
        for i in range(n)
    ]


def build_pack(records: list[tuple[int, bytes]]) -> bytes:
    """A pack of ``(index, record)`` pairs, kept in the order given (the replicator's packs
    are read from segments by ``read_pack``; this builds one from bytes in hand)."""
    pack = layout.pack_frame(
        [(index, len(record)) for index, record in records],
        [leaf_hash(record) for _, record in records],
    )
    offset = 0
    for _, record in records:
        pack[offset : offset + len(record)] = record
        offset += len(record)
    return bytes(pack)


def test_a_pack_round_trips_its_records_and_their_leaves() -> None:
    given_records = records(5)
    pack = build_pack(given_records)
    found = layout.pack_records(pack, SESSION)
    assert [(e.index, r) for e, r in found] == given_records
    assert [e.leaf_hash for e, _ in found] == [leaf_hash(r) for _, r in given_records]


def test_a_packs_name_carries_its_digest_and_first_index() -> None:
    pack = build_pack(records(2))
    key = layout.pack_key("pre/fix", "h1", SESSION, 0, pack)
    assert key.startswith(f"pre/fix/h1/sessions/{uuid.UUID(bytes=SESSION)}/packs/")
    assert layout.parse_pack_name(key) == (0, key.rsplit("-", 1)[1][: layout.DIGEST_HEX])
    other = build_pack(records(2))
    assert layout.pack_key("pre/fix", "h1", SESSION, 0, other) != key


def test_every_flipped_byte_of_a_pack_is_refused() -> None:
    pack = build_pack(records(3))
    for position in range(len(pack)):
        flipped = bytearray(pack)
        flipped[position] ^= 0x04
        with pytest.raises(FormatError):
            layout.pack_records(bytes(flipped), SESSION)


def test_a_pack_of_another_session_is_refused() -> None:
    with pytest.raises(FormatError, match="another session"):
        layout.pack_records(build_pack(records(1)), uuid.uuid4().bytes)


@given(st.binary(max_size=400))
def test_pack_parsing_refuses_garbage_with_a_format_error_only(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        layout.pack_records(data)


def _segments_of(
    root: Path, layout_of: list[tuple[str, int, tuple[int, bytes]]]
) -> tuple[SessionPaths, list[ipc.Sealed]]:
    """Segment files holding ``(segment, offset, (index, record))`` and the Sealed that point
    at them."""
    paths = SessionPaths.of(root, SESSION)
    paths.root.mkdir(parents=True)
    sealed = []
    for segment, offset, (index, record) in layout_of:
        with open(paths.segment(segment), "ab") as file:
            file.truncate(max(offset, file.tell()))
            file.seek(offset)
            file.write(record)
        sealed.append(
            ipc.Sealed(SESSION, index, leaf_hash(record), segment, offset, len(record), 0)
        )
    return paths, sealed


def test_a_pack_read_from_segments_equals_one_built_from_its_records(tmp_path: Path) -> None:
    given_records = records(6)
    w0, w1 = segment_name(0, 1), segment_name(1, 1)
    # Three back to back in w0 (one run), one after a gap in w0, then two in w1 (one run).
    where = [(w0, 0), (w0, 0), (w0, 0), (w0, 4096), (w1, 0), (w1, 0)]
    placed, ends = [], {w0: 0, w1: 0}
    for (segment, gap), record in zip(where, given_records, strict=True):
        offset = max(ends[segment], gap)
        placed.append((segment, offset, record))
        ends[segment] = offset + len(record[1])
    paths, sealed = _segments_of(tmp_path, placed)
    pack = read_pack(paths, sealed)
    assert bytes(pack) == build_pack(given_records)
    assert [(e.index, r) for e, r in layout.pack_records(bytes(pack), SESSION)] == given_records


def test_a_segment_shorter_than_its_records_is_an_os_error(tmp_path: Path) -> None:
    record = records(1)[0]
    paths, sealed = _segments_of(tmp_path, [(segment_name(0, 1), 0, record)])
    longer = [msgspec_replace(sealed[0], record_length=len(record[1]) + 1)]
    with pytest.raises(OSError, match="ends before its record"):
        read_pack(paths, longer)
    with pytest.raises(FileNotFoundError):
        read_pack(paths, [msgspec_replace(sealed[0], segment=segment_name(9, 1))])


def test_progress_survives_a_reopen_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "replication" / "s"
    progress = SessionProgress(path)
    progress.add_records([0, 1, 2, 5, 6])
    progress.add_object("meta")
    progress.close()
    with open(path, "ab") as f:
        f.write(b"r 7 9")  # a crash mid-append: no newline
    again = SessionProgress(path)
    assert again.prefix == 3 and again.above == {5, 6}
    assert again.has_record(6) and not again.has_record(7) and not again.has_record(3)
    assert again.objects == {"meta"}
    assert path.read_bytes().endswith(b"\n")
    again.add_records([3, 4])
    assert again.prefix == 7 and not again.above
    again.close()


class Finished:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, LucidError | None, bytes]] = []

    def __call__(self, chunk: Any, err: LucidError | None, leaf: bytes) -> None:
        self.calls.append((chunk, err, leaf))


def sealed(index: int) -> ipc.Sealed:
    return ipc.Sealed(SESSION, index, bytes([index]) * 32, "w0-000000.seg", index * 100, 100, 90)


def test_held_acks_are_answered_when_replicated_and_expire_as_unavailable() -> None:
    sent: list[Any] = []
    finished = Finished()
    link = ReplicationLink(sent.append, finished, wait=True, timeout=5.0)
    for index in range(3):
        link.hold(f"chunk{index}", sealed(index))
    link.forward([sealed(i) for i in range(3)])
    assert isinstance(sent[0], ipc.Replicate) and sent[0].wait is True
    link.on_message(ipc.Replicated([ipc.Acked(SESSION, 1, b"")]))
    assert finished.calls == [("chunk1", None, bytes([1]) * 32)]
    link.expire(now=0.0)  # nothing is late yet
    assert len(finished.calls) == 1
    link.expire(now=float("inf"))
    late = finished.calls[1:]
    assert sorted(chunk for chunk, _, _ in late) == ["chunk0", "chunk2"]
    assert all(isinstance(err, UnavailableError) for _, err, _ in late)
    assert link.metrics()["replication_timeouts_total"] == 2
    assert not link.held


def test_a_new_replicator_is_given_every_chunk_still_held() -> None:
    sent: list[Any] = []
    link = ReplicationLink(sent.append, Finished(), wait=True, timeout=5.0)
    link.hold("c", sealed(4))
    link.replaced()
    assert [s.index for s in sent[-1].sealed] == [4] and sent[-1].wait
