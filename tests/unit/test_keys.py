"""Unit tests for lucidd.daemon.keyfile: where the keyring comes from, which files are refused."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from lucidd.crypto import Keyring
from lucidd.daemon.keyfile import (
    CREDENTIAL_NAME,
    create_keyring,
    load_keyring,
    resolve_keyring,
    state_keyring_path,
    write_keyring,
)
from lucidd.errors import KeyringError

FOREIGN_UID = 12345


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


@pytest.fixture
def keyring_file(folder: Path) -> tuple[Path, Keyring]:
    path = folder / "keyring"
    keyring = Keyring.generate()
    write_keyring(keyring, path)
    return path, keyring


def test_create_makes_a_0600_file_in_a_new_0700_folder(tmp_path: Path) -> None:
    path = state_keyring_path(tmp_path / "state")
    keyring = create_keyring(path)
    assert mode_of(path.parent) == 0o700
    assert mode_of(path) == 0o600
    assert path.read_bytes() == keyring.serialize()
    assert load_keyring(path) == keyring
    assert [p.name for p in path.parent.iterdir()] == ["keyring"]  # no temp file left behind


def test_create_sets_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "k" / "keyring"
    old = os.umask(0o277)  # would leave 0400 / 0500 if modes were left to the umask
    try:
        create_keyring(path)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700


def test_create_refuses_to_overwrite(keyring_file: tuple[Path, Keyring]) -> None:
    path, keyring = keyring_file
    with pytest.raises(KeyringError, match="already exists"):
        create_keyring(path)
    assert load_keyring(path) == keyring


def test_create_refuses_a_group_writable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, 0o770)
    with pytest.raises(KeyringError, match="chmod 700"):
        create_keyring(folder / "keyring")
    assert not (folder / "keyring").exists()


def test_load_round_trip(keyring_file: tuple[Path, Keyring]) -> None:
    path, keyring = keyring_file
    loaded = load_keyring(path)
    assert loaded == keyring
    assert loaded.current_key == keyring.current_key


def test_symlink_is_refused(keyring_file: tuple[Path, Keyring]) -> None:
    path, _ = keyring_file
    link = path.parent / "link"
    link.symlink_to(path)
    with pytest.raises(KeyringError, match="symlink") as err:
        load_keyring(link)
    assert str(link) in str(err.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610])
def test_group_or_world_accessible_file_is_refused(
    keyring_file: tuple[Path, Keyring], mode: int
) -> None:
    path, _ = keyring_file
    os.chmod(path, mode)
    with pytest.raises(KeyringError, match="chmod 600") as err:
        load_keyring(path)
    assert str(path) in str(err.value)


def test_read_only_owner_file_like_a_systemd_credential_is_accepted(
    keyring_file: tuple[Path, Keyring],
) -> None:
    path, keyring = keyring_file
    os.chmod(path, 0o400)
    assert load_keyring(path) == keyring


def test_foreign_owner_is_refused(keyring_file: tuple[Path, Keyring]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    path, _ = keyring_file
    os.chown(path, FOREIGN_UID, -1)
    with pytest.raises(KeyringError, match=f"uid {FOREIGN_UID}"):
        load_keyring(path)


@pytest.mark.parametrize("mode", [0o720, 0o702, 0o777])
def test_group_or_world_writable_folder_is_refused(
    keyring_file: tuple[Path, Keyring], mode: int
) -> None:
    path, _ = keyring_file
    os.chmod(path.parent, mode)
    with pytest.raises(KeyringError, match="folder"):
        load_keyring(path)


def test_missing_file_and_non_regular_file_are_refused(folder: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        load_keyring(folder / "absent")
    fifo = folder / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyringError, match="not a regular file"):
        load_keyring(fifo)


def test_malformed_file_error_names_the_path_not_the_content(folder: Path) -> None:
    path = folder / "keyring"
    secret_hex = "c3" * 32
    path.write_text(f"lucidd-keyring v1\nkey 1 {secret_hex}\ncurrent 2\n")
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError) as err:
        load_keyring(path)
    assert str(path) in str(err.value)
    assert secret_hex[:8] not in str(err.value)


def test_write_keyring_to_a_file_object_writes_the_text() -> None:
    keyring = Keyring.generate()
    out = io.BytesIO()
    write_keyring(keyring, out)
    assert Keyring.parse(out.getvalue()) == keyring


# --- resolve order (DESIGN §4) -------------------------------------------------------------------
def _place(path: Path, keyring: Keyring, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_keyring(keyring, path)
    os.chmod(path, mode)


def test_resolve_prefers_the_credentials_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    from_state, from_config, from_creds = Keyring.generate(), Keyring.generate(), Keyring.generate()
    _place(state_keyring_path(state), from_state)
    configured = tmp_path / "etc" / "keyring"
    _place(configured, from_config)
    creds = tmp_path / "creds"
    _place(creds / CREDENTIAL_NAME, from_creds, mode=0o400)
    assert resolve_keyring(state, configured, str(creds)) == from_creds
    assert resolve_keyring(state, configured, None) == from_config
    assert resolve_keyring(state, None, None) == from_state


def test_resolve_skips_a_credentials_directory_without_the_keyring(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    state = tmp_path / "state"
    created = resolve_keyring(state, None, str(creds))
    assert state_keyring_path(state).exists()
    assert resolve_keyring(state, None, str(creds)) == created


def test_resolve_requires_a_configured_path_to_exist(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(KeyringError, match="does not exist"):
        resolve_keyring(state, tmp_path / "nope", None)
    assert not state_keyring_path(state).exists()  # no silent fallback to a new keyring


def test_resolve_creates_the_state_keyring_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = resolve_keyring(state, None, "")
    assert mode_of(state_keyring_path(state)) == 0o600
    assert mode_of(state_keyring_path(state).parent) == 0o700
    assert resolve_keyring(state, None, None) == first


def test_resolve_refuses_a_symlinked_credential(tmp_path: Path) -> None:
    target = tmp_path / "real" / "keyring"
    _place(target, Keyring.generate())
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / CREDENTIAL_NAME).symlink_to(target)
    with pytest.raises(KeyringError, match="symlink"):
        resolve_keyring(tmp_path / "state", None, str(creds))


def test_a_keyring_with_a_second_hard_link_is_refused(
    keyring_file: tuple[Path, Keyring], tmp_path: Path
) -> None:
    path, _ = keyring_file
    other = tmp_path / "elsewhere"
    os.link(path, other)
    with pytest.raises(KeyringError, match="2 hard links") as info:
        load_keyring(path)
    assert str(path) in info.value.message
    other.unlink()
    load_keyring(path)  # one name again: accepted


def test_a_keyring_folder_owned_by_another_uid_is_refused(
    keyring_file: tuple[Path, Keyring],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    path, _ = keyring_file
    os.chown(path.parent, FOREIGN_UID, -1)
    with pytest.raises(KeyringError, match=f"folder {path.parent} is owned by uid {FOREIGN_UID}"):
        load_keyring(path)
