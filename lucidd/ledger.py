"""The aggregator's book of sessions (layer 2): Merkle logs, chunk index, reorder windows.

One :class:`SessionLedger` per session, one :class:`Ledger` per aggregator process; the
aggregator is the single writer of every file here except the segments (DESIGN §2, §7).
Nothing in memory is authoritative: on start the ledger is rebuilt from the files, and the
files from the records (the recovery scan).
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from lucidd import ipc
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
from lucidd.errors import (
    BadRequestError,
    IncompleteSessionError,
    InternalError,
    LucidError,
    NotFoundError,
    SessionFinalizedError,
    UnknownSessionError,
)
from lucidd.merkle import Checkpoint, MerkleLog, leaf_hash
from lucidd.reorder import ReorderWindow
from lucidd.store import (
    ChunkIndex,
    IndexEntry,
    LedgerState,
    SessionMeta,
    SessionPaths,
    create_session_dir,
    list_session_dirs,
    new_meta,
    parse_segment_name,
    read_ledger_state,
    read_meta,
    read_record,
    scan_segment,
    shred_session,
    sync_file,
    truncate_file,
    write_atomically,
    write_ledger_state,
    write_meta,
)


def checkpoint_origin(session_id: bytes) -> str:
    return f"lucidd/{uuid.UUID(bytes=session_id)}"


class SessionLedger:
    """One session's durable state as the aggregator sees it."""

    def __init__(self, session_id: bytes, paths: SessionPaths, meta: SessionMeta) -> None:
        self.session_id = session_id
        self.paths = paths
        self.meta = meta
        self.merkle = MerkleLog.open(paths.merkle)
        self.index = ChunkIndex(paths.index)
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
        self._load()

    def _load(self) -> None:
        """Rebuild memory from the files: the ledger state says how much needs no rescan."""
        state = read_ledger_state(self.paths)
        size = self.merkle.size
        index_intact = size == 0 or self.index.get(size - 1) is not None
        if state is not None and state.merkle_size == size and index_intact:
            self.plaintext_bytes = state.prefix_bytes
            self.segment_ends = dict(state.segments)
        elif size or self.paths.segments() or self.paths.index.stat().st_size:
            # No usable state (a crash before the first sync, or damaged files): the next
            # recovery scan rebuilds the index and the Merkle log from the records.
            self.full_rescan = True
            return
        for index, entry in self.index.scan(size):
            self.plaintext_bytes += entry.plaintext_length
            if index >= self.window.next_index:
                self._add_leaf(index, entry.leaf_hash)
            self._note_end(entry.segment, entry.offset + entry.record_length)

    def _note_end(self, segment: str, end: int) -> None:
        if end > self.segment_ends.get(segment, 0):
            self.segment_ends[segment] = end

    def _add_leaf(self, index: int, leaf: bytes) -> None:
        ready = self.window.add(index, leaf)
        if ready:
            self.merkle.extend(ready)
            self.dirty = True

    def stored_leaf(self, index: int) -> bytes | None:
        """The leaf hash of chunk ``index`` if it is stored, else None."""
        if index in self.unindexed:
            return self.unindexed[index].leaf_hash
        if index < self.merkle.size:
            return self.merkle.leaf(index)
        if index in self.window:
            entry = self.index.get(index)
            return entry.leaf_hash if entry is not None else None
        return None

    def recover_segments(
        self, keyring: Keyring, worker: int | None = None, *, repair: bool
    ) -> tuple[list[ipc.Acked], list[str]]:
        """Index every authentic record past the indexed part of the segments.

        ``worker`` limits the scan to one worker's files (it died). Every file is fsynced
        before it is read, since an ack must only ever follow durability. With ``repair``
        (at start-up, when no worker runs) a torn or garbage tail is cut off. Returns the acks
        for newly indexed records and one line per repair, for the log.
        """
        if self.full_rescan:
            return [], self._rebuild(keyring, repair=repair)
        acked: list[ipc.Acked] = []
        repairs: list[str] = []
        secret = self.secret(keyring)
        for name in self.paths.segments():
            owner, number = parse_segment_name(name)
            if worker is not None and owner != worker:
                continue
            path = self.paths.segment(name)
            start = 0 if self.full_rescan else self.segment_ends.get(name, 0)
            if path.stat().st_size <= start:
                continue
            sync_file(path)  # a worker may have written it without syncing yet
            records, end, size = scan_segment(path, start)
            for found in records:
                try:
                    plaintext = open_record(secret, self.session_id, found.index, found.record)
                except LucidError:
                    end = found.offset  # stop at the first record that fails authentication
                    break
                leaf = leaf_hash(found.record)
                self._note_end(name, found.offset + len(found.record))
                entry = IndexEntry(
                    owner, number, found.offset, len(found.record), leaf, len(plaintext)
                )
                if self._restore_entry(found.index, entry):
                    acked.append(ipc.Acked(self.session_id, found.index, leaf))
            if repair and end < size:
                truncate_file(path, end)
                repairs.append(f"segment={name} cut_bytes={size - end} at={end}")
        if acked or self.full_rescan:
            self.dirty = True
        self.full_rescan = False
        return acked, repairs

    def _authentic_records(
        self, keyring: Keyring, repair: bool, repairs: list[str]
    ) -> dict[int, list[IndexEntry]]:
        """Every authentic record of every segment, by chunk index (torn tails cut if asked)."""
        secret = self.secret(keyring)
        found: dict[int, list[IndexEntry]] = {}
        for name in self.paths.segments():
            owner, number = parse_segment_name(name)
            path = self.paths.segment(name)
            records, end, size = scan_segment(path, 0)
            for record in records:
                try:
                    plaintext = open_record(secret, self.session_id, record.index, record.record)
                except LucidError:
                    end = record.offset
                    break
                entry = IndexEntry(
                    owner,
                    number,
                    record.offset,
                    len(record.record),
                    leaf_hash(record.record),
                    len(plaintext),
                )
                found.setdefault(record.index, []).append(entry)
                self._note_end(name, record.offset + len(record.record))
            if repair and end < size:
                truncate_file(path, end)
                repairs.append(f"segment={name} cut_bytes={size - end} at={end}")
        return found

    def _rebuild(self, keyring: Keyring, repair: bool) -> list[str]:
        """Rebuild the index and the Merkle log from the records, the only truth.

        For an index with several authentic records (a chunk sealed twice) the one the old
        index named wins, else the one whose leaf the old Merkle log holds, so that acks
        already given keep naming the leaf in the tree.
        """
        repairs: list[str] = []
        old_index = dict(self.index.scan())
        old_leaves = {i: self.merkle.leaf(i) for i in range(self.merkle.size)}
        found = self._authentic_records(keyring, repair, repairs)
        self.merkle.close()
        shutil.rmtree(self.paths.merkle, ignore_errors=True)
        self.merkle = MerkleLog.open(self.paths.merkle)
        self.index.truncate()
        self.window = ReorderWindow(0)
        self.plaintext_bytes = 0
        for index in sorted(found):
            entry = _choose(found[index], old_index.get(index), old_leaves.get(index))
            self.index.put(index, entry)
            self.plaintext_bytes += entry.plaintext_length
            self._add_leaf(index, entry.leaf_hash)
        lost = [i for i in old_index if i not in found]
        repairs.append(
            f"rebuilt_from_records chunks={len(found)} size={self.merkle.size} "
            f"indexed_but_missing={len(lost)}"
        )
        self.full_rescan = False
        self.dirty = True
        return repairs

    def _restore_entry(self, index: int, entry: IndexEntry) -> bool:
        """Index an authentic record found on disk; True if it is a chunk new to the ledger.

        The index keeps the record already named for an index (a duplicate is ignored); a
        lost index entry is restored only for the record whose leaf the Merkle log holds.
        """
        if self.index.get(index) is not None:
            return False
        if index < self.merkle.size:
            if self.merkle.leaf(index) == entry.leaf_hash:
                self.index.put(index, entry)
                self.plaintext_bytes += entry.plaintext_length
            return False
        self.index.put(index, entry)
        self.plaintext_bytes += entry.plaintext_length
        self._add_leaf(index, entry.leaf_hash)
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
        entry = self.index.get(index) if index >= 0 else None
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
        """
        if self.merkle.broken:
            self.reopen_merkle()
        for index, sealed in list(self.unindexed.items()):
            self.record_sealed(sealed)  # raises again while the disk is full
            del self.unindexed[index]
        if self.dirty:
            self.index.sync()
            self.merkle.sync()
            prefix_bytes = self.plaintext_bytes - sum(
                entry.plaintext_length
                for index in self.window.held_indices()
                if (entry := self.index.get(index)) is not None
            )
            state = LedgerState(
                merkle_size=self.merkle.size,
                prefix_bytes=prefix_bytes,
                segments=dict(self.segment_ends),
            )
            write_ledger_state(self.paths, state)
            self.dirty = False

    def reopen_merkle(self) -> None:
        """After a failed write (disk full, I/O error): reopen the log from its files and
        re-append, from the index, the leaves it lost. The records were never at risk."""
        with contextlib.suppress(OSError, LucidError):
            self.merkle.close()
        self.merkle = MerkleLog.open(self.paths.merkle)
        for index in range(self.merkle.size, self.window.next_index):
            entry = self.index.get(index)
            if entry is None:
                raise InternalError(f"index entry {index} missing below the reorder window")
            self.merkle.append(entry.leaf_hash)
        self.dirty = True

    def close(self) -> None:
        with contextlib.suppress(OSError, LucidError):
            self.sync()
        self.merkle.close()
        self.index.close()


def _replace_state(meta: SessionMeta, state: str) -> SessionMeta:
    return msgspec.structs.replace(meta, state=state)


class Ledger:
    """Every session of one state folder."""

    def __init__(self, state_dir: Path, keyring: Keyring) -> None:
        self.state_dir = state_dir
        self.keyring = keyring
        self.sessions: dict[bytes, SessionLedger] = {}
        for session_id, paths in list_session_dirs(state_dir):
            self.sessions[session_id] = SessionLedger(session_id, paths, read_meta(paths))

    def __iter__(self) -> Iterator[SessionLedger]:
        return iter(self.sessions.values())

    def get(self, session_id: bytes) -> SessionLedger:
        session = self.sessions.get(session_id)
        if session is None:
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
        self.sessions[session_id] = session
        return session

    def require_open(self, session_id: bytes) -> SessionLedger:
        session = self.get(session_id)
        if session.state == ipc.SESSION_FINALIZED:
            raise SessionFinalizedError("session is finalized", session=session_id)
        return session

    def shred(self, session_id: bytes) -> None:
        session = self.get(session_id)
        del self.sessions[session_id]
        with contextlib.suppress(OSError):
            session.merkle.close()
            session.index.close()
        shred_session(session.paths)

    def sync(self) -> None:
        for session in self.sessions.values():
            session.sync()

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


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
