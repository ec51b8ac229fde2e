"""Peer credentials of a Unix-socket connection and the admin group (layer 2).

``SO_PEERCRED`` gives the pid, uid and gid the peer had when it called ``connect``;
``SO_PEERGROUPS`` (Linux 4.13) its supplementary groups at that moment, so group membership
is the process's real one, not what ``/etc/group`` says now.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from typing import Final, Protocol

from lucidd.daemon.access import AccessPolicy, Peer
from lucidd.errors import ConfigError

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
