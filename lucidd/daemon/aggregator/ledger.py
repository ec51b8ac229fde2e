"""The aggregator's book of sessions (layer 2): Merkle logs, chunk index, reorder windows.

One :class:`SessionLedger` per session, one :class:`Ledger` per aggregator process; the
aggregator is the single writer of every file here except the segments (DESIGN §2, §7).
Nothing in memory is authoritative: on start the ledger is rebuilt from the files, and the
files from the records (the recovery scan).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from lucidd.crypto import (
    COMPRESSIONS,
    SESSION_ID_SIZE,
    Keyring,
    new_session_secret,
    open_final,
    open_record,
    seal_final,
    unwrap_secret,
    wrap_secret,
)
from lucidd.daemon import ipc
from lucidd.daemon.access import LEGACY_OWNER
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.daemon.aggregator.reorder import ReorderWindow
from lucidd.daemon.store import (
    DAMAGE_UNAUTHENTIC,
    QUARANTINE_DIR,
    ChunkIndex,
    DamagedRange,
    IndexEntry,
    LedgerState,
    QuarantinedRange,
    ScannedRecord,
    SessionMeta,
    SessionPaths,
    create_session_dir,
    list_session_dirs,
    new_meta,
    parse_segment_name,
    quarantine_range,
    read_ledger_state,
    read_meta,
    read_quarantine,
    read_record,
    scan_segment,
    shred_session,
    storage_error,
    sync_file,
    write_atomically,
    write_ledger_state,
    write_meta,
    write_quarantine,
)
from lucidd.errors import (
    BadRequestError,
    DamagedSessionError,
    FormatError,
    IncompleteSessionError,
    IntegrityError,
    InternalError,
    KeyringError,
    LucidError,
    NotFoundError,
    SessionFinalizedError,
    StorageError,
    UnknownSessionError,
)
from lucidd.merkle import Checkpoint, leaf_hash

#: The aggregator keeps the files of at most this many sessions open (the rest are closed and
#: reopened on use), holding at most MAX_OPEN_DESCRIPTORS: a session's log holds one
#: descriptor per tree level (21 at a million chunks) plus its folder and its index.
MAX_OPEN_SESSIONS: Final = 64
MAX_OPEN_DESCRIPTORS: Final = 384
#: Below this many sessions in use, counting their descriptors is not worth it (each holds at
#: most 66 at 2**63 chunks, so 4 of them stay far below MAX_OPEN_DESCRIPTORS).
MIN_SESSIONS_TO_COUNT: Final = 4


def checkpoint_origin(session_id: bytes) -> str:
    return f"lucidd/{uuid.UUID(bytes=session_id)}"


class SessionLedger:
    """One session's durable state as the aggregator sees it."""

    def __init__(self, session_id: bytes, paths: SessionPaths, meta: SessionMeta) -> None:
        self.session_id = session_id
        self.paths = paths
        self.meta = meta
        #: Called on every use of the session's files (the ledger's cache of open files).
        self.on_use: Callable[[SessionLedger], None] | None = None
        self._merkle = MerkleLog.open(paths.merkle)
        self._index = ChunkIndex(paths.index)
        self.window = ReorderWindow(self.merkle.size)
        self.plaintext_bytes = 0
        self.dirty = False
        self._secret: bytes | None = None
        #: Per segment file, the offset below which every record is indexed.
        self.segment_ends: dict[str, int] = {}
        #: Set when the files disagree: the next recovery scan reads every segment from 0.
        self.full_rescan = False
        #: Acknowledged records whose indexing failed (disk full); retried on every sync.
        self.unindexed: dict[int, ipc.Sealed] = {}
        #: Index entries found by recovery whose write failed (disk full); retried on sync.
        self._unwritten: dict[int, IndexEntry] = {}
        #: Chunks in the log or the window whose record is gone, with their leaf hash.
        self.missing: dict[int, bytes] = {}
        #: Damaged segment ranges copied aside (``<session>/quarantine/``).
        self.quarantine = read_quarantine(paths)
        self._load()

    def _load(self) -> None:
        """Rebuild memory from the files: the ledger state says how much needs no rescan."""
        state = read_ledger_state(self.paths)
        size = self.merkle.size
        index_intact = (
            size == 0
            or self.index.get(size - 1) is not None
            or (state is not None and size - 1 in state.missing)
        )
        if state is not None and state.merkle_size == size and index_intact:
            self.plaintext_bytes = state.prefix_bytes
            self.segment_ends = dict(state.segments)
            self.missing = dict(state.missing)
        elif size or self.paths.segments() or self.paths.index.stat().st_size:
            # No usable state (a crash before the first sync, or damaged files): the next
            # recovery scan rebuilds the index and the Merkle log from the records.
            self.full_rescan = True
            return
        for index, entry in self.index.scan(size):
            self.plaintext_bytes += entry.plaintext_length
            if index >= self.window.next_index:
                self._add_recovered_leaf(index, entry.leaf_hash)
            self._note_end(entry.segment, entry.offset + entry.record_length)
        self._find_cut_segments()

    def _find_cut_segments(self) -> None:
        """Note as missing every indexed chunk whose segment is now shorter than the indexed
        end (cut, or removed). Cheap: one ``stat`` per segment; the index is read only when
        a segment is short. The segment's end then moves back to its last intact record (a
        removed one is forgotten), so the rest of a cut segment is scanned and quarantined
        like a torn tail, and a new segment that reuses a removed one's name is read from 0.
        The missing chunks are kept in the ledger state."""
        short: dict[str, int] = {}
        for name, end in self.segment_ends.items():
            try:
                size = self.paths.segment(name).stat().st_size
            except FileNotFoundError:
                size = -1
            if size < end:
                short[name] = size
        if not short:
            return
        intact = dict.fromkeys(short, 0)
        for index, entry in self.index.scan():
            cut_at = short.get(entry.segment)
            if cut_at is None:
                continue
            end = entry.offset + entry.record_length
            if end > cut_at:
                self.missing.setdefault(index, entry.leaf_hash)
            else:
                intact[entry.segment] = max(intact[entry.segment], end)
        for name, size in short.items():
            if size < 0:
                del self.segment_ends[name]
            else:
                self.segment_ends[name] = intact[name]
        self.dirty = True

    @property
    def damaged(self) -> bool:
        """Chunks of the log whose record is gone, or damage inside a segment (not only a
        torn tail, which a crash mid-write leaves and which held no acknowledged record)."""
        return bool(self.missing) or any(not q.tail for q in self.quarantine)

    def _note_end(self, segment: str, end: int) -> None:
        if end > self.segment_ends.get(segment, 0):
            self.segment_ends[segment] = end

    def _add_leaf(self, index: int, leaf: bytes) -> None:
        ready = self.window.add(index, leaf)
        if ready:
            self.merkle.extend(ready)
            self.dirty = True

    def _add_recovered_leaf(self, index: int, leaf: bytes) -> None:
        """:meth:`_add_leaf` for recovery, which must not stop half-way: a log write that
        fails (disk full) leaves the log broken, and :meth:`sync` reopens it and re-appends
        the leaves from the index (and :attr:`missing`) once the disk allows."""
        try:
            self._add_leaf(index, leaf)
        except StorageError:
            self.dirty = True

    def stored_leaf(self, index: int) -> bytes | None:
        """The leaf hash of chunk ``index`` if it is stored, else None."""
        if index in self.unindexed:
            return self.unindexed[index].leaf_hash
        if index < self.merkle.size:
            return self.merkle.leaf(index)
        if index in self.window:
            entry = self._indexed(index)
            return entry.leaf_hash if entry is not None else None
        return None

    def _indexed(self, index: int) -> IndexEntry | None:
        """The index entry of ``index``, counting entries whose write still waits."""
        waiting = self._unwritten.get(index)
        return waiting if waiting is not None else self.index.get(index)

    def _put_entry(self, index: int, entry: IndexEntry) -> None:
        """Index a record found by recovery; a failed write (disk full) is kept in memory and
        retried on every :meth:`sync`, so recovery never stops half-way."""
        try:
            self.index.put(index, entry)
        except OSError:
            self._unwritten[index] = entry

    def _authenticator(self, secret: bytes) -> Callable[[ScannedRecord], int | None]:
        def authenticate(found: ScannedRecord) -> int | None:
            try:
                return len(open_record(secret, self.session_id, found.index, found.record))
            except LucidError:
                return None

        return authenticate

    def _quarantine(self, segment: str, damaged: list[DamagedRange]) -> list[tuple[str, str]]:
        """Copy each damaged range not quarantined before aside (:func:`quarantine_ranges`)."""
        self.quarantine, lines = quarantine_ranges(self.paths, self.quarantine, segment, damaged)
        return lines

    def recover_segments(
        self, keyring: Keyring, worker: int | None = None, *, repair: bool
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
        if self.full_rescan:
            return [], self._rebuild(keyring, repair=repair)
        acked: list[ipc.Acked] = []
        repairs: list[tuple[str, str]] = []
        authenticate = self._authenticator(self.secret(keyring))
        for name in self.paths.segments():
            owner, number = parse_segment_name(name)
            if worker is not None and owner != worker:
                continue
            path = self.paths.segment(name)
            start = self.segment_ends.get(name, 0)
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
                    self._note_end(name, found.offset + len(found.record))
                entry = IndexEntry(
                    owner, number, found.offset, len(found.record), leaf, plaintext_length
                )
                if self._restore_entry(found.index, entry):
                    acked.append(ipc.Acked(self.session_id, found.index, leaf))
            if repair:
                repairs += self._quarantine(name, scan.damaged)
        if acked:
            self.dirty = True
        return acked, repairs

    def _authentic_records(
        self, keyring: Keyring, repair: bool, repairs: list[tuple[str, str]]
    ) -> dict[int, list[IndexEntry]]:
        """Every authentic record of every segment, by chunk index (damage quarantined if
        ``repair``)."""
        authenticate = self._authenticator(self.secret(keyring))
        found: dict[int, list[IndexEntry]] = {}
        for name in self.paths.segments():
            owner, number = parse_segment_name(name)
            path = self.paths.segment(name)
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
                self._note_end(name, record.offset + len(record.record))
            if repair:
                repairs += self._quarantine(name, scan.damaged)
        return found

    def _rebuild(self, keyring: Keyring, repair: bool) -> list[tuple[str, str]]:
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
        old_index = dict(self.index.scan())
        old_leaves = [self.merkle.leaf(i) for i in range(self.merkle.size)]
        found = self._authentic_records(keyring, repair, repairs)
        kept = _confirmed_prefix(old_leaves, found, old_index)
        self.merkle.close()
        shutil.rmtree(self.paths.merkle, ignore_errors=True)
        self.merkle = MerkleLog.open(self.paths.merkle)
        self.index.truncate()
        self._unwritten.clear()
        self.window = ReorderWindow(0)
        self.plaintext_bytes = 0
        self.missing = {}
        for index in range(kept):
            leaf = old_leaves[index]
            matching = [e for e in found.get(index, []) if e.leaf_hash == leaf]
            if matching:
                entry = _choose(matching, old_index.get(index), leaf)
                self._put_entry(index, entry)
                self.plaintext_bytes += entry.plaintext_length
            else:
                self.missing[index] = leaf
                old = old_index.get(index)
                self.plaintext_bytes += old.plaintext_length if old is not None else 0
            self._add_recovered_leaf(index, leaf)
        for index in sorted(i for i in found if i >= kept):
            old_leaf = old_leaves[index] if index < len(old_leaves) else None
            entry = _choose(found[index], old_index.get(index), old_leaf)
            self._put_entry(index, entry)
            self.plaintext_bytes += entry.plaintext_length
            self._add_recovered_leaf(index, entry.leaf_hash)
        lost = [i for i in old_index if i not in found]
        repairs.append(
            (
                "ledger_rebuilt",
                f"chunks={len(found)} size={self.merkle.size} kept_leaves={kept} "
                f"missing={len(self.missing)} indexed_but_gone={len(lost)}",
            )
        )
        self.full_rescan = False
        self.dirty = True
        return repairs

    def _restore_entry(self, index: int, entry: IndexEntry) -> bool:
        """Index an authentic record found on disk; True if it is a chunk new to the ledger.

        The index keeps the record already named for an index (a duplicate is ignored); a
        lost index entry is restored only for the record whose leaf the Merkle log holds. The
        record of a missing chunk that is back (a segment restored from a backup) heals it:
        it is indexed again and no longer missing (its bytes were counted all along).
        """
        if index in self.missing:
            if self.missing[index] == entry.leaf_hash:
                self._put_entry(index, entry)
                del self.missing[index]
                self.dirty = True
            return False
        if self._indexed(index) is not None:
            return False
        if index < self.merkle.size:
            if self.merkle.leaf(index) == entry.leaf_hash:
                self._put_entry(index, entry)
                self.plaintext_bytes += entry.plaintext_length
            return False
        self._put_entry(index, entry)
        self.plaintext_bytes += entry.plaintext_length
        self._add_recovered_leaf(index, entry.leaf_hash)
        return True

    @property
    def state(self) -> str:
        return self.meta.state

    @property
    def owner_uid(self) -> int:
        return self.meta.owner_uid

    def stored_bytes(self) -> int:
        """Bytes of this session's segment files (what its sealed records take on disk)."""
        total = 0
        for name in self.paths.segments():
            with contextlib.suppress(FileNotFoundError):
                total += self.paths.segment(name).stat().st_size
        return total

    def record_chunk_size(self, chunk_size: int) -> None:
        """Record the chunk size of the first put; a different one later is refused."""
        recorded = self.meta.chunk_size
        if recorded == chunk_size:
            return
        if recorded:
            raise BadRequestError(
                f"session {uuid.UUID(bytes=self.session_id)} is written in chunks of "
                f"{recorded} bytes, not {chunk_size}",
                session=self.session_id,
            )
        meta = msgspec.structs.replace(self.meta, chunk_size=chunk_size)
        write_meta(self.paths, meta)
        self.meta = meta

    @property
    def chunks(self) -> int:
        return self.merkle.size + len(self.window)

    def secret(self, keyring: Keyring) -> bytes:
        if self._secret is None:
            self._secret = unwrap_secret(keyring, self.session_id, self.meta.wrapped_secret)
        return self._secret

    def view(self) -> ipc.SessionView:
        return ipc.SessionView(
            self.session_id,
            self.state,
            self.meta.compression,
            self.plaintext_bytes,
            self.merkle.size,
            self.window.held_indices(),
            self.meta.owner_uid,
        )

    def record_sealed(self, sealed: ipc.Sealed) -> bytes:
        """Index a durable record and feed its leaf to the Merkle log in index order.

        Idempotent: for a chunk already stored (found by a recovery scan first, or sealed
        twice) nothing changes and the stored leaf hash is returned, so every ack of one
        chunk names the same leaf.
        """
        stored = self.stored_leaf(sealed.index)
        if stored is not None:
            return stored
        self._index_new(sealed)
        return sealed.leaf_hash

    def _index_new(self, sealed: ipc.Sealed) -> None:
        """Index a record of a chunk not stored yet (the caller checked)."""
        self.index.put(sealed.index, _entry_of(sealed))
        self.plaintext_bytes += sealed.plaintext_length
        self._note_end(sealed.segment, sealed.offset + sealed.record_length)
        self._add_leaf(sealed.index, sealed.leaf_hash)

    def index_sealed(self, sealed: ipc.Sealed) -> None:
        """Index a chunk just acknowledged as new (:meth:`stored_leaf` was None). An index or
        Merkle write that fails (disk full) is kept and retried on every :meth:`sync`, so the
        chunk is indexed as soon as the disk allows."""
        try:
            self._index_new(sealed)
        except (OSError, LucidError):
            self.unindexed[sealed.index] = sealed

    def entry(self, index: int) -> IndexEntry:
        waiting = self.unindexed.get(index)
        if waiting is not None:
            return _entry_of(waiting)
        if index in self.missing:
            raise DamagedSessionError(
                f"chunk {index} of session {uuid.UUID(bytes=self.session_id)} is damaged: its "
                "record is gone (it failed authentication and was quarantined, or its segment "
                "was cut); its leaf stays in the log",
                session=self.session_id,
                index=index,
            )
        entry = self._indexed(index) if index >= 0 else None
        if entry is None:
            raise NotFoundError(
                f"chunk {index} is not stored", session=self.session_id, index=index
            )
        return entry

    def read_chunk(self, keyring: Keyring, index: int) -> tuple[bytes, bytes]:
        """(plaintext, record) of a stored chunk; the record is authenticated first."""
        entry = self.entry(index)
        record = read_record(self.paths, entry)
        plaintext = open_record(self.secret(keyring), self.session_id, index, record)
        return plaintext, record

    def scrub_targets(self, start: int, stop: int) -> list[ScrubTarget]:
        """What :func:`scrub` reads for chunks ``start..stop-1`` of the log: each one's leaf
        in the log and where its record lives (None: gone). Call on the loop, in slices."""
        return [
            ScrubTarget(index, self.merkle.leaf(index), self._entry_or_none(index))
            for index in range(start, stop)
        ]

    def window_targets(self) -> list[ScrubTarget]:
        """Like :meth:`scrub_targets` for the chunks stored past the log (reorder window)."""
        targets = []
        for index in self.window.held_indices():
            entry = self._entry_or_none(index)
            leaf = entry.leaf_hash if entry is not None else self.missing.get(index, b"")
            targets.append(ScrubTarget(index, leaf, entry))
        return targets

    def _entry_or_none(self, index: int) -> IndexEntry | None:
        if index in self.missing:
            return None
        waiting = self.unindexed.get(index)
        return _entry_of(waiting) if waiting is not None else self._indexed(index)

    def note_gone(self, gone: dict[int, bytes]) -> None:
        """A scrub found these chunks' records gone or unauthentic: from now on they are
        missing (reads refused as ``damaged``; their leaves stay in the log). Durable at the
        next sync."""
        new = {index: leaf for index, leaf in gone.items() if index not in self.missing}
        if new:
            self.missing.update(new)
            self.dirty = True

    def problem(self) -> str:
        """What is damaged, in words ("" when nothing is)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} chunk(s) whose record is gone")
        inside = sum(1 for q in self.quarantine if not q.tail)
        if inside:
            parts.append(f"{inside} damaged segment range(s) quarantined")
        return "; ".join(parts)

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.merkle.size if size is None else size
        return Checkpoint(checkpoint_origin(self.session_id), size, self.merkle.root(size))

    def check_size(self, size: int | None) -> int:
        if size is None:
            return self.merkle.size
        if not 0 <= size <= self.merkle.size:
            raise BadRequestError(
                f"size {size} is beyond the log (size {self.merkle.size})",
                session=self.session_id,
            )
        return size

    def finalize(self, keyring: Keyring) -> Checkpoint:
        """Write the FINAL record; only without gaps. Durable when it returns."""
        if self.state == ipc.SESSION_FINALIZED:
            return self.finalized_checkpoint(keyring)
        if len(self.window):
            raise IncompleteSessionError(
                f"chunks are missing: first gap at index {self.merkle.size}, "
                f"{len(self.window)} chunk(s) stored past it",
                session=self.session_id,
            )
        size = self.merkle.size
        root = self.merkle.root()
        record = seal_final(self.secret(keyring), self.session_id, size, self.plaintext_bytes, root)
        self.sync()
        write_atomically(self.paths.final, record)
        self.meta = _replace_state(self.meta, ipc.SESSION_FINALIZED)
        write_meta(self.paths, self.meta)
        return self.checkpoint(size)

    def finalized_checkpoint(self, keyring: Keyring) -> Checkpoint:
        final = open_final(self.secret(keyring), self.session_id, self.paths.final.read_bytes())
        return Checkpoint(checkpoint_origin(self.session_id), final.size, final.root)

    def sync(self) -> None:
        """Make the index, the Merkle log and the ledger state durable (records already are).

        Order matters: the state may only describe what the index and the log hold durably.
        A clean session is not a use of its files (the periodic sync visits every session).
        """
        if not (self.dirty or self.unindexed or self._unwritten or self._merkle.broken):
            return
        if self._merkle.broken:
            self.reopen_merkle()
        for index, sealed in list(self.unindexed.items()):
            self.record_sealed(sealed)  # raises again while the disk is full
            del self.unindexed[index]
        for index, unwritten in list(self._unwritten.items()):
            self._index.put(index, unwritten)  # raises again while the disk is full
            del self._unwritten[index]
        if self.dirty:
            self._index.sync()
            self._merkle.sync()
            prefix_bytes = self.plaintext_bytes - sum(
                entry.plaintext_length
                for index in self.window.held_indices()
                if (entry := self._indexed(index)) is not None
            )
            state = LedgerState(
                merkle_size=self._merkle.size,
                prefix_bytes=prefix_bytes,
                segments=dict(self.segment_ends),
                missing=dict(self.missing),
            )
            write_ledger_state(self.paths, state)
            self.dirty = False

    # The files are a cache (Ledger.release_idle): every use goes through these properties.

    @property
    def merkle(self) -> MerkleLog:
        if self.on_use is not None:
            self.on_use(self)
        return self._merkle

    @merkle.setter
    def merkle(self, log: MerkleLog) -> None:
        self._merkle = log

    @property
    def index(self) -> ChunkIndex:
        if self.on_use is not None:
            self.on_use(self)
        return self._index

    @property
    def open_descriptors(self) -> int:
        return self._merkle.open_descriptors + self._index.open_descriptors

    def release_files(self) -> bool:
        """Make everything durable, then close the session's descriptors; False (and nothing
        closed) while something is not durable yet (a disk that is full)."""
        self.sync()
        if self.unindexed or self.dirty or self._merkle.broken:
            return False
        self._merkle.release_files()
        self._index.release()
        return True

    def reopen_merkle(self) -> None:
        """After a failed write (disk full, I/O error): reopen the log from its files and
        re-append, from the index, the leaves it lost. The records were never at risk."""
        with contextlib.suppress(OSError, LucidError):
            self.merkle.close()
        self.merkle = MerkleLog.open(self.paths.merkle)
        for index in range(self.merkle.size, self.window.next_index):
            entry = self._indexed(index)
            leaf = entry.leaf_hash if entry is not None else self.missing.get(index)
            if leaf is None:
                raise InternalError(f"index entry {index} missing below the reorder window")
            self.merkle.append(leaf)
        self.dirty = True

    def close(self) -> None:
        with contextlib.suppress(OSError, LucidError):
            self.sync()
        self._merkle.close()
        self._index.close()


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


def damaged_view(session_id: bytes) -> ipc.SessionView:
    """The supervisor's view of a session that cannot be loaded: admission refuses it."""
    return ipc.SessionView(session_id, ipc.SESSION_DAMAGED, "", 0, 0, [], LEGACY_OWNER)


