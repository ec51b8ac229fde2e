"""Sessions belong to users (issue 10): real users, a daemon run as its own user.

The daemon runs as ``host_users.daemon``; alice, bob and admin are members of its group and
reach its sockets; outsider is not. Every refusal is checked to be the same ``forbidden``
whether or not the session exists, and the owner's work is checked to be unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon
from tests.users import HostUser, HostUsers

EX_NOPERM = 77
EX_NOINPUT = 66
CHUNK = 4096


def ctl(user: HostUser, daemon: Daemon, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return user.lucidctl("--runtime-dir", daemon.runtime_dir, *args)


def ok_json(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr.decode()
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    return value


def assert_forbidden(result: subprocess.CompletedProcess[bytes], session: str) -> str:
    """Exit 77, one ``lucidctl: forbidden:`` line; returns it with the id taken out."""
    stderr = result.stderr.decode()
    assert result.returncode == EX_NOPERM, stderr
    assert stderr.startswith("lucidctl: forbidden: "), stderr
    assert "Traceback" not in stderr
    return stderr.strip().replace(session, "ID")


def put_file(user: HostUser, daemon: Daemon, path: Path, *extra: str) -> dict[str, Any]:
    return ok_json(ctl(user, daemon, "--json", "put", path, "--chunk-size", str(CHUNK), *extra))


@pytest.fixture
def shared_file(short_tmp: Path) -> Path:
    """A file every test user can read (the test's temp folder is root's)."""
    folder = short_tmp / "files"
    folder.mkdir(mode=0o755)
    os.chmod(short_tmp, 0o711)
    path = folder / "recording.bin"
    path.write_bytes(os.urandom(CHUNK * 5 + 100))
    path.chmod(0o644)
    return path


@pytest.fixture
def shared_daemon(user_daemon: Callable[..., Daemon], host_users: HostUsers) -> Daemon:
    return user_daemon(admin_group=host_users.admin_group)


def test_another_user_can_neither_see_nor_touch_a_session(
    shared_daemon: Daemon, host_users: HostUsers, shared_file: Path
) -> None:
    daemon, alice, bob = shared_daemon, host_users.alice, host_users.bob
    session = str(put_file(alice, daemon, shared_file)["session"])
    missing = str(uuid.uuid4())

    refusals = set()
    for target in (session, missing):
        for args in (
            ("info", target),
            ("root", target),
            ("proof", target, "0"),
            ("consistency", target, "1", "2"),
            ("checkpoint", target),
            ("receipt", target, "0", "-o", "/dev/null"),
            ("record", target, "0", "-o", "/dev/null"),
            ("get", target, "-o", "/dev/null"),
            ("finalize", target),
            ("shred", target, "--yes"),
        ):
            refusals.add((args[0], assert_forbidden(ctl(bob, daemon, *args), target)))
    # One wording per command whether the session exists or not: nothing leaks.
    assert len(refusals) == len({command for command, _ in refusals})

    listed = ok_json(ctl(bob, daemon, "--json", "sessions"))
    assert listed["sessions"] == []
    # The owner is unaffected: her session is whole and hers to finalize and read back.
    info = ok_json(ctl(alice, daemon, "--json", "info", session))
    assert info["chunks"] == 6
    assert info["owner_uid"] == alice.uid
    assert [
        s["session"] for s in ok_json(ctl(alice, daemon, "--json", "sessions"))["sessions"]
    ] == [session]
    ok_json(ctl(alice, daemon, "--json", "finalize", session))
    copy = alice.lucidctl("--runtime-dir", daemon.runtime_dir, "get", session)
    assert copy.returncode == 0, copy.stderr.decode()
    assert copy.stdout == shared_file.read_bytes()


_FOREIGN_PUT = """
import sys, uuid
from lucidd.client import DataClient
from lucidd.errors import LucidError
session = uuid.UUID(sys.argv[1]).bytes
with DataClient(sys.argv[2]) as data:
    for index in (int(sys.argv[3]), 0):
        try:
            data.put(session, index, b"bob's bytes")
            print("stored", index)
        except LucidError as err:
            print(err.code, index)
