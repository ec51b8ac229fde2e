"""Delegation (ActAs): root and the daemon's user act on both sockets as another user.

The daemon runs as ``host_users.daemon``; this test process is root. A connection acting as
alice is held to alice's rules exactly (her sessions, nobody else's); an ordinary user, the
admin group and the daemon's user acting as root are refused, and a refusal closes the
connection so nothing pipelined behind it runs with the sender's own rights.
"""

from __future__ import annotations

import asyncio
import json
import pwd
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from lucidd import protocol as p
from lucidd.client import AsyncControlClient, AsyncDataClient, ControlClient, DataClient
from lucidd.errors import ForbiddenError, UnknownSessionError
from tests.conftest import Daemon
from tests.users import HostUser, HostUsers

EX_NOPERM = 77


@pytest.fixture
def shared_daemon(user_daemon: Callable[..., Daemon], host_users: HostUsers) -> Daemon:
    return user_daemon(admin_group=host_users.admin_group)


def ctl_json(user: HostUser, daemon: Daemon, *args: str) -> object:
    result = user.lucidctl("--runtime-dir", daemon.runtime_dir, "--json", *args)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def raw_exchange(
    path: Path, frames: Sequence[bytes], decoder: p.FrameDecoder, until: int | None
) -> list[p.Message]:
    """Send ``frames`` in one write; read ``until`` replies, or (None) until the daemon closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(b"".join(frames))
        replies: list[p.Message] = []
        while until is None or len(replies) < until:
            data = sock.recv(65536)
            if not data:
                break
            decoder.receive_data(data)
            while (event := decoder.next_event()) is not None:
                assert isinstance(event, p.FrameMessage)
                replies.append(event.message)
    return replies


def control_exchange(daemon: Daemon, *messages: p.Message, until: int | None) -> list[p.Message]:
    frames = [p.encode_frame(m) for m in messages]
    path = daemon.runtime_dir / "control.sock"
    return raw_exchange(path, frames, p.control_reply_decoder(4096), until)


def data_exchange(daemon: Daemon, *frames: bytes, until: int | None) -> list[p.Message]:
    return raw_exchange(daemon.runtime_dir / "data.sock", frames, p.data_reply_decoder(), until)


def unused_uid() -> int:
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    return next(uid for uid in range(424242, 2**31) if uid not in taken)


def test_root_acting_as_a_user_opens_sessions_that_user_owns(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    daemon, alice, bob = shared_daemon, host_users.alice, host_users.bob
    with ControlClient(daemon.runtime_dir, act_as=alice.uid) as control:
        session = control.open_session(label="via the gateway")
        assert control.info(session).owner_uid == alice.uid
        assert [s.session for s in control.sessions()] == [session]
    assert "event=act_as socket=control peer_uid=0 " in daemon.log()
    assert f"uid={alice.uid} gid={alice.gid}" in daemon.log()

    # alice sees it as her own; bob, connecting or acted for, cannot see or touch it.
    listed = ctl_json(alice, daemon, "sessions")
    assert isinstance(listed, dict)
    assert [s["session"] for s in listed["sessions"]] == [str(uuid.UUID(bytes=session))]
    refused = bob.lucidctl(
        "--runtime-dir", daemon.runtime_dir, "info", str(uuid.UUID(bytes=session))
    )
    assert refused.returncode == EX_NOPERM, refused.stderr.decode()
    with ControlClient(daemon.runtime_dir, act_as=bob.uid) as control:
        assert control.sessions() == []
        with pytest.raises(ForbiddenError, match="belongs to another user"):
            control.info(session)
        with pytest.raises(ForbiddenError):
            control.shred(session)

    # What alice's delegate does is logged as hers, and as delegated by root.
    with ControlClient(daemon.runtime_dir, act_as=alice.uid) as control:
        control.shred(session)
    assert f"by_uid={alice.uid} by_pid=" in daemon.log()
    assert "via_uid=0" in daemon.log()


def test_requests_pipelined_behind_act_as_run_as_that_user(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    daemon, alice = shared_daemon, host_users.alice
    replies = control_exchange(daemon, p.ActAs(req=1, uid=alice.uid), p.OpenSession(req=2), until=2)
    assert replies[0] == p.ActingAs(req=1, uid=alice.uid)
    opened = replies[1]
    assert isinstance(opened, p.SessionOpened)
    with ControlClient(daemon.runtime_dir) as control:  # root: sees every session
        assert control.info(opened.session).owner_uid == alice.uid

    # The data socket likewise: a new id's first chunk opens a session owned by alice.
    fresh = uuid.uuid4().bytes
    replies = data_exchange(
        daemon,
        p.encode_frame(p.ActAs(req=1, uid=alice.uid)),
        p.encode_frame(p.Chunk(req=2, session=fresh, index=0, length=5)) + b"hello",
        until=2,
    )
    assert replies[0] == p.ActingAs(req=1, uid=alice.uid)
    assert isinstance(replies[1], p.Ack) and replies[1].session == fresh
    with ControlClient(daemon.runtime_dir) as control:  # root: sees every session
        assert control.info(fresh).owner_uid == alice.uid


def test_a_data_connection_acting_as_a_user_puts_into_that_users_sessions_only(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    daemon, alice, bob = shared_daemon, host_users.alice, host_users.bob
    with ControlClient(daemon.runtime_dir, act_as=alice.uid) as control:
        hers = control.open_session()
    with ControlClient(daemon.runtime_dir, act_as=bob.uid) as control:
        his = control.open_session()

    with DataClient(daemon.runtime_dir, act_as=alice.uid) as data:
        assert data.put(hers, 0, b"alice 0").index == 0
        with pytest.raises(ForbiddenError, match="belongs to another user"):
            data.put(his, 0, b"not bob's")

    async def asynchronously() -> None:
        data = await AsyncDataClient.connect(daemon.runtime_dir, act_as=alice.uid)
        control = await AsyncControlClient.connect(daemon.runtime_dir, act_as=alice.uid)
        try:
            assert (await data.put(hers, 1, b"alice 1")).index == 1
            with pytest.raises(ForbiddenError):
                await data.put(his, 1, b"not bob's")
            assert (await control.info(hers)).chunks == 2
            with pytest.raises(ForbiddenError):
                await control.info(his)
        finally:
            await data.close()
            await control.close()

    asyncio.run(asynchronously())
    with ControlClient(daemon.runtime_dir) as control:
        assert control.info(his).chunks == 0
        assert control.info(hers).chunks == 2
    assert "event=act_as socket=data peer_uid=0 " in daemon.log()


_DELEGATE = """
import sys
from lucidd.client import ControlClient, DataClient
from lucidd.errors import LucidError
runtime, target, session = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for make in (ControlClient, DataClient):
    try:
        client = make(runtime, act_as=target)
    except LucidError as err:
        print(make.__name__, err.code, err.message)
        continue
    with client:
        if make is ControlClient:
            opened = client.open_session()
            print(make.__name__, "opened", opened.hex(), client.info(session).chunks)
        else:
            print(make.__name__, "put", client.put(session, 5, b"delegated").index)
