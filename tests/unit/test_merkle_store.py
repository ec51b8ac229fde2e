"""Tests of the on-disk MerkleLog: equality with the in-memory log, reopen, crash recovery.

Recovery is checked against the contract of ``MerkleLog.open``: whatever single file was cut at
a random offset or got random garbage appended, the log reopens at a prefix of what was
written, its roots and proofs are those of that prefix, and it keeps working.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucidd import merkle
from lucidd.daemon.aggregator import merkle_log
from lucidd.daemon.aggregator.merkle_files import LEAVES_FILE, STATE_FILE
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.errors import BadRequestError, StorageError
from lucidd.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

SMALL_FLUSH = 5 * HASH_SIZE
"""A flush threshold that makes proofs read across file and buffer boundaries."""
SETTINGS = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(HASH_SIZE) for _ in range(n)]


def _file_sizes(path: Path) -> dict[str, int]:
    """Sizes of the data files; empty level files (left by a cut to a small size) are skipped."""
    sizes = {p.name: p.stat().st_size for p in path.iterdir() if p.name != STATE_FILE}
    return {name: size for name, size in sizes.items() if size or name == LEAVES_FILE}


def _expected_sizes(n: int) -> dict[str, int]:
    sizes = {LEAVES_FILE: n * HASH_SIZE}
    for level in range(1, n.bit_length()):
        sizes[f"level-{level}.bin"] = (n >> level) * HASH_SIZE
    return sizes


def _assert_same_log(log: MerkleLog, model: MerkleLog, sizes: list[int]) -> None:
    assert log.size == model.size
    for size in sizes:
        assert log.root(size) == model.root(size)
        for index in range(size):
            assert log.inclusion_proof(index, size) == model.inclusion_proof(index, size)
        for size1 in range(size + 1):
            assert log.consistency_proof(size1, size) == model.consistency_proof(size1, size)


@pytest.fixture
def small_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merkle_log, "FLUSH_BYTES", SMALL_FLUSH)


def test_fresh_folder_is_an_empty_log(tmp_path: Path) -> None:
    with MerkleLog.open(tmp_path / "new" / "merkle") as log:
        assert log.size == 0
        assert log.root() == EMPTY_ROOT
        log.sync()
    assert (tmp_path / "new" / "merkle" / STATE_FILE).exists()


@pytest.mark.usefixtures("small_flush")
def test_disk_log_equals_memory_log_and_survives_reopen(tmp_path: Path) -> None:
    leaves = _leaves(300, seed=1)
    rng = random.Random(2)
    model = MerkleLog()
    log = MerkleLog.open(tmp_path)
    i = 0
    while i < len(leaves):
        batch = leaves[i : i + rng.randint(1, 17)]
        if rng.random() < 0.5:
            assert log.extend(batch) == i
        else:
            assert [log.append(leaf) for leaf in batch] == list(range(i, i + len(batch)))
        model.extend(batch)
        i += len(batch)
        assert log.root() == model.root()
        if rng.random() < 0.2:
            log.sync()
    sizes = [1, 2, 3, 7, 8, 9, 100, 255, 256, 257, 300]
    _assert_same_log(log, model, sizes)
    assert [log.leaf(k) for k in range(300)] == leaves
    log.close()
    log.close()  # idempotent
    assert _file_sizes(tmp_path) == _expected_sizes(300)
    with MerkleLog.open(tmp_path) as reopened:
        _assert_same_log(reopened, model, sizes)
        assert reopened.checkpoint("lucidd/x") == model.checkpoint("lucidd/x")
        more = _leaves(50, seed=3)
        reopened.extend(more)
        model.extend(more)
        assert reopened.root() == model.root() == root_of(leaves + more)


@SETTINGS
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_reopen_after_each_sync_keeps_roots_and_proofs(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], seed: int
) -> None:
    path = tmp_path_factory.mktemp("log")
    all_leaves = _leaves(sum(sizes), seed)
    done = 0
    for chunk in sizes:
        with MerkleLog.open(path) as log:
            assert log.size == done
            assert log.root() == root_of(all_leaves[:done])
            log.extend(all_leaves[done : done + chunk])
            done += chunk
            log.sync()
            rng = random.Random(seed + done)
            if done:
                index, size = rng.randrange(done), rng.randint(1, done)
                if index < size:
                    proof = log.inclusion_proof(index, size)
                    root = root_of(all_leaves[:size])
                    assert verify_inclusion(all_leaves[index], index, size, proof, root)
                size1 = rng.randint(1, done)
                proof = log.consistency_proof(size1, done)
                roots = root_of(all_leaves[:size1]), root_of(all_leaves[:done])
                assert verify_consistency(size1, done, proof, *roots)
    assert _file_sizes(path) == _expected_sizes(done)


@pytest.mark.usefixtures("small_flush")
def test_crash_image_reopens_at_the_last_sync(tmp_path: Path) -> None:
    leaves = _leaves(200, seed=4)
    live, image = tmp_path / "live", tmp_path / "image"
    log = MerkleLog.open(live)
    log.extend(leaves[:123])
    log.sync()
    log.extend(leaves[123:190])  # written to the page cache (small flush), never synced
    assert (live / LEAVES_FILE).stat().st_size > 123 * HASH_SIZE
    shutil.copytree(live, image)  # what a crash would leave: data past the last sync
    log.close()
    with MerkleLog.open(image) as recovered:
        assert recovered.size == 123
        assert recovered.root() == root_of(leaves[:123])
        recovered.extend(leaves[123:])
        assert recovered.root() == root_of(leaves)
    assert _file_sizes(image) == _expected_sizes(200)


def test_stale_state_temp_file_is_ignored(tmp_path: Path) -> None:
    leaves = _leaves(20, seed=5)
    with MerkleLog.open(tmp_path) as log:
        log.extend(leaves)
    (tmp_path / "state.tmp").write_bytes(b"torn")
    with MerkleLog.open(tmp_path) as log:
        assert log.size == 20
        log.append(leaves[0])
        log.sync()
    assert not (tmp_path / "state.tmp").exists()


# ------------------------------------------------------------------------------------------
# Recovery from damaged files
# ------------------------------------------------------------------------------------------

ORIGINAL_SIZE = 157


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    path = tmp_path_factory.mktemp("original")
    leaves = _leaves(ORIGINAL_SIZE, seed=6)
    with MerkleLog.open(path) as log:
        log.extend(leaves[:100])
        log.sync()
        log.extend(leaves[100:])
    return path, leaves


def _damaged_copy(
    original: Path, workdir: Path, damage: list[tuple[str, int | None, bytes]]
) -> Path:
    """Copy ``original`` and, per file, cut it to an offset (None: keep) then append bytes."""
    copy = workdir / "copy"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(original, copy)
    for name, cut, garbage in damage:
        with open(copy / name, "r+b") as f:
            if cut is not None:
                f.truncate(cut)
            f.seek(0, os.SEEK_END)
            f.write(garbage)
    return copy


def _assert_consistent_prefix(path: Path, leaves: list[bytes]) -> int:
    """Open the damaged log; check it is a prefix of ``leaves`` that works; return its size."""
    with MerkleLog.open(path) as log:
        size = log.size
        assert size <= len(leaves)
        assert log.root(size) == root_of(leaves[:size])
        assert _file_sizes(path) == _expected_sizes(size)
        if size:
            rng = random.Random(size)
            for index in {0, size - 1, rng.randrange(size)}:
                assert log.leaf(index) == leaves[index]
                proof = log.inclusion_proof(index)
                assert verify_inclusion(leaves[index], index, size, proof, log.root())
            size1 = rng.randint(1, size)
            proof = log.consistency_proof(size1)
            assert verify_consistency(size1, size, proof, root_of(leaves[:size1]), log.root())
        log.extend(leaves[size:])
        assert log.root() == root_of(leaves)
    with MerkleLog.open(path) as log:
        assert log.size == len(leaves)
        assert log.root() == root_of(leaves)
    return size


_FILES = [LEAVES_FILE, STATE_FILE, *(f"level-{k}.bin" for k in range(1, 8))]


@SETTINGS
@given(
    name=st.sampled_from(_FILES),
    cut_fraction=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
    garbage=st.binary(max_size=100),
)
def test_recovery_from_one_cut_or_grown_file(
    original: tuple[Path, list[bytes]],
    tmp_path: Path,
    name: str,
    cut_fraction: float | None,
    garbage: bytes,
) -> None:
    path, leaves = original
    full = (path / name).stat().st_size
    cut = None if cut_fraction is None else int(full * cut_fraction)
    if name == LEAVES_FILE and cut is not None and cut < full:
        # Leaves cut below the synced state *and* regrown with garbage is a double fault that
        # open cannot tell from real leaves (docs/merkle.md, "Limits"): cut only.
        garbage = b""
    size = _assert_consistent_prefix(_damaged_copy(path, tmp_path, [(name, cut, garbage)]), leaves)
    if name != LEAVES_FILE:
        assert size == ORIGINAL_SIZE  # the leaves are intact: nothing may be lost
    elif cut is None or cut >= full:
        assert size == ORIGINAL_SIZE  # only garbage past the synced state was added
    else:
        assert size == cut // HASH_SIZE  # every whole leaf left is a synced one


@pytest.mark.parametrize(
    "damage",
    [
        [(LEAVES_FILE, 1000, b""), ("level-1.bin", 10, b"\x00" * 40)],
        [(STATE_FILE, 5, b""), ("level-2.bin", 0, b"")],
        [(STATE_FILE, None, b"x"), ("level-3.bin", None, os.urandom(64))],
        [(LEAVES_FILE, 33 * HASH_SIZE + 7, b""), (STATE_FILE, 0, b"")],
        [(f"level-{k}.bin", 0, b"") for k in range(1, 8)],
    ],
)
def test_recovery_from_several_damaged_files(
    original: tuple[Path, list[bytes]], tmp_path: Path, damage: list[tuple[str, int | None, bytes]]
) -> None:
    path, leaves = original
    size = _assert_consistent_prefix(_damaged_copy(path, tmp_path, damage), leaves)
    cut = next((c for n, c, _ in damage if n == LEAVES_FILE), None)
    assert size == (ORIGINAL_SIZE if cut is None else cut // HASH_SIZE)


def test_stored_node_that_disagrees_with_its_leaves_is_rewritten(
    original: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    """Without a usable state every stored node is checked; the leaves are the truth."""
    path, leaves = original
    copy = _damaged_copy(path, tmp_path, [(STATE_FILE, 0, b"")])
    with open(copy / "level-2.bin", "r+b") as f:  # node 10 of level 2 covers leaves 40..43
        f.seek(10 * HASH_SIZE)
        f.write(bytes(HASH_SIZE))
    assert _assert_consistent_prefix(copy, leaves) == ORIGINAL_SIZE


@pytest.mark.parametrize(
    ("damaged_leaf", "expected_size"),
    [(156, 156), (155, 152), (154, 152)],  # state frontier: [.., 144-152, 152-156, 156-157)
)
def test_leaves_that_contradict_the_synced_state_are_cut(
    original: tuple[Path, list[bytes]], tmp_path: Path, damaged_leaf: int, expected_size: int
) -> None:
    """A damaged leaf at the right edge is seen at open; the log is cut before its subtree."""
    path, leaves = original
    copy = _damaged_copy(path, tmp_path, [])
    with open(copy / LEAVES_FILE, "r+b") as f:
        f.seek(damaged_leaf * HASH_SIZE)
        f.write(bytes(HASH_SIZE))
    assert _assert_consistent_prefix(copy, leaves) == expected_size


# ------------------------------------------------------------------------------------------
# Failures and misuse
# ------------------------------------------------------------------------------------------


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * HASH_SIZE, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_failed_write_breaks_the_log_and_reopen_recovers(tmp_path: Path) -> None:
    leaves = _leaves(100, seed=8)
    with MerkleLog.open(tmp_path) as log:
        log.extend(leaves[:40])
    log = MerkleLog.open(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * HASH_SIZE, hard))  # EFBIG past 64 leaves
    try:
        log.extend(leaves[40:])
        with pytest.raises(StorageError):
            log.sync()
        with pytest.raises(StorageError, match="broken"):
            log.root()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    log.close()  # releases the files without syncing
    with MerkleLog.open(tmp_path) as log:
        assert log.size == 40
        assert log.root() == root_of(leaves[:40])


def test_closed_log_refuses_calls_and_requests_are_checked(tmp_path: Path) -> None:
    log = MerkleLog.open(tmp_path)
    log.extend(_leaves(5, seed=9))
    with pytest.raises(BadRequestError):
        log.inclusion_proof(5)
    with pytest.raises(BadRequestError):
        log.consistency_proof(2, 6)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append(bytes(HASH_SIZE))
    with MerkleLog.open(tmp_path) as log:
        assert log.size == 5  # close() synced


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_released_files_close_every_descriptor_and_reopen_on_use(tmp_path: Path) -> None:
    """A cache of open logs: release_files leaves no descriptor, and the log keeps working."""
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(1000)]
    before = _open_fds()
    log = MerkleLog.open(tmp_path / "log")
    for leaf in leaves[:600]:
        log.append(leaf)
    assert _open_fds() > before
    log.release_files()
    assert _open_fds() == before
    # Reads reopen what they need; appends and syncs keep working across releases.
    assert log.root() == root_of(leaves[:600])
    assert merkle.verify_inclusion(
        leaves[17], 17, 600, log.inclusion_proof(17), root_of(leaves[:600])
    )
    for leaf in leaves[600:]:
        log.append(leaf)
    log.release_files()
    assert _open_fds() == before
    log.close()
    again = MerkleLog.open(tmp_path / "log")
    try:
        assert again.size == 1000
        assert again.root() == root_of(leaves)
    finally:
        again.close()
