"""Who may act as whom (ActAs): the policy (lucidd.daemon.access) and the user lookup (peers).

The multi-user behaviour on a real daemon is in tests/integration/test_act_as.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd

import pytest

from lucidd import protocol as p
from lucidd.daemon.access import AccessPolicy, Peer
from lucidd.daemon.peers import act_as, delegated_peer
from lucidd.errors import BadRequestError, ForbiddenError, LucidError

DAEMON_UID = 990
ADMIN_GID = 995
ALICE = 1001
BOB = 1002
POLICY = AccessPolicy(DAEMON_UID, ADMIN_GID)
ROOT = Peer(pid=10, uid=0, gid=0)
DAEMON = Peer(pid=11, uid=DAEMON_UID, gid=DAEMON_UID)
ADMIN = Peer(pid=12, uid=1003, gid=1003, groups=frozenset({ADMIN_GID}))
USER = Peer(pid=13, uid=ALICE, gid=ALICE)
#: A uid of this host's user database that is neither root nor the policy's daemon uid.
ALICE_IN_DB = next(e.pw_uid for e in pwd.getpwall() if e.pw_uid not in (0, DAEMON_UID))


@pytest.mark.parametrize(
    ("peer", "uid"),
    [
        (ROOT, ALICE),
        (ROOT, 0),
        (ROOT, DAEMON_UID),
        (DAEMON, ALICE),
        (DAEMON, DAEMON_UID),  # itself: nothing changes
        (USER, ALICE),  # itself
        (ADMIN, ADMIN.uid),  # itself
        (ROOT, p.MAX_UID),
    ],
)
def test_who_may_act_as_whom(peer: Peer, uid: int) -> None:
    POLICY.check_delegation(peer, uid)


@pytest.mark.parametrize(
    ("peer", "uid", "fragment"),
    [
        (USER, BOB, f"uid {ALICE} may not act as another user"),
        (USER, 0, f"uid {ALICE} may not act as another user"),
        (USER, DAEMON_UID, f"uid {ALICE} may not act as another user"),
        # The admin group sees everything but creates nothing in others' names.
        (ADMIN, ALICE, "only root and lucidd's own user"),
        # The daemon's uid is not root: acting as root (or being asked to by anyone but
        # root) would be an escalation the day something is root's alone.
        (DAEMON, 0, "only root may act as uid 0"),
    ],
)
def test_who_may_not(peer: Peer, uid: int, fragment: str) -> None:
    with pytest.raises(ForbiddenError, match=fragment):
        POLICY.check_delegation(peer, uid)


@pytest.mark.parametrize("uid", [-1, p.MAX_UID + 1, 2**63])
def test_a_uid_outside_uid_t_is_a_bad_request(uid: int) -> None:
    with pytest.raises(BadRequestError, match="out of range"):
        POLICY.check_delegation(ROOT, uid)


def test_a_connection_acts_as_another_user_once() -> None:
    acting = Peer(pid=10, uid=ALICE, gid=ALICE, delegated_by=0)
    with pytest.raises(ForbiddenError, match="already acts"):
        POLICY.check_delegation(acting, BOB)


def test_a_delegated_peer_is_held_to_its_users_rules() -> None:
    alice = Peer(pid=10, uid=ALICE, gid=ALICE, delegated_by=0)
    assert POLICY.may_touch(alice, ALICE)
    assert not POLICY.may_touch(alice, BOB)
    assert not POLICY.sees_everything(alice)
    admin = Peer(pid=10, uid=1003, gid=1003, groups=frozenset({ADMIN_GID}), delegated_by=0)
    assert POLICY.sees_everything(admin)


def _unused_uid() -> int:
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    return next(uid for uid in range(424242, 2**31) if uid not in taken)


def test_the_delegated_peer_has_the_users_groups_from_the_database() -> None:
    entry = pwd.getpwuid(0)
    peer = delegated_peer(Peer(pid=5, uid=DAEMON_UID, gid=DAEMON_UID), 0)
    assert peer == Peer(
        pid=5,
        uid=0,
        gid=entry.pw_gid,
        groups=frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)),
        delegated_by=DAEMON_UID,
    )


def test_acting_as_oneself_keeps_the_kernels_credentials() -> None:
    peer = Peer(pid=5, uid=0, gid=7, groups=frozenset({8, 9}))
    assert delegated_peer(peer, 0) is peer


def test_a_uid_without_a_user_is_refused() -> None:
    uid = _unused_uid()
    with pytest.raises(ForbiddenError, match=f"cannot act as uid {uid}: it has no entry"):
        delegated_peer(ROOT, uid)


def test_act_as_checks_the_policy_then_logs_the_delegation_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lucidd.daemon.peers")
    policy = AccessPolicy(DAEMON_UID)
    peer = asyncio.run(act_as(policy, ROOT, 0, "control"))
    assert peer.uid == 0
    assert peer.delegated_by is None  # root acting as root: its own credentials
    assert caplog.messages == []
    with pytest.raises(ForbiddenError):
        asyncio.run(act_as(policy, USER, 0, "data"))
    assert caplog.messages == []
    acting = asyncio.run(act_as(policy, DAEMON, ALICE_IN_DB, "data"))
    assert acting.delegated_by == DAEMON_UID
    assert caplog.messages == [
        f"event=act_as socket=data peer_uid={DAEMON_UID} peer_pid=11 uid={ALICE_IN_DB} "
        f"gid={acting.gid}"
    ]


def test_act_as_raises_only_lucid_errors() -> None:
    with pytest.raises(LucidError):
        asyncio.run(act_as(AccessPolicy(DAEMON_UID), ROOT, _unused_uid(), "control"))
