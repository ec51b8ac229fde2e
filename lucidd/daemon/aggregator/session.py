"""One live session's durable state as the aggregator sees it (layer 2).

:class:`SessionLedger` holds a session's index, reorder window and Merkle log, indexes new
records, and serves reads, proofs, scrubs and finalize. Its files are a cache that
:class:`~lucidd.daemon.aggregator.ledger.Ledger` may close (``release_files``). How its memory
is rebuilt from its files, and its files from the records, is
:mod:`~lucidd.daemon.aggregator.recovery`'s (which also builds every session:
:func:`~lucidd.daemon.aggregator.recovery.open_session`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

import msgspec

from lucidd.crypto import (
    Keyring,
    open_final,
    open_record,
    seal_final,
    unwrap_secret,
)
from lucidd.daemon import ipc
from lucidd.daemon.access import LEGACY_OWNER
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.daemon.aggregator.reorder import ReorderWindow
from lucidd.daemon.aggregator.repair import ScrubTarget
from lucidd.daemon.segments import read_quarantine
from lucidd.daemon.store import (
    ChunkIndex,
    IndexEntry,
    LedgerState,
    SessionMeta,
    SessionPaths,
    parse_segment_name,
    read_record,
    write_atomically,
    write_ledger_state,
    write_meta,
)
from lucidd.errors import (
    BadRequestError,
    DamagedSessionError,
    IncompleteSessionError,
    InternalError,
    LucidError,
    NotFoundError,
)
from lucidd.merkle import Checkpoint


def checkpoint_origin(session_id: bytes) -> str:
    return f"lucidd/{uuid.UUID(bytes=session_id)}"


class SessionLedger:
    """One session's durable state as the aggregator sees it."""

    def __init__(self, session_id: bytes, paths: SessionPaths, meta: SessionMeta) -> None:
        #: The host whose session this is a read-only copy of (aggregator.remote), or None.
        self.remote_host = paths.remote_host()
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
        self.unwritten: dict[int, IndexEntry] = {}
        #: Chunks in the log or the window whose record is gone, with their leaf hash.
        self.missing: dict[int, bytes] = {}
        #: Damaged segment ranges copied aside (``<session>/quarantine/``).
        self.quarantine = read_quarantine(paths)

    @property
    def damaged(self) -> bool:
        """Chunks of the log whose record is gone, or damage inside a segment (not only a
        torn tail, which a crash mid-write leaves and which held no acknowledged record)."""
        return bool(self.missing) or any(not q.tail for q in self.quarantine)

    def note_end(self, segment: str, end: int) -> None:
        """Every record of ``segment`` below ``end`` is indexed (the end only moves forward)."""
        if end > self.segment_ends.get(segment, 0):
            self.segment_ends[segment] = end

    def add_leaf(self, index: int, leaf: bytes) -> None:
        """Feed chunk ``index``'s leaf to the reorder window; the log takes what is in order."""
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
            entry = self.indexed(index)
            return entry.leaf_hash if entry is not None else None
        return None

    def indexed(self, index: int) -> IndexEntry | None:
        """The index entry of ``index``, counting entries whose write still waits
        (:attr:`unwritten`)."""
        waiting = self.unwritten.get(index)
        return waiting if waiting is not None else self.index.get(index)

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
        # A read-only copy of another host's session admits no chunk: the supervisor sees it
        # finalized whatever its state on its own host.
        return ipc.SessionView(
            self.session_id,
            ipc.SESSION_FINALIZED if self.remote_host is not None else self.state,
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
        self.note_end(sealed.segment, sealed.offset + sealed.record_length)
        self.add_leaf(sealed.index, sealed.leaf_hash)

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
        entry = self.indexed(index) if index >= 0 else None
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
        return _entry_of(waiting) if waiting is not None else self.indexed(index)

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
        if not (self.dirty or self.unindexed or self.unwritten or self._merkle.broken):
            return
        if self._merkle.broken:
            self.reopen_merkle()
        for index, sealed in list(self.unindexed.items()):
            self.record_sealed(sealed)  # raises again while the disk is full
            del self.unindexed[index]
        for index, unwritten in list(self.unwritten.items()):
            self._index.put(index, unwritten)  # raises again while the disk is full
            del self.unwritten[index]
        if self.dirty:
            self._index.sync()
            self._merkle.sync()
            prefix_bytes = self.plaintext_bytes - sum(
                entry.plaintext_length
                for index in self.window.held_indices()
                if (entry := self.indexed(index)) is not None
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
            entry = self.indexed(index)
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


def damaged_view(session_id: bytes) -> ipc.SessionView:
    """The supervisor's view of a session that cannot be loaded: admission refuses it."""
    return ipc.SessionView(session_id, ipc.SESSION_DAMAGED, "", 0, 0, [], LEGACY_OWNER)


def _replace_state(meta: SessionMeta, state: str) -> SessionMeta:
    return msgspec.structs.replace(meta, state=state)


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
