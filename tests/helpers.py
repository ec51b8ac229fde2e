"""Helpers for tests that read the daemon's files back."""

from __future__ import annotations

from pathlib import Path

from lucidd.crypto import HEADER_SIZE, parse_header
from lucidd.daemon.store import SessionPaths
from lucidd.errors import FormatError
from lucidd.merkle import leaf_hash, root_of


def records_on_disk(state_dir: Path, session: bytes) -> dict[int, bytes]:
    """Every record in the session's segment files, parsed from the bytes alone."""
    paths = SessionPaths.of(state_dir, session)
    records: dict[int, bytes] = {}
    for name in paths.segments():
        data = paths.segment(name).read_bytes()
        offset = 0
        while offset < len(data):
            try:
                header = parse_header(data[offset : offset + HEADER_SIZE])
            except FormatError:
                break  # a torn header at the tail (a crash mid-write)
            end = offset + header.record_length
            assert header.session_id == session
            if end > len(data):
                break  # a torn tail (a crash mid-write): never acknowledged, quarantined
            records.setdefault(header.index, data[offset:end])
            offset = end
    return records


def root_from_disk(state_dir: Path, session: bytes, size: int) -> bytes:
    records = records_on_disk(state_dir, session)
    return root_of([leaf_hash(records[i]) for i in range(size)])


def all_records_on_disk(state_dir: Path, session: bytes) -> dict[int, list[bytes]]:
    """Every well-framed record per index (a crash may leave a torn tail: reading stops there)."""
    paths = SessionPaths.of(state_dir, session)
    found: dict[int, list[bytes]] = {}
    for name in paths.segments():
        data = paths.segment(name).read_bytes()
        offset = 0
        while offset + HEADER_SIZE <= len(data):
            try:
                header = parse_header(data[offset : offset + HEADER_SIZE])
            except FormatError:
                break
            end = offset + header.record_length
            if end > len(data):
                break
            found.setdefault(header.index, []).append(data[offset:end])
            offset = end
    return found
