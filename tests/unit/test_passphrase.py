"""Where a locked keyring's passphrase comes from (lucidd.daemon.passphrase), without Argon2id
where it can be helped: the sources, their order, their refusals; and the unlocked keyring's
trip to a child (pickle)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

from lucidd.crypto import Keyring, is_locked
from lucidd.daemon import ipc
from lucidd.daemon.keyfile import state_keyring_path, write_keyring
from lucidd.daemon.passphrase import (
    PASSPHRASE_CREDENTIAL,
    PassphraseSource,
    daemon_keyring,
    new_passphrase,
    read_passphrase_file,
)
from lucidd.errors import KeyringError, PassphraseError


class _NoTty:
    def isatty(self) -> bool:
        return False


@pytest.fixture
def no_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _NoTty())


def _secret(folder: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_passphrase_file_loses_one_final_newline_only(tmp_path: Path) -> None:
    assert read_passphrase_file(_secret(tmp_path / "s", "a", b"pass word\n")) == b"pass word"
    assert read_passphrase_file(_secret(tmp_path / "s", "b", b"pass\r\n")) == b"pass"
    assert read_passphrase_file(_secret(tmp_path / "s", "c", b"pass\n\n")) == b"pass\n"


@pytest.mark.parametrize(("data", "mode", "why"), [(b"\n", 0o600, "empty"), (b"x", 0o644, "chmod")])
def test_passphrase_file_refuses_empty_or_readable_by_others(
    tmp_path: Path, data: bytes, mode: int, why: str
) -> None:
    with pytest.raises(KeyringError, match=why):
        read_passphrase_file(_secret(tmp_path / "s", "p", data, mode))


def test_credential_comes_first(tmp_path: Path, no_tty: None) -> None:
    creds = tmp_path / "creds"
    _secret(creds, PASSPHRASE_CREDENTIAL, b"from the credential\n")
    source = PassphraseSource(str(creds), under_systemd=True)
    assert not source.used
    assert source(tmp_path / "keyring") == b"from the credential"
    assert source.used


def test_no_source_says_where_to_put_the_passphrase(tmp_path: Path, no_tty: None) -> None:
    source = PassphraseSource(str(tmp_path), under_systemd=False)
    with pytest.raises(PassphraseError, match=PASSPHRASE_CREDENTIAL) as caught:
        source(tmp_path / "keyring")
    assert caught.value.exit_code == 78


def test_new_passphrase_needs_a_terminal_or_a_file(no_tty: None) -> None:
    with pytest.raises(PassphraseError, match="--passphrase-file"):
        new_passphrase(None)


def test_plain_keyring_is_not_handed_to_children(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path, unlocked = daemon_keyring(str(state), "", None, {})
    assert path == state_keyring_path(state) and unlocked is None
    assert not is_locked(path.read_bytes())


def test_locked_keyring_is_unlocked_once_and_handed_to_children(
    tmp_path: Path, no_tty: None
) -> None:
    keyring = Keyring.generate()
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    write_keyring(keyring.lock("pass"), folder / "keyring")
    creds = tmp_path / "creds"
    _secret(creds, PASSPHRASE_CREDENTIAL, b"pass\n")
    path, unlocked = daemon_keyring(str(tmp_path), str(folder / "keyring"), str(creds), {})
    assert path == folder / "keyring" and unlocked == keyring
    spec = ipc.AggregatorSpec(None, str(path), "ring", 0, keyring=unlocked)  # type: ignore[arg-type]
    copy = pickle.loads(pickle.dumps(spec))
    assert ipc.spec_keyring(copy, lambda _: pytest.fail("must not load the file")) == keyring
    assert keyring.current_key.hex() not in repr(spec)
