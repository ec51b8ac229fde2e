"""Recovery (layer 2): a session's state rebuilt from its files when it is opened, and from
its records at start-up.

:func:`open_session` is how the ledger gets a
:class:`~lucidd.daemon.aggregator.session.SessionLedger`: it builds the live session and loads it
(cheap: the ledger state says how much of the index needs no rescan; a segment cut since is
noted missing; without a usable state the session is marked for a full rescan).
:func:`recover_segments` is the recovery scan (every session at start, one dead worker's files
later): it indexes every authentic record past the indexed part of the segments,
resynchronizing past damage and quarantining it, never cutting an authentic record; a session
marked for a full rescan has its index and Merkle log rebuilt from the records.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from lucidd.crypto import Keyring, open_record
from lucidd.daemon import ipc
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.daemon.aggregator.reorder import ReorderWindow
from lucidd.daemon.aggregator.repair import choose_record, confirmed_prefix, quarantine_ranges
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.segments import DamagedRange, ScannedRecord, scan_segment, sync_file
from lucidd.daemon.store import (
    IndexEntry,
    SessionMeta,
    SessionPaths,
    parse_segment_name,
    read_ledger_state,
)
from lucidd.errors import LucidError, StorageError
from lucidd.merkle import leaf_hash


def open_session(session_id: bytes, paths: SessionPaths, meta: SessionMeta) -> SessionLedger:
    """The session of ``paths``, its memory rebuilt from its files (see :func:`_load`)."""
    session = SessionLedger(session_id, paths, meta)
    _load(session)
    return session


def _load(session: SessionLedger) -> None:
    """Rebuild memory from the files: the ledger state says how much needs no rescan."""
    state = read_ledger_state(session.paths)
    size = session.merkle.size
    index_intact = (
        size == 0
        or session.index.get(size - 1) is not None
        or (state is not None and size - 1 in state.missing)
    )
    if state is not None and state.merkle_size == size and index_intact:
        session.plaintext_bytes = state.prefix_bytes
        session.segment_ends = dict(state.segments)
        session.missing = dict(state.missing)
    elif size or session.paths.segments() or session.paths.index.stat().st_size:
        # No usable state (a crash before the first sync, or damaged files): the next
        # recovery scan rebuilds the index and the Merkle log from the records.
        session.full_rescan = True
        return
    for index, entry in session.index.scan(size):
        session.plaintext_bytes += entry.plaintext_length
        if index >= session.window.next_index:
            _add_recovered_leaf(session, index, entry.leaf_hash)
        session.note_end(entry.segment, entry.offset + entry.record_length)
    _find_cut_segments(session)


def _find_cut_segments(session: SessionLedger) -> None:
    """Note as missing every indexed chunk whose segment is now shorter than the indexed
    end (cut, or removed). Cheap: one ``stat`` per segment; the index is read only when
    a segment is short. The segment's end then moves back to its last intact record (a
    removed one is forgotten), so the rest of a cut segment is scanned and quarantined
    like a torn tail, and a new segment that reuses a removed one's name is read from 0.
    The missing chunks are kept in the ledger state."""
    short: dict[str, int] = {}
    for name, end in session.segment_ends.items():
        try:
            size = session.paths.segment(name).stat().st_size
        except FileNotFoundError:
            size = -1
        if size < end:
            short[name] = size
    if not short:
        return
    intact = dict.fromkeys(short, 0)
    for index, entry in session.index.scan():
        cut_at = short.get(entry.segment)
        if cut_at is None:
            continue
        end = entry.offset + entry.record_length
        if end > cut_at:
            session.missing.setdefault(index, entry.leaf_hash)
        else:
            intact[entry.segment] = max(intact[entry.segment], end)
    for name, size in short.items():
        if size < 0:
            del session.segment_ends[name]
        else:
            session.segment_ends[name] = intact[name]
    session.dirty = True


def recover_segments(
    session: SessionLedger, keyring: Keyring, worker: int | None = None, *, repair: bool
) -> tuple[list[ipc.Acked], list[tuple[str, str]]]:
    """Index every authentic record past the indexed part of the segments.

    ``worker`` limits the scan to one worker's files (it died). Every file is fsynced
    before it is read, since an ack must only ever follow durability. A range that holds
    no authentic record (garbage, a record that fails authentication, a torn tail) is
    skipped and the scan resynchronizes on the next authentic record behind it; with
    ``repair`` (at start-up) such a range is also copied to the quarantine. No segment is
    ever cut: a torn tail is harmless where it is, because no writer appends to a segment
    of an earlier process (each worker opens a new file, ``O_EXCL``), so nothing is ever
    written behind it. Returns the acks for newly indexed records and (event, details)
    lines for the log.
    """
    if session.full_rescan:
        return [], _rebuild(session, keyring, repair=repair)
    acked: list[ipc.Acked] = []
    repairs: list[tuple[str, str]] = []
    authenticate = _authenticator(session, session.secret(keyring))
    for name in session.paths.segments():
        owner, number = parse_segment_name(name)
        if worker is not None and owner != worker:
            continue
        path = session.paths.segment(name)
        start = session.segment_ends.get(name, 0)
        if path.stat().st_size <= start:
            continue
        sync_file(path)  # a worker may have written it without syncing yet
        scan = scan_segment(path, start, authenticate)
        # Without repair the end stays before the first damaged range, so that the next
        # start scans it again and quarantines it (the records behind it are indexed now).
        stop = scan.damaged[0].offset if scan.damaged and not repair else scan.size
        for found, plaintext_length in scan.records:
            leaf = leaf_hash(found.record)
            if found.offset < stop:
                session.note_end(name, found.offset + len(found.record))
            entry = IndexEntry(
                owner, number, found.offset, len(found.record), leaf, plaintext_length
            )
            if _restore_entry(session, found.index, entry):
                acked.append(ipc.Acked(session.session_id, found.index, leaf))
        if repair:
            repairs += _quarantine(session, name, scan.damaged)
    if acked:
        session.dirty = True
    return acked, repairs


def _rebuild(session: SessionLedger, keyring: Keyring, repair: bool) -> list[tuple[str, str]]:
    """Rebuild the index and the Merkle log from the records and the old log's leaves.

    The old log is kept up to its last leaf that an authentic record (or the old index)
    confirms, as long as no authentic record contradicts it: its leaves were acknowledged
    (and may be anchored), so a chunk whose record is gone keeps its leaf and is noted
    missing instead of shifting every later chunk out of the log. Past that, the log is
    rebuilt from the records alone. For an index with several authentic records (a chunk
    sealed twice) the one the old index named wins, else the one whose leaf the old log
    holds (within the kept prefix only records with the kept leaf are candidates).
    """
    repairs: list[tuple[str, str]] = []
    old_index = dict(session.index.scan())
    old_leaves = [session.merkle.leaf(i) for i in range(session.merkle.size)]
    found = _authentic_records(session, keyring, repair, repairs)
    kept = confirmed_prefix(old_leaves, found, old_index)
    session.merkle.close()
    shutil.rmtree(session.paths.merkle, ignore_errors=True)
    session.merkle = MerkleLog.open(session.paths.merkle)
    session.index.truncate()
    session.unwritten.clear()
    session.window = ReorderWindow(0)
    session.plaintext_bytes = 0
    session.missing = {}
    for index in range(kept):
        leaf = old_leaves[index]
        matching = [e for e in found.get(index, []) if e.leaf_hash == leaf]
        if matching:
            entry = choose_record(matching, old_index.get(index), leaf)
            _put_entry(session, index, entry)
            session.plaintext_bytes += entry.plaintext_length
        else:
            session.missing[index] = leaf
            old = old_index.get(index)
            session.plaintext_bytes += old.plaintext_length if old is not None else 0
        _add_recovered_leaf(session, index, leaf)
    for index in sorted(i for i in found if i >= kept):
        old_leaf = old_leaves[index] if index < len(old_leaves) else None
        entry = choose_record(found[index], old_index.get(index), old_leaf)
        _put_entry(session, index, entry)
        session.plaintext_bytes += entry.plaintext_length
        _add_recovered_leaf(session, index, entry.leaf_hash)
    lost = [i for i in old_index if i not in found]
    repairs.append(
        (
            "ledger_rebuilt",
            f"chunks={len(found)} size={session.merkle.size} kept_leaves={kept} "
            f"missing={len(session.missing)} indexed_but_gone={len(lost)}",
        )
    )
    session.full_rescan = False
    session.dirty = True
    return repairs


def _restore_entry(session: SessionLedger, index: int, entry: IndexEntry) -> bool:
    """Index an authentic record found on disk; True if it is a chunk new to the ledger.

    The index keeps the record already named for an index (a duplicate is ignored); a
    lost index entry is restored only for the record whose leaf the Merkle log holds. The
    record of a missing chunk that is back (a segment restored from a backup) heals it:
    it is indexed again and no longer missing (its bytes were counted all along).
    """
    if index in session.missing:
        if session.missing[index] == entry.leaf_hash:
            _put_entry(session, index, entry)
            del session.missing[index]
            session.dirty = True
        return False
    if session.indexed(index) is not None:
        return False
    if index < session.merkle.size:
        if session.merkle.leaf(index) == entry.leaf_hash:
            _put_entry(session, index, entry)
            session.plaintext_bytes += entry.plaintext_length
        return False
    _put_entry(session, index, entry)
    session.plaintext_bytes += entry.plaintext_length
    _add_recovered_leaf(session, index, entry.leaf_hash)
    return True


def _authentic_records(
    session: SessionLedger, keyring: Keyring, repair: bool, repairs: list[tuple[str, str]]
) -> dict[int, list[IndexEntry]]:
    """Every authentic record of every segment, by chunk index (damage quarantined if
    ``repair``)."""
    authenticate = _authenticator(session, session.secret(keyring))
    found: dict[int, list[IndexEntry]] = {}
    for name in session.paths.segments():
        owner, number = parse_segment_name(name)
        path = session.paths.segment(name)
        sync_file(path)  # trust nothing a dead worker may not have made durable
        scan = scan_segment(path, 0, authenticate)
        for record, plaintext_length in scan.records:
            entry = IndexEntry(
                owner,
                number,
                record.offset,
                len(record.record),
                leaf_hash(record.record),
                plaintext_length,
            )
            found.setdefault(record.index, []).append(entry)
            session.note_end(name, record.offset + len(record.record))
        if repair:
            repairs += _quarantine(session, name, scan.damaged)
    return found


def _authenticator(session: SessionLedger, secret: bytes) -> Callable[[ScannedRecord], int | None]:
    def authenticate(found: ScannedRecord) -> int | None:
        try:
            return len(open_record(secret, session.session_id, found.index, found.record))
        except LucidError:
            return None

    return authenticate


def _quarantine(
    session: SessionLedger, segment: str, damaged: list[DamagedRange]
) -> list[tuple[str, str]]:
    """Copy each damaged range not quarantined before aside (:func:`quarantine_ranges`)."""
    session.quarantine, lines = quarantine_ranges(
        session.paths, session.quarantine, segment, damaged
    )
    return lines


def _put_entry(session: SessionLedger, index: int, entry: IndexEntry) -> None:
    """Index a record found by recovery; a failed write (disk full) is kept in memory and
    retried on every :meth:`SessionLedger.sync`, so recovery never stops half-way."""
    try:
        session.index.put(index, entry)
    except OSError:
        session.unwritten[index] = entry


def _add_recovered_leaf(session: SessionLedger, index: int, leaf: bytes) -> None:
    """:meth:`SessionLedger.add_leaf` for recovery, which must not stop half-way: a log write
    that fails (disk full) leaves the log broken, and :meth:`SessionLedger.sync` reopens it
    and re-appends the leaves from the index (and ``missing``) once the disk allows."""
    try:
        session.add_leaf(index, leaf)
    except StorageError:
        session.dirty = True
