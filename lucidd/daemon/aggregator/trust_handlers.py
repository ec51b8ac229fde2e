"""The trust chain's control requests (layer 3): the signing key, checkpoints, anchoring on
demand, receipts; and the listing of other hosts' sessions in the object store.

Plain functions of :class:`~lucidd.daemon.aggregator.services.ControlServices`, as the other
handlers are; :data:`TRUST_HANDLERS` is their part of the table in aggregator.handlers, which
holds the single failure boundary (docs/receipts.md describes what they return).
"""

from __future__ import annotations

from typing import Any

from lucidd import protocol as p
from lucidd.daemon.access import LEGACY_OWNER, Peer
from lucidd.daemon.aggregator.services import (
    ControlServices,
    Handler,
    readable_session,
    session_for,
)
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.errors import BadRequestError, ForbiddenError, NotAnchoredError


def note_at(s: ControlServices, session: SessionLedger, size: int) -> bytes:
    """The stored signed checkpoint of ``size``, else one signed for this reply only."""
    stored = s.notary.stored_session_note(session, size)
    return stored if stored is not None else s.notary.session_note(session, size)


async def _signing_key(s: ControlServices, r: p.GetSigningKey, peer: Peer) -> p.Message:
    verifier = s.notary.signer.verifier
    return p.SigningKeyReply(
        req=r.req, name=verifier.name, key_id=verifier.key_id, vkey=verifier.vkey
    )


async def _checkpoint(s: ControlServices, r: p.GetCheckpoint, peer: Peer) -> p.Message:
    session = session_for(s, peer, r.session)
    size = session.check_size(r.size)
    if size == session.merkle.size:
        note = s.notary.checkpoint_session(session, size)
    else:
        note = note_at(s, session, size)
    return p.CheckpointReply(req=r.req, session=r.session, size=size, checkpoint=note)


async def _anchor(s: ControlServices, r: p.Anchor, peer: Peer) -> p.Message:
    if not s.policy.may_touch(peer, LEGACY_OWNER):
        raise ForbiddenError(
            "anchoring on demand is for root, the daemon's user and the admin group; "
            f"the daemon anchors every {s.config.anchor_interval:g} s"
        )
    s.notary.checkpoint_grown(s.ledger.sessions)
    made = s.anchor_now()
    size, note = made if made is not None else (0, b"")
    backends = [b.name for b in s.anchorer.backends]
    return p.AnchorReply(req=r.req, size=size, checkpoint=note, backends=backends)


async def _receipt(s: ControlServices, r: p.GetReceipt, peer: Peer) -> p.Message:
    session = await readable_session(s, peer, r.session)
    if not 0 <= r.index < session.merkle.size:
        raise BadRequestError(
            f"chunk {r.index} is not in the log of session (size {session.merkle.size})",
            session=r.session,
            index=r.index,
        )
    notary, config = s.notary, s.config
    # A read-only copy of another host's session proves into that host's anchor log.
    remote = s.remote
    anchor: Any = notary.anchor_log
    backends = bool(s.anchorer.backends)
    if session.remote_host is not None and remote is not None:
        anchor = await remote.anchor_log(session.remote_host)
        backends = False  # whatever that host attested is in its checkpoints' folder
    logged = next(((n, leaf) for n, leaf in anchor.logged(r.session) if n > r.index), None)
    if logged is None:
        raise NotAnchoredError(
            f"chunk {r.index} is in no signed checkpoint yet: the next is due within "
            f"{config.checkpoint_interval:g} s, and anchored within {config.anchor_interval:g} s "
            "after that",
            session=r.session,
            index=r.index,
        )
    size, leaf = logged
    anchor_size = _anchor_covering(anchor.checkpoints.index(), leaf, backends)
    note = notary.stored_session_note(session, size)
    anchor_note = anchor.checkpoints.read(anchor_size) if anchor_size else None
    if note is None or anchor_note is None:
        pending = ", ".join(b.name for b in s.anchorer.backends)
        raise NotAnchoredError(
            f"chunk {r.index} is in the checkpoint of size {size}, leaf {leaf} of the anchor "
            f"log, which is anchored within {config.anchor_interval:g} s"
            + (f" (and attested by {pending} after that)" if pending else ""),
            session=r.session,
            index=r.index,
        )
    stored = anchor.checkpoints.index()[anchor_size]
    attestations = [
        p.Attestation(kind, data)
        for kind in sorted(stored)
        if (data := anchor.checkpoints.read(anchor_size, kind)) is not None
    ]
    return p.ReceiptReply(
        req=r.req,
        session=r.session,
        index=r.index,
        leaf_hash=session.merkle.leaf(r.index),
        session_size=size,
        session_checkpoint=note,
        path=session.merkle.inclusion_proof(r.index, size),
        anchor_index=leaf,
        anchor_size=anchor_size,
        anchor_path=anchor.merkle.inclusion_proof(leaf, anchor_size),
        anchor_checkpoint=anchor_note,
        attestations=attestations,
    )


def _anchor_covering(stored: dict[int, set[str]], leaf: int, backends: bool) -> int:
    """The smallest anchor checkpoint covering ``leaf`` that is attested (when backends are
    configured, by at least one); 0 if there is none yet."""
    for size in sorted(stored):
        if size > leaf and (not backends or stored[size]):
            return size
    return 0


async def _remote_sessions(s: ControlServices, r: p.ListRemoteSessions, peer: Peer) -> p.Message:
    if not s.policy.may_touch(peer, LEGACY_OWNER):
        raise ForbiddenError(
            "listing the object store is for root, the daemon's user and the admin group"
        )
    if s.remote is None:
        raise BadRequestError("this daemon replicates nowhere (replication_url is not set)")
    by_host = await s.remote.sessions_by_host()
    hosts = await s.remote.hosts()
    return p.RemoteSessionsReply(
        req=r.req,
        hosts=[
            p.RemoteHost(host_id, hosts[host_id].origin, hosts[host_id].vkey, sessions)
            for host_id, sessions in by_host.items()
            if host_id in hosts
        ],
    )


TRUST_HANDLERS: dict[type, Handler] = {
    p.GetSigningKey: _signing_key,
    p.GetCheckpoint: _checkpoint,
    p.Anchor: _anchor,
    p.GetReceipt: _receipt,
    p.ListRemoteSessions: _remote_sessions,
}