def _replace_state(meta: SessionMeta, state: str) -> SessionMeta:
    return msgspec.structs.replace(meta, state=state)


class Ledger:
    """Every session of one state folder."""

    def __init__(self, state_dir: Path, keyring: Keyring) -> None:
        """Load every session folder. One whose metadata cannot be read or decoded, or whose
        secret the keyring cannot unwrap, is kept aside in :attr:`unreadable` (every request
        naming it is refused as ``damaged``) and the others are served. Only a keyring that
        opens none of the sessions with readable metadata stops the start (KeyringError, a
        configuration error: exit 78)."""
        self.state_dir = state_dir
        self.keyring = keyring
        self.sessions: dict[bytes, SessionLedger] = {}
        #: Sessions whose files may be open, least recently used first (release_idle).
        self._in_use: OrderedDict[bytes, None] = OrderedDict()
        self._releasing = False
        #: Session id -> what is wrong with it, for the sessions that cannot be loaded.
        self.unreadable: dict[bytes, str] = {}
        readable = 0
        refused: list[LucidError] = []
        for session_id, paths in list_session_dirs(state_dir):
            try:
                meta = read_meta(paths)
            except (OSError, LucidError) as exc:
                self.unreadable[session_id] = f"its metadata cannot be read: {exc}"
                continue
            readable += 1
            try:
                secret = unwrap_secret(keyring, session_id, meta.wrapped_secret)
            except LucidError as err:
                self.unreadable[session_id] = (
                    f"its secret cannot be unwrapped: {err.code}: {err.message}"
                )
                refused.append(err)
                continue
            try:
                session = SessionLedger(session_id, paths, meta)
            except (OSError, LucidError) as exc:
                self.unreadable[session_id] = f"its files cannot be opened: {exc}"
                continue
            session._secret = secret
            self._add(session)
        if refused and len(refused) == readable:
            first = refused[0]
            raise KeyringError(
                f"the keyring opens none of the {readable} stored session(s) "
                f"({first.code}: {first.message})"
            )

    def __iter__(self) -> Iterator[SessionLedger]:
        return iter(self.sessions.values())

    def damaged_error(self, session_id: bytes) -> DamagedSessionError | None:
        """The refusal for a session that cannot be loaded, None for any other id."""
        problem = self.unreadable.get(session_id)
        if problem is None:
            return None
        return DamagedSessionError(
            f"session {uuid.UUID(bytes=session_id)} is damaged: {problem}", session=session_id
        )

    def views(self) -> list[ipc.SessionView]:
        """What the supervisor admits by: every session, the unreadable ones as damaged."""
        views = [session.view() for session in self.sessions.values()]
        views += [damaged_view(session_id) for session_id in self.unreadable]
        return views

    @property
    def damaged_count(self) -> int:
        return len(self.unreadable) + sum(1 for s in self.sessions.values() if s.damaged)

    def get(self, session_id: bytes) -> SessionLedger:
        session = self.sessions.get(session_id)
        if session is None:
            damaged = self.damaged_error(session_id)
            if damaged is not None:
                raise damaged
            raise UnknownSessionError(
                f"no session {uuid.UUID(bytes=session_id)}", session=session_id
            )
        return session

    def open(
        self,
        session_id: bytes | None,
        compression: str,
        owner_uid: int,
        label: str = "",
        chunk_size: int = 0,
    ) -> SessionLedger:
        """Create a session owned by ``owner_uid``; durable when it returns.

        An existing id returns that session as it is (whoever owns it): the caller checks
        whether the peer may use it.
        """
        if compression not in COMPRESSIONS:
            raise BadRequestError(
                f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}"
            )
        if session_id is None:
            session_id = uuid.uuid4().bytes
        existing = self.sessions.get(session_id)
        if existing is not None:
            return existing
        damaged = self.damaged_error(session_id)
        if damaged is not None:
            raise damaged
        if len(session_id) != SESSION_ID_SIZE:
            raise BadRequestError("session id must be 16 bytes")
        secret = new_session_secret()
        wrapped = wrap_secret(self.keyring, session_id, secret)
        paths = SessionPaths.of(self.state_dir, session_id)
        meta = new_meta(
            session_id,
            wrapped,
            compression,
            ipc.SESSION_OPEN,
            owner_uid,
            label=label,
            chunk_size=chunk_size,
        )
        create_session_dir(paths, meta)
        session = SessionLedger(session_id, paths, meta)
        self._add(session)
        return session

    # -- the cache of open files ----------------------------------------------------------

    def _add(self, session: SessionLedger) -> None:
        self.sessions[session.session_id] = session
        session.on_use = self._used
        self._used(session)
        self.release_idle()

    def _used(self, session: SessionLedger) -> None:
        in_use = self._in_use
        key = session.session_id
        if key in in_use:
            in_use.move_to_end(key)
            return
        in_use[key] = None
        # Between syncs too: a burst of reads over many sessions must not run out of fds.
        if len(in_use) > 2 * MAX_OPEN_SESSIONS and not self._releasing:
            self.release_idle()

    def release_idle(self) -> None:
        """Close the files of the least recently used sessions beyond the cache's bounds.

        At most MAX_OPEN_SESSIONS sessions, holding at most MAX_OPEN_DESCRIPTORS, keep files
        open; every other session reopens its files on its next use. A session whose state
        is not durable yet (a full disk) stays open and is tried again on the next call.
        """
        in_use = self._in_use
        if len(in_use) <= MIN_SESSIONS_TO_COUNT or self._releasing:
            return
        self._releasing = True  # a release syncs, and a sync may use files: no re-entry
        try:
            self._release_lru()
        finally:
            self._releasing = False

    def _release_lru(self) -> None:
        in_use = self._in_use
        held = sum(s.open_descriptors for i in in_use if (s := self.sessions.get(i)))
        kept: list[bytes] = []
        while in_use and (len(in_use) > MAX_OPEN_SESSIONS or held > MAX_OPEN_DESCRIPTORS):
            key, _ = in_use.popitem(last=False)
            session = self.sessions.get(key)
            if session is None:
                continue
            before = session.open_descriptors
            try:
                released = session.release_files()
            except (OSError, LucidError):
                released = False
            if released:
                held -= before
            else:
                kept.append(key)
        for key in kept:  # not durable yet: keep their files, retry next time
            in_use[key] = None
            in_use.move_to_end(key, last=False)

    def require_open(self, session_id: bytes) -> SessionLedger:
        session = self.get(session_id)
        if session.state == ipc.SESSION_FINALIZED:
            raise SessionFinalizedError("session is finalized", session=session_id)
        return session

    def shred(self, session_id: bytes) -> None:
        session = self.get(session_id)
        del self.sessions[session_id]
        self._in_use.pop(session_id, None)
        with contextlib.suppress(OSError):
            session.merkle.close()
            session.index.close()
        shred_session(session.paths)

    def sync(self) -> None:
        for session in self.sessions.values():
            session.sync()
        self.release_idle()

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


def _confirmed_prefix(
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


def _choose(
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


def _entry_of(sealed: ipc.Sealed) -> IndexEntry:
    worker, number = parse_segment_name(sealed.segment)
    return IndexEntry(
        worker,
        number,
        sealed.offset,
        sealed.record_length,
        sealed.leaf_hash,
        sealed.plaintext_length,
    )
