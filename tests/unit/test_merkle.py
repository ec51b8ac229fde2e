"""Tests of lucidd.merkle: hashing, verification, proofs and the in-memory log.

Known answers come from /work/shared/vectors/rfc9162_merkle_vectors.json (transparency-dev/merkle
values and independently computed ones). Properties are checked against the literal RFC 9162
recursions written below (MTH §2.1.1, PATH §2.1.3.1, SUBPROOF §2.1.4.1), which share no code
with the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.errors import BadRequestError, FormatError
from lucidd.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Checkpoint,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS_PATH = Path("/work/shared/vectors/rfc9162_merkle_vectors.json")
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
EXHAUSTIVE_MAX = 2000
SMALL_MAX = 130
SAMPLED_SIZES = (255, 256, 257, 1000, 1023, 1024, 1025, 1999, 2000)
SETTINGS = settings(deadline=None, max_examples=150)


def _h(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str)


def _random_leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(HASH_SIZE) for _ in range(n)]


# ------------------------------------------------------------------------------------------
# The RFC 9162 reference, over ranges of one fixed leaf list (memoised MTH keeps it fast)
# ------------------------------------------------------------------------------------------


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH, PATH and PROOF of RFC 9162 §2.1, written as literally as the text reads."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = tuple(leaves)
        self.mth: Callable[[int, int], bytes] = cache(self._mth)

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return self.leaves[lo]
        k = _split(n)
        return hashlib.sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi)).digest()

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi])."""
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        """SUBPROOF(m, D[lo:hi], b)."""
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[0:n]) for 0 < m <= n."""
        return self.subproof(m, 0, n, True)


def path_shape(m: int, n: int) -> list[str]:
    """Which side each PATH(m, D[0:n]) element is on; equal shapes verify identically."""
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*path_shape(m, k), "R"]
    return [*path_shape(m - k, n - k), "L"]


def subproof_shape(m: int, n: int, b: bool) -> list[str]:
    """The shape of SUBPROOF(m, D[0:n], b), tagging the element that covers the old tree."""
    if m == n:
        return [] if b else ["old"]
    k = _split(n)
    if m <= k:
        return [*subproof_shape(m, k, b), "R"]
    return [*subproof_shape(m - k, n - k, False), "L"]


def _proof_mutations(proof: list[bytes]) -> list[list[bytes]]:
    """Every single-bit flip (one per node), every dropped node, and an added node each end."""
    out: list[list[bytes]] = []
    for i, node in enumerate(proof):
        bit = (i * 37) % (HASH_SIZE * 8)
        flipped = bytearray(node)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
        out.append(proof[:i] + proof[i + 1 :])
    extra = hashlib.sha256(b"extra").digest()
    out.extend(([extra, *proof], [*proof, extra]))
    if proof:
        out.append([*proof, proof[-1]])
    return out


# ------------------------------------------------------------------------------------------
# Known answers
# ------------------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_of([]) == EMPTY_ROOT
    assert MerkleLog().root() == EMPTY_ROOT


def test_one_leaf_root_is_the_leaf_hash() -> None:
    leaf = leaf_hash(b"L123456")
    assert root_of([leaf]) == leaf
    log = MerkleLog()
    log.append(leaf)
    assert log.root() == leaf
    assert log.inclusion_proof(0) == []
    assert verify_inclusion(leaf, 0, 1, [], leaf)


@pytest.mark.parametrize("vector", VECTORS["hasher_vectors"], ids=lambda v: v["kind"])
def test_hasher_vectors(vector: dict[str, Any]) -> None:
    expected = _h(vector["expected_hex"])
    if vector["kind"] == "empty_tree":
        assert expected == EMPTY_ROOT
    elif vector["kind"] == "leaf":
        data = _h(vector["input_hex"])
        assert leaf_hash(data) == expected
        assert leaf_hash(bytearray(data)) == expected
        assert leaf_hash(memoryview(data)) == expected
    else:
        assert node_hash(_h(vector["left_hex"]), _h(vector["right_hex"])) == expected


TREE_A = VECTORS["tree_A"]
TREE_A_LEAVES = [_h(x) for x in TREE_A["leaf_hashes_hex"]]


def test_tree_a_leaf_hashes_come_from_leaf_inputs() -> None:
    assert [leaf_hash(_h(x)) for x in TREE_A["leaves_hex"]] == TREE_A_LEAVES


@pytest.mark.parametrize("entry", TREE_A["roots"], ids=lambda e: f"size{e['size']}")
def test_tree_a_roots(entry: dict[str, Any]) -> None:
    size = entry["size"]
    log = MerkleLog()
    log.extend(TREE_A_LEAVES)
    assert root_of(TREE_A_LEAVES[:size]).hex() == entry["root_hex"]
    assert log.root(size).hex() == entry["root_hex"]


def test_tree_a_perfect_nodes() -> None:
    for level, nodes in enumerate(TREE_A["perfect_node_hashes_by_level"]):
        width = 1 << level
        for j, hex_node in enumerate(nodes):
            assert root_of(TREE_A_LEAVES[j * width : (j + 1) * width]).hex() == hex_node


def _check_table(leaves: list[bytes], inclusion: list[Any], consistency: list[Any]) -> None:
    log = MerkleLog()
    log.extend(leaves)
    for p in inclusion:
        index, size = p["leaf_index"], p["tree_size"]
        proof = log.inclusion_proof(index, size)
        assert [x.hex() for x in proof] == p["path_hex"], p
        assert verify_inclusion(leaves[index], index, size, proof, log.root(size))
    for p in consistency:
        size1, size2 = p["size1"], p["size2"]
        proof = log.consistency_proof(size1, size2)
        assert [x.hex() for x in proof] == p["path_hex"], p
        if size1 > 0:
            assert verify_consistency(size1, size2, proof, log.root(size1), log.root(size2))


def test_tree_a_inclusion_and_consistency_tables() -> None:
    _check_table(TREE_A_LEAVES, TREE_A["inclusion_proofs"], TREE_A["consistency_proofs"])


TREE_B = VECTORS["tree_B"]
TREE_B_LEAVES = [leaf_hash(bytes([i])) for i in range(TREE_B["num_leaves"])]


def test_tree_b_roots_and_proofs() -> None:
    log = MerkleLog()
    log.extend(TREE_B_LEAVES)
    for entry in TREE_B["roots"]:
        assert log.root(entry["size"]).hex() == entry["root_hex"]
    _check_table(TREE_B_LEAVES, TREE_B["inclusion_proofs"], TREE_B["consistency_proofs"])


def _subtree_valid(start: int, end: int) -> bool:
    n = end - start
    return start in (0, end) or start % (1 << (n - 1).bit_length()) == 0


def test_tree_b_published_subtree_aggregates() -> None:
    """transparency-dev's rolling digests over every subtree hash and inclusion path, n<=130."""
    aggregates = TREE_B["published_aggregates"]
    hashes = hashlib.sha256()
    paths = hashlib.sha256()
    for end in range(TREE_B["num_leaves"] + 1):
        for start in range(end + 1):
            if not _subtree_valid(start, end):
                continue
            log = MerkleLog()
            log.extend(TREE_B_LEAVES[start:end])
            hashes.update(f"[{start}, {end}) {log.root().hex()}\n".encode())
            for index in range(start, end):
                path = "".join(" " + p.hex() for p in log.inclusion_proof(index - start))
                paths.update(f"{index} [{start}, {end}){path}\n".encode())
    assert hashes.hexdigest() == aggregates["subtree_hash"]["sha256"]
    assert paths.hexdigest() == aggregates["subtree_inclusion"]["sha256"]


