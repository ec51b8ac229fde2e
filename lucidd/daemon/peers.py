"""Peer credentials of a Unix-socket connection, delegation, and the admin group (layer 2).

``SO_PEERCRED`` gives the pid, uid and gid the peer had when it called ``connect``;
``SO_PEERGROUPS`` (Linux 4.13) its supplementary groups at that moment, so group membership
is the process's real one, not what ``/etc/group`` says now. A connection that acts as
another user (``ActAs``, :func:`act_as`) has no kernel credentials of that user: its primary
group and groups are the user database's (``getpwuid``, ``getgrouplist``) at that moment.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import socket
import struct
from typing import Final, Protocol

from lucidd.daemon.access import AccessPolicy, Peer
from lucidd.errors import ConfigError, ForbiddenError, InternalError, LucidError

log = logging.getLogger("lucidd.daemon.peers")

_UCRED: Final = struct.Struct("3i")
#: ``socket.SO_PEERGROUPS`` is missing from Python 3.11's module; the Linux value.
SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_GID_SIZE: Final = 4
#: CPython's getsockopt takes at most 1024 bytes: 256 groups (more fall back to /etc/group).
_MAX_GROUPS_BYTES: Final = 1024


class _SockOpts(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def peer_of(sock: _SockOpts) -> Peer:
    """The credentials of the process connected to ``sock`` (an AF_UNIX stream socket)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid, _peer_groups(sock, uid, gid))


def _peer_groups(sock: _SockOpts, uid: int, gid: int) -> frozenset[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _MAX_GROUPS_BYTES)
    except OSError:
        # More groups than one getsockopt can return (ERANGE), or an old kernel: the group
        # database's view of the user instead.
        try:
            return frozenset(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except KeyError:
            return frozenset()
    count = len(raw) // _GID_SIZE
    return frozenset(struct.unpack(f"{count}I", raw[: count * _GID_SIZE]))


def delegated_peer(peer: Peer, uid: int) -> Peer:
    """The Peer that ``peer`` becomes by acting as ``uid`` (already allowed by the policy).

    Acting as oneself keeps the kernel's credentials. A uid with no entry in the user database
    is refused (:class:`~lucidd.errors.ForbiddenError`) rather than given made-up groups: its
    groups are unknown, and a guessed primary gid could happen to be ``admin_group``'s.
    Blocking: the user database may be a directory server (run it off the event loop).
    """
    if uid == peer.uid:
        return peer
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise ForbiddenError(
            f"cannot act as uid {uid}: it has no entry in the user database, so its groups "
            "are unknown"
        ) from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Peer(peer.pid, uid, entry.pw_gid, groups, delegated_by=peer.uid)


async def act_as(policy: AccessPolicy, peer: Peer, uid: int, socket_name: str) -> Peer:
    """Who a connection of ``peer`` is once it acts as ``uid``, or its typed refusal.

    The policy is checked first (on the loop: it is pure), so an unprivileged peer never
    makes the daemon look anyone up; the lookup runs in a thread. Raises only LucidError
    (an unexpected failure is logged with its traceback and raised as ``internal``). Each
    delegation is logged once (``event=act_as``), since every later line of that connection
    names the new uid.
    """
    policy.check_delegation(peer, uid)
    if uid == peer.uid:
        return peer
    try:
        acting = await asyncio.to_thread(delegated_peer, peer, uid)
    except LucidError:
        raise
    except Exception:  # the ActAs's failure boundary, as handle_request is a request's
        log.exception("event=act_as_failed peer_uid=%d uid=%d", peer.uid, uid)
        raise InternalError("internal error; see the daemon log") from None
    log.info(
        "event=act_as socket=%s peer_uid=%d peer_pid=%d uid=%d gid=%d",
        socket_name,
        peer.uid,
        peer.pid,
        acting.uid,
        acting.gid,
    )
    return acting


def access_policy(admin_group: str) -> AccessPolicy:
    """The policy of this daemon: its own uid, and ``admin_group`` (a name or a gid) if set."""
    if not admin_group:
        return AccessPolicy(os.geteuid())
    try:
        gid = int(admin_group) if admin_group.isdigit() else grp.getgrnam(admin_group).gr_gid
    except KeyError:
        raise ConfigError(
            f"admin_group: no group {admin_group!r} on this host", fields=["admin_group"]
        ) from None
    return AccessPolicy(os.geteuid(), gid)
