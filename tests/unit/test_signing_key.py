"""Unit tests for lucidd.daemon.signing_key: where the signing key comes from, what is refused."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lucidd.daemon.keyfile import resolve_keyring, state_keyring_path
from lucidd.daemon.signing_key import (
    CREDENTIAL_NAME,
    create_signing_key,
    load_signing_key,
    resolve_signing_key,
    state_signing_key_path,
)
from lucidd.errors import KeyringError
from lucidd.note import open_note, sign_note

FOREIGN_UID = 12345
NAME = "example.com/lucidd"
TEXT = b"a checkpoint, say\n"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def place_key(path: Path, mode: int = 0o600) -> bytes:
    """Write a fresh key file at ``path`` (folder 0700) and return its seed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    path.write_bytes(base64.b64encode(seed) + b"\n")
    os.chmod(path, mode)
    return seed


def public_key_of(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "keys" / "signing.key"
    return path, place_key(path)


def test_first_start_creates_a_0600_key_in_a_0700_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    signer = resolve_signing_key(state, None, NAME)
    path = state_signing_key_path(state)
    assert path == state / "keys" / "signing.key"
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    data = path.read_bytes()
    assert len(data) == 45
    assert data.endswith(b"\n")
    assert public_key_of(base64.b64decode(data[:-1], validate=True)) == signer.verifier.public_key
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp file left behind


def test_a_restart_loads_the_same_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = resolve_signing_key(state, None, NAME)
    again = resolve_signing_key(state, None, NAME)
    assert again.verifier == first.verifier
    assert again.name == NAME
    _, signed = open_note(sign_note(TEXT, [again]), [first.verifier])
    assert signed == (first.verifier,)


def test_the_name_is_the_callers_and_changes_the_key_id(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = resolve_signing_key(state, None, NAME)
    renamed = resolve_signing_key(state, None, "other.example")
    assert renamed.verifier.public_key == first.verifier.public_key
    assert renamed.verifier.key_id != first.verifier.key_id
    with pytest.raises(ValueError, match="name"):
        resolve_signing_key(state, None, "has a space")


def test_create_sets_exact_modes_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "k" / "signing.key"
    old = os.umask(0o277)
    try:
        create_signing_key(path, NAME)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700


def test_create_refuses_to_overwrite(key_file: tuple[Path, bytes]) -> None:
    path, seed = key_file
    with pytest.raises(KeyringError, match="already exists"):
        create_signing_key(path, NAME)
    assert load_signing_key(path, NAME).verifier.public_key == public_key_of(seed)


def test_load_reads_the_seed(key_file: tuple[Path, bytes]) -> None:
    path, seed = key_file
    assert load_signing_key(path, NAME).verifier.public_key == public_key_of(seed)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o602])
def test_a_group_or_world_accessible_key_is_refused(
    key_file: tuple[Path, bytes], mode: int
) -> None:
    path, _ = key_file
    os.chmod(path, mode)
    with pytest.raises(KeyringError, match="chmod 600") as err:
        load_signing_key(path, NAME)
    assert str(err.value).startswith(f"signing key {path} is accessible by group or others")


def test_a_symlinked_key_is_refused(key_file: tuple[Path, bytes]) -> None:
    path, _ = key_file
    link = path.parent / "link"
    link.symlink_to(path)
    with pytest.raises(KeyringError, match="symlink") as err:
        load_signing_key(link, NAME)
    assert str(link) in str(err.value)


def test_a_symlink_at_the_state_path_is_refused_not_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    target = tmp_path / "elsewhere" / "real.key"
    place_key(target)
    path = state_signing_key_path(state)
    path.parent.mkdir(mode=0o700, parents=True)
    path.symlink_to(target)
    with pytest.raises(KeyringError, match="symlink"):
        resolve_signing_key(state, None, NAME)
    assert path.is_symlink()


