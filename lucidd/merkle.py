"""RFC 9162 Merkle trees: hashing, proofs, verification, checkpoints (layer 1, DESIGN §5).

The vocabulary is RFC 9162 §2.1 (and transparency-dev/merkle's): a *leaf hash* is
``SHA-256(0x00 || record)``, an interior *node* is ``SHA-256(0x01 || left || right)``, the tree
of ``n`` leaves splits at the largest power of two strictly below ``n``, and the empty tree hashes
to ``SHA-256("")``. Indices are 0-based; a *size* is a number of leaves.

Everything here is pure (no I/O), so a verifier (``lucidctl verify``) needs only this module:

- :func:`leaf_hash`, :func:`node_hash`, :func:`root_of` (the simple recursive reference);
- :func:`verify_inclusion`, :func:`verify_consistency` (they never raise);
- the proof shapes, :func:`inclusion_path` and :func:`consistency_path`, built from stored
  perfect-subtree hashes through a :data:`NodeReader`, and the compact-range helpers
  :func:`decomposition_levels` and :func:`fold_subtrees`;
- :class:`Checkpoint`, the C2SP ``tlog-checkpoint`` text that gets anchored.

The append-only log of a session, in memory or on a folder, is
:class:`lucidd.daemon.aggregator.merkle_log.MerkleLog`; it builds its proofs with the shapes here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from lucidd.errors import FormatError

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


def decomposition_levels(size: int) -> list[int]:
    """Levels of the perfect subtrees covering ``[0, size)``, largest (leftmost) first.

    They are the set bits of ``size``; the subtree at level ``k`` has index
    ``(size >> k) - 1``.
    """
    return [k for k in range(size.bit_length() - 1, -1, -1) if size >> k & 1]


def fold_subtrees(nodes: Sequence[bytes]) -> bytes:
    """The hash of a run of adjacent perfect subtrees, largest first: fold right to left."""
    h = nodes[-1]
    for i in range(len(nodes) - 2, -1, -1):
        h = _sha256(NODE_PREFIX + nodes[i] + h).digest()
    return h


def _subtree_path(
    index: int, level: int, size: int, read: NodeReader, edge: Sequence[bytes]
) -> list[bytes]:
    """The RFC 9162 audit path of the perfect node ``(level, index)`` in the tree of ``size``.

    ``edge`` is the decomposition of ``size`` (:func:`decomposition_levels` order). The path is:
    the siblings inside the *fork* (the decomposition subtree that contains the node), then one
    hash for the ragged part to its right (if any), then the decomposition subtrees to its left,
    nearest first. This is transparency-dev/merkle's ``proof.nodes``; it equals RFC 9162 PATH.
    """
    inner = (index ^ (size >> level)).bit_length() - 1
    fork = level + inner
    proof = [read(level + h, (index >> h) ^ 1) for h in range(inner)]
    levels = decomposition_levels(size)
    split = levels.index(fork)
    if split + 1 < len(levels):
        proof.append(fold_subtrees(edge[split + 1 :]))
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
