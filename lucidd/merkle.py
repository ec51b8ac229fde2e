"""RFC 9162 Merkle trees: hashing, proofs, verification and the session log (layer 1, DESIGN §5).

The vocabulary is RFC 9162 §2.1 (and transparency-dev/merkle's): a *leaf hash* is
``SHA-256(0x00 || record)``, an interior *node* is ``SHA-256(0x01 || left || right)``, the tree
of ``n`` leaves splits at the largest power of two strictly below ``n``, and the empty tree hashes
to ``SHA-256("")``. Indices are 0-based; a *size* is a number of leaves.

Layout of this module:

- pure functions (no I/O): :func:`leaf_hash`, :func:`node_hash`, :func:`root_of` (the simple
  recursive reference), :func:`verify_inclusion`, :func:`verify_consistency`, the proof shapes,
  :class:`Checkpoint` (the C2SP ``tlog-checkpoint`` text that gets anchored) and the ``state``
  record codec;
- :class:`_LevelFiles`, the only code here that touches files (the on-disk layout of
  ``docs/merkle.md``: ``leaves.bin``, ``level-<k>.bin``, ``state``); DESIGN §5 puts the
  on-disk log in this module, so ``os`` is layer 1's one allowed I/O import here;
- :class:`MerkleLog`, the append-only log of one session, in memory or on a folder.

The log is a *compact range*: it keeps the roots of the perfect subtrees covering ``[0, n)`` (one
per set bit of ``n``, the *frontier*) and writes every perfect subtree hash once, when it
completes, to the file of its level. Every hash a proof needs is then either such a stored
perfect node or a fold of a few of them, so a proof reads about ``log2(n)`` stored nodes and the
writer's memory is ``O(log n)`` plus a bounded write buffer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeAlias

from lucidd.errors import BadRequestError, FormatError, StorageError

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What :func:`leaf_hash` accepts (``collections.abc.Buffer`` arrives only in Python 3.12)."""

HASH_SIZE: Final = 32
"""Bytes in every leaf hash, node hash and root (SHA-256)."""

LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""The root of the tree with no leaves (RFC 9162 §2.1.1)."""

MAX_TREE_SIZE: Final = 2**64 - 1
"""RFC 9162 sizes and indices are uint64; anything larger is malformed."""

_sha256 = hashlib.sha256


# --------------------------------------------------------------------------------------------
# Hashing and the reference root
# --------------------------------------------------------------------------------------------


def leaf_hash(data: Buffer) -> bytes:
    """Return ``SHA-256(0x00 || data)``, the leaf hash of one record (RFC 9162 §2.1.1)."""
    h = _sha256(LEAF_PREFIX)
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``SHA-256(0x01 || left || right)``; the children need not be 32 bytes."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``): where RFC 9162 splits."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaf_hashes``, computed by the literal RFC 9162 recursion.

    This is the reference the log is tested against: short and obviously right, not fast
    (``O(n)`` hashes and ``O(log n)`` recursion depth, with list slicing).
    """
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return bytes(leaf_hashes[0])
    k = _split_point(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


# --------------------------------------------------------------------------------------------
# Verification (never raises)
# --------------------------------------------------------------------------------------------


def _is_size(value: object) -> bool:
    """True for an int in ``[0, 2**64)`` (``bool`` is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_proof(value: object) -> bool:
    """True for a ``list`` or ``tuple`` of 32-byte ``bytes`` (other sequences are refused)."""
    if not isinstance(value, (list, tuple)):
        return False
    return all(isinstance(p, bytes) and len(p) == HASH_SIZE for p in value)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows that ``leaf_hash`` is leaf ``index`` of the tree ``(size, root)``.

    RFC 9162 §2.1.3.2, literally. Returns False, never raises, on any malformed input: hashes
    that are not 32-byte ``bytes``, a proof that is not a list/tuple of them, sizes outside
    ``[0, 2**64)``, ``index >= size``, or a proof of the wrong length. Costs ``len(proof)``
    hashes.
    """
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_size(index) and _is_size(size)):
        return False
    if index >= size or not _is_proof(proof):
        return False
    fn = index
    sn = size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _sha256(NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Whether ``proof`` shows that tree ``(size1, root1)`` is a prefix of ``(size2, root2)``.

    RFC 9162 §2.1.4.2, with transparency-dev/merkle's edge rules: ``size1 == size2`` needs an
    empty proof and equal roots; a proof from ``size1 == 0`` to a larger tree is meaningless and
    fails; ``size1 > size2`` fails. Returns False, never raises, on malformed input (as for
    :func:`verify_inclusion`; roots must be 32-byte ``bytes`` too). Costs about
    ``2 * len(proof)`` hashes.
    """
    if not (_is_hash(root1) and _is_hash(root2) and _is_size(size1) and _is_size(size2)):
        return False
    if size1 > size2 or not _is_proof(proof):
        return False
    if size1 == size2:
        return len(proof) == 0 and hmac.compare_digest(root1, root2)
    if size1 == 0 or not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the first tree is itself a subtree
        path.insert(0, root1)
    fn = size1 - 1
    sn = size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _sha256(NODE_PREFIX + c + fr).digest()
            sr = _sha256(NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, root1) and hmac.compare_digest(sr, root2)


# --------------------------------------------------------------------------------------------
# Proof shapes (pure: they only ask a reader for stored perfect-subtree hashes)
# --------------------------------------------------------------------------------------------

NodeReader: TypeAlias = Callable[[int, int], bytes]
"""``read(level, index)`` -> the hash of the perfect subtree covering
``[index * 2**level, (index + 1) * 2**level)``; only called for complete subtrees."""


def _decomposition_levels(size: int) -> list[int]:
    """Levels of the perfect subtrees covering ``[0, size)``, largest (leftmost) first.

    They are the set bits of ``size``; the subtree at level ``k`` has index
    ``(size >> k) - 1``.
    """
    return [k for k in range(size.bit_length() - 1, -1, -1) if size >> k & 1]


def _fold(nodes: Sequence[bytes]) -> bytes:
    """The hash of a run of adjacent perfect subtrees, largest first: fold right to left."""
    h = nodes[-1]
    for i in range(len(nodes) - 2, -1, -1):
        h = _sha256(NODE_PREFIX + nodes[i] + h).digest()
    return h


def _subtree_path(
    index: int, level: int, size: int, read: NodeReader, edge: Sequence[bytes]
) -> list[bytes]:
    """The RFC 9162 audit path of the perfect node ``(level, index)`` in the tree of ``size``.

    ``edge`` is the decomposition of ``size`` (:func:`_decomposition_levels` order). The path is:
    the siblings inside the *fork* (the decomposition subtree that contains the node), then one
    hash for the ragged part to its right (if any), then the decomposition subtrees to its left,
    nearest first. This is transparency-dev/merkle's ``proof.nodes``; it equals RFC 9162 PATH.
    """
    inner = (index ^ (size >> level)).bit_length() - 1
    fork = level + inner
    proof = [read(level + h, (index >> h) ^ 1) for h in range(inner)]
    levels = _decomposition_levels(size)
    split = levels.index(fork)
    if split + 1 < len(levels):
        proof.append(_fold(edge[split + 1 :]))
    proof.extend(edge[i] for i in range(split - 1, -1, -1))
    return proof


def inclusion_path(index: int, size: int, read: NodeReader, edge: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 PATH(index, D[0:size]) from stored nodes; requires ``0 <= index < size``."""
    return _subtree_path(index, 0, size, read, edge)


def consistency_path(
    size1: int, size2: int, read: NodeReader, edge2: Sequence[bytes]
) -> list[bytes]:
    """RFC 9162 PROOF(size1, D[0:size2]); requires ``0 <= size1 <= size2``.

    Empty when ``size1`` is 0 or equals ``size2`` (transparency-dev's convention; the verifier
    accepts the latter and refuses the former). Otherwise: the largest perfect subtree ending
    at ``size1`` (left out when ``size1`` is a power of two: the verifier holds it as
    ``root1``), then that subtree's audit path in the tree of ``size2``.
    """
    if size1 in (0, size2):
        return []
    level = (size1 & -size1).bit_length() - 1
    index = (size1 >> level) - 1
    path = _subtree_path(index, level, size2, read, edge2)
    if index == 0:
        return path
    return [read(level, index), *path]


# --------------------------------------------------------------------------------------------
# Checkpoint (what gets anchored)
# --------------------------------------------------------------------------------------------

_DECIMAL = re.compile(rb"(?:0|[1-9][0-9]{0,19})")
_CHECKPOINT_LINES: Final = 3


def _valid_origin(origin: str) -> bool:
    return bool(origin) and origin.isprintable() and origin.strip() == origin


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP ``tlog-checkpoint`` body: origin, tree size and root hash.

    The tree size must be anchored with the root (a bare root does not say which prefix it
    covers), so this, not a root, is what gets signed and anchored. :meth:`encode` gives exactly
    ``f"{origin}\\n{size}\\n{base64(root)}\\n"``. No extension lines are written or accepted.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not _valid_origin(self.origin):
            raise ValueError("checkpoint origin must be a non-empty printable line")
        if not _is_size(self.size):
            raise ValueError(f"checkpoint size must be an int in [0, 2**64), got {self.size!r}")
        if not _is_hash(self.root):
            raise ValueError(f"checkpoint root must be {HASH_SIZE} bytes")

    def encode(self) -> bytes:
        """The checkpoint text, UTF-8, each of the three lines ending in ``\\n``."""
        b64 = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{b64}\n".encode()

    @classmethod
    def parse(cls, data: bytes) -> Checkpoint:
        """Parse exactly what :meth:`encode` produces; raise FormatError on anything else.

        Refused: non-UTF-8, not exactly three newline-terminated lines, an empty or
        non-printable origin, a size that is not canonical decimal below ``2**64``, a root
        that is not canonical padded base64 of 32 bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FormatError("checkpoint must be bytes")
        raw = bytes(data)
        lines = raw.split(b"\n")
        if len(lines) != _CHECKPOINT_LINES + 1 or lines[-1] != b"":
            raise FormatError("checkpoint must be exactly three newline-terminated lines")
        origin_line, size_line, root_line = lines[:_CHECKPOINT_LINES]
        try:
            origin = origin_line.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("checkpoint origin is not UTF-8") from None
        if not _valid_origin(origin):
            raise FormatError("checkpoint origin must be a non-empty printable line")
        if not _DECIMAL.fullmatch(size_line) or int(size_line) > MAX_TREE_SIZE:
            raise FormatError("checkpoint size is not a canonical decimal below 2**64")
        try:
            root = base64.b64decode(root_line, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError("checkpoint root is not base64") from None
        if len(root) != HASH_SIZE or base64.b64encode(root) != root_line:
            raise FormatError(f"checkpoint root is not canonical base64 of {HASH_SIZE} bytes")
        return cls(origin, int(size_line), root)


# --------------------------------------------------------------------------------------------
# The ``state`` record (pure codec)
# --------------------------------------------------------------------------------------------

STATE_MAGIC: Final = b"LMKS"
STATE_VERSION: Final = 1
_STATE_HEADER = struct.Struct(">4sHHQ")  # magic, version, frontier count, size
_MAX_LEVELS: Final = 64


@dataclass(frozen=True)
class _State:
    """What the last completed :meth:`MerkleLog.sync` made durable: size, root and frontier."""

    size: int
    root: bytes
    frontier: tuple[bytes, ...]

    def encode(self) -> bytes:
        body = b"".join(
            (
                _STATE_HEADER.pack(STATE_MAGIC, STATE_VERSION, len(self.frontier), self.size),
                self.root,
                *self.frontier,
            )
        )
        return body + _sha256(body).digest()

    @classmethod
    def decode(cls, data: bytes) -> _State | None:
        """The state in ``data``, or None unless every length, the digest and the root check."""
        if len(data) < _STATE_HEADER.size + 2 * HASH_SIZE:
            return None
        magic, version, count, size = _STATE_HEADER.unpack_from(data)
        if magic != STATE_MAGIC or version != STATE_VERSION or count != size.bit_count():
            return None
        if len(data) != _STATE_HEADER.size + (count + 2) * HASH_SIZE:
            return None
        body, digest = data[:-HASH_SIZE], data[-HASH_SIZE:]
        if not hmac.compare_digest(_sha256(body).digest(), digest):
            return None
        hashes = [body[i : i + HASH_SIZE] for i in range(_STATE_HEADER.size, len(body), HASH_SIZE)]
        root, frontier = hashes[0], tuple(hashes[1:])
        if root != (_fold(frontier) if frontier else EMPTY_ROOT):
            return None
        return cls(size, root, frontier)


# --------------------------------------------------------------------------------------------
# Files (the only I/O in this module)
# --------------------------------------------------------------------------------------------

LEAVES_FILE: Final = "leaves.bin"
STATE_FILE: Final = "state"
_STATE_TMP: Final = "state.tmp"
_LEVEL_FILE = re.compile(r"level-([1-9][0-9]?)\.bin")
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_OPEN_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_RECOVERY_CHUNK: Final = 4096
"""Nodes hashed per batch while recovery rebuilds or checks a level (128 KiB of reads)."""


def _level_file(level: int) -> str:
    return LEAVES_FILE if level == 0 else f"level-{level}.bin"


class _LevelFiles:
    """The files of one on-disk log: level 0 is ``leaves.bin``, level k is ``level-<k>.bin``.

    Node ``j`` of level ``k`` sits at byte ``32 * j``. Files are only appended to, except that
    recovery truncates them. Knows nothing about trees; :class:`MerkleLog` decides what to write.
    Descriptors are a cache: :meth:`release` closes them all and the next use reopens what it
    needs, so a host with many sessions holds files open only for the ones in use.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(self.path, mode=_DIR_MODE, exist_ok=True)
        self._dir_fd = -1
        self._fds: list[int] = []  # per level; -1 while released
        self.counts: list[int] = []
        """Whole nodes in each level file, as far as this object has written or truncated."""
        try:
            levels = [0]
            for name in os.listdir(self.path):
                match = _LEVEL_FILE.fullmatch(name)
                if match:
                    levels.append(int(match.group(1)))
            for level in range(max(levels) + 1):
                self._open_level(level)
        except BaseException:
            self.close()
            raise

    def _dir(self) -> int:
        if self._dir_fd < 0:
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._dir_fd

    def _open_level(self, level: int) -> None:
        while len(self._fds) <= level:
            k = len(self._fds)
            fd = os.open(_level_file(k), _OPEN_FLAGS, _FILE_MODE, dir_fd=self._dir())
            self._fds.append(fd)
            self.counts.append(os.fstat(fd).st_size // HASH_SIZE)

    def _fd(self, level: int) -> int:
        fd = self._fds[level]
        if fd < 0:
            fd = os.open(_level_file(level), _OPEN_FLAGS, _FILE_MODE, dir_fd=self._dir())
            self._fds[level] = fd
        return fd

    def levels(self) -> int:
        return len(self._fds)

    def raw_size(self, level: int) -> int:
        return os.fstat(self._fd(level)).st_size

    def read(self, level: int, index: int) -> bytes:
        data = os.pread(self._fd(level), HASH_SIZE, index * HASH_SIZE)
        if len(data) != HASH_SIZE:
            raise StorageError(f"{_level_file(level)} is shorter than node {index}")
        return data

    def read_range(self, level: int, start: int, stop: int) -> bytes:
        want = (stop - start) * HASH_SIZE
        data = os.pread(self._fd(level), want, start * HASH_SIZE)
        if len(data) != want:
            raise StorageError(f"{_level_file(level)} is shorter than node {stop - 1}")
        return data

    def append(self, level: int, data: Buffer) -> None:
        """Append whole nodes with ``os.write`` (page cache only: durable after ``datasync``)."""
        self._open_level(level)
        fd = self._fd(level)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self.counts[level] += len(data) // HASH_SIZE

    def truncate(self, level: int, count: int) -> None:
        """Cut level ``level`` to ``count`` whole nodes (also drops a torn partial node)."""
        if self.raw_size(level) != count * HASH_SIZE:
            os.ftruncate(self._fd(level), count * HASH_SIZE)
        self.counts[level] = count

    def datasync(self, levels: Iterable[int]) -> None:
        for level in levels:
            os.fdatasync(self._fd(level))

    def read_state(self) -> bytes | None:
        try:
            fd = os.open(STATE_FILE, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir())
        except FileNotFoundError:
            return None
        try:
            limit = _STATE_HEADER.size + (_MAX_LEVELS + 3) * HASH_SIZE
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def replace_state(self, data: bytes) -> None:
        """Atomically replace ``state``: write a temp file, fsync it, rename, fsync the folder.

        The folder fsync also makes durable the entries of level files created since.
        """
        dir_fd = self._dir()
        fd = os.open(
            _STATE_TMP,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            _FILE_MODE,
            dir_fd=dir_fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(_STATE_TMP, STATE_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)

    def open_count(self) -> int:
        """Descriptors open now (the level files in use and the folder)."""
        return sum(1 for fd in self._fds if fd >= 0) + (self._dir_fd >= 0)

    def release(self) -> None:
        """Close every descriptor; the next use reopens what it needs.

        Only after a successful ``datasync``: a write-back error is reported to descriptors
        open when it happened, so one reopened later would not see it.
        """
        for level, fd in enumerate(self._fds):
            if fd >= 0:
                os.close(fd)
                self._fds[level] = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def close(self) -> None:
        self.release()
        self._fds = []


# --------------------------------------------------------------------------------------------
# The log
# --------------------------------------------------------------------------------------------

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
        self._bufs: list[bytearray] = [bytearray() for _ in range(_MAX_LEVELS)]
        """Nodes of each level not yet written to a file (in memory: all of them)."""
        self._written: list[int] = [0] * _MAX_LEVELS
        """Nodes of each level already in its file (in memory: always 0)."""
        self._files: _LevelFiles | None = None
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
        files = _LevelFiles(path)
        log._files = files
        try:
            log._recover(files)
        except BaseException:
            files.close()
            raise
        return log

    def _recover(self, files: _LevelFiles) -> None:
        leaves = files.raw_size(0) // HASH_SIZE
        raw = files.read_state()
        state = _State.decode(raw) if raw is not None else None
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
        self._written = files.counts + [0] * (_MAX_LEVELS - files.levels())
        self._stack = [files.read(k, (size >> k) - 1) for k in _decomposition_levels(size)]
        if not fast:
            files.datasync(range(files.levels()))
            files.replace_state(self._state().encode())
        self._synced_size = size

    @staticmethod
    def _edge_agrees(files: _LevelFiles, state: _State) -> bool:
        """Cheap check of a trusted state: the frontier and each level's last node."""
        size = state.size
        levels = _decomposition_levels(size)
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

    def _state(self) -> _State:
        return _State(self._size, self.root(), tuple(self._stack))

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
        return [node(k, (size >> k) - 1) for k in _decomposition_levels(size)]

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
        return _fold(self._edge(size))

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


def _levels_complete(files: _LevelFiles, size: int) -> bool:
    """Whether every level file holds at least the nodes ``size`` leaves justify.

    A sync leaves them so; a file that is shorter was cut (and maybe regrown with garbage), so
    none of its nodes is trusted without a check.
    """
    levels = files.levels()
    return all(
        level < levels and files.raw_size(level) >= (size >> level) * HASH_SIZE
        for level in range(size.bit_length())
    )


def _cut_files(files: _LevelFiles, size: int) -> None:
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


def _rebuild_levels(files: _LevelFiles, size: int) -> None:
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


def _rebuild_level(files: _LevelFiles, level: int, need: int) -> None:
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


def _cut_at_state_disagreement(files: _LevelFiles, size: int, state: _State) -> int:
    """Cut the log before the first subtree of ``state``'s frontier that the files contradict.

    A state whose digest checks records what a completed sync made durable (and what may have
    been anchored): leaves that disagree with it are damaged, never a new truth. Subtrees the
    files do not fully cover cannot be compared and are left alone.
    """
    start = 0
    for level, node in zip(_decomposition_levels(state.size), state.frontier, strict=True):
        end = start + (1 << level)
        if end > size:
            break
        if files.read(level, start >> level) != node:
            _cut_files(files, start)
            return start
        start = end
    return size
