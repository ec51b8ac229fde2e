"""The control requests (layer 3): one typed reply for each, the single failure boundary.

Handlers are plain functions of :class:`~lucidd.daemon.aggregator.services.ControlServices`,
the narrow view of the aggregator they need, and of the peer that asked (its uid decides what
it may see; the lookups that check it are in aggregator.services). The trust chain's handlers
are in aggregator.trust_handlers, the master keys' in aggregator.key_handlers; :data:`_HANDLERS`
holds them all. Every error becomes a typed
``Error`` reply in :func:`handle_request`; only a bug reaches the log as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import LEGACY_OWNER, Peer
from lucidd.daemon.aggregator.key_handlers import KEY_HANDLERS
from lucidd.daemon.aggregator.repair import quarantine_records, scrub
from lucidd.daemon.aggregator.services import (
    ControlServices,
    Handler,
    readable_session,
    session_for,
)
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.aggregator.trust_handlers import TRUST_HANDLERS, note_at
from lucidd.daemon.logs import NOTICE
from lucidd.daemon.store import SessionMeta, storage_error
from lucidd.errors import BadRequestError, LucidError, SessionFinalizedError

log = logging.getLogger("lucidd.daemon.aggregator.handlers")


#: Chunks whose leaves a check reads from the log per loop iteration (then it yields).
CHECK_SLICE = 4096


def _summary(session: SessionLedger) -> p.SessionSummary:
    return p.SessionSummary(
        session=session.session_id,
        state=session.state,
        size=session.merkle.size,
        chunks=session.chunks,
        plaintext_bytes=session.plaintext_bytes,
        compression=session.meta.compression,
        owner_uid=session.owner_uid,
        created_ns=session.meta.created_ns,
        label=session.meta.label,
        chunk_size=session.meta.chunk_size,
        stored_bytes=session.stored_bytes(),
        damaged=session.damaged,
        missing=sorted(session.missing),
        quarantined=len(session.quarantine),
        problem=session.problem(),
    )


def _evicted_summary(session_id: bytes, meta: SessionMeta) -> p.SessionSummary:
    """A session whose records are only in the object store now (local_retention)."""
    return p.SessionSummary(
        session=session_id,
        state=ipc.SESSION_FINALIZED,
        size=0,
        chunks=0,
        plaintext_bytes=0,
        compression=meta.compression,
        owner_uid=meta.owner_uid,
        created_ns=meta.created_ns,
        label=meta.label,
        chunk_size=meta.chunk_size,
        problem="freed locally (local_retention); read from the object store on use",
    )


def _unreadable_summary(session_id: bytes, problem: str) -> p.SessionSummary:
    return p.SessionSummary(
        session=session_id,
        state=ipc.SESSION_DAMAGED,
        size=0,
        chunks=0,
        plaintext_bytes=0,
        compression="",
        owner_uid=LEGACY_OWNER,
        damaged=True,
        problem=problem,
    )


async def handle_request(services: ControlServices, request: Any, peer: Peer) -> p.Message:
    """One reply for one request from ``peer``; every failure becomes a typed ``Error``."""
    req: int = request.req
    try:
        p.check_control_request(request)
        services.catch_up()
        handler = _HANDLERS[type(request)]
        return await handler(services, request, peer)
    except LucidError as err:
        return p.error_reply(req, err)
    except OSError as exc:  # disk full, I/O error: typed, and the daemon keeps serving
        return p.error_reply(req, storage_error(exc, type(request).__name__))
    except Exception:
        log.exception("event=control_request_failed request=%s", type(request).__name__)
        return p.Error(req=req, code="internal", message="internal error; see the daemon log")


async def _health(s: ControlServices, r: p.Health, peer: Peer) -> p.Message:
    reply = s.health()
    return p.HealthReply(
        req=r.req,
        status=reply.status,
        processes=reply.processes,
        sessions=len(s.ledger.sessions) + len(s.ledger.unreadable),
        reasons=reply.reasons,
        damaged_sessions=reply.damaged_sessions,
    )


async def _metrics(s: ControlServices, r: p.Metrics, peer: Peer) -> p.Message:
    return p.MetricsReply(req=r.req, metrics=s.metrics(), histograms=s.histograms())


async def _config(s: ControlServices, r: p.GetConfig, peer: Peer) -> p.Message:
    return p.ConfigReply(req=r.req, config=s.config_dict())


async def _open(s: ControlServices, r: p.OpenSession, peer: Peer) -> p.Message:
    if r.session is not None:
        if r.session in s.ledger.unreadable:
            session_for(s, peer, r.session)  # refused: damaged, or forbidden to the unprivileged
        existing = s.ledger.sessions.get(r.session)
        if existing is not None:
            if not s.policy.may_touch(peer, existing.owner_uid):
                raise s.policy.refusal(peer, r.session, exists=True)
            if r.chunk_size:
                existing.record_chunk_size(r.chunk_size)
            return p.SessionOpened(req=r.req, session=existing.session_id)
    session = s.ledger.open(
        r.session,
        r.compression or s.default_compression,
        peer.uid,
        label=r.label or "",
        chunk_size=r.chunk_size or 0,
    )
    s.session_changed(session)
    return p.SessionOpened(req=r.req, session=session.session_id)


async def _sessions(s: ControlServices, r: p.ListSessions, peer: Peer) -> p.Message:
    readable = sorted(
        (x for x in s.ledger if s.policy.may_touch(peer, x.owner_uid)),
        key=lambda x: x.meta.created_ns,
    )
    visible = [_summary(x) for x in readable]
    visible += [
        _evicted_summary(session_id, meta)
        for session_id, meta in s.ledger.evicted.items()
        if s.policy.may_touch(peer, meta.owner_uid)
    ]
    if s.policy.may_touch(peer, LEGACY_OWNER):
        visible += [_unreadable_summary(i, why) for i, why in s.ledger.unreadable.items()]
    return p.SessionListReply(req=r.req, sessions=visible)


async def _info(s: ControlServices, r: p.SessionInfo, peer: Peer) -> p.Message:
    return p.SessionInfoReply(req=r.req, info=_summary(await readable_session(s, peer, r.session)))


async def _root(s: ControlServices, r: p.GetRoot, peer: Peer) -> p.Message:
    session = await readable_session(s, peer, r.session)
    size = session.check_size(r.size)
    return p.RootReply(req=r.req, session=r.session, size=size, root=session.merkle.root(size))


async def _proof(s: ControlServices, r: p.GetInclusionProof, peer: Peer) -> p.Message:
    session = await readable_session(s, peer, r.session)
    size = session.check_size(r.size)
    if not 0 <= r.index < size:
        raise BadRequestError(
            f"index {r.index} is not in the tree of size {size}", session=r.session
        )
    return p.InclusionProofReply(
        req=r.req,
        session=r.session,
        index=r.index,
        size=size,
        leaf_hash=session.merkle.leaf(r.index),
        path=session.merkle.inclusion_proof(r.index, size),
        root=session.merkle.root(size),
    )


async def _consistency(s: ControlServices, r: p.GetConsistencyProof, peer: Peer) -> p.Message:
    session = await readable_session(s, peer, r.session)
    size2 = session.check_size(r.size2)
    size1 = session.check_size(r.size1)
    if size1 > size2:
        raise BadRequestError(f"size1 {size1} is larger than size2 {size2}")
    return p.ConsistencyProofReply(
        req=r.req,
        session=r.session,
        size1=size1,
        size2=size2,
        path=session.merkle.consistency_proof(size1, size2),
        root1=session.merkle.root(size1),
        root2=session.merkle.root(size2),
        checkpoint1=note_at(s, session, size1),
        checkpoint2=note_at(s, session, size2),
    )


async def _finalize(s: ControlServices, r: p.Finalize, peer: Peer) -> p.Message:
    session_for(s, peer, r.session)
    async with s.session_lock(r.session):
        # Looked up again under the lock: a shred that held it may have removed the session.
        session = session_for(s, peer, r.session)
        if session.remote_host is not None:
            raise SessionFinalizedError(
                f"this is a read-only copy of host {session.remote_host}'s session; "
                "finalize it on that host",
                session=r.session,
            )
        already = session.state == ipc.SESSION_FINALIZED
        if not already:
            await s.freeze(r.session)
            try:
                checkpoint = session.finalize(s.ledger.keyring)
            except BaseException:
                s.thaw(r.session)
                raise
            s.session_changed(session)
        else:
            checkpoint = session.finalized_checkpoint(s.ledger.keyring)
        # Stored and logged once (the first finalize); a repeat finds the stored note.
        note = s.notary.checkpoint_session(session, checkpoint.size)
    return p.FinalizeReply(
        req=r.req,
        session=r.session,
        size=checkpoint.size,
        root=checkpoint.root,
        checkpoint=note,
        already_finalized=already,
    )


async def _read(s: ControlServices, r: p.ReadChunk, peer: Peer) -> p.Message:
    session = await readable_session(s, peer, r.session)
    plaintext, record = session.read_chunk(s.ledger.keyring, r.index)
    return p.ChunkReply(req=r.req, session=r.session, index=r.index, data=plaintext, record=record)


async def _shred(s: ControlServices, r: p.Shred, peer: Peer) -> p.Message:
    session_for(s, peer, r.session)
    async with s.session_lock(r.session):
        # Looked up again under the lock: another shred may have finished meanwhile.
        session = session_for(s, peer, r.session)
        await s.freeze(r.session)
        s.ledger.shred(r.session)
        s.session_shredded(r.session)
    log.log(
        NOTICE,
        "event=session_shredded session=%s owner_uid=%d by_uid=%d by_pid=%d%s",
        session.paths.root.name,
        session.owner_uid,
        peer.uid,
        peer.pid,
        "" if peer.delegated_by is None else f" via_uid={peer.delegated_by}",
    )
    return p.ShredReply(req=r.req, session=r.session)


async def _check(s: ControlServices, r: p.Check, peer: Peer) -> p.Message:
    """Scrub: the records are read in a worker thread, so the loop keeps serving; the leaves
    are read on the loop in slices (the log has one writer). Holding the session's lock keeps
    a shred from closing its files meanwhile. Chunks found gone become ``missing``; records
    found unauthentic are copied to the quarantine as well."""
    session_for(s, peer, r.session)
    async with s.session_lock(r.session):
        session = session_for(s, peer, r.session)
        size = session.merkle.size
        targets = []
        for start in range(0, size, CHECK_SLICE):
            targets += session.scrub_targets(start, min(size, start + CHECK_SLICE))
            await asyncio.sleep(0)
        targets += session.window_targets()
        secret = session.secret(s.ledger.keyring)
        result = await asyncio.to_thread(scrub, session.paths, secret, session.session_id, targets)
        session.note_gone(result.gone)
        if result.unauthentic:  # copied aside like recovery does (the lock keeps one writer)
            session.quarantine, lines = await asyncio.to_thread(
                quarantine_records, session.paths, session.quarantine, result.unauthentic
            )
            for event, details in lines:
                log.warning("event=%s session=%s %s", event, session.paths.root.name, details)
    if result.bad:
        log.warning(
            "event=check_failed session=%s checked=%d bad=%d first_bad=%d",
            session.paths.root.name,
            len(targets),
            len(result.bad),
            result.bad[0],
        )
    return p.CheckReply(
        req=r.req, session=r.session, size=size, checked=len(targets), bad=result.bad
    )


_HANDLERS: dict[type, Handler] = {
    p.Health: _health,
    p.Metrics: _metrics,
    p.GetConfig: _config,
    p.OpenSession: _open,
    p.ListSessions: _sessions,
    p.SessionInfo: _info,
    p.GetRoot: _root,
    p.GetInclusionProof: _proof,
    p.GetConsistencyProof: _consistency,
    p.Finalize: _finalize,
    p.ReadChunk: _read,
    p.Shred: _shred,
    p.Check: _check,
    **TRUST_HANDLERS,
    **KEY_HANDLERS,
}