def test_tree_c_large_roots_and_proofs() -> None:
    """Roots and proofs up to 65 537 leaves (the 1M ones are checked by the benchmark)."""
    tree = VECTORS["tree_C_large"]
    top = 65537
    leaves = [leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest()) for i in range(top)]
    assert [x.hex() for x in leaves[:4]] == tree["first_leaf_hashes_hex"]
    log = MerkleLog()
    log.extend(leaves)
    small = [e for e in tree["roots"] if e["size"] <= top]
    assert len(small) == 7
    for entry in small:
        assert log.root(entry["size"]).hex() == entry["root_hex"]
    incl = [p for p in tree["inclusion_proofs"] if p["tree_size"] <= top]
    cons = [p for p in tree["consistency_proofs"] if p["size2"] <= top]
    assert len(incl) == 2 and len(cons) == 2
    _check_table(leaves, incl, cons)


# ------------------------------------------------------------------------------------------
# Verification probes of transparency-dev/merkle testdata
# ------------------------------------------------------------------------------------------

PROBES = VECTORS["verification_probes"]


def _lengths_ok(*hex_hashes: str) -> bool:
    return all(len(x) == 2 * HASH_SIZE for x in hex_hashes)


def _expected(probe: dict[str, Any], *hex_hashes: str) -> bool:
    """The probe's answer, except that lucidd also refuses every hash that is not 32 bytes.

    Upstream accepts equal-size consistency between two equal roots of any length; lucidd
    refuses malformed roots everywhere (a SHA-256 root is 32 bytes). Exactly one probe differs.
    """
    return bool(probe["expect_valid"]) and _lengths_ok(*hex_hashes)


