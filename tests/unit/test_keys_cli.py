"""Unit tests for key rotation's parts: Keyring.without, wrapped_key_id, replace_keyring, and
lucidd.daemon.keys_cli on hand-made state folders (no daemon)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lucidd.__main__ import main
from lucidd.crypto import Keyring, unwrap_secret, wrap_secret, wrapped_key_id
from lucidd.daemon.folders import lock_state_folder
from lucidd.daemon.key_usage import key_usage
from lucidd.daemon.keyfile import (
    create_keyring,
    load_keyring,
    remove_keyring_temps,
    replace_keyring,
)
from lucidd.daemon.keys_cli import (
    describe_keys,
    retire,
    rewrap,
    rotate,
    stopped_state_folder,
)
from lucidd.daemon.keys_online import created_text
from lucidd.daemon.store import (
    SessionPaths,
    create_session_dir,
    new_meta,
    read_meta,
    session_dir_name,
)
from lucidd.errors import BusyError, FormatError, KeyringError

SECRET = bytes(range(32))


def test_wrapped_key_id_names_the_wrapping_key() -> None:
    keyring = Keyring.generate()
    wrapped = wrap_secret(keyring, b"s" * 16, SECRET)
    assert wrapped_key_id(wrapped) == keyring.current_id
    rotated = keyring.rotated()
    assert wrapped_key_id(wrap_secret(rotated, b"s" * 16, SECRET)) == rotated.current_id
    with pytest.raises(FormatError):
        wrapped_key_id(wrapped[:-1])


def test_without_drops_an_old_key_and_refuses_the_current_or_an_absent_one() -> None:
    keyring = Keyring.generate()
    rotated = keyring.rotated()
    trimmed = rotated.without(keyring.current_id)
    assert trimmed.key_ids == (rotated.current_id,)
    assert trimmed.current_key == rotated.current_key
    with pytest.raises(ValueError, match="current"):
        rotated.without(rotated.current_id)
    with pytest.raises(KeyringError):
        trimmed.without(keyring.current_id)


def test_replace_keyring_swaps_the_file_whole_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keyring"
    first = create_keyring(path)
    second = first.rotated()
    replace_keyring(second, path)
    assert load_keyring(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring"]  # no temp file left


def make_state(tmp_path: Path, sessions: int) -> tuple[Path, Path, dict[bytes, bytes]]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    keyring_path = state / "keys" / "keyring"
    keyring = create_keyring(keyring_path)
    secrets = {}
    for _ in range(sessions):
        session_id, secret = os.urandom(16), os.urandom(32)
        meta = new_meta(session_id, wrap_secret(keyring, session_id, secret), "auto", "open", 0)
        create_session_dir(SessionPaths.of(state, session_id), meta)
        secrets[session_id] = secret
    return state, keyring_path, secrets


def assert_secrets_open(
    state: Path, keyring_path: Path, secrets: dict[bytes, bytes], *, on_current: bool = True
) -> None:
    """Every session's secret unwraps under the keyring on disk (and, if ``on_current``,
    is wrapped under its current key)."""
    keyring = load_keyring(keyring_path)
    for session_id, secret in secrets.items():
        meta = read_meta(SessionPaths.of(state, session_id))
        assert unwrap_secret(keyring, session_id, meta.wrapped_secret) == secret
        if on_current:
            assert wrapped_key_id(meta.wrapped_secret) == keyring.current_id


def test_rotate_with_no_sessions_adds_a_key(tmp_path: Path) -> None:
    state, keyring_path, _ = make_state(tmp_path, 0)
    before = load_keyring(keyring_path)
    result = rotate(state, keyring_path, force_new=False)
    after = load_keyring(keyring_path)
    assert result == {"added": after.current_id, "current": after.current_id, "rewrapped": 0}
    assert set(after.key_ids) == {before.current_id, after.current_id}


def test_rotate_rewraps_and_a_second_rotate_adds_another_key(tmp_path: Path) -> None:
    state, keyring_path, secrets = make_state(tmp_path, 3)
    first = rotate(state, keyring_path, force_new=False)
    assert first["rewrapped"] == 3
    assert_secrets_open(state, keyring_path, secrets)
    second = rotate(state, keyring_path, force_new=False)
    assert second["added"] not in (None, first["added"]) and second["rewrapped"] == 3
    assert len(load_keyring(keyring_path).key_ids) == 3
    assert_secrets_open(state, keyring_path, secrets)


def test_rotate_after_a_cut_short_one_finishes_it_without_a_new_key(tmp_path: Path) -> None:
    state, keyring_path, secrets = make_state(tmp_path, 3)
    replace_keyring(load_keyring(keyring_path).rotated(), keyring_path)  # crash after this
    keyring = load_keyring(keyring_path)
    assert rotate(state, keyring_path, force_new=False) == {
        "added": None,
        "current": keyring.current_id,
        "rewrapped": 3,
    }
    assert load_keyring(keyring_path) == keyring
    assert_secrets_open(state, keyring_path, secrets)


def test_retire_refuses_while_a_session_needs_the_key_and_names_it(tmp_path: Path) -> None:
    state, keyring_path, secrets = make_state(tmp_path, 2)
    old = load_keyring(keyring_path).current_id
    replace_keyring(load_keyring(keyring_path).rotated(), keyring_path)
    with pytest.raises(KeyringError, match="still wraps 2 session") as refused:
        retire(state, keyring_path, old)
    for session_id in secrets:
        assert session_dir_name(session_id) in refused.value.message
    assert rewrap(state, keyring_path)["rewrapped"] == 2
    assert retire(state, keyring_path, old)["retired"] == old
    assert old not in load_keyring(keyring_path).key_ids
    assert_secrets_open(state, keyring_path, secrets)


def test_list_counts_sessions_per_key_and_reports_a_missing_key(tmp_path: Path) -> None:
    state, keyring_path, secrets = make_state(tmp_path, 2)
    keyring = load_keyring(keyring_path)
    stranger = Keyring.generate()
    session_id = os.urandom(16)
    meta = new_meta(session_id, wrap_secret(stranger, session_id, SECRET), "auto", "open", 0)
    create_session_dir(SessionPaths.of(state, session_id), meta)
    listed = describe_keys(keyring, key_usage(state))
    assert listed["keys"] == [
        {
            "id": keyring.current_id,
            "current": True,
            "created": created_text(keyring.created_ns(keyring.current_id)),
            "sessions": 2,
        }
    ]
    assert listed["keys"][0]["created"] is not None  # create_keyring records when
    assert listed["sessions_missing_key"] == {session_dir_name(session_id): stranger.current_id}
    with pytest.raises(KeyringError, match="1 session\\(s\\) could not be re-wrapped"):
        rotate(state, keyring_path, force_new=False)
    assert_secrets_open(state, keyring_path, secrets)  # the others were done


def test_a_running_daemon_s_lock_refuses_key_changes(tmp_path: Path) -> None:
    state, _, _ = make_state(tmp_path, 0)
    # flock locks belong to the open file description: a second open in this process conflicts
    fd = lock_state_folder(state)
    try:
        with pytest.raises(BusyError, match="stop it first"), stopped_state_folder(state):
            pass
    finally:
        os.close(fd)
    with stopped_state_folder(state):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_key_changes_refuse_a_state_folder_of_another_user(tmp_path: Path) -> None:
    state, _, _ = make_state(tmp_path, 0)
    os.chown(state, 12345, -1)
    refused = pytest.raises(KeyringError, match="run lucidd keys as the daemon's user")
    with refused, stopped_state_folder(state):
        pass


def test_list_text_shows_the_creation_time_or_unknown_for_an_older_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, keyring_path, _ = make_state(tmp_path, 2)
    keyring = load_keyring(keyring_path)
    current = keyring.current_id
    made = created_text(keyring.created_ns(current))
    assert main(["keys", "list", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"key {current} (current): created {made}, wraps 2 session(s)"]
    replace_keyring(Keyring({current: keyring.key(current)}, current), keyring_path)  # untimed
    assert main(["keys", "list", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [f"key {current} (current): created unknown, wraps 2 session(s)"]


def test_a_killed_writer_s_keyring_temp_files_are_removed(tmp_path: Path) -> None:
    state, keyring_path, _ = make_state(tmp_path, 0)
    stale = keyring_path.parent / ".keyring.tmp-0123456789abcdef"
    stale.write_bytes(load_keyring(keyring_path).serialize())
    assert main(["keys", "rotate", "--state-dir", str(state), "--json"]) == 0
    assert not stale.exists()
    assert remove_keyring_temps(keyring_path) == 0
    assert sorted(p.name for p in keyring_path.parent.iterdir()) == ["keyring"]