"""


def run_delegate(user: HostUser, daemon: Daemon, target: int, session: bytes) -> list[str]:
    text_id = str(uuid.UUID(bytes=session))
    result = user.run(
        [sys.executable, "-c", _DELEGATE, str(daemon.runtime_dir), str(target), text_id]
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_the_daemons_user_may_delegate_but_not_to_root(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    daemon, alice = shared_daemon, host_users.alice
    with ControlClient(daemon.runtime_dir, act_as=alice.uid) as control:
        hers = control.open_session()

    lines = run_delegate(host_users.daemon, daemon, alice.uid, hers)
    assert lines[0].startswith("ControlClient opened ") and lines[0].endswith(" 0"), lines
    assert lines[1] == "DataClient put 5", lines
    opened = bytes.fromhex(lines[0].split()[2])
    with ControlClient(daemon.runtime_dir) as control:
        assert control.info(opened).owner_uid == alice.uid
        assert control.info(hers).chunks == 1

    # Root is root's alone to act as (nothing is root's alone today; it must stay that way).
    lines = run_delegate(host_users.daemon, daemon, 0, hers)
    assert lines == [
        f"{name} forbidden only root may act as uid 0 (root or lucidd's own user)"
        for name in ("ControlClient", "DataClient")
    ]


@pytest.mark.parametrize("who", ["bob", "admin"])
def test_an_unprivileged_user_cannot_act_as_another(
    shared_daemon: Daemon, host_users: HostUsers, who: str
) -> None:
    daemon, alice = shared_daemon, host_users.alice
    user: HostUser = getattr(host_users, who)
    with ControlClient(daemon.runtime_dir, act_as=alice.uid) as control:
        hers = control.open_session()

    lines = run_delegate(user, daemon, alice.uid, hers)
    assert lines == [
        f"{name} forbidden uid {user.uid} may not act as another user: only root and "
        f"lucidd's own user (uid {host_users.daemon.uid}) may"
        for name in ("ControlClient", "DataClient")
    ]
    with ControlClient(daemon.runtime_dir) as control:
        assert control.info(hers).chunks == 0  # nothing was stored in her name

    if who == "bob":
        # Pipelined behind the refused ActAs, requests about alice's session are never read:
        # the refusal closes the connection. (bob may not touch it anyway; the point is that
        # nothing behind a refusal is served, so a gateway cannot fall back to its own rights.)
        probe = user.run(
            [sys.executable, "-c", _PIPELINED, str(daemon.runtime_dir), str(alice.uid), hers.hex()]
        )
        assert probe.returncode == 0, probe.stderr.decode()
        assert probe.stdout.decode().split() == ["error", "1", "forbidden", "end"]


_PIPELINED = """
import socket, sys
from lucidd import protocol as p
runtime, uid, session = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.settimeout(20)
    sock.connect(runtime + "/control.sock")
    sock.sendall(
        p.encode_frame(p.ActAs(req=1, uid=uid))
        + p.encode_frame(p.SessionInfo(req=2, session=session))
        + p.encode_frame(p.Health(req=3))
    )
    decoder = p.control_reply_decoder(4096)
    while data := sock.recv(65536):
        decoder.receive_data(data)
        while (event := decoder.next_event()) is not None:
            m = event.message
            print(m.__struct_config__.tag, m.req, getattr(m, "code", ""))
    print("end")