def test_inclusion_probes() -> None:
    probes = PROBES["inclusion"]
    assert len(probes) == 98
    for p in probes:
        proof = [_h(x) for x in p["path_hex"]]
        got = verify_inclusion(
            _h(p["leaf_hash_hex"]), p["leaf_index"], p["tree_size"], proof, _h(p["root_hex"])
        )
        assert got is _expected(p, p["leaf_hash_hex"], p["root_hex"], *p["path_hex"]), p
    assert sum(p["expect_valid"] for p in probes) == 6


def test_consistency_probes() -> None:
    probes = PROBES["consistency"]
    assert len(probes) == 98
    differing = 0
    for p in probes:
        proof = [_h(x) for x in p["path_hex"]]
        got = verify_consistency(
            p["size1"], p["size2"], proof, _h(p["root1_hex"]), _h(p["root2_hex"])
        )
        expected = _expected(p, p["root1_hex"], p["root2_hex"], *p["path_hex"])
        differing += expected != p["expect_valid"]
        assert got is expected, p
    assert differing == 1


def test_equal_sizes_need_equal_roots_and_an_empty_proof() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    assert verify_consistency(1, 1, [], a, a)
    assert not verify_consistency(1, 1, [], a, b)
    assert not verify_consistency(1, 1, [a], a, a)
    assert not verify_consistency(0, 1, [], EMPTY_ROOT, a)


# ------------------------------------------------------------------------------------------
# Properties against the reference
# ------------------------------------------------------------------------------------------

LEAVES_2000 = _random_leaves(EXHAUSTIVE_MAX, seed=2000)
REF_2000 = Reference(LEAVES_2000)


@pytest.fixture(scope="module")
def log_2000() -> MerkleLog:
    log = MerkleLog()
    log.extend(LEAVES_2000)
    return log


def test_every_root_up_to_2000_matches_reference() -> None:
    log = MerkleLog()
    for n, leaf in enumerate(LEAVES_2000, start=1):
        assert log.append(leaf) == n - 1
        assert log.root() == REF_2000.mth(0, n), n
    assert log.size == EXHAUSTIVE_MAX
    for n in range(EXHAUSTIVE_MAX + 1):
        assert log.root(n) == REF_2000.mth(0, n), n
    for n in (0, 1, 2, 3, 5, 64, 127, 1000, 2000):
        assert root_of(LEAVES_2000[:n]) == REF_2000.mth(0, n)


