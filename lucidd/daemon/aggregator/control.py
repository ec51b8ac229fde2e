"""Control-socket handlers (layer 3), served by the aggregator (DESIGN §2, §6).

:class:`ControlProtocol` turns bytes into requests with the sans-IO codec and each request into
exactly one reply. Handlers are plain functions of :class:`ControlServices`, the narrow view of
the aggregator they need, so the process main only composes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import LEGACY_OWNER, AccessPolicy, Peer
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.repair import quarantine_records, scrub
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.channels import peer_hung_up
from lucidd.daemon.config import Config, connection_limit
from lucidd.daemon.logs import NOTICE, ClientErrorLog
from lucidd.daemon.peers import peer_of
from lucidd.daemon.store import storage_error
from lucidd.errors import (
    BadRequestError,
    BusyError,
    IdleTimeoutError,
    InternalError,
    LucidError,
)

log = logging.getLogger("lucidd.daemon.aggregator.control")
_client_errors = ClientErrorLog(log)

#: The longest pause between two checks of a connection's idle timeout and of a paused peer.
CHECK_INTERVAL_S: Final = 1.0
#: At most one log line per this many seconds about connections refused over the limit.
REFUSAL_LOG_INTERVAL_S: Final = 10.0
# Why a control connection is not being read from (ControlProtocol._pauses).
_PIPELINED: Final = "pipelined"  # max_pipelined_requests of its requests are being served
_WRITING: Final = "writing"  # its replies are not being read (transport above its high mark)


class ControlServices(Protocol):
    """What the control handlers need from the aggregator."""

    ledger: Ledger
    default_compression: str
    policy: AccessPolicy

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
    if s.policy.may_touch(peer, LEGACY_OWNER):
        visible += [_unreadable_summary(i, why) for i, why in s.ledger.unreadable.items()]
    return p.SessionListReply(req=r.req, sessions=visible)


async def _info(s: ControlServices, r: p.SessionInfo, peer: Peer) -> p.Message:
    return p.SessionInfoReply(req=r.req, info=_summary(_session(s, peer, r.session)))


async def _root(s: ControlServices, r: p.GetRoot, peer: Peer) -> p.Message:
    session = _session(s, peer, r.session)
    size = session.check_size(r.size)
    return p.RootReply(req=r.req, session=r.session, size=size, root=session.merkle.root(size))


async def _proof(s: ControlServices, r: p.GetInclusionProof, peer: Peer) -> p.Message:
    session = _session(s, peer, r.session)
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
    session = _session(s, peer, r.session)
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
    )


async def _finalize(s: ControlServices, r: p.Finalize, peer: Peer) -> p.Message:
    _session(s, peer, r.session)
    async with s.session_lock(r.session):
        # Looked up again under the lock: a shred that held it may have removed the session.
        session = _session(s, peer, r.session)
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
    return p.FinalizeReply(
        req=r.req,
        session=r.session,
        size=checkpoint.size,
        root=checkpoint.root,
        checkpoint=checkpoint.encode(),
        already_finalized=already,
    )


async def _read(s: ControlServices, r: p.ReadChunk, peer: Peer) -> p.Message:
    session = _session(s, peer, r.session)
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


@dataclass(eq=False)
class ControlLimits:
    """The bounds of every control connection (issue 10), and the set they share."""

    max_connections: int
    max_pipelined_requests: int
    max_reply_buffer: int
    idle_timeout: float
    connections: set[ControlProtocol] = field(default_factory=set)
    refused: int = 0
    _refused_unlogged: int = 0
    _refusal_logged_at: float = -REFUSAL_LOG_INTERVAL_S

    @classmethod
    def from_config(cls, config: Config) -> ControlLimits:
        return cls(
            max_connections=connection_limit(config),
            max_pipelined_requests=config.max_pipelined_requests,
            max_reply_buffer=config.max_reply_buffer,
            idle_timeout=config.idle_timeout,
        )

    def accepts(self, conn: ControlProtocol) -> bool:
        """Add ``conn`` unless the socket is at ``max_connections`` (logged, rate-limited)."""
        if len(self.connections) < self.max_connections:
            self.connections.add(conn)
            return True
        self.refused += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning(
                "event=connections_refused socket=control refused=%d limit=%d",
                self._refused_unlogged,
                self.max_connections,
            )
            self._refusal_logged_at = now
            self._refused_unlogged = 0
        return False


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
}


class ControlProtocol(asyncio.Protocol):
    """One control connection: requests are handled concurrently, replies sent as they finish."""

    def __init__(self, services: ControlServices, limits: ControlLimits | None = None) -> None:
        self._services = services
        self._decoder = p.control_request_decoder()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._peer = Peer(pid=0, uid=-1, gid=-1)  # set by connection_made
        self._error_logged = False
        # -- bounds per connection (issue 10) --
        self._limits = limits if limits is not None else ControlLimits.from_config(Config())
        self._pauses: set[str] = set()  # why reading is paused; empty: it is not
        self._writable = asyncio.Event()  # cleared while the reply buffer is over its bound
        self._writable.set()
        self._active_at = time.monotonic()  # last request received or reply sent
        self._check: asyncio.TimerHandle | None = None
        self._fd = -1
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        try:
            self._peer = peer_of(transport.get_extra_info("socket"))
        except OSError as exc:  # the peer is already gone: nothing to serve
            log.info("event=control_peer_unknown errno=%s", exc.errno)
            transport.close()
            return
        self._apply_bounds()

    def data_received(self, data: bytes) -> None:
        self._active_at = time.monotonic()
        self._decoder.receive_data(data)
        self._start_requests()

    def _start_requests(self) -> None:
        """Serve the buffered requests, at most ``max_pipelined_requests`` at once: past it,
        reading waits until replies have gone out (the rest stay in the decoder and socket)."""
        limit = self._limits.max_pipelined_requests
        while not self._closing:
            if len(self._tasks) >= limit:
                self._pause(_PIPELINED)
                return
            try:
                event = self._decoder.next_event()
            except LucidError as err:
                self._note_client_error(err.code, err.message)
                self._send(p.error_reply(_req_of(err), err))
                self._close()
                return
            if event is None:
                self._resume(_PIPELINED)
                return
            if isinstance(event, p.FrameMessage):
                task = asyncio.ensure_future(self._serve(event.message))
                self._tasks.add(task)
                task.add_done_callback(self._request_done)

    def _request_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if _PIPELINED in self._pauses and self._transport is not None:
            self._start_requests()

    async def _serve(self, request: Any) -> None:
        # A request starts only while the client reads its replies: one that never does costs
        # max_reply_buffer plus the one reply being made, not one reply per request.
        await self._writable.wait()
        reply = await handle_request(self._services, request, self._peer)
        if isinstance(reply, p.Error) and reply.code != InternalError.code:
            self._note_client_error(reply.code, reply.message)
        self._send(reply)

    def _note_client_error(self, code: str, message: str) -> None:
        """Log this connection's first refusal (rate-limited across connections)."""
        if not self._error_logged:
            self._error_logged = True
            _client_errors.report(self._peer.uid, self._peer.pid, code, message)

    def _send(self, reply: p.Message) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._active_at = time.monotonic()
            self._transport.write(p.encode_frame(reply))

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._limits.connections.discard(self)
        self._writable.set()  # waiting requests go on; their replies are dropped
        if self._check is not None:
            self._check.cancel()
            self._check = None

    # -- bounds per connection (issue 10) -----------------------------------------------

    def _apply_bounds(self) -> None:
        """Refuse a connection over ``max_connections``; else bound its reply buffer and start
        watching its idle time."""
        transport = self._transport
        assert transport is not None
        limits = self._limits
        if not limits.accepts(self):
            busy = BusyError(f"too many connections (max_connections = {limits.max_connections})")
            self._send(p.error_reply(0, busy))
            self._close()
            return
        transport.set_write_buffer_limits(high=limits.max_reply_buffer)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self._schedule_check()

    def pause_writing(self) -> None:
        self._writable.clear()
        self._pause(_WRITING)

    def resume_writing(self) -> None:
        self._writable.set()
        self._resume(_WRITING)

    def _pause(self, reason: str) -> None:
        if not self._pauses and self._transport is not None:
            self._transport.pause_reading()
        self._pauses.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        transport = self._transport
        if not self._pauses and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _schedule_check(self) -> None:
        period = min(CHECK_INTERVAL_S, self._limits.idle_timeout / 4)
        self._check = asyncio.get_running_loop().call_later(period, self._check_bounds)

    def _check_bounds(self) -> None:
        self._check = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._pauses and peer_hung_up(self._fd):
            log.info("event=peer_hung_up socket=control while=%s", ",".join(sorted(self._pauses)))
            transport.abort()
            return
        idle_timeout = self._limits.idle_timeout
        # Requests waiting for the client to read its replies do not make it busy: a client
        # that reads nothing for idle_timeout gives its buffer and its place back.
        serving = bool(self._tasks) and self._writable.is_set()
        if not serving and time.monotonic() - self._active_at > idle_timeout:
            log.info("event=connection_dropped socket=control code=idle_timeout")
            if not self._writable.is_set():
                transport.abort()  # a close would wait for it to read everything first
                return
            err = IdleTimeoutError(f"no request for {idle_timeout:g} s (idle_timeout)")
            self._send(p.error_reply(0, err))
            self._close()
            return
        self._schedule_check()


def _req_of(err: LucidError) -> int:
    req = err.context.get("req")
    return req if isinstance(req, int) else 0
