"""``lucidd keys`` on a real state folder that a real daemon wrote (docs/keys.md).

A daemon stores sessions, stops; ``lucidd keys`` runs as a subprocess on its folder; a daemon
started again must read every session back byte for byte. A crash mid-rewrap is the test-only
``LUCIDD_TEST_KEYS_KILL_AFTER`` (the command SIGKILLs itself after that many sessions).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lucidd.crypto import Keyring
from lucidd.daemon.keys_cli import KILL_AFTER_ENV
from tests.conftest import Daemon
from tests.integration.test_lucidctl import ctl, put_file, random_file
from tests.unit.test_keys_cli import assert_secrets_open, make_state

EX_CONFIG = 78
EX_TEMPFAIL = 75
CLI_TIMEOUT_S = 60.0
SESSIONS = 4
SESSION_BYTES = 150_000  # three 64 KiB chunks, the last one short
MANY_SESSIONS = 300
KILL_ROUNDS = 6
#: Where the kills land: a rotate of 300 sessions spends about 0.3 s starting Python, then
#: about 0.4 s re-wrapping, so most kills hit mid-rewrap (the assertions hold wherever).
KILL_WINDOW_S = (0.2, 0.6)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def ok(self) -> dict[str, Any]:
        assert self.code == 0, (self.code, self.stderr)
        result = json.loads(self.stdout)
        assert isinstance(result, dict)
        return result


def keys(daemon: Daemon, *args: str | Path, env: dict[str, str] | None = None) -> Run:
    """``lucidd keys ARGS --state-dir <the daemon's> --json`` in a fresh interpreter."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    command = [sys.executable, "-m", "lucidd", "keys", *map(str, args)]
    command += ["--state-dir", str(daemon.state_dir), "--json"]
    proc = subprocess.run(
        command,
        env=base | (env or {}),
        capture_output=True,
        stdin=subprocess.DEVNULL,  # no terminal: a passphrase prompt fails rather than waits
        timeout=CLI_TIMEOUT_S,
        check=False,
        text=True,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def store_sessions(daemon: Daemon, folder: Path) -> dict[str, bytes]:
    stored = {}
    for n in range(SESSIONS):
        path, data = random_file(folder, f"in{n}", SESSION_BYTES + n)
        stored[put_file(daemon, path)["session"]] = data
    return stored


def assert_reads_back(daemon: Daemon, stored: dict[str, bytes], folder: Path) -> None:
    for session, data in stored.items():
        copy = folder / f"{session}.out"
        ctl(daemon, "--json", "get", session, "-o", copy).ok()
        assert copy.read_bytes() == data, session


def counts(daemon: Daemon) -> dict[int, int]:
    listed = keys(daemon, "list").ok()
    assert listed["unreadable"] == [] and listed["sessions_missing_key"] == {}
    return {key["id"]: key["sessions"] for key in listed["keys"]}


def test_rotate_rewraps_every_session_and_the_old_key_retires(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    stored = store_sessions(daemon, tmp_path)
    assert keys(daemon, "rotate").code == EX_TEMPFAIL  # refused while the daemon runs
    assert daemon.stop() == 0
    listed = keys(daemon, "list").ok()
    old = listed["current"]
    (key,) = listed["keys"]
    assert key == {"id": old, "current": True, "created": key["created"], "sessions": SESSIONS}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", key["created"])  # made at start

    rotated = keys(daemon, "rotate").ok()
    new = rotated["current"]
    assert rotated == {"added": new, "current": new, "rewrapped": SESSIONS} and new != old
    assert counts(daemon) == {old: 0, new: SESSIONS}
    assert keys(daemon, "retire", str(old)).ok()["retired"] == old
    assert counts(daemon) == {new: SESSIONS}

    daemon.start()
    assert_reads_back(daemon, stored, tmp_path)


def test_crash_mid_rewrap_leaves_every_session_open_and_a_rerun_finishes(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    stored = store_sessions(daemon, tmp_path)
    assert daemon.stop() == 0
    (old,) = counts(daemon)

    crashed = keys(daemon, "rotate", env={KILL_AFTER_ENV: "1"})
    assert crashed.code == -signal.SIGKILL, crashed
    after_crash = counts(daemon)
    assert len(after_crash) == 2 and after_crash[old] == SESSIONS - 1
    (new,) = set(after_crash) - {old}
    assert after_crash[new] == 1

    refused = keys(daemon, "retire", str(old))
    assert refused.code == EX_CONFIG and refused.stderr.startswith("lucidd: keyring: key ")
    assert f"still wraps {SESSIONS - 1} session(s)" in refused.stderr

    daemon.start()  # every session opens mid-rotation: the keyring holds both keys
    assert_reads_back(daemon, stored, tmp_path)
    assert daemon.stop() == 0

    finished = keys(daemon, "rotate").ok()  # finishes the rotation: no third key
    assert finished == {"added": None, "current": new, "rewrapped": SESSIONS - 1}
    assert counts(daemon) == {old: 0, new: SESSIONS}
    keys(daemon, "retire", str(old)).ok()
    refused_current = keys(daemon, "retire", str(new))
    assert refused_current.code == EX_CONFIG and "current key" in refused_current.stderr

    daemon.start()
    assert_reads_back(daemon, stored, tmp_path)


def test_export_writes_a_private_copy_and_never_overwrites(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    assert daemon.stop() == 0
    target = tmp_path / "backup.keyring"
    assert keys(daemon, "export", "-o", target).ok() == {"exported": str(target)}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    original = (daemon.state_dir / "keys" / "keyring").read_bytes()
    assert Keyring.parse(target.read_bytes()) == Keyring.parse(original)
    target.write_bytes(b"not a keyring")
    again = keys(daemon, "export", "-o", target)
    assert again.code == EX_CONFIG and "already exists" in again.stderr
    assert target.read_bytes() == b"not a keyring"


def test_sigkill_at_random_points_never_strands_a_session(tmp_path: Path) -> None:
    """``lucidd keys rotate`` killed from outside at random moments: after each kill every
    session still opens under the keyring on disk, and a rerun ends with all of them under
    the current key."""
    state, keyring_path, secrets = make_state(tmp_path, MANY_SESSIONS)
    rng = random.Random(16)
    base = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    command = [sys.executable, "-m", "lucidd", "keys", "rotate", "--state-dir", str(state)]
    for _ in range(KILL_ROUNDS):
        proc = subprocess.Popen(command, env=base, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(*KILL_WINDOW_S))
        proc.send_signal(signal.SIGKILL)
        proc.wait(CLI_TIMEOUT_S)
        assert_secrets_open(state, keyring_path, secrets, on_current=False)
    finished = subprocess.run(command, env=base, capture_output=True, check=False)
    assert finished.returncode == 0, finished.stderr
    assert_secrets_open(state, keyring_path, secrets)