"""


def test_another_users_chunks_are_refused_on_the_data_socket(
    shared_daemon: Daemon, host_users: HostUsers, shared_file: Path
) -> None:
    daemon, alice, bob = shared_daemon, host_users.alice, host_users.bob
    session = str(put_file(alice, daemon, shared_file)["session"])
    attack = bob.run([sys.executable, "-c", _FOREIGN_PUT, session, daemon.runtime_dir, "6"])
    assert attack.returncode == 0, attack.stderr.decode()
    assert attack.stdout.decode().split("\n")[:2] == ["forbidden 6", "forbidden 0"]

    # Alice's next index is still free, and the stored chunks are still hers alone.
    more = put_file(alice, daemon, shared_file, "--session", session)
    assert more["chunks"] == 6
    info = ok_json(ctl(alice, daemon, "--json", "info", session))
    assert info["chunks"] == 12
    final = ok_json(ctl(alice, daemon, "--json", "finalize", session))
    assert final["size"] == 12


def test_admin_group_root_and_the_daemon_may_touch_every_session(
    shared_daemon: Daemon, host_users: HostUsers, shared_file: Path
) -> None:
    daemon = shared_daemon
    session = str(put_file(host_users.alice, daemon, shared_file)["session"])
    for user in (host_users.admin, host_users.daemon):
        listed = ok_json(ctl(user, daemon, "--json", "sessions"))
        assert [s["session"] for s in listed["sessions"]] == [session]
        assert ok_json(ctl(user, daemon, "--json", "info", session))["chunks"] == 6
    root = subprocess.run(
        [
            sys.executable,
            "-m",
            "lucidd.cli",
            "--runtime-dir",
            daemon.runtime_dir,
            "--json",
            "root",
            session,
        ],
        capture_output=True,
        check=False,
    )
    assert root.returncode == 0, root.stderr.decode()
    # The privileged learn that an id does not exist: there is nothing to hide from them.
    missing = ctl(host_users.admin, daemon, "info", str(uuid.uuid4()))
    assert missing.returncode == EX_NOINPUT, missing.stderr.decode()
    assert missing.stderr.decode().startswith("lucidctl: unknown_session: ")
    shred = ctl(host_users.admin, daemon, "--json", "shred", session, "--yes")
    assert shred.returncode == 0, shred.stderr.decode()
    assert f"event=session_shredded session={session}" in daemon.log()
    assert f"by_uid={host_users.admin.uid}" in daemon.log()


def test_a_user_outside_the_daemons_group_cannot_connect(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    result = ctl(host_users.outsider, shared_daemon, "health")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr.decode()


def test_a_chosen_session_id_of_another_user_cannot_be_reopened(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    code = (
        "import sys, uuid\n"
        "from lucidd.client import ControlClient\n"
        "from lucidd.errors import LucidError\n"
        "with ControlClient(sys.argv[1]) as c:\n"
        "    try:\n"
        "        print(uuid.UUID(bytes=c.open_session(session=bytes(16))))\n"
        "    except LucidError as err:\n"
        "        print(err.code)\n"
    )
    runtime = str(shared_daemon.runtime_dir)
    first = host_users.alice.run([sys.executable, "-c", code, runtime])
    assert first.stdout.decode().strip() == str(uuid.UUID(bytes=bytes(16))), first.stderr
    second = host_users.bob.run([sys.executable, "-c", code, runtime])
    assert second.stdout.decode().strip() == "forbidden", second.stderr


def test_an_ordinary_user_creates_a_chosen_id_only_with_create(
    shared_daemon: Daemon, host_users: HostUsers, shared_file: Path
) -> None:
    daemon, alice, bob = shared_daemon, host_users.alice, host_users.bob
    chosen = str(uuid.uuid4())
    typo = ctl(alice, daemon, "put", shared_file, "--session", chosen)
    assert_forbidden(typo, chosen)
    assert "--create" in typo.stderr.decode()
    made = put_file(alice, daemon, shared_file, "--session", chosen, "--create")
    assert made["session"] == chosen
    # bob cannot take it over with --create either, and alice's data is untouched.
    assert_forbidden(ctl(bob, daemon, "put", shared_file, "--session", chosen, "--create"), chosen)
    assert ok_json(ctl(alice, daemon, "--json", "info", chosen))["chunks"] == 6


_UUID_TEXT = """
import sys
from lucidd.client import ControlClient, DataClient
session = sys.argv[2]
with DataClient(sys.argv[1]) as data:
    data.put(session, 0, b"by text id")
with ControlClient(sys.argv[1]) as control:
    print(control.read_chunk(session, 0).data.decode(), control.info(session.upper()).chunks)
"""


def test_the_python_client_takes_the_ids_lucidctl_prints(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    session = str(uuid.uuid4())
    result = host_users.alice.run(
        [sys.executable, "-c", _UUID_TEXT, str(shared_daemon.runtime_dir), session]
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["by", "text", "id", "1"]
