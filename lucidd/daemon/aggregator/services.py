"""The aggregator as the control handlers see it (layer 3), and who may touch a session.

:class:`ControlServices` is the narrow view of the aggregator that every handler is given.
:func:`session_for` and :func:`readable_session` are the one place a handler looks a session
up: each checks the peer's access first, so no handler can forget to; the second also looks
in the object store for a session this host does not hold (aggregator.remote).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lucidd import protocol as p
from lucidd.daemon.access import LEGACY_OWNER, AccessPolicy, Peer
from lucidd.daemon.aggregator.anchoring import Anchorer
from lucidd.daemon.aggregator.key_rotation import KeyRotation
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.notary import Notary
from lucidd.daemon.aggregator.remote import RemoteSessions
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.config import Config


class ControlServices(Protocol):
    """What the control handlers need from the aggregator."""

    ledger: Ledger
    default_compression: str
    policy: AccessPolicy
    notary: Notary
    anchorer: Anchorer
    config: Config
    #: Sessions of other hosts in the object store (None: no replication configured).
    remote: RemoteSessions | None
    #: Master-key list, rotation, re-wrap and retirement (aggregator.key_rotation).
    keys: KeyRotation

    def catch_up(self) -> None:
        """Take in every result the workers have sent, so an acked chunk is visible."""

    def config_dict(self) -> dict[str, Any]: ...

    def health(self) -> p.HealthReply: ...

    def metrics(self) -> dict[str, float]: ...

    def histograms(self) -> dict[str, p.Histogram]:
        """Every process's histograms by name, those of one name merged."""

    def session_lock(self, session_id: bytes) -> asyncio.Lock: ...

    async def freeze(self, session_id: bytes) -> None:
        """Return once the supervisor admits no chunk of the session and has none in flight."""

    def thaw(self, session_id: bytes) -> None: ...

    def session_changed(self, session: SessionLedger) -> None: ...

    def session_shredded(self, session_id: bytes) -> None: ...

    def anchor_now(self) -> tuple[int, bytes] | None:
        """Sign the anchor log's checkpoint now and wake the anchoring backends."""


def session_for(s: ControlServices, peer: Peer, session_id: bytes) -> SessionLedger:
    """The session if ``peer`` may touch it; else one refusal for "not yours" and "none".

    A session that cannot be loaded (unreadable metadata or secret) has no known owner: the
    privileged are told it is ``damaged``, anyone else gets the usual refusal.
    """
    session = s.ledger.sessions.get(session_id)
    if session is None:
        damaged = s.ledger.damaged_error(session_id)
        if damaged is not None:
            s.policy.check(peer, session_id, LEGACY_OWNER)
            raise damaged
    s.policy.check(peer, session_id, session.owner_uid if session is not None else None)
    assert session is not None
    return session


async def readable_session(s: ControlServices, peer: Peer, session_id: bytes) -> SessionLedger:
    """As :func:`session_for`, but a session this host does not hold is looked for in the object
    store first (aggregator.remote) when the peer is privileged: owner uids of other hosts
    mean nothing here, so only root, the daemon's uid and the admin group read them."""
    remote = s.remote
    evicted = s.ledger.evicted.get(session_id)
    if remote is not None and evicted is not None:
        s.policy.check(peer, session_id, evicted.owner_uid)
        async with s.session_lock(session_id):
            if session_id in s.ledger.evicted:  # its records were freed: fetch them back
                await remote.fetch_back(s.ledger, session_id)
    if (
        remote is not None
        and session_id not in s.ledger.sessions
        and session_id not in s.ledger.unreadable
        and s.policy.may_touch(peer, LEGACY_OWNER)
    ):
        async with s.session_lock(session_id):
            if session_id not in s.ledger.sessions:
                session = await remote.hydrate(s.ledger, session_id)
                if session is not None:
                    s.session_changed(session)
    return session_for(s, peer, session_id)


#: A control handler: the services, the decoded request, the peer that sent it.
Handler = Callable[[ControlServices, Any, Peer], Awaitable[p.Message]]
