"""No squatting on a shared host (issue 10): neither the daemon nor a client trusts a folder or
a socket that another user may have made.

Runs as root with throw-away users (tests/users.py): ``bob`` plays the squatter, ``alice`` the
victim, who runs her own daemon or client. The fake server is a few lines of Python run as bob:
it counts the connections and bytes it receives, so the tests can prove that nothing was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lucidd.client import AsyncControlClient, AsyncDataClient, ControlClient, DataClient
from lucidd.errors import EX_CONFIG, EX_NOPERM, UntrustedSocketError
from tests.users import HostUser, HostUsers

#: Bounds a wait for the fake server to start or to take a probe (never asserted on).
WAIT_S = 30.0
POLL_S = 0.05

#: Serves data.sock and control.sock in argv[1], 0666, and keeps "<accepted> <bytes> <open>"
#: in argv[2] (written after every event, atomically).
FAKE_SERVER = r"""
import os, select, socket, sys
folder, record = sys.argv[1], sys.argv[2]
listeners = []
for name in ("data.sock", "control.sock"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = os.path.join(folder, name)
    s.bind(path)
    os.chmod(path, 0o666)
    s.listen(16)
    listeners.append(s)
accepted = received = 0
conns = []
def save():
    with open(record + ".tmp", "w") as f:
        f.write(f"{accepted} {received} {len(conns)}")
    os.replace(record + ".tmp", record)
save()
while True:
    for s in select.select(listeners + conns, [], [])[0]:
        if s in listeners:
            conns.append(s.accept()[0])
            accepted += 1
        else:
            data = s.recv(65536)
            received += len(data)
            if not data:
                conns.remove(s)
                s.close()
        save()
"""


@dataclass
class FakeServer:
    folder: Path
    record: Path
    proc: subprocess.Popen[bytes]
    probes: int = 0

    def counts(self) -> tuple[int, int, int]:
        accepted, received, still_open = map(int, self.record.read_text().split())
        return accepted, received, still_open

    def settled_counts(self, socket_name: str) -> tuple[int, int]:
        """(connections, bytes) from others than our probes, once the server has handled
        all of them.

        A probe connects after them (the same listen queue: accepted after them), sends one
        byte and closes; once the server counted the probe and has nothing open, every earlier
        connection was handled too.
        """
        before, _, _ = self.counts()
        self.probes += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(self.folder / socket_name))
            probe.sendall(b"!")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            accepted, received, still_open = self.counts()
            if accepted > before and still_open == 0 and received >= 1:
                return accepted - self.probes, received - self.probes
            time.sleep(POLL_S)
        raise AssertionError(f"the fake server did not take the probe: {self.counts()}")


@contextlib.contextmanager
def fake_server(user: HostUser, folder: Path, record_dir: Path) -> Iterator[FakeServer]:
    record = record_dir / "record"
    proc = subprocess.Popen(
        user.command([sys.executable, "-c", FAKE_SERVER, folder, record]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not record.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"the fake server did not start: {err}")
            time.sleep(POLL_S)
        yield FakeServer(folder, record, proc)
    finally:
        proc.kill()
        proc.wait()


def folder_of(user: HostUser, path: Path, mode: int) -> Path:
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


@pytest.fixture
def alices_default_runtime_dir(host_users: HostUsers) -> Iterator[Path]:
    """/tmp/lucidd-<alice's uid>: where alice's daemon and clients look by default."""
    path = Path(f"/tmp/lucidd-{host_users.alice.uid}")
    shutil.rmtree(path, ignore_errors=True)  # a throw-away uid: nothing of anyone's
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp(short_tmp: Path) -> Path:
    os.chmod(short_tmp, 0o711)  # the users reach their folders inside, and see nothing else
    return short_tmp


def serve_as(user: HostUser, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return user.run([sys.executable, "-m", "lucidd", "serve", "--workers", "1", *args])


# --- the daemon -----------------------------------------------------------------------------


def test_the_daemon_refuses_a_default_runtime_folder_another_user_created(
    host_users: HostUsers, alices_default_runtime_dir: Path, shared_tmp: Path
) -> None:
    alice, bob = host_users.alice, host_users.bob
    made = bob.python(f"import os; os.mkdir({str(alices_default_runtime_dir)!r}, 0o777)")
    assert made.returncode == 0, made.stderr.decode()
    os.chmod(alices_default_runtime_dir, 0o777)  # whatever bob's umask did
    state = folder_of(alice, shared_tmp / "alice-state", 0o700)
    result = serve_as(alice, "--state-dir", state)
    err = result.stderr.decode()
    assert result.returncode == EX_CONFIG, err
    assert f"runtime folder {alices_default_runtime_dir}" in err
    assert f"owner uid {bob.uid}" in err and "mode 0777" in err
    assert list(alices_default_runtime_dir.iterdir()) == []  # no socket bound in it


def test_the_daemon_refuses_a_runtime_folder_of_its_own_that_others_can_write(
    host_users: HostUsers, shared_tmp: Path
) -> None:
    alice = host_users.alice
    state = folder_of(alice, shared_tmp / "state", 0o700)
    runtime = folder_of(alice, shared_tmp / "run", 0o777)
    result = serve_as(alice, "--state-dir", state, "--runtime-dir", runtime)
    assert result.returncode == EX_CONFIG, result.stderr.decode()
    assert f"owner uid {alice.uid}, mode 0777" in result.stderr.decode()


def test_the_daemon_refuses_a_state_folder_another_user_owns(
    host_users: HostUsers, shared_tmp: Path
) -> None:
    alice, bob = host_users.alice, host_users.bob
    state = folder_of(bob, shared_tmp / "state", 0o755)
    runtime = folder_of(alice, shared_tmp / "run", 0o750)
    result = serve_as(alice, "--state-dir", state, "--runtime-dir", runtime)
    err = result.stderr.decode()
    assert result.returncode == EX_CONFIG, err
    assert f"state folder {state}" in err and f"owner uid {bob.uid}" in err
    assert not (state / "keys").exists()  # no keyring written into bob's folder


def test_the_daemon_creates_the_default_runtime_folder_0700(
    host_users: HostUsers, alices_default_runtime_dir: Path, shared_tmp: Path
) -> None:
    """The /tmp fallback serves one user: 0700 (a named or XDG runtime folder is 0750)."""
    alice = host_users.alice
    state = folder_of(alice, shared_tmp / "state", 0o700)
    # A keyring that cannot be read stops the start right after the folders are made.
    keyring = shared_tmp / "missing.keyring"
    result = alice.run(
        [sys.executable, "-m", "lucidd", "serve", "--state-dir", state],
        env={"LUCIDD_KEYRING": str(keyring)},
    )
    assert result.returncode == EX_CONFIG, result.stderr.decode()
    st = alices_default_runtime_dir.stat()
    assert st.st_uid == alice.uid
    assert st.st_mode & 0o777 == 0o700


# --- the client -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("health",), ("put", "-")])
def test_lucidctl_refuses_a_squatted_default_folder_and_sends_nothing(
    host_users: HostUsers,
    alices_default_runtime_dir: Path,
    shared_tmp: Path,
    command: tuple[str, ...],
) -> None:
    alice, bob = host_users.alice, host_users.bob
    folder_of(bob, alices_default_runtime_dir, 0o755)
    records = folder_of(bob, shared_tmp / "records", 0o755)
    with fake_server(bob, alices_default_runtime_dir, records) as server:
        result = alice.lucidctl(*command, stdin=b"secret payload")
        err = result.stderr.decode()
        assert result.returncode == EX_NOPERM, err
        assert err.startswith("lucidctl: untrusted_socket: ")
        assert str(alices_default_runtime_dir) in err and f"owner uid {bob.uid}" in err
        socket_name = "control.sock" if command == ("health",) else "data.sock"
        assert server.settled_counts(socket_name) == (0, 0)  # not even a connection


@pytest.mark.parametrize("command", [("health",), ("put", "-")])
def test_lucidctl_refuses_a_named_folder_others_can_write(
    host_users: HostUsers, shared_tmp: Path, command: tuple[str, ...]
) -> None:
    alice, bob = host_users.alice, host_users.bob
    folder = folder_of(bob, shared_tmp / "run", 0o777)
    records = folder_of(bob, shared_tmp / "records", 0o755)
    with fake_server(bob, folder, records) as server:
        result = alice.lucidctl("--runtime-dir", folder, *command, stdin=b"secret payload")
        err = result.stderr.decode()
        assert result.returncode == EX_NOPERM, err
        assert "untrusted_socket" in err and "mode 0777" in err
        socket_name = "control.sock" if command == ("health",) else "data.sock"
        assert server.settled_counts(socket_name) == (0, 0)


def test_lucidctl_refuses_a_peer_of_another_uid_in_a_good_folder(
    host_users: HostUsers, shared_tmp: Path
) -> None:
    """The folder is the daemon's (alice's, 0755), but the process behind the socket is bob's:
    bob bound it while the folder was his, then it became alice's."""
    alice, bob = host_users.alice, host_users.bob
    folder = folder_of(bob, shared_tmp / "run", 0o755)
    records = folder_of(bob, shared_tmp / "records", 0o755)
    with fake_server(bob, folder, records) as server:
        os.chown(folder, alice.uid, alice.gid)
        for command in (("health",), ("put", "-")):
            result = alice.lucidctl("--runtime-dir", folder, *command, stdin=b"secret payload")
            err = result.stderr.decode()
            assert result.returncode == EX_NOPERM, err
            assert f"runs as uid {bob.uid}" in err and "nothing was sent" in err
        # Connected (that is how the peer is known), then closed without a byte.
        assert server.settled_counts("control.sock")[1] == 0
        assert server.settled_counts("data.sock")[1] == 0


def test_every_client_front_end_refuses_a_peer_of_another_uid(
    host_users: HostUsers, shared_tmp: Path
) -> None:
    """Blocking and asyncio, data and control: one check, before any byte (run as root, whose
    clients trust root, themselves and the named folder's owner, alice; the peer is bob)."""
    alice, bob = host_users.alice, host_users.bob
    folder = folder_of(bob, shared_tmp / "run", 0o755)
    records = folder_of(bob, shared_tmp / "records", 0o755)

    async def connect_async() -> list[str]:
        refusals = []
        for front in (AsyncDataClient, AsyncControlClient):
            with pytest.raises(UntrustedSocketError) as info:
                await front.connect(folder)
            refusals.append(info.value.message)
        return refusals

    with fake_server(bob, folder, records) as server:
        os.chown(folder, alice.uid, alice.gid)
        refusals = asyncio.run(connect_async())
        for sync_front in (DataClient, ControlClient):
            with pytest.raises(UntrustedSocketError) as info:
                sync_front(folder)
            refusals.append(info.value.message)
        assert all(f"runs as uid {bob.uid}" in message for message in refusals), refusals
        assert server.settled_counts("data.sock") == (4, 0)  # 2 each, then closed silently