def test_a_key_with_a_second_hard_link_is_refused(
    key_file: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, _ = key_file
    other = tmp_path / "second-name"
    os.link(path, other)
    with pytest.raises(KeyringError, match="2 hard links") as err:
        load_signing_key(path, NAME)
    assert str(path) in str(err.value)
    other.unlink()
    load_signing_key(path, NAME)  # one name again: accepted


def test_a_key_owned_by_another_uid_is_refused(key_file: tuple[Path, bytes]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    path, _ = key_file
    os.chown(path, FOREIGN_UID, -1)
    with pytest.raises(KeyringError, match=f"signing key {path} is owned by uid {FOREIGN_UID}"):
        load_signing_key(path, NAME)


def test_a_key_folder_owned_by_another_uid_is_refused(key_file: tuple[Path, bytes]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    path, _ = key_file
    os.chown(path.parent, FOREIGN_UID, -1)
    with pytest.raises(KeyringError, match=f"folder {path.parent} is owned by uid {FOREIGN_UID}"):
        load_signing_key(path, NAME)


@pytest.mark.parametrize("mode", [0o720, 0o702, 0o777])
def test_a_group_or_world_writable_folder_is_refused(
    key_file: tuple[Path, bytes], mode: int
) -> None:
    path, _ = key_file
    os.chmod(path.parent, mode)
    with pytest.raises(KeyringError, match=r"signing key folder .* chmod 700"):
        load_signing_key(path, NAME)
    with pytest.raises(KeyringError, match="chmod 700"):
        create_signing_key(path.parent / "new.key", NAME)
    assert not (path.parent / "new.key").exists()


def test_missing_and_non_regular_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyringError, match="does not exist"):
        load_signing_key(folder / "absent", NAME)
    os.mkfifo(folder / "fifo", 0o600)
    with pytest.raises(KeyringError, match="not a regular file"):
        load_signing_key(folder / "fifo", NAME)


SECRET = base64.b64encode(bytes(range(100, 132))).decode()


@pytest.mark.parametrize(
    "content",
    [
        SECRET.encode(),  # no newline
        SECRET.encode() + b"\n\n",
        SECRET.encode() + b"\r\n",
        b" " + SECRET.encode() + b"\n",
        base64.b64encode(bytes(range(100, 131))) + b"\n",  # 31 bytes
        base64.b64encode(bytes(range(100, 133))) + b"\n",  # 33 bytes
        SECRET.encode().replace(b"=", b"") + b"\n",
        bytes(range(100, 132)),  # raw seed
        b"",
        SECRET.encode() * 40 + b"\n",
    ],
)
def test_a_malformed_key_is_refused_naming_the_path_not_the_content(
    tmp_path: Path, content: bytes
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    path = folder / "signing.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="malformed") as err:
        load_signing_key(path, NAME)
    assert str(path) in str(err.value)
    assert SECRET[:8] not in str(err.value)
    assert "100" not in str(err.value).replace(str(path), "")


# --- resolve order ---------------------------------------------------------------------------


def test_the_credential_wins_over_the_state_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state_seed = place_key(state_signing_key_path(state))
    creds = tmp_path / "creds"
    cred_seed = place_key(creds / CREDENTIAL_NAME, mode=0o400)  # as systemd leaves it
    assert resolve_signing_key(state, creds, NAME).verifier.public_key == public_key_of(cred_seed)
    assert resolve_signing_key(state, None, NAME).verifier.public_key == public_key_of(state_seed)


def test_a_credentials_folder_without_the_key_falls_back_to_the_state_key(
    tmp_path: Path,
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    state = tmp_path / "state"
    created = resolve_signing_key(state, creds, NAME)
    assert state_signing_key_path(state).exists()
    assert not (creds / CREDENTIAL_NAME).exists()
    assert resolve_signing_key(state, creds, NAME).verifier == created.verifier


def test_an_unsafe_credential_is_refused_not_skipped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    place_key(state_signing_key_path(state))
    creds = tmp_path / "creds"
    place_key(creds / CREDENTIAL_NAME, mode=0o440)
    with pytest.raises(KeyringError, match=CREDENTIAL_NAME):
        resolve_signing_key(state, creds, NAME)
    (creds / CREDENTIAL_NAME).unlink()
    (creds / CREDENTIAL_NAME).symlink_to(state_signing_key_path(state))
    with pytest.raises(KeyringError, match="symlink"):
        resolve_signing_key(state, creds, NAME)


def test_the_signing_key_lives_beside_the_keyring_without_touching_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keyring = resolve_keyring(state, None, None)
    resolve_signing_key(state, None, NAME)
    assert sorted(p.name for p in (state / "keys").iterdir()) == ["keyring", "signing.key"]
    assert resolve_keyring(state, None, None) == keyring
    assert state_keyring_path(state).parent == state_signing_key_path(state).parent
