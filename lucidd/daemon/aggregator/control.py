"""The control socket (layer 3), served by the aggregator (DESIGN §2, §6).

:class:`ControlProtocol` turns bytes into requests with the sans-IO codec and each request into
exactly one reply (:func:`~lucidd.daemon.aggregator.handlers.handle_request`), within the
bounds of :class:`ControlLimits`: connections, requests served at once, reply bytes buffered,
idle time. A connection's first frame may be ``ActAs`` (:func:`~lucidd.daemon.peers.act_as`):
nothing behind it is read until it is answered, and a refusal closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final, cast

from lucidd import protocol as p
from lucidd.daemon.access import Peer
from lucidd.daemon.aggregator.handlers import handle_request
from lucidd.daemon.aggregator.services import ControlServices
from lucidd.daemon.channels import ReadPauses, peer_hung_up
from lucidd.daemon.config import Config, connection_limit
from lucidd.daemon.logs import ClientErrorLog, RefusalLog
from lucidd.daemon.peers import act_as, peer_of
from lucidd.errors import (
    BadFrameError,
    BusyError,
    IdleTimeoutError,
    InternalError,
    LucidError,
)

log = logging.getLogger("lucidd.daemon.aggregator.control")
_client_errors = ClientErrorLog(log)

#: The longest pause between two checks of a connection's idle timeout and of a paused peer.
CHECK_INTERVAL_S: Final = 1.0
# Why a control connection is not being read from (ControlProtocol._pauses).
_PIPELINED: Final = "pipelined"  # max_pipelined_requests of its requests are being served
_WRITING: Final = "writing"  # its replies are not being read (transport above its high mark)
_DELEGATING: Final = "delegating"  # its ActAs is being answered; what follows waits for it


@dataclass(eq=False)
class ControlLimits:
    """The bounds of every control connection (issue 10), and the set they share."""

    max_connections: int
    max_pipelined_requests: int
    max_reply_buffer: int
    idle_timeout: float
    connections: set[ControlProtocol] = field(default_factory=set)
    refused: int = 0
    _refusals: RefusalLog = field(default_factory=lambda: RefusalLog(log, "control"))

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
        self._refusals.refused(self.max_connections)
        return False


class ControlProtocol(asyncio.Protocol):
    """One control connection: requests are handled concurrently, replies sent as they finish."""

    def __init__(self, services: ControlServices, limits: ControlLimits | None = None) -> None:
        self._services = services
        self._decoder = p.control_request_decoder()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._peer = Peer(pid=0, uid=-1, gid=-1)  # set by connection_made
        self._error_logged = False
        self._frames = 0  # frames decoded so far (an ActAs must be the first)
        self._delegation: asyncio.Task[None] | None = None  # the ActAs being answered
        # -- bounds per connection (issue 10) --
        self._limits = limits if limits is not None else ControlLimits.from_config(Config())
        self._pauses = ReadPauses()
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
        while not self._closing and self._delegation is None:
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
                self._frames += 1
                if isinstance(event.message, p.ActAs):
                    self._start_act_as(event.message)
                    continue
                task = asyncio.ensure_future(self._serve(event.message))
                self._tasks.add(task)
                task.add_done_callback(self._request_done)

    def _start_act_as(self, request: p.ActAs) -> None:
        """Answer an ActAs before reading on: the requests behind it run as its uid."""
        if self._frames > 1:
            self._refuse_act_as(
                request, BadFrameError("act_as must be the first frame on a connection")
            )
            return
        self._pause(_DELEGATING)
        self._delegation = asyncio.ensure_future(self._act_as(request))

    async def _act_as(self, request: p.ActAs) -> None:
        try:
            peer = await act_as(self._services.policy, self._peer, request.uid, "control")
        except LucidError as err:
            self._refuse_act_as(request, err)
            return
        finally:
            self._delegation = None
        self._peer = peer
        self._send(p.ActingAs(req=request.req, uid=peer.uid))
        self._resume(_DELEGATING)
        if self._transport is not None:
            self._start_requests()

    def _refuse_act_as(self, request: p.ActAs, err: LucidError) -> None:
        """One error, then close: what the client sent behind a refused ActAs must not run
        with the credentials it tried to leave."""
        self._note_client_error(err.code, err.message)
        self._send(p.error_reply(request.req, err))
        self._close()

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
        self._pauses.pause(self._transport, reason)

    def _resume(self, reason: str) -> None:
        self._pauses.resume(self._transport, reason)

    def _schedule_check(self) -> None:
        period = min(CHECK_INTERVAL_S, self._limits.idle_timeout / 4)
        self._check = asyncio.get_running_loop().call_later(period, self._check_bounds)

    def _check_bounds(self) -> None:
        self._check = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._pauses and peer_hung_up(self._fd):
            log.info("event=peer_hung_up socket=control while=%s", self._pauses.describe())
            transport.abort()
            return
        idle_timeout = self._limits.idle_timeout
        # Requests waiting for the client to read its replies do not make it busy: a client
        # that reads nothing for idle_timeout gives its buffer and its place back.
        serving = (bool(self._tasks) and self._writable.is_set()) or self._delegation is not None
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
