"""Who may touch a session (layer 1, pure; the model is docs/security.md).

A session belongs to the uid that opened it. Its owner, root, the daemon's own uid and the
members of the configured ``admin_group`` may put into, finalize, read, shred or see it; anyone
else is told :class:`~lucidd.errors.ForbiddenError`, worded so that it says nothing about
whether the session exists. A caller who may see every session (root, the daemon, an admin)
is told ``unknown_session`` for an id that does not exist, since there is nothing to hide.

The peer's credentials come from the kernel (``SO_PEERCRED``, ``SO_PEERGROUPS``) when it
connects, never from what it sends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lucidd.errors import ForbiddenError, LucidError, UnknownSessionError

#: Owner recorded for sessions created before owners were: only the privileged may use them.
LEGACY_OWNER = -1
ROOT_UID = 0


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel saw it at ``connect``."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


@dataclass(frozen=True)
class AccessPolicy:
    """The host's rule; ``admin_gid`` is None when no ``admin_group`` is configured."""

    daemon_uid: int
    admin_gid: int | None = None

    def sees_everything(self, peer: Peer) -> bool:
        """Root, the daemon's own uid and the admin group may touch every session."""
        if peer.uid in (ROOT_UID, self.daemon_uid):
            return True
        admin = self.admin_gid
        return admin is not None and (peer.gid == admin or admin in peer.groups)

    def may_touch(self, peer: Peer, owner_uid: int) -> bool:
        return peer.uid == owner_uid or self.sees_everything(peer)

    def check(self, peer: Peer, session_id: bytes, owner_uid: int | None) -> None:
        """Raise unless ``peer`` may touch the session; ``owner_uid`` None: it does not exist."""
        if owner_uid is not None and self.may_touch(peer, owner_uid):
            return
        raise self.refusal(peer, session_id, exists=owner_uid is not None)

    def refusal(self, peer: Peer, session_id: bytes, *, exists: bool) -> LucidError:
        """The error for a session the peer cannot use (one wording for both cases)."""
        name = uuid.UUID(bytes=session_id)
        if not exists and self.sees_everything(peer):
            return UnknownSessionError(f"no session {name}", session=session_id)
        return ForbiddenError(
            f"session {name} does not exist or belongs to another user", session=session_id
        )
