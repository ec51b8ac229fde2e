"""A pack built from the local segments (layer 2): the records the replicator uploads next.

Each run of records that lie back to back in one segment is read with one ``preadv`` straight
into the pack's body (``layout.pack_frame``): no copy and no open, read and close per record.
The records have usually left the page cache (the workers drop what they synced), so they
come back from disk; plain reads, since ``O_DIRECT`` saves nothing measurable here
(docs/bench.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from lucidd.daemon import ipc
from lucidd.daemon.replication import layout
from lucidd.daemon.store import SessionPaths


def read_pack(paths: SessionPaths, chosen: list[ipc.Sealed]) -> bytearray:
    """The pack of ``chosen`` (in that order), read from the session's segments; OSError if a
    segment is missing or shorter than its records."""
    pack = layout.pack_frame(
        [(s.index, s.record_length) for s in chosen], [s.leaf_hash for s in chosen]
    )
    body = memoryview(pack)
    at = 0
    for segment, offset, length in _runs(chosen):
        fd = os.open(paths.segment(segment), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _read_into(fd, body[at : at + length], offset, segment)
        finally:
            os.close(fd)
        at += length
    return pack


def _runs(chosen: list[ipc.Sealed]) -> Iterator[tuple[str, int, int]]:
    """(segment, offset, length) of the runs of consecutive records of ``chosen`` that are
    contiguous in one segment (a worker appends a session's records back to back)."""
    if not chosen:
        return
    segment, offset, length = chosen[0].segment, chosen[0].offset, chosen[0].record_length
    for sealed in chosen[1:]:
        if sealed.segment == segment and sealed.offset == offset + length:
            length += sealed.record_length
            continue
        yield segment, offset, length
        segment, offset, length = sealed.segment, sealed.offset, sealed.record_length
    yield segment, offset, length


def _read_into(fd: int, view: memoryview, offset: int, segment: str) -> None:
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise OSError(f"segment {segment} ends before its record at {offset}")
        view = view[got:]
        offset += got
