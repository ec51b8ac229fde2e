"""Repair's parts that do not belong to one session's state (layer 2): scrubbing records
against the log, copying damaged ranges to the quarantine, and choosing among authentic
records when a rebuild finds several for one index. Functions of files and values only, so
``check`` can run them in a worker thread.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from lucidd.crypto import (
    open_record,
)
from lucidd.daemon.segments import (
    DAMAGE_UNAUTHENTIC,
    QUARANTINE_DIR,
    DamagedRange,
    QuarantinedRange,
    quarantine_range,
    write_quarantine,
)
from lucidd.daemon.store import IndexEntry, SessionPaths, read_record, storage_error
from lucidd.errors import (
    FormatError,
    IntegrityError,
    LucidError,
    StorageError,
)
from lucidd.merkle import leaf_hash


@dataclass(frozen=True, slots=True)
class ScrubTarget:
    """One chunk for :func:`scrub`: its leaf in the log and its index entry (None: gone)."""

    index: int
    leaf_hash: bytes
    entry: IndexEntry | None


@dataclass(frozen=True)
class ScrubResult:
    #: Every chunk that failed, in order.
    bad: list[int]
    #: Those whose record is gone or not authentic (not a passing I/O error), with the leaf.
    gone: dict[int, bytes]
    #: Records read whole that fail authentication or do not hash to their leaf.
    unauthentic: list[IndexEntry]


def quarantine_ranges(
    paths: SessionPaths, known: list[QuarantinedRange], segment: str, damaged: list[DamagedRange]
) -> tuple[list[QuarantinedRange], list[tuple[str, str]]]:
    """Copy each damaged range of ``segment`` not in ``known`` to the quarantine and list it
    (durable when it returns); returns the new list and (event, details) log lines for the new
    ranges only, so that a range found again (every restart finds the same ones) is neither
    copied nor logged twice. A copy that fails (disk full) is logged and left for a later
    attempt; the bytes stay in the segment meanwhile. File I/O only: callable off the loop."""
    ranges = list(known)
    lines: list[tuple[str, str]] = []
    seen = {(q.segment, q.offset) for q in ranges}
    for bad in damaged:
        if (segment, bad.offset) in seen:
            continue
        where = f"segment={segment} offset={bad.offset} length={bad.length}"
        try:
            kept = quarantine_range(paths, segment, bad)
            ranges.append(kept)
            seen.add((segment, bad.offset))
            write_quarantine(paths, ranges)
        except OSError as exc:
            lines.append(("quarantine_failed", f"{where} error={storage_error(exc, 'copy')}"))
            continue
        lines.append(
            (
                "segment_quarantined",
                f"{where} reason={bad.reason} tail={int(bad.tail)} "
                f"file={QUARANTINE_DIR}/{kept.file}",
            )
        )
    return ranges, lines


def quarantine_records(
    paths: SessionPaths, known: list[QuarantinedRange], entries: list[IndexEntry]
) -> tuple[list[QuarantinedRange], list[tuple[str, str]]]:
    """:func:`quarantine_ranges` for indexed records a scrub found unauthentic."""
    ranges, lines = list(known), []
    for entry in entries:
        damaged = DamagedRange(entry.offset, entry.record_length, DAMAGE_UNAUTHENTIC, False)
        ranges, more = quarantine_ranges(paths, ranges, entry.segment, [damaged])
        lines += more
    return ranges, lines


def scrub(
    paths: SessionPaths, secret: bytes, session_id: bytes, targets: list[ScrubTarget]
) -> ScrubResult:
    """Read, authenticate and hash every target's record (blocking file I/O, no shared state:
    safe in a worker thread while the loop keeps serving)."""
    bad: list[int] = []
    gone: dict[int, bytes] = {}
    unauthentic: list[IndexEntry] = []
    for target in targets:
        entry = target.entry
        try:
            if entry is None:
                raise FormatError("the record is gone")
            record = read_record(paths, entry)
        except StorageError as err:
            bad.append(target.index)
            if err.context.get("errno") == errno.ENOENT:  # its segment file is gone
                gone[target.index] = target.leaf_hash
            continue
        except LucidError:  # gone, or cut short
            bad.append(target.index)
            gone[target.index] = target.leaf_hash
            continue
        try:
            open_record(secret, session_id, target.index, record)
            if leaf_hash(record) != target.leaf_hash:
                raise IntegrityError("the record does not hash to its leaf")
        except LucidError:
            bad.append(target.index)
            gone[target.index] = target.leaf_hash
            unauthentic.append(entry)
    return ScrubResult(bad, gone, unauthentic)


def confirmed_prefix(
    old_leaves: list[bytes],
    found: dict[int, list[IndexEntry]],
    old_index: dict[int, IndexEntry],
) -> int:
    """How many leaves of the old log a rebuild keeps: up to the last one confirmed, by an
    authentic record or by the old index naming the same leaf (the chunk was indexed, so
    acknowledged, and its record is gone since), and never past the first one an authentic
    record contradicts (the old log is not trusted from there on: the records are the
    truth). Leaves past the last confirmed one (garbage appended to the log's files) go."""
    kept = 0
    for index, leaf in enumerate(old_leaves):
        candidates = found.get(index)
        if candidates is None:
            indexed = old_index.get(index)
            if indexed is not None and indexed.leaf_hash == leaf:
                kept = index + 1
            continue
        if not any(entry.leaf_hash == leaf for entry in candidates):
            break
        kept = index + 1
    return kept


def choose_record(
    candidates: list[IndexEntry], indexed: IndexEntry | None, merkle_leaf: bytes | None
) -> IndexEntry:
    """Which of several authentic records of one chunk index the rebuilt ledger keeps."""
    for entry in candidates:
        if indexed is not None and (entry.segment, entry.offset) == (
            indexed.segment,
            indexed.offset,
        ):
            return entry
    for entry in candidates:
        if entry.leaf_hash == merkle_leaf:
            return entry
    return candidates[0]
