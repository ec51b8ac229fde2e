"""The append-only RFC 9162 Merkle log of one session, in memory or on a folder (layer 2).

:class:`MerkleLog` is DESIGN §5's log: ``append``, ``root``, the proofs, ``checkpoint`` and
``sync``, and :meth:`MerkleLog.open`'s recovery of a folder after a crash. The tree arithmetic
and the proof shapes are the pure :mod:`lucidd.merkle`'s; the files are
:mod:`lucidd.daemon.aggregator.merkle_files`'.

The log is a *compact range*: it keeps the roots of the perfect subtrees covering ``[0, n)`` (one
per set bit of ``n``, the *frontier*) and writes every perfect subtree hash once, when it
completes, to the file of its level. Every hash a proof needs is then either such a stored
perfect node or a fold of a few of them, so a proof reads about ``log2(n)`` stored nodes and the
writer's memory is ``O(log n)`` plus a bounded write buffer.

``MerkleLog()`` in memory is the same code with no files: the model the on-disk log is tested
against, and what tests use to build proofs. Nothing on the verifying side (the client,
``lucidctl verify``) needs it, so it lives with the on-disk log rather than in layer 1.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from types import TracebackType
from typing import Final, Self

from lucidd.daemon.aggregator.merkle_files import MAX_LEVELS, LevelFiles, LogState
from lucidd.errors import BadRequestError, StorageError
from lucidd.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    NODE_PREFIX,
    Checkpoint,
    consistency_path,
    decomposition_levels,
    fold_subtrees,
    inclusion_path,
)

_sha256 = hashlib.sha256

_RECOVERY_CHUNK: Final = 4096
"""Nodes hashed per batch while recovery rebuilds or checks a level (128 KiB of reads)."""

FLUSH_BYTES: Final = 1 << 20
"""Buffered leaf bytes that trigger a write to the page cache (not a sync)."""


def _check_leaf(leaf: object) -> None:
    if not isinstance(leaf, bytes):
        raise TypeError(f"a leaf hash must be bytes, not {type(leaf).__name__}")
    if len(leaf) != HASH_SIZE:
        raise ValueError(f"a leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequestError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise BadRequestError(f"{name} must not be negative, got {value}", **{name: value})
    return value


class MerkleLog:
    """The append-only RFC 9162 Merkle log of one session (single writer, not thread-safe).

    ``MerkleLog()`` lives in memory (every node in bytearrays: about 64 bytes per leaf);
    :meth:`open` keeps it in a folder with ``O(log n)`` memory (the frontier plus at most
    ~:data:`FLUSH_BYTES` of buffered nodes). Appends are visible to :meth:`root` and the proofs
    at once; they are durable only when :meth:`sync` returns. Arguments that come from requests
    (sizes, indices) raise :class:`~lucidd.errors.BadRequestError`; a failed write marks the log
    broken (every later call raises :class:`~lucidd.errors.StorageError`: reopen it).
    """

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []  # the frontier: decomposition of [0, size), largest first
        self._bufs: list[bytearray] = [bytearray() for _ in range(MAX_LEVELS)]
        """Nodes of each level not yet written to a file (in memory: all of them)."""
        self._written: list[int] = [0] * MAX_LEVELS
        """Nodes of each level already in its file (in memory: always 0)."""
        self._files: LevelFiles | None = None
        self._synced_size = 0
        self._broken = False
        self._closed = False

    # -- opening and recovery --------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MerkleLog:
        """Open (creating if missing) the on-disk log in folder ``path``, recovering it.

        Fast path (``O(log n)`` reads): the ``state`` of the last completed :meth:`sync` is
        trusted when its digest checks, ``leaves.bin`` and every level file hold at least what
        it covers, and the stored nodes at its right edge agree with its frontier. The log
        reopens at exactly that size; anything written after it (unsynced) is cut off.

        Slow path (``O(n)`` hashes, only after damage): every level node is recomputed from the
        leaves (the leaves are the truth) and rewritten where it differs; then, if the state's
        digest checks, the log is cut before the first subtree of its frontier that the leaves
        contradict (a synced, maybe anchored, root is never silently replaced).

        When this returns, the recovered state is durable and
        ``root(size) == root_of(leaves[:size])``. See docs/merkle.md for the limits.
        """
        log = cls()
        files = LevelFiles(path)
        log._files = files
        try:
            log._recover(files)
        except BaseException:
            files.close()
            raise
        return log

    def _recover(self, files: LevelFiles) -> None:
        leaves = files.raw_size(0) // HASH_SIZE
        raw = files.read_state()
        state = LogState.decode(raw) if raw is not None else None
        fast = (
            state is not None
            and state.size <= leaves
            and _levels_complete(files, state.size)
            and self._edge_agrees(files, state)
        )
        if fast:
            assert state is not None
            size = state.size
            _cut_files(files, size)
        else:
            size = files.counts[0]
            _rebuild_levels(files, size)
            if state is not None:
                size = _cut_at_state_disagreement(files, size, state)
        self._size = size
        self._written = files.counts + [0] * (MAX_LEVELS - files.levels())
        self._stack = [files.read(k, (size >> k) - 1) for k in decomposition_levels(size)]
        if not fast:
            files.datasync(range(files.levels()))
            files.replace_state(self._state().encode())
        self._synced_size = size

    @staticmethod
    def _edge_agrees(files: LevelFiles, state: LogState) -> bool:
        """Cheap check of a trusted state: the frontier and each level's last node."""
        size = state.size
        levels = decomposition_levels(size)
        if [files.read(k, (size >> k) - 1) for k in levels] != list(state.frontier):
            return False
        for k in range(1, size.bit_length()):
            j = (size >> k) - 1
            children = files.read_range(k - 1, 2 * j, 2 * j + 2)
            if files.read(k, j) != _sha256(NODE_PREFIX + children).digest():
                return False
        return True

    # -- appending ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of leaves appended so far (durable or not)."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash; return its index. Durable only after :meth:`sync`."""
        self._check_usable()
        _check_leaf(leaf_hash)
        index = self._size
        bufs = self._bufs
        bufs[0] += leaf_hash
        h = leaf_hash
        m = index
        level = 0
        stack = self._stack
        while m & 1:
            h = _sha256(NODE_PREFIX + stack.pop() + h).digest()
            level += 1
            bufs[level] += h
            m >>= 1
        stack.append(h)
        self._size = index + 1
        if self._files is not None and len(bufs[0]) >= FLUSH_BYTES:
            self._flush()
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append many leaf hashes (all or none are checked first); return the first index.

        The fast path for batches: the compact-range merge runs with local names only.
        Durable only after :meth:`sync`.
        """
        self._check_usable()
        batch = list(leaf_hashes)
        for leaf in batch:
            _check_leaf(leaf)
        first = self._size
        n = first
        bufs = self._bufs
        leaves = bufs[0]
        stack = self._stack
        pop = stack.pop
        push = stack.append
        sha = _sha256
        prefix = NODE_PREFIX
        for leaf in batch:
            leaves += leaf
            h = leaf
            m = n
            level = 0
            while m & 1:
                h = sha(prefix + pop() + h).digest()
                level += 1
                bufs[level] += h
                m >>= 1
            push(h)
            n += 1
        self._size = n
        if self._files is not None and len(leaves) >= FLUSH_BYTES:
            self._flush()
        return first

    def _flush(self) -> None:
        """Write every buffered node to its level file (page cache; no fsync)."""
        files = self._files
        assert files is not None
        bufs = self._bufs
        written = self._written
        try:
            for level in range(self._size.bit_length()):
                buf = bufs[level]
                if buf:
                    files.append(level, buf)
                    written[level] += len(buf) // HASH_SIZE
                    buf.clear()
        except OSError as exc:
            self._broken = True
            raise StorageError(f"merkle log write failed: {exc}", path=files.path) from exc

    def sync(self) -> None:
        """Make every leaf appended so far durable, then atomically record it in ``state``.

        When this returns: ``leaves.bin`` and the level files are written and fdatasync'd up to
        :attr:`size`, and ``state`` (size, root, frontier, digest) has been replaced by
        write-temp, fsync, rename, fsync-folder. A no-op in memory and when nothing changed.
        """
        self._check_usable()
        files = self._files
        if files is None or self._size == self._synced_size:
            return
        try:
            self._flush()
            files.datasync(range(files.levels()) if self._synced_size == 0 else self._dirty())
            files.replace_state(self._state().encode())
        except OSError as exc:
            self._broken = True
            raise StorageError(f"merkle log sync failed: {exc}", path=files.path) from exc
        self._synced_size = self._size

    def _dirty(self) -> list[int]:
        """Levels that got a node since the last sync: those whose node count grew."""
        old, new = self._synced_size, self._size
        return [k for k in range(new.bit_length()) if old >> k != new >> k]

    def _state(self) -> LogState:
        return LogState(self._size, self.root(), tuple(self._stack))

    @property
    def open_descriptors(self) -> int:
        """How many descriptors this log holds open now (0 in memory or once released)."""
        return self._files.open_count() if self._files is not None else 0

    def release_files(self) -> None:
        """:meth:`sync`, then close every descriptor; later calls reopen what they need.

        For a cache of open logs (many sessions, few in use). The log stays usable.
        """
        if self._files is None or self._closed:
            return
        self.sync()
        self._files.release()

    def close(self) -> None:
        """:meth:`sync` (unless broken), then release the files. Idempotent."""
        if self._closed:
            return
        try:
            if not self._broken:
                self.sync()
        finally:
            self._closed = True
            if self._files is not None:
                self._files.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def broken(self) -> bool:
        """True after a failed write: the log must be reopened (it recovers from its files)."""
        return self._broken

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError("merkle log is closed")
        if self._broken:
            raise StorageError("merkle log is broken after a failed write; reopen it")

    # -- reading ----------------------------------------------------------------------------

    def _node(self, level: int, index: int) -> bytes:
        """The stored hash of the complete perfect subtree ``(level, index)``."""
        written = self._written[level]
        if index < written:
            assert self._files is not None
            return self._files.read(level, index)
        offset = (index - written) * HASH_SIZE
        return bytes(self._bufs[level][offset : offset + HASH_SIZE])

    def _edge(self, size: int) -> list[bytes]:
        """The decomposition of ``[0, size)``: the frontier, or log n stored nodes."""
        if size == self._size:
            return self._stack
        node = self._node
        return [node(k, (size >> k) - 1) for k in decomposition_levels(size)]

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        _check_int("size", size)
        if size > self._size:
            raise BadRequestError(
                f"size {size} is beyond the log (size {self._size})", size=size, log_size=self._size
            )
        return size

    def leaf(self, index: int) -> bytes:
        """The leaf hash stored at ``index``."""
        self._check_usable()
        _check_int("index", index)
        if index >= self._size:
            raise BadRequestError(
                f"index {index} is out of range for log size {self._size}", index=index
            )
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """The root of the first ``size`` leaves (default: all); ``O(log n)`` reads + hashes."""
        self._check_usable()
        size = self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return fold_subtrees(self._edge(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion path of leaf ``index`` in the tree of ``size`` (default: all)."""
        self._check_usable()
        size = self._check_size(size)
        _check_int("index", index)
        if index >= size:
            raise BadRequestError(
                f"index {index} is out of range for tree size {size}", index=index, size=size
            )
        return inclusion_path(index, size, self._node, self._edge(size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from ``size1`` to ``size2`` (default: all).

        Empty when ``size1`` is 0 or equals ``size2``.
        """
        self._check_usable()
        size2 = self._check_size(size2)
        _check_int("size1", size1)
        if size1 > size2:
            raise BadRequestError(
                f"size1 {size1} is larger than size2 {size2}", size1=size1, size2=size2
            )
        return consistency_path(size1, size2, self._node, self._edge(size2))

    def checkpoint(self, origin: str) -> Checkpoint:
        """The current size and root as a checkpoint (the daemon uses ``lucidd/<session>``)."""
        return Checkpoint(origin, self._size, self.root())


def _levels_complete(files: LevelFiles, size: int) -> bool:
    """Whether every level file holds at least the nodes ``size`` leaves justify.

    A sync leaves them so; a file that is shorter was cut (and maybe regrown with garbage), so
    none of its nodes is trusted without a check.
    """
    levels = files.levels()
    return all(
        level < levels and files.raw_size(level) >= (size >> level) * HASH_SIZE
        for level in range(size.bit_length())
    )


def _cut_files(files: LevelFiles, size: int) -> None:
    """Cut every level file to the nodes that ``size`` leaves justify (and to whole nodes)."""
    for level in range(files.levels()):
        files.truncate(level, min(files.counts[level], size >> level))


def _parents(children: bytes) -> list[bytes]:
    """The node hashes of consecutive sibling pairs in ``children``."""
    step = 2 * HASH_SIZE
    return [
        _sha256(NODE_PREFIX + children[i : i + step]).digest()
        for i in range(0, len(children), step)
    ]


def _rebuild_levels(files: LevelFiles, size: int) -> None:
    """Make every level file hold exactly the right nodes for ``size`` leaves.

    Level by level (in chunks of :data:`_RECOVERY_CHUNK`), every node is recomputed from the
    level below; from the first stored node that disagrees (or is missing) on, the level file
    is rewritten. The leaves are the truth. Costs ``O(size)`` hashes: recovery only.
    """
    _cut_files(files, size)
    level = 1
    while size >> level:
        _rebuild_level(files, level, size >> level)
        level += 1


def _rebuild_level(files: LevelFiles, level: int, need: int) -> None:
    """One level of :func:`_rebuild_levels`: make it hold its ``need`` right nodes."""
    have = files.counts[level] if level < files.levels() else 0
    for lo in range(0, need, _RECOVERY_CHUNK):
        hi = min(lo + _RECOVERY_CHUNK, need)
        computed = _parents(files.read_range(level - 1, 2 * lo, 2 * hi))
        if lo < have:
            stored = files.read_range(level, lo, min(hi, have))
            for j in range(len(stored) // HASH_SIZE):
                if stored[j * HASH_SIZE : (j + 1) * HASH_SIZE] != computed[j]:
                    have = lo + j
                    files.truncate(level, have)
                    break
        if hi > have:
            files.append(level, b"".join(computed[max(have - lo, 0) :]))


def _cut_at_state_disagreement(files: LevelFiles, size: int, state: LogState) -> int:
    """Cut the log before the first subtree of ``state``'s frontier that the files contradict.

    A state whose digest checks records what a completed sync made durable (and what may have
    been anchored): leaves that disagree with it are damaged, never a new truth. Subtrees the
    files do not fully cover cannot be compared and are left alone.
    """
    start = 0
    for level, node in zip(decomposition_levels(state.size), state.frontier, strict=True):
        end = start + (1 << level)
        if end > size:
            break
        if files.read(level, start >> level) != node:
            _cut_files(files, start)
            return start
        start = end
    return size
