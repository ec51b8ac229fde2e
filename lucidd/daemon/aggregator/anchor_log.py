"""The host's anchor log (layer 2): one RFC 9162 log whose leaves are session checkpoints.

Every signed session checkpoint the daemon writes (periodic, on request, final) becomes one
leaf: the leaf input is ``SHA-256(signed note)``, the *note hash*, so the leaf hash is
``SHA-256(0x00 || note hash)``. Only this log's own signed checkpoint is anchored, so one
anchoring per interval covers every session of the host.

On disk, under ``<state>/anchor/``::

    merkle/          the log (MerkleLog: leaves.bin, level files, state)
    entries.bin      per leaf: session id (16), session tree size (8, big-endian), note hash (32)
    checkpoints/     the anchor log's signed checkpoints, one per size (NoteFolder)
                     and beside each, its attestations: <size>.<backend>

``entries.bin`` is appended before the leaf and fdatasynced before the log's sync, so after a
crash it holds at least what the log holds; :meth:`AnchorLog.open` appends the leaves the log
lost from it. A size is checkpointed only once the log is synced to it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Final

from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.daemon.aggregator.note_files import NoteFolder
from lucidd.daemon.store import write_all
from lucidd.merkle import leaf_hash
from lucidd.receipt import note_hash

ANCHOR_DIR: Final = "anchor"
_ENTRY: Final = struct.Struct(">16sQ32s")
ENTRY_SIZE: Final = _ENTRY.size


def unpack_entries(raw: bytes) -> list[tuple[bytes, int, bytes]]:
    """(session id, session tree size, note hash) of each whole entry of ``entries.bin``."""
    return [_ENTRY.unpack_from(raw, i) for i in range(0, len(raw) - ENTRY_SIZE + 1, ENTRY_SIZE)]


class AnchorLog:
    """The anchor log of one state folder (single writer: the aggregator)."""

    def __init__(self, root: Path, merkle: MerkleLog, entries_fd: int) -> None:
        self.root = root
        self.merkle = merkle
        self.checkpoints = NoteFolder(root / "checkpoints")
        self._entries_fd = entries_fd
        self._entries_synced = True
        #: (session id, size) -> leaf index; per session, its (size, leaf index), ascending.
        self._index: dict[tuple[bytes, int], int] = {}
        self._by_session: dict[bytes, list[tuple[int, int]]] = {}

    @classmethod
    def open(cls, state_dir: Path) -> AnchorLog:
        """Open (creating) the anchor log of ``state_dir``, recovering it after a crash."""
        root = state_dir / ANCHOR_DIR
        root.mkdir(mode=0o700, exist_ok=True)
        merkle = MerkleLog.open(root / "merkle")
        fd = os.open(root / "entries.bin", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        log = cls(root, merkle, fd)
        try:
            log._load()
        except BaseException:
            log.close()
            raise
        return log

    def _load(self) -> None:
        raw = os.pread(self._entries_fd, os.fstat(self._entries_fd).st_size, 0)
        count = len(raw) // ENTRY_SIZE
        if count < self.merkle.size:  # entries are synced first: only after outside damage
            raise OSError(f"{self.root}/entries.bin holds fewer entries than the log")
        if len(raw) != count * ENTRY_SIZE:  # a torn last entry: never in the log
            os.ftruncate(self._entries_fd, count * ENTRY_SIZE)
        for i, (session, size, digest) in enumerate(unpack_entries(raw)):
            if i >= self.merkle.size:  # in entries, lost by the log: append it again
                self.merkle.append(leaf_hash(digest))
            self._remember(session, size, i)
        self.merkle.sync()

    def _remember(self, session: bytes, size: int, index: int) -> None:
        self._index[(session, size)] = index
        self._by_session.setdefault(session, []).append((size, index))

    @property
    def size(self) -> int:
        return self.merkle.size

    def index_of(self, session: bytes, size: int) -> int | None:
        """The leaf of the session's checkpoint of ``size``, if it was logged."""
        return self._index.get((session, size))

    def logged(self, session: bytes) -> list[tuple[int, int]]:
        """The session's logged checkpoints as (size, leaf index), ascending."""
        return self._by_session.get(session, [])

    def append(self, session: bytes, size: int, note: bytes) -> int:
        """Log a signed session checkpoint (once per session and size); its leaf index.

        Visible at once, durable at the next :meth:`sync`.
        """
        known = self._index.get((session, size))
        if known is not None:
            return known
        digest = note_hash(note)
        end = os.lseek(self._entries_fd, 0, os.SEEK_END)
        if end != self.merkle.size * ENTRY_SIZE:
            os.ftruncate(self._entries_fd, self.merkle.size * ENTRY_SIZE)
        write_all(self._entries_fd, _ENTRY.pack(session, size, digest))
        self._entries_synced = False
        index = self.merkle.append(leaf_hash(digest))
        self._remember(session, size, index)
        return index

    def sync(self) -> None:
        """Make every logged checkpoint durable (entries first, then the log)."""
        if not self._entries_synced:
            os.fdatasync(self._entries_fd)
            self._entries_synced = True
        self.merkle.sync()

    def close(self) -> None:
        if self._entries_fd >= 0:
            os.close(self._entries_fd)
            self._entries_fd = -1
        self.merkle.close()