"""


def test_act_as_that_is_not_the_first_frame_is_refused_and_closes(
    shared_daemon: Daemon, host_users: HostUsers
) -> None:
    daemon, alice = shared_daemon, host_users.alice
    replies = control_exchange(
        daemon, p.Health(req=1), p.ActAs(req=2, uid=alice.uid), p.ListSessions(req=3), until=None
    )
    # The health request was being served when the ActAs came: its reply may be lost with the
    # connection (as after any bad_frame); nothing behind the ActAs is served.
    assert not any(isinstance(r, p.SessionListReply) for r in replies)
    (refusal,) = (r for r in replies if isinstance(r, p.Error))
    assert (refusal.req, refusal.code) == (2, "bad_frame")
    assert "first frame" in refusal.message

    fresh, behind = uuid.uuid4().bytes, uuid.uuid4().bytes
    replies = data_exchange(
        daemon,
        p.encode_frame(p.Chunk(req=1, session=fresh, index=0, length=1)) + b"x",
        p.encode_frame(p.ActAs(req=2, uid=alice.uid)),
        p.encode_frame(p.Chunk(req=3, session=behind, index=0, length=1)) + b"y",
        until=None,
    )
    errors = [r for r in replies if isinstance(r, p.Error)]
    assert [(e.req, e.code) for e in errors] == [(2, "bad_frame")]
    assert not any(isinstance(r, p.Ack) and r.req == 3 for r in replies)
    # The chunk behind it was not read: its new id was never opened.
    with ControlClient(daemon.runtime_dir) as control, pytest.raises(UnknownSessionError):
        control.info(behind)

    # A second ActAs is not a first frame either.
    replies = control_exchange(
        daemon,
        p.ActAs(req=1, uid=alice.uid),
        p.ActAs(req=2, uid=0),
        p.ListSessions(req=3),
        until=None,
    )
    assert replies[0] == p.ActingAs(req=1, uid=alice.uid)
    assert [(type(r), r.req) for r in replies[1:]] == [(p.Error, 2)]


def test_act_as_a_uid_without_a_user_or_outside_uid_t_is_refused(shared_daemon: Daemon) -> None:
    uid = unused_uid()
    with pytest.raises(ForbiddenError, match=f"cannot act as uid {uid}: it has no entry"):
        ControlClient(shared_daemon.runtime_dir, act_as=uid)
    replies = control_exchange(shared_daemon, p.ActAs(req=1, uid=-1), p.Health(req=2), until=None)
    assert [(type(r), getattr(r, "code", None)) for r in replies] == [(p.Error, "bad_request")]
