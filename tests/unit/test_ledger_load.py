"""Loading a state folder: one unreadable session is damaged, not fatal (issue 11.7)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lucidd.crypto import Keyring
from lucidd.errors import DamagedSessionError, KeyringError
from lucidd.ledger import Ledger


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