def test_extend_matches_append_and_returns_first_index() -> None:
    one, batched = MerkleLog(), MerkleLog()
    for leaf in LEAVES_2000[:777]:
        one.append(leaf)
    assert batched.extend(LEAVES_2000[:500]) == 0
    assert batched.extend(iter(LEAVES_2000[500:777])) == 500
    assert batched.extend([]) == 777
    assert one.root() == batched.root() == REF_2000.mth(0, 777)
    assert [batched.leaf(i) for i in (0, 499, 500, 776)] == [
        LEAVES_2000[i] for i in (0, 499, 500, 776)
    ]


def _inclusion_sizes() -> list[int]:
    return [*range(1, SMALL_MAX + 1), *SAMPLED_SIZES]


def test_inclusion_proofs_equal_reference_and_verify(log_2000: MerkleLog) -> None:
    for size in _inclusion_sizes():
        root = REF_2000.mth(0, size)
        for index in range(size):
            proof = log_2000.inclusion_proof(index, size)
            assert proof == REF_2000.path(index, 0, size), (index, size)
            assert verify_inclusion(LEAVES_2000[index], index, size, proof, root)


def test_consistency_proofs_equal_reference_and_verify(log_2000: MerkleLog) -> None:
    rng = random.Random(7)
    pairs = [(m, n) for n in range(1, SMALL_MAX + 1) for m in range(1, n + 1)]
    pairs += [(rng.randint(1, n), n) for n in SAMPLED_SIZES for _ in range(60)]
    pairs += [(n, EXHAUSTIVE_MAX) for n in SAMPLED_SIZES]
    for m, n in pairs:
        proof = log_2000.consistency_proof(m, n)
        assert proof == REF_2000.proof(m, n), (m, n)
        assert verify_consistency(m, n, proof, REF_2000.mth(0, m), REF_2000.mth(0, n))
    assert log_2000.consistency_proof(0, 10) == []
    assert log_2000.consistency_proof(0) == []


