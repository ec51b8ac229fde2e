"""The control requests (layer 3): one typed reply for each, the single failure boundary.

Handlers are plain functions of :class:`ControlServices`, the narrow view of the aggregator
they need, and of the peer that asked (its uid decides what it may see). Every error becomes
a typed ``Error`` reply in :func:`handle_request`; only a bug reaches the log as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import LEGACY_OWNER, AccessPolicy, Peer
from lucidd.daemon.aggregator.anchoring import Anchorer
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.notary import Notary
from lucidd.daemon.aggregator.remote import RemoteSessions
from lucidd.daemon.aggregator.repair import quarantine_records, scrub
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.config import Config
from lucidd.daemon.logs import NOTICE
from lucidd.daemon.store import SessionMeta, storage_error
from lucidd.errors import (
    BadRequestError,
    ForbiddenError,
    LucidError,
    NotAnchoredError,
    SessionFinalizedError,
)

log = logging.getLogger("lucidd.daemon.aggregator.handlers")


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

    def catch_up(self) -> None:
        """Take in every result the workers have sent, so an acked chunk is visible."""

    def config_dict(self) -> dict[str, Any]: ...

    def health(self) -> p.HealthReply: ...

    def metrics(self) -> dict[str, float]: ...

    def session_lock(self, session_id: bytes) -> asyncio.Lock: ...

    async def freeze(self, session_id: bytes) -> None:
        """Return once the supervisor admits no chunk of the session and has none in flight."""

    def thaw(self, session_id: bytes) -> None: ...

    def session_changed(self, session: SessionLedger) -> None: ...

    def session_shredded(self, session_id: bytes) -> None: ...

    def anchor_now(self) -> tuple[int, bytes] | None:
        """Sign the anchor log's checkpoint now and wake the anchoring backends."""


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


def _session(s: ControlServices, peer: Peer, session_id: bytes) -> SessionLedger:
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


