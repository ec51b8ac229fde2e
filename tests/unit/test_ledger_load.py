"""Loading a state folder: one unreadable session is damaged, not fatal (issue 11.7)."""

from __future__ import annotations

import resource
import uuid
from pathlib import Path

import pytest

from lucidd.crypto import Keyring, seal_chunk
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.merkle_log import FLUSH_BYTES
from lucidd.daemon.aggregator.recovery import recover_segments
from lucidd.daemon.segments import SegmentWriter
from lucidd.errors import DamagedSessionError, KeyringError, LucidError
from lucidd.merkle import HASH_SIZE, leaf_hash, root_of


def make_sessions(state_dir: Path, keyring: Keyring, count: int) -> list[bytes]:
    ledger = Ledger(state_dir, keyring)
    ids = [ledger.open(None, "auto", 1000).session_id for _ in range(count)]
    ledger.close()
    return ids


def test_a_session_with_unreadable_meta_is_damaged_and_the_others_load(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    broken, kept = make_sessions(tmp_path, keyring, 2)
    ledger = Ledger(tmp_path, keyring)
    ledger.close()
    ledger.sessions[broken].paths.meta.write_bytes(b"\xc1")  # not msgpack
    ledger = Ledger(tmp_path, keyring)
    try:
        assert list(ledger.sessions) == [kept]
        assert "metadata" in ledger.unreadable[broken]
        with pytest.raises(DamagedSessionError) as refused:
            ledger.get(broken)
        assert refused.value.code == "damaged"
        with pytest.raises(DamagedSessionError):
            ledger.open(broken, "auto", 1000)  # never created over the damaged one
        assert ledger.damaged_count == 1
        assert {v.session: v.state for v in ledger.views()}[broken] == "damaged"
    finally:
        ledger.close()


def test_a_keyring_that_opens_none_of_the_sessions_is_a_keyring_error(tmp_path: Path) -> None:
    make_sessions(tmp_path, Keyring.generate(), 2)
    with pytest.raises(KeyringError, match="opens none of the 2"):
        Ledger(tmp_path, Keyring.generate())


def test_sessions_whose_meta_is_all_unreadable_do_not_stop_the_start(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    [only] = make_sessions(tmp_path, keyring, 1)
    (tmp_path / "sessions" / str(uuid.UUID(bytes=only)) / "meta").write_bytes(b"")
    ledger = Ledger(tmp_path, keyring)
    assert (ledger.sessions, list(ledger.unreadable)) == ({}, [only])


def test_a_rebuild_on_a_full_disk_serves_every_chunk_and_syncs_once_space_is_back(
    tmp_path: Path,
) -> None:
    """Index and Merkle writes of the start-up rebuild fail (RLIMIT_FSIZE: EFBIG, as on a
    full disk, DESIGN §9): recovery goes on, reads work, a later sync catches up."""
    keyring = Keyring.generate()
    ledger = Ledger(tmp_path, keyring)
    session = ledger.open(None, "auto", 1000)
    sid, secret, paths = session.session_id, session.secret(keyring), session.paths
    writer = SegmentWriter(paths, worker=0, max_size=1 << 30)
    count = FLUSH_BYTES // HASH_SIZE + 500  # past one Merkle flush
    records = [seal_chunk(secret, sid, i, b"%d" % i, "off") for i in range(count)]
    for record in records:
        writer.append(memoryview(record))
    writer.sync()
    writer.close()
    ledger.close()

    ledger = Ledger(tmp_path, keyring)  # no index, no log: a rebuild from the records
    session = ledger.sessions[sid]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        recover_segments(session, keyring, repair=True)
        assert session.merkle.broken  # its first flush failed; the rebuild went on
        with pytest.raises((OSError, LucidError)):
            session.sync()
        for i in (0, 2000, count - 1):  # index entries past 64 KiB wait in memory
            assert session.read_chunk(keyring, i)[0] == b"%d" % i
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    session.sync()
    assert session.merkle.root() == root_of([leaf_hash(r) for r in records])
    ledger.close()
    ledger = Ledger(tmp_path, keyring)
    try:
        session = ledger.sessions[sid]
        assert session.merkle.size == count and not session.full_rescan
        assert session.read_chunk(keyring, count - 1)[0] == b"%d" % (count - 1)
    finally:
        ledger.close()
