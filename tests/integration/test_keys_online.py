"""``lucidd keys`` with the daemon running: rotation through the control socket (docs/keys.md).

A real daemon; ``lucidd keys`` as a subprocess (it finds the daemon holding the state lock and
asks it over the control socket) and the Python client for the load. Kills are SIGKILLs from
outside at random moments of an online re-wrap; whatever they hit, every session must open and
read back, a rerun must finish the rotation, and the old key must then retire.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from lucidd.client import new_session_id
from lucidd.client.blocking import ControlClient, DataClient
from lucidd.crypto import Keyring
from lucidd.errors import LucidError
from tests.conftest import Daemon
from tests.integration.test_keys import CLI_TIMEOUT_S, EX_CONFIG, Run, keys
from tests.users import HostUsers

pytestmark = pytest.mark.timeout(300)

EX_NOPERM = 77
MANY_SESSIONS = 300
KILL_ROUNDS = 3
#: Where the kills land after the rotate command starts (about 0.3 s of that is Python
#: starting; the re-wrap of 300 sessions takes a few tenths more). Assertions hold wherever.
KILL_WINDOW_S = (0.1, 0.5)
WAIT_S = 60.0
CHUNK = 4096


def online(daemon: Daemon, *args: str | Path) -> Run:
    """``lucidd keys ARGS`` pointed at the running daemon's runtime folder."""
    return keys(daemon, *args, "--runtime-dir", daemon.runtime_dir)


def rotate_command(daemon: Daemon) -> list[str]:
    return [
        sys.executable, "-m", "lucidd", "keys", "rotate", "--state-dir", str(daemon.state_dir),
        "--runtime-dir", str(daemon.runtime_dir), "--json",
    ]  # fmt: skip


def key_counts(daemon: Daemon) -> dict[int, int]:
    listed = online(daemon, "list").ok()
    assert listed["online"] is True
    assert listed["unreadable"] == [] and listed["sessions_missing_key"] == {}
    return {key["id"]: key["sessions"] for key in listed["keys"]}


def current_key(daemon: Daemon) -> int:
    current = online(daemon, "list").ok()["current"]
    assert isinstance(current, int)
    return current


def store_many(daemon: Daemon, count: int) -> dict[bytes, bytes]:
    """``count`` sessions of one chunk each: session id -> its payload."""
    stored: dict[bytes, bytes] = {}
    with ControlClient(daemon.runtime_dir) as control, DataClient(daemon.runtime_dir) as data:
        for _ in range(count):
            session = control.open_session()
            payload = os.urandom(CHUNK)
            data.put(session, 0, payload)
            stored[session] = payload
    return stored


def assert_reads_back(daemon: Daemon, stored: dict[bytes, bytes]) -> None:
    with ControlClient(daemon.runtime_dir) as control:
        for session, payload in stored.items():
            assert control.read_chunk(session, 0).data == payload, session.hex()


def aggregator_pid(daemon: Daemon) -> int:
    with ControlClient(daemon.runtime_dir) as control:
        return next(p.pid for p in control.health().processes if p.role == "aggregator")


