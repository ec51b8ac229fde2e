"""Who may touch a session (layer 1, pure; the model is docs/security.md).

A session belongs to the uid that opened it. Its owner, root, the daemon's own uid and the
members of the configured ``admin_group`` may put into, finalize, read, shred or see it; anyone
else is told :class:`~lucidd.errors.ForbiddenError`, worded so that it says nothing about
whether the session exists. A caller who may see every session (root, the daemon, an admin)
is told ``unknown_session`` for an id that does not exist, since there is nothing to hide.

The peer's credentials come from the kernel (``SO_PEERCRED``, ``SO_PEERGROUPS``) when it
connects, never from what it sends, with one exception that the kernel's credentials must
allow: a connection of root or of the daemon's own uid may *act as* another user for its
whole life (``ActAs``, :meth:`AccessPolicy.check_delegation`), which is how a gateway such as
``lucidd http`` serves its own authenticated clients under their own rules.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lucidd.errors import BadRequestError, ForbiddenError, LucidError, UnknownSessionError
from lucidd.protocol import MAX_UID

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
    #: The kernel's uid of the connection when it acts as ``uid`` (ActAs), else None.
    delegated_by: int | None = None


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

    def check_delegation(self, peer: Peer, uid: int) -> None:
        """Raise unless ``peer`` (the kernel's credentials) may act as ``uid`` (``ActAs``).

        Acting as oneself changes nothing and is always allowed. Otherwise only root and the
        daemon's own uid may delegate (not ``admin_group``: seeing every session is not
        creating sessions in other users' names), and only root may act as root or as the
        daemon's uid: nothing is root's alone today, but the daemon's uid acting as root would
        become an escalation the day something is, and would record root as the owner of
        sessions root never opened.
        """
        if not 0 <= uid <= MAX_UID:
            raise BadRequestError(f"act_as uid {uid} is out of range 0..{MAX_UID}")
        if peer.delegated_by is not None:
            raise ForbiddenError("this connection already acts as another user")
        if uid == peer.uid:
            return
        if peer.uid not in (ROOT_UID, self.daemon_uid):
            raise ForbiddenError(
                f"uid {peer.uid} may not act as another user: only root and lucidd's own "
                f"user (uid {self.daemon_uid}) may"
            )
        if uid in (ROOT_UID, self.daemon_uid) and peer.uid != ROOT_UID:
            raise ForbiddenError(f"only root may act as uid {uid} (root or lucidd's own user)")

    def refusal(self, peer: Peer, session_id: bytes, *, exists: bool) -> LucidError:
        """The error for a session the peer cannot use (one wording for both cases)."""
        name = uuid.UUID(bytes=session_id)
        if not exists and self.sees_everything(peer):
            return UnknownSessionError(f"no session {name}", session=session_id)
        return ForbiddenError(
            f"session {name} does not exist or belongs to another user", session=session_id
        )
