"""A passphrase-locked keyring on a real daemon (docs/keys.md "Passphrase").

``lucidd keys passwd --passphrase-file`` locks the keyring a daemon wrote; the daemon then
starts only with the passphrase from ``$CREDENTIALS_DIRECTORY/lucidd.passphrase``, reads back
what it stored before, and exits 78 (``passphrase``) with a wrong one or none, saying nothing of
the passphrase or the keys. Each lock or unlock is one Argon2id derivation (~0.3 s): few here.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lucidd.crypto import LOCKED_MAGIC_LINE, Keyring, is_locked
from lucidd.daemon.keyfile import state_keyring_path
from lucidd.daemon.passphrase import PASSPHRASE_CREDENTIAL
from tests.conftest import Daemon
from tests.faults.test_worker_timeout import worker_pids
from tests.integration.test_keys import EX_CONFIG, keys
from tests.integration.test_lucidctl import ctl, put_file, random_file

EXIT_TIMEOUT_S = 60.0
RESPAWN_TIMEOUT_S = 30.0
PASSPHRASE = "correct horse battery staple"
WRONG = "incorrect donkey battery staple"


def _no_tty_stdin() -> None:
    """The daemon's stdin is /dev/null: no terminal prompt, whatever ran pytest."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def _base_env() -> dict[str, str]:
    """This environment without systemd's variables (no ask-password, no credentials)."""
    drop = {"INVOCATION_ID", "CREDENTIALS_DIRECTORY"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LUCIDD_")}


def _private_file(path: Path, text: str) -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _daemon(base: Path, credentials: Path | None) -> Daemon:
    env = {"CREDENTIALS_DIRECTORY": str(credentials)} if credentials is not None else {}
    return Daemon(base, workers=1, env=env, base_env=_base_env(), preexec_fn=_no_tty_stdin)


def _failed_start(daemon: Daemon) -> tuple[int, str]:
    daemon.launch()
    assert daemon.proc is not None
    code = daemon.proc.wait(timeout=EXIT_TIMEOUT_S)
    return code, daemon.log()


def test_locked_keyring_serves_with_the_credential_and_refuses_a_wrong_or_missing_one(
    short_tmp: Path, tmp_path: Path
) -> None:
    daemon = _daemon(short_tmp, None).start()
    path, data = random_file(tmp_path, "chunk", 100_000)
    session = put_file(daemon, path)["session"]
    assert daemon.stop() == 0
    keyring_file = state_keyring_path(daemon.state_dir)
    plain = keyring_file.read_bytes()
    key_hex = [Keyring.parse(plain).key(k).hex() for k in Keyring.parse(plain).key_ids]

    new = _private_file(tmp_path / "secrets" / "new", PASSPHRASE)
    locked = keys(daemon, "passwd", "--passphrase-file", new).ok()
    assert locked == {"keyring": str(keyring_file), "locked": True, "was_locked": False}
    text = keyring_file.read_bytes()
    assert text.startswith(LOCKED_MAGIC_LINE.encode()) and not any(
        h.encode() in text for h in key_hex
    )

    good = tmp_path / "good"
    _private_file(good / PASSPHRASE_CREDENTIAL, PASSPHRASE)
    daemon = _daemon(short_tmp, good).start()
    copy = tmp_path / "copy"
    ctl(daemon, "--json", "get", session, "-o", copy).ok()
    assert copy.read_bytes() == data
    # A replaced worker gets the unlocked keyring from its spec too (it cannot unlock the file).
    killed = worker_pids(daemon)["worker0"]
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + RESPAWN_TIMEOUT_S
    while worker_pids(daemon).get("worker0", killed) == killed:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    path2, data2 = random_file(tmp_path, "chunk2", 70_000)
    session2 = put_file(daemon, path2)["session"]
    assert daemon.stop() == 0

    bad = tmp_path / "bad"
    _private_file(bad / PASSPHRASE_CREDENTIAL, WRONG)
    code, log = _failed_start(_daemon(short_tmp, bad))
    assert code == EX_CONFIG, log
    assert "passphrase" in log and "wrong passphrase" in log
    for secret in [PASSPHRASE, WRONG, *key_hex]:
        assert secret not in log

    code, log = _failed_start(_daemon(short_tmp, None))
    assert code == EX_CONFIG, log
    assert PASSPHRASE_CREDENTIAL in log and "passphrase-locked" in log

    # Still the same keys: the locked keyring opens both sessions once more.
    daemon = _daemon(short_tmp, good).start()
    ctl(daemon, "--json", "get", session2, "-o", tmp_path / "copy2").ok()
    assert (tmp_path / "copy2").read_bytes() == data2
    assert daemon.stop() == 0


def test_passwd_changes_and_removes_the_passphrase_keeping_the_keys(short_tmp: Path) -> None:
    daemon = _daemon(short_tmp, None).start()
    assert daemon.stop() == 0
    keyring_file = state_keyring_path(daemon.state_dir)
    original = Keyring.parse(keyring_file.read_bytes())
    secrets = short_tmp / "secrets"
    first = _private_file(secrets / "first", PASSPHRASE)
    second = _private_file(secrets / "second", WRONG)

    assert keys(daemon, "passwd", "--passphrase-file", first).ok()["locked"] is True
    refused = keys(daemon, "passwd", "--passphrase-file", second)  # no current passphrase
    assert refused.code == EX_CONFIG and "--old-passphrase-file" in refused.stderr
    changed = keys(
        daemon, "passwd", "--old-passphrase-file", first, "--passphrase-file", second
    ).ok()
    assert changed["was_locked"] is True
    listed = keys(daemon, "list", "--old-passphrase-file", second).ok()
    assert listed["current"] == original.current_id
    refused = keys(daemon, "rotate")  # locked, and no terminal to type the passphrase on
    assert refused.code == EX_CONFIG and "--old-passphrase-file" in refused.stderr
    wrong = keys(daemon, "passwd", "--remove", "--old-passphrase-file", first)
    assert wrong.code == EX_CONFIG and "passphrase:" in wrong.stderr
    assert PASSPHRASE not in wrong.stderr and WRONG not in wrong.stderr
    removed = keys(daemon, "passwd", "--remove", "--old-passphrase-file", second).ok()
    assert removed == {"keyring": str(keyring_file), "locked": False, "was_locked": True}
    assert Keyring.parse(keyring_file.read_bytes()) == original
    export = short_tmp / "backup"
    exported = keys(daemon, "export", "-o", export, "--lock", "--passphrase-file", first).ok()
    assert exported == {"exported": str(export), "locked": True}
    assert Keyring.unlock(export.read_bytes(), PASSPHRASE) == original
    again = keys(daemon, "passwd", "--remove")
    assert again.code == EX_CONFIG and "no passphrase to remove" in again.stderr
    group_readable = _private_file(secrets / "open", PASSPHRASE)
    group_readable.chmod(0o640)
    unsafe = keys(daemon, "passwd", "--passphrase-file", group_readable)
    assert unsafe.code == EX_CONFIG and "chmod 600" in unsafe.stderr


def test_offline_rotate_and_retire_lock_the_keyring_again_under_the_same_passphrase(
    short_tmp: Path, tmp_path: Path
) -> None:
    daemon = _daemon(short_tmp, None).start()
    path, data = random_file(tmp_path, "in", 70_000)
    session = put_file(daemon, path)["session"]
    assert daemon.stop() == 0
    keyring_file = state_keyring_path(daemon.state_dir)
    old = Keyring.parse(keyring_file.read_bytes()).current_id
    passphrase = _private_file(short_tmp / "secrets" / "pass", PASSPHRASE)
    assert keys(daemon, "passwd", "--passphrase-file", passphrase).ok()["locked"] is True

    rotated = keys(daemon, "rotate", "--old-passphrase-file", passphrase).ok()
    assert rotated["added"] == rotated["current"] != old and rotated["rewrapped"] == 1
    assert is_locked(keyring_file.read_bytes())
    both = Keyring.unlock(keyring_file.read_bytes(), PASSPHRASE)
    assert set(both.key_ids) == {old, rotated["current"]}
    retired = keys(daemon, "retire", str(old), "--old-passphrase-file", passphrase).ok()
    assert retired == {"retired": old, "current": rotated["current"], "keys": 1}
    assert Keyring.unlock(keyring_file.read_bytes(), PASSPHRASE).key_ids == (rotated["current"],)

    credentials = _private_file(short_tmp / "creds" / PASSPHRASE_CREDENTIAL, PASSPHRASE).parent
    daemon = _daemon(short_tmp, credentials).start()
    ctl(daemon, "--json", "get", session, "-o", tmp_path / "copy").ok()
    assert (tmp_path / "copy").read_bytes() == data
    assert daemon.stop() == 0