def wait_for_new_aggregator(daemon: Daemon, old_pid: int) -> None:
    """Until the aggregator that replaced ``old_pid`` answers (no assertion on how long)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            with ControlClient(daemon.runtime_dir) as control:
                health = control.health()
            if all(p.alive for p in health.processes) and aggregator_pid(daemon) != old_pid:
                return
        except LucidError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no new aggregator:\n{daemon.log()}")


def wait_for_log(daemon: Daemon, needle: str, count: int = 1) -> None:
    deadline = time.monotonic() + WAIT_S
    while daemon.log(10**7).count(needle) < count:
        assert time.monotonic() < deadline, f"no {needle!r}:\n{daemon.log()}"
        time.sleep(0.05)


def finish_and_retire(daemon: Daemon, stored: dict[bytes, bytes]) -> int:
    """Rerun the rotation (it finishes whatever a kill cut short), retire every old key;
    the one key left wraps every session."""
    finished = online(daemon, "rotate").ok()
    current = finished["current"]
    counts = key_counts(daemon)
    assert counts[current] == len(stored) and sum(counts.values()) == len(stored), counts
    for old in set(counts) - {current}:
        assert online(daemon, "retire", str(old)).ok()["retired"] == old
    assert key_counts(daemon) == {current: len(stored)}
    return int(current)


def test_online_rotate_while_a_client_streams_keeps_every_acked_chunk(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    stored = store_many(daemon, 20)
    old = current_key(daemon)
    acked: list[tuple[bytes, int, bytes]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def stream() -> None:  # new sessions and new chunks throughout the rotation
        try:
            with ControlClient(daemon.runtime_dir) as c, DataClient(daemon.runtime_dir) as d:
                while not stop.is_set():
                    session = c.open_session()
                    for index in range(8):
                        payload = os.urandom(CHUNK)
                        d.put(session, index, payload)
                        acked.append((session, index, payload))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        while len(acked) < 16:  # the stream is flowing before the rotation starts
            assert streamer.is_alive(), failures
            time.sleep(0.01)
        rotated = online(daemon, "rotate").ok()
        new = rotated["current"]
        assert rotated["added"] == new != old and rotated["rewrapped"] >= len(stored)
        during = len(acked)
        while len(acked) < during + 16:  # and keeps flowing under the new key
            assert streamer.is_alive(), failures
            time.sleep(0.01)
    finally:
        stop.set()
        streamer.join(WAIT_S)
    assert not failures, failures
    # Sessions opened before the new keyring was installed were re-wrapped, later ones were
    # wrapped under the new key: nothing is left to re-wrap.
    assert online(daemon, "rewrap").ok()["rewrapped"] == 0
    counts = key_counts(daemon)
    assert counts[old] == 0 and counts[new] == sum(counts.values())
    assert online(daemon, "retire", str(old)).ok() == {"retired": old, "current": new, "keys": 1}
    assert_reads_back(daemon, stored)
    with ControlClient(daemon.runtime_dir) as control:
        for session, index, payload in acked:
            assert control.read_chunk(session, index).data == payload
    assert daemon.stop() == 0
    daemon.start()  # and from the keyring file alone
    assert_reads_back(daemon, stored)
    keyring = Keyring.parse((daemon.state_dir / "keys" / "keyring").read_bytes())
    assert keyring.key_ids == (new,)


def test_aggregator_killed_at_random_points_of_an_online_rewrap(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    stored = store_many(daemon, MANY_SESSIONS)
    rng = random.Random(1616)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    for _ in range(KILL_ROUNDS):
        victim = aggregator_pid(daemon)
        proc = subprocess.Popen(rotate_command(daemon), env=base, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(*KILL_WINDOW_S))
        os.kill(victim, signal.SIGKILL)
        proc.wait(CLI_TIMEOUT_S)
        wait_for_new_aggregator(daemon, victim)
        assert_reads_back(daemon, stored)
        stored |= store_many(daemon, 2)  # new sessions: the workers hold the current key
        assert_reads_back(daemon, stored)
    current = finish_and_retire(daemon, stored)
    assert daemon.stop() == 0
    daemon.start()
    assert_reads_back(daemon, stored)
    assert current_key(daemon) == current


def test_whole_daemon_killed_at_random_points_of_an_online_rewrap(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    stored = store_many(daemon, MANY_SESSIONS)
    rng = random.Random(16)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    for _ in range(KILL_ROUNDS):
        proc = subprocess.Popen(rotate_command(daemon), env=base, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(*KILL_WINDOW_S))
        daemon.kill_all()
        proc.wait(CLI_TIMEOUT_S)
        daemon.start()  # from the keyring file: it holds every key a session names
        assert_reads_back(daemon, stored)
    finish_and_retire(daemon, stored)
    assert_reads_back(daemon, stored)


def test_sighup_installs_an_added_key_and_retire_is_refused_while_sessions_need_the_old(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    stored = store_many(daemon, 3)
    old = current_key(daemon)
    keyring_file = daemon.state_dir / "keys" / "keyring"
    added = keys(daemon, "add", "--keyring", keyring_file).ok()["added"]
    with ControlClient(daemon.runtime_dir) as control, DataClient(daemon.runtime_dir) as data:
        before = control.open_session()
        data.put(before, 0, b"before the reload")
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for_log(daemon, "event=keyring_installed")
        data.put(before, 1, b"after it, on the same connection")  # the client stayed
        after = control.open_session()
        data.put(after, 0, b"a session under the new key")
        assert control.read_chunk(before, 1).data == b"after it, on the same connection"
    assert current_key(daemon) == added
    counts = key_counts(daemon)
    assert counts == {old: len(stored) + 1, added: 1}

    refused = online(daemon, "retire", str(old))
    assert refused.code == EX_CONFIG, refused
    assert f"still wraps {len(stored) + 1} session(s)" in refused.stderr
    assert all(str(_uuid(s)) in refused.stderr for s in stored)
    assert online(daemon, "rewrap").ok()["rewrapped"] == len(stored) + 1
    assert online(daemon, "retire", str(old)).ok()["retired"] == old
    assert_reads_back(daemon, stored)


def test_sighup_keeps_the_old_keyring_when_the_new_one_lacks_a_key_in_use(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    stored = store_many(daemon, 3)
    old = current_key(daemon)
    keyring_file = daemon.state_dir / "keys" / "keyring"
    original = keyring_file.read_bytes()
    stranger = Keyring.generate()
    keyring_file.write_bytes(stranger.serialize())
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for_log(daemon, "event=keyring_reload_refused")
    assert current_key(daemon) == old
    assert_reads_back(daemon, stored)
    log = daemon.log(10**7)
    assert stranger.current_key.hex() not in log
    assert Keyring.parse(original).current_key.hex() not in log
    refused = online(daemon, "rotate")  # the file lost a key sessions need: not rotated over
    assert refused.code == EX_CONFIG and "lacks key" in refused.stderr, refused
    keyring_file.write_bytes(original)
    assert online(daemon, "rotate").ok()["rewrapped"] == len(stored)


def test_keys_requests_are_refused_to_users_who_may_not_touch_every_session(
    user_daemon: Callable[..., Daemon], host_users: HostUsers
) -> None:
    daemon = user_daemon(admin_group=host_users.admin_group)
    runtime = str(daemon.runtime_dir)
    code = (
        "import sys\n"
        "from lucidd.client.blocking import ControlClient\n"
        "from lucidd.errors import LucidError\n"
        "try:\n"
        "    with ControlClient(sys.argv[1]) as c:\n"
        "        print(getattr(c, sys.argv[2])())\n"
        "except LucidError as err:\n"
        "    print(err.code, err.message)\n"
    )
    for request in ("list_keys", "rotate_keys", "rewrap_keys"):
        done = host_users.alice.run([sys.executable, "-c", code, runtime, request])
        assert done.stdout.decode().startswith("forbidden "), done
    refused = host_users.alice.run(
        [
            sys.executable,
            "-m",
            "lucidd",
            "keys",
            "rotate",
            "--state-dir",
            str(daemon.state_dir),
            "--runtime-dir",
            runtime,
            "--json",
        ]
    )
    assert refused.returncode == EX_NOPERM, refused
    assert b"forbidden" in refused.stderr
    allowed = host_users.admin.run([sys.executable, "-c", code, runtime, "rotate_keys"])
    assert allowed.stdout.decode().startswith("KeysChanged("), allowed


def _uuid(session: bytes) -> str:
    return str(uuid.UUID(bytes=session))


def _creds(tool: str, *args: str | Path, secret: Path) -> None:
    env = {**os.environ, "SYSTEMD_CREDENTIAL_SECRET": str(secret)}
    done = subprocess.run([tool, *map(str, args)], env=env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def _provide(credentials: Path, keyring: Path) -> None:
    """What systemd does at start: the decrypted credential appears in
    ``$CREDENTIALS_DIRECTORY``, read-only (and stays as it was while the service runs)."""
    target = credentials / "lucidd.keyring"
    temp = credentials / ".next"
    temp.write_bytes(keyring.read_bytes())
    temp.chmod(0o400)
    temp.replace(target)


def test_the_systemd_credential_recipe_rotates_with_the_daemon_running(
    short_tmp: Path,
) -> None:
    """docs/keys.md's recipe with a credentials folder of the test's own and systemd-creds
    under a host key of the test's own: decrypt, add a key to the copy, encrypt, reload (the
    unit's ExecReload=: ``lucidd keys load --credential STORE``), rewrap online, retire in the
    copy, encrypt, reload. The credentials folder is never refreshed, as under systemd; a
    client stays connected and keeps writing throughout. The daemon cannot write a credential,
    so an online ``rotate`` is refused saying what to do."""
    tool = shutil.which("systemd-creds")
    if tool is None:
        pytest.skip("needs systemd-creds")
    secret, store, work = short_tmp / "host.secret", short_tmp / "credstore", short_tmp / "work"
    credentials = short_tmp / "creds"
    for folder in (store, work, credentials):
        folder.mkdir(mode=0o700)
    copy = work / "keyring"
    copy.write_bytes(Keyring.generate().serialize())
    copy.chmod(0o600)
    sealed = store / "lucidd.keyring"
    _creds(tool, "encrypt", "--with-key=host", "--name=lucidd.keyring", copy, sealed, secret=secret)
    copy.unlink()
    _provide(credentials, _decrypted(tool, sealed, work / "boot", secret))
    base = short_tmp / "d"
    base.mkdir()
    daemon = Daemon(base, workers=2, env={"CREDENTIALS_DIRECTORY": str(credentials)}).start()
    host_key = {"SYSTEMD_CREDENTIAL_SECRET": str(secret)}

    def reload() -> Run:  # what systemctl reload runs (ExecReload=+...)
        return keys(
            daemon, "load", "--credential", sealed, "--runtime-dir", daemon.runtime_dir,
            env=host_key,
        )  # fmt: skip

    try:
        stored = store_many(daemon, 5)
        old = current_key(daemon)
        refused = online(daemon, "rotate")
        assert refused.code == EX_CONFIG and "systemd credential" in refused.stderr, refused
        with DataClient(daemon.runtime_dir) as client:  # connected across both reloads
            session = new_session_id()
            client.put(session, 0, b"before")
            _decrypted(tool, sealed, copy, secret)
            added = keys(daemon, "add", "--keyring", copy).ok()["added"]
            _creds(
                tool, "encrypt", "--with-key=host", "--name=lucidd.keyring", copy, sealed,
                secret=secret,
            )  # fmt: skip
            assert reload().ok() == {"loaded": True, "current": added, "keys": 2}
            client.put(session, 1, b"between")
            assert online(daemon, "rewrap").ok() == {
                "added": None,
                "current": added,
                "rewrapped": 6,
            }
            retired = keys(
                daemon, "retire", str(old), "--keyring", copy, "--runtime-dir", daemon.runtime_dir
            )
            assert retired.ok() == {"retired": old, "current": added, "keys": 1}
            _creds(
                tool, "encrypt", "--with-key=host", "--name=lucidd.keyring", copy, sealed,
                secret=secret,
            )  # fmt: skip
            assert reload().ok() == {"loaded": True, "current": added, "keys": 1}
            client.put(session, 2, b"after")
        assert key_counts(daemon) == {added: 6}
        assert_reads_back(daemon, stored)
        # A keyring that lacks a key in use is refused, and the daemon keeps its own.
        stale = keys(daemon, "load", work / "boot", "--runtime-dir", daemon.runtime_dir)
        assert stale.code == EX_CONFIG and "lacks key" in stale.stderr, stale
        assert key_counts(daemon) == {added: 6}
        assert daemon.stop() == 0
        _provide(credentials, _decrypted(tool, sealed, work / "final", secret))  # next start
        daemon.start()  # from the new credential alone
        assert_reads_back(daemon, stored)
        with ControlClient(daemon.runtime_dir) as control:
            assert [control.read_chunk(session, i).data for i in range(3)] == [
                b"before",
                b"between",
                b"after",
            ]
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()


def _decrypted(tool: str, sealed: Path, target: Path, secret: Path) -> Path:
    target.unlink(missing_ok=True)
    _creds(tool, "decrypt", "--name=lucidd.keyring", sealed, target, secret=secret)
    target.chmod(0o600)
    return target