def test_corrupted_inclusion_proofs_fail(log_2000: MerkleLog) -> None:
    rng = random.Random(11)
    cases = [(i, n) for n in range(1, 40) for i in range(n)]
    cases += [(rng.randrange(n), n) for n in SAMPLED_SIZES for _ in range(10)]
    checked_wrong_sizes = 0
    for index, size in cases:
        leaf, root = LEAVES_2000[index], REF_2000.mth(0, size)
        proof = log_2000.inclusion_proof(index, size)
        for bad in _proof_mutations(proof):
            assert not verify_inclusion(leaf, index, size, bad, root), (index, size, bad)
        for other in {index - 1, index + 1, index ^ 2, size}:
            if other != index:
                assert not verify_inclusion(leaf, other, size, proof, root)
        for other in {size - 1, size + 1, size * 2, size // 2}:
            if other != size:
                # The same proof proves the same root at a size of the same shape: that is why
                # the size is anchored with the root (Checkpoint).
                same = index < other and path_shape(index, other) == path_shape(index, size)
                checked_wrong_sizes += not same
                assert verify_inclusion(leaf, index, other, proof, root) is same, (index, other)
        assert not verify_inclusion(LEAVES_2000[(index + 1) % 2000], index, size, proof, root)
        assert not verify_inclusion(leaf, index, size, proof, hashlib.sha256(root).digest())
    assert checked_wrong_sizes > len(cases)


def test_corrupted_consistency_proofs_fail(log_2000: MerkleLog) -> None:
    rng = random.Random(13)
    cases = [(m, n) for n in range(2, 40) for m in range(1, n)]
    cases += [(rng.randint(1, n - 1), n) for n in SAMPLED_SIZES for _ in range(10)]
    for m, n in cases:
        root1, root2 = REF_2000.mth(0, m), REF_2000.mth(0, n)
        proof = log_2000.consistency_proof(m, n)
        for bad in _proof_mutations(proof):
            assert not verify_consistency(m, n, bad, root1, root2), (m, n, bad)
        for m2, n2 in {(m - 1, n), (m + 1, n), (m, n + 1), (m, n - 1), (m, 2 * n), (m // 2, n)}:
            if (m2, n2) == (m, n) or not 0 < m2 < n2:
                continue
            same = subproof_shape(m2, n2, True) == subproof_shape(m, n, True)
            assert verify_consistency(m2, n2, proof, root1, root2) is same, (m, n, m2, n2)
        assert not verify_consistency(m, n, proof, root2, root1)
        assert not verify_consistency(m, n, proof, root1, REF_2000.mth(0, n - 1))


@SETTINGS
@given(
    n=st.integers(min_value=1, max_value=EXHAUSTIVE_MAX),
    data=st.data(),
)
def test_random_proofs_at_past_sizes(log_2000: MerkleLog, n: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    m = data.draw(st.integers(min_value=1, max_value=n))
    proof = log_2000.inclusion_proof(index, n)
    assert proof == REF_2000.path(index, 0, n)
    assert verify_inclusion(LEAVES_2000[index], index, n, proof, log_2000.root(n))
    cproof = log_2000.consistency_proof(m, n)
    assert cproof == REF_2000.proof(m, n)
    assert verify_consistency(m, n, cproof, log_2000.root(m), log_2000.root(n))


# ------------------------------------------------------------------------------------------
# Verifiers never raise
# ------------------------------------------------------------------------------------------

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=40),
    st.text(max_size=5),
    st.floats(allow_nan=True),
)
_ANY_PROOF = st.one_of(
    _ANY,
    st.lists(st.one_of(st.binary(min_size=32, max_size=32), _ANY), max_size=70),
    st.tuples(st.binary(min_size=32, max_size=32)),
)


@SETTINGS
@given(leaf=_ANY, index=_ANY, size=_ANY, proof=_ANY_PROOF, root=_ANY)
def test_verify_inclusion_never_raises(
    leaf: Any, index: Any, size: Any, proof: Any, root: Any
) -> None:
    assert verify_inclusion(leaf, index, size, proof, root) in (True, False)


@SETTINGS
@given(
    size1=st.integers(min_value=-5, max_value=2**65),
    size2=st.integers(min_value=-5, max_value=2**65),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=70),
    root1=st.binary(min_size=32, max_size=32),
    root2=st.binary(min_size=32, max_size=32),
)
def test_verify_random_well_typed_garbage_is_false(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    assert not verify_consistency(size1, size2, proof, root1, root2) or (
        size1 == size2 and root1 == root2 and not proof
    )
    assert not verify_inclusion(root1, size1, size2, proof, root2)


@SETTINGS
@given(size1=_ANY, size2=_ANY, proof=_ANY_PROOF, root1=_ANY, root2=_ANY)
def test_verify_consistency_never_raises(
    size1: Any, size2: Any, proof: Any, root1: Any, root2: Any
) -> None:
    assert verify_consistency(size1, size2, proof, root1, root2) in (True, False)


def test_verifiers_refuse_wrong_types_of_valid_values(log_2000: MerkleLog) -> None:
    leaf, root = LEAVES_2000[3], REF_2000.mth(0, 10)
    proof = log_2000.inclusion_proof(3, 10)
    assert verify_inclusion(leaf, 3, 10, proof, root)
    assert verify_inclusion(leaf, 3, 10, tuple(proof), root)
    assert not verify_inclusion(bytearray(leaf), 3, 10, proof, root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3.0, 10, proof, root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3, 10, iter(proof), root)  # type: ignore[arg-type]
    assert not verify_inclusion(leaf, 3, 10, [*proof[:-1], proof[-1].hex()], root)  # type: ignore[list-item]
    assert not verify_inclusion(leaf, 3, 10, [*proof[:-1], proof[-1] + b"\0"], root)
    assert not verify_inclusion(leaf, True, 10, proof, root)
    cproof = log_2000.consistency_proof(4, 10)
    assert verify_consistency(4, 10, cproof, REF_2000.mth(0, 4), root)
    assert not verify_consistency(4, 10, cproof, REF_2000.mth(0, 4), root.hex())  # type: ignore[arg-type]
    assert not verify_consistency(-4, 10, cproof, REF_2000.mth(0, 4), root)


# ------------------------------------------------------------------------------------------
# Argument checking of the log
# ------------------------------------------------------------------------------------------


def test_log_rejects_bad_requests_with_bad_request_error(log_2000: MerkleLog) -> None:
    bad_calls: list[Callable[[], object]] = [
        lambda: log_2000.root(2001),
        lambda: log_2000.root(-1),
        lambda: log_2000.inclusion_proof(2000),
        lambda: log_2000.inclusion_proof(5, 5),
        lambda: log_2000.inclusion_proof(-1),
        lambda: log_2000.inclusion_proof(0, 2001),
        lambda: log_2000.consistency_proof(6, 5),
        lambda: log_2000.consistency_proof(1, 2001),
        lambda: log_2000.consistency_proof(-1),
        lambda: log_2000.leaf(2000),
        lambda: log_2000.root("3"),  # type: ignore[arg-type]
    ]
    for call in bad_calls:
        with pytest.raises(BadRequestError):
            call()
    with pytest.raises(BadRequestError, match="out of range"):
        log_2000.inclusion_proof(2000)
    with pytest.raises(BadRequestError, match="beyond the log"):
        log_2000.root(2001)


def test_append_rejects_malformed_leaves_and_extend_is_all_or_nothing() -> None:
    log = MerkleLog()
    with pytest.raises(ValueError):
        log.append(b"short")
    with pytest.raises(TypeError):
        log.append(bytearray(32))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        log.extend([LEAVES_2000[0], b"x" * 33])
    assert log.size == 0
    assert log.root() == EMPTY_ROOT


# ------------------------------------------------------------------------------------------
# Checkpoint
# ------------------------------------------------------------------------------------------

ORIGIN = "lucidd/0b1e6f2c-8a3d-4c55-9f0e-2d7b6a1c9e44"


def test_checkpoint_encodes_c2sp_text_and_round_trips() -> None:
    log = MerkleLog()
    log.extend(TREE_A_LEAVES[:7])
    checkpoint = log.checkpoint(ORIGIN)
    root = log.root()
    assert checkpoint == Checkpoint(ORIGIN, 7, root)
    expected = f"{ORIGIN}\n7\n{base64.b64encode(root).decode()}\n".encode()
    assert checkpoint.encode() == expected
    assert Checkpoint.parse(expected) == checkpoint
    assert MerkleLog().checkpoint(ORIGIN).encode() == (
        f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n".encode()
    )


MALFORMED_CHECKPOINTS = [
    b"",
    b"o\n1\n",
    b"o\n1\nAAAA\n",
    b"\n1\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n01\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n-1\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n+1\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n18446744073709551616\n" + base64.b64encode(bytes(32)) + b"\n",
    b"o\n1\n" + base64.b64encode(bytes(32)),
    b"o\n1\n" + base64.b64encode(bytes(32)) + b"\n\n",
    b"o\n1\n" + base64.b64encode(bytes(32)) + b"\next\n",
    b"o\n1\n" + base64.b64encode(bytes(31)) + b"\n",
    b"o\n1\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n",
    b"o\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n",
    b"o\r\n1\n" + base64.b64encode(bytes(32)) + b"\n",
    b"\xff\n1\n" + base64.b64encode(bytes(32)) + b"\n",
    b" o\n1\n" + base64.b64encode(bytes(32)) + b"\n",
]


@pytest.mark.parametrize("data", MALFORMED_CHECKPOINTS)
def test_checkpoint_parse_rejects_malformed_text(data: bytes) -> None:
    with pytest.raises(FormatError):
        Checkpoint.parse(data)


@SETTINGS
@given(data=st.binary(max_size=120))
def test_checkpoint_parse_raises_only_format_error(data: bytes) -> None:
    try:
        checkpoint = Checkpoint.parse(data)
    except FormatError:
        return
    assert checkpoint.encode() == data


def test_checkpoint_constructor_rejects_caller_bugs() -> None:
    for args in [("", 1, bytes(32)), ("a\nb", 1, bytes(32)), ("o", -1, bytes(32)), ("o", 1, b"")]:
        with pytest.raises(ValueError):
            Checkpoint(*args)