async def _readable(s: ControlServices, peer: Peer, session_id: bytes) -> SessionLedger:
    """As :func:`_session`, but a session this host does not hold is looked for in the object
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
    return _session(s, peer, session_id)


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
    return p.MetricsReply(req=r.req, metrics=s.metrics())


async def _config(s: ControlServices, r: p.GetConfig, peer: Peer) -> p.Message:
    return p.ConfigReply(req=r.req, config=s.config_dict())


async def _open(s: ControlServices, r: p.OpenSession, peer: Peer) -> p.Message:
    if r.session is not None:
        if r.session in s.ledger.unreadable:
            _session(s, peer, r.session)  # refused: damaged, or forbidden to the unprivileged
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
    return p.SessionInfoReply(req=r.req, info=_summary(await _readable(s, peer, r.session)))


async def _root(s: ControlServices, r: p.GetRoot, peer: Peer) -> p.Message:
    session = await _readable(s, peer, r.session)
    size = session.check_size(r.size)
    return p.RootReply(req=r.req, session=r.session, size=size, root=session.merkle.root(size))


async def _proof(s: ControlServices, r: p.GetInclusionProof, peer: Peer) -> p.Message:
    session = await _readable(s, peer, r.session)
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
    session = await _readable(s, peer, r.session)
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
        checkpoint1=_note_at(s, session, size1),
        checkpoint2=_note_at(s, session, size2),
    )


def _note_at(s: ControlServices, session: SessionLedger, size: int) -> bytes:
    """The stored signed checkpoint of ``size``, else one signed for this reply only."""
    stored = s.notary.stored_session_note(session, size)
    return stored if stored is not None else s.notary.session_note(session, size)


async def _finalize(s: ControlServices, r: p.Finalize, peer: Peer) -> p.Message:
    _session(s, peer, r.session)
    async with s.session_lock(r.session):
        # Looked up again under the lock: a shred that held it may have removed the session.
        session = _session(s, peer, r.session)
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
    session = await _readable(s, peer, r.session)
    plaintext, record = session.read_chunk(s.ledger.keyring, r.index)
    return p.ChunkReply(req=r.req, session=r.session, index=r.index, data=plaintext, record=record)


async def _shred(s: ControlServices, r: p.Shred, peer: Peer) -> p.Message:
    _session(s, peer, r.session)
    async with s.session_lock(r.session):
        # Looked up again under the lock: another shred may have finished meanwhile.
        session = _session(s, peer, r.session)
        await s.freeze(r.session)
        s.ledger.shred(r.session)
        s.session_shredded(r.session)
    log.log(
        NOTICE,
        "event=session_shredded session=%s owner_uid=%d by_uid=%d by_pid=%d",
        session.paths.root.name,
        session.owner_uid,
        peer.uid,
        peer.pid,
    )
    return p.ShredReply(req=r.req, session=r.session)


async def _check(s: ControlServices, r: p.Check, peer: Peer) -> p.Message:
    """Scrub: the records are read in a worker thread, so the loop keeps serving; the leaves
    are read on the loop in slices (the log has one writer). Holding the session's lock keeps
    a shred from closing its files meanwhile. Chunks found gone become ``missing``; records
    found unauthentic are copied to the quarantine as well."""
    _session(s, peer, r.session)
    async with s.session_lock(r.session):
        session = _session(s, peer, r.session)
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


async def _signing_key(s: ControlServices, r: p.GetSigningKey, peer: Peer) -> p.Message:
    verifier = s.notary.signer.verifier
    return p.SigningKeyReply(
        req=r.req, name=verifier.name, key_id=verifier.key_id, vkey=verifier.vkey
    )


async def _checkpoint(s: ControlServices, r: p.GetCheckpoint, peer: Peer) -> p.Message:
    session = _session(s, peer, r.session)
    size = session.check_size(r.size)
    if size == session.merkle.size:
        note = s.notary.checkpoint_session(session, size)
    else:
        note = _note_at(s, session, size)
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
    session = await _readable(s, peer, r.session)
    if not 0 <= r.index < session.merkle.size:
        raise BadRequestError(
            f"chunk {r.index} is not in the log of session (size {session.merkle.size})",
            session=r.session,
            index=r.index,
        )
    notary, config = s.notary, s.config
    logged = next(
        ((n, leaf) for n, leaf in notary.anchor_log.logged(r.session) if n > r.index), None
    )
    if logged is None:
        raise NotAnchoredError(
            f"chunk {r.index} is in no signed checkpoint yet: the next is due within "
            f"{config.checkpoint_interval:g} s, and anchored within {config.anchor_interval:g} s "
            "after that",
            session=r.session,
            index=r.index,
        )
    size, leaf = logged
    anchor_size = _anchor_covering(s, leaf)
    note = notary.stored_session_note(session, size)
    anchor_note = notary.anchor_log.checkpoints.read(anchor_size) if anchor_size else None
    if note is None or anchor_note is None:
        pending = ", ".join(b.name for b in s.anchorer.backends)
        raise NotAnchoredError(
            f"chunk {r.index} is in the checkpoint of size {size}, leaf {leaf} of the anchor "
            f"log, which is anchored within {config.anchor_interval:g} s"
            + (f" (and attested by {pending} after that)" if pending else ""),
            session=r.session,
            index=r.index,
        )
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
        anchor_path=notary.anchor_log.merkle.inclusion_proof(leaf, anchor_size),
        anchor_checkpoint=anchor_note,
        attestations=[p.Attestation(k, v) for k, v in notary.attestations(anchor_size).items()],
    )


def _anchor_covering(s: ControlServices, leaf: int) -> int:
    """The smallest anchor checkpoint covering ``leaf`` that is attested (when backends are
    configured, by at least one); 0 if there is none yet."""
    stored = s.notary.anchor_log.checkpoints.index()
    for size in sorted(stored):
        if size > leaf and (not s.anchorer.backends or stored[size]):
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


_Handler = Callable[[ControlServices, Any, Peer], Awaitable[p.Message]]
_HANDLERS: dict[type, _Handler] = {
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
    p.GetSigningKey: _signing_key,
    p.GetCheckpoint: _checkpoint,
    p.Anchor: _anchor,
    p.GetReceipt: _receipt,
    p.ListRemoteSessions: _remote_sessions,
}
