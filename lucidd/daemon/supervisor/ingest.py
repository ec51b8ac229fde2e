"""The data socket (layer 3): bytes in, chunks into ring slots, replies out.

:class:`DataProtocol` is an ``asyncio.BufferedProtocol``: while a chunk's payload is expected and
nothing else is buffered, ``get_buffer`` returns the chunk's ring slot itself, so the kernel copies
payload bytes straight into shared memory (DESIGN §3). Headers (and payload bytes that arrived in
the same read as their header) go through a small scratch buffer and the sans-IO decoder. What a
chunk may do is :mod:`~lucidd.daemon.supervisor.admission`'s call; this module enforces the
per-connection bounds (timeouts, reply buffer, a fair share of each loop pass). A connection's
first frame may be ``ActAs`` (:func:`~lucidd.daemon.peers.act_as`): its chunks are admitted
as that user's once it is answered; a refusal closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final, cast

from lucidd import protocol as p
from lucidd.daemon.access import Peer
from lucidd.daemon.channels import ReadPauses, peer_hung_up
from lucidd.daemon.logs import ClientErrorLog
from lucidd.daemon.peers import act_as, peer_of
from lucidd.daemon.shared_regions import send_with_fd
from lucidd.daemon.supervisor.admission import Ingest, Wait, WaitOwn
from lucidd.daemon.supervisor.gates import InFlight, SharedRegion
from lucidd.daemon.supervisor.slots import SlotRun
from lucidd.errors import (
    BadFrameError,
    BadRequestError,
    BusyError,
    IdleTimeoutError,
    LucidError,
    PayloadTimeoutError,
)

log = logging.getLogger("lucidd.daemon.supervisor.ingest")
_client_errors = ClientErrorLog(log)

#: Per-connection buffer for headers and small payloads (big payloads go straight to the ring).
#: Resident for each connection's lifetime: 16 connections at 256 KiB were 4 MiB of the peak.
SCRATCH_SIZE: Final = 64 * 1024
#: Frames (chunk headers, refused ones included) one data connection may have handled in one
#: loop pass before it lets the others run (see DataProtocol._yield_pass). uvloop gives every
#: readable connection one read callback per pass, and one 64 KiB read holds a great many tiny
#: frames: without this bound a client pipelining cheap refused chunks had the loop to itself
#: (the figures per bound are in docs/bench.md; ``python bench/hostile_bench.py``).
FRAMES_PER_PASS: Final = 16
#: The longest pause between two checks of a connection's timeouts and of a paused peer.
CHECK_INTERVAL_S: Final = 1.0
#: While another connection waits for ring room, a stalled payload is dropped after this
#: fraction of ``payload_timeout`` (1 s by default): its slots are wanted now. A client that
#: sends header and payload together (every lucidd client does) never stalls that long.
PRESSURE_TIMEOUT_FRACTION: Final = 0.1
# Why a connection is not being read from (DataProtocol._pauses).
_ADMISSION: Final = "admission"  # its next chunk waits for ring room or in-flight capacity
_WRITING: Final = "writing"  # its replies are not being read (transport above its high mark)
_FAIR: Final = "fair"  # it used its share of this loop pass
_DELEGATING: Final = "delegating"  # its ActAs is being answered; its chunks wait for it


class DataProtocol(asyncio.BufferedProtocol):
    """One data-socket connection."""

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest
        config = ingest.config
        self._decoder = p.data_request_decoder(config.max_chunk_size, config.batch_size)
        self._scratch = bytearray(SCRATCH_SIZE)
        self._scratch_view = memoryview(self._scratch)
        self._transport: asyncio.Transport | None = None
        self._current: InFlight | None = None  # admitted chunk whose payload is arriving
        self._discarding = False  # refused chunk whose payload is being skipped
        self._blocked_start: p.ChunkStart | None = None
        self._direct = False
        self._replies: list[bytes] = []
        self.peer = Peer(pid=0, uid=-1, gid=-1)  # set by connection_made
        #: Sessions this connection holds the writer's lease of (SessionGate.writer).
        self.leases: set[bytes] = set()
        self._error_logged = False
        self._started = False  # a frame was decoded (an ActAs must be the first)
        self._chunk_seen = False  # a chunk was decoded (a ShareMemory must come before)
        #: This connection's shared-memory region (ShareMemory), if it asked for one.
        self.region: SharedRegion | None = None
        self._closing = False
        self._delegation: asyncio.Task[None] | None = None  # the ActAs being answered
        # -- bounds per connection (issue 10) --
        self.chunks_in_flight = 0  # admitted and not yet answered
        self.slots_held = 0  # ring slots of those chunks
        self.waits_for_own = False  # blocked on its own bound, not on the daemon's
        self._pauses = ReadPauses()
        self._frames_left = FRAMES_PER_PASS
        self._next_pass_due = False
        now = time.monotonic()
        self._active_at = now  # last byte received or reply sent (idle_timeout)
        self._payload_at = now  # chunk start or last byte received (payload_timeout)
        self._check: asyncio.TimerHandle | None = None
        self._fd = -1

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        try:
            self.peer = peer_of(transport.get_extra_info("socket"))
        except OSError as exc:  # the peer is already gone: nothing to serve
            log.info("event=data_peer_unknown errno=%s", exc.errno)
            self._transport = None
            transport.close()
            return
        self._ingest.connections.add(self)
        self._apply_bounds()

    def get_buffer(self, sizehint: int) -> memoryview:
        current = self._current
        direct = self._decoder.direct_payload_size
        if current is not None and direct:
            start = current.run.offset + current.received
            self._direct = True
            return self._ingest.ring[start : start + direct]
        self._direct = False
        return self._scratch_view

    def buffer_updated(self, nbytes: int) -> None:
        self._active_at = self._payload_at = time.monotonic()
        self._frames_left = FRAMES_PER_PASS
        if self._direct:
            current = self._current
            assert current is not None
            current.received += nbytes
            end = self._decoder.payload_received_directly(nbytes)
            if end is not None:
                self._end_chunk()
                self._process_events()  # the next items of a Batch need no more bytes
            return
        self._consume(self._scratch_view[:nbytes])

    def _consume(self, data: memoryview) -> None:
        """Headers go through the decoder; payload bytes are copied once, into their slot."""
        decoder = self._decoder
        pos = 0
        end = len(data)
        while pos < end:
            if (
                self._blocked_start is not None
                or self._delegation is not None
                or self._closing
                or self._transport is None
                or self._next_pass_due
            ):
                decoder.receive_data(data[pos:])  # kept until admission (or our turn) comes
                return
            current = self._current
            direct = decoder.direct_payload_size
            if current is not None and direct:
                take = min(direct, end - pos)
                start = current.run.offset + current.received
                self._ingest.ring[start : start + take] = data[pos : pos + take]
                current.received += take
                pos += take
                if decoder.payload_received_directly(take) is not None:
                    self._end_chunk()
                    self._process_events()
                continue
            taken = decoder.receive_frame_bytes(data[pos:])
            if taken == 0:  # a refused chunk's payload, or a frame the decoder will reject
                take = min(direct, end - pos) if direct else end - pos
                decoder.receive_data(data[pos : pos + take])
                taken = take
            pos += taken
            self._process_events()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._ingest.connections.discard(self)
        self._ingest.end_leases(self)
        if self._check is not None:
            self._check.cancel()
            self._check = None
        if self._current is not None:
            self._ingest.abandon(self._current)
            self._current = None
        if self._blocked_start is not None:
            self._ingest.unblock(self)
            self._blocked_start = None
        self._release_region()

    def _release_region(self) -> None:
        """The connection is gone: its region lives on while chunks in it are in flight."""
        region, self.region = self.region, None
        if region is not None:
            self._ingest.regions.disconnected(region)

    # -- events -------------------------------------------------------------------------

    def _process_events(self) -> None:
        while self._blocked_start is None and self._delegation is None and not self._closing:
            if self._frames_left <= 0 and self._current is None and not self._discarding:
                self._yield_pass()
                return
            try:
                event = self._decoder.next_event()
            except LucidError as err:
                self._fail_stream(err)
                return
            if event is None:
                return
            if isinstance(event, p.ChunkStart):
                self._frames_left -= 1
                self._started = self._chunk_seen = True
                self._start_chunk(event)
            elif isinstance(event, p.FrameMessage) and isinstance(event.message, p.ActAs):
                self._start_act_as(event.message)
            elif isinstance(event, p.FrameMessage) and isinstance(event.message, p.ShareMemory):
                self._started = True
                self._share_memory(event.message)
            elif isinstance(event, p.PayloadData):
                self._copy_payload(event.data)
            elif isinstance(event, p.ChunkEnd):
                if self._current is not None:
                    self._end_chunk()
                self._discarding = False

    def _start_act_as(self, request: p.ActAs) -> None:
        """Answer an ActAs before reading on: the chunks behind it are that user's."""
        if self._started:
            err = BadFrameError("act_as must be the first frame on a connection")
            self._fail_stream(err, request.req)
            return
        self._started = True
        self._pause(_DELEGATING)
        self._delegation = asyncio.ensure_future(self._act_as(request))

    async def _act_as(self, request: p.ActAs) -> None:
        try:
            peer = await act_as(self._ingest.policy, self.peer, request.uid, "data")
        except LucidError as err:
            # What the client sent behind a refused ActAs must not be stored as its own.
            self._fail_stream(err, request.req)
            return
        finally:
            self._delegation = None
        if self._transport is None:
            return
        self.peer = peer
        self.send(p.ActingAs(req=request.req, uid=peer.uid))
        self._resume(_DELEGATING)
        self._process_events()

    def _start_chunk(self, start: p.ChunkStart) -> None:
        self._payload_at = time.monotonic()
        try:
            chunk = self._ingest.admit(self, start)
        except Wait as wait:
            self._blocked_start = start
            self.waits_for_own = isinstance(wait, WaitOwn)
            self._ingest.block(self)
            self._pause(_ADMISSION)
        except LucidError as err:
            self._discarding = not start.shared  # a shared chunk has no payload to skip
            self._note_client_error(err)
            self.send(p.error_reply(start.req, err))
        else:
            if start.shared:  # its bytes are in place already
                self._ingest.complete(chunk)
            else:
                self._current = chunk

    def _share_memory(self, request: p.ShareMemory) -> None:
        """Create this connection's region and hand its descriptor over with the answer; a
        refusal leaves the connection on the socket path."""
        try:
            if self._chunk_seen or self.region is not None:
                raise BadRequestError("share_memory comes once, before the first chunk")
            region = self._ingest.regions.create(request.size, self._ingest.fds_left())
        except LucidError as err:
            self._note_client_error(err)
            self.send(p.error_reply(request.req, err))
            return
        self.region = region
        if not self._send_with_fd(p.MemoryShared(req=request.req, size=region.size), region.fd):
            self._release_region()
            self.send(p.error_reply(request.req, BusyError("could not hand over shared memory")))

    def _send_with_fd(self, message: p.Message, fd: int) -> bool:
        """Send ``message`` with ``fd`` as SCM_RIGHTS, past the transport (which cannot send
        ancillary data): only when nothing the transport holds would be overtaken."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._fd < 0:
            return False
        self._flush_replies()
        if transport.get_write_buffer_size():
            return False
        frame = p.encode_frame(message)
        try:
            sent = send_with_fd(self._fd, frame, fd)
        except OSError:
            return False
        if sent < len(frame):  # the descriptor went with the first byte; the rest queues
            transport.write(frame[sent:])
        self._active_at = time.monotonic()
        return True

    def retry_admission(self) -> bool:
        """Called when capacity was freed; True if this connection could proceed."""
        start = self._blocked_start
        if start is None:
            return True
        self._blocked_start = None
        self._start_chunk(start)
        if self._blocked_start is not None:
            return False
        self._resume(_ADMISSION)
        self._process_events()
        return True

    def _copy_payload(self, data: memoryview) -> None:
        current = self._current
        if current is None:
            return  # a refused chunk's payload: skip it
        start = current.run.offset + current.received
        self._ingest.ring[start : start + len(data)] = data
        current.received += len(data)

    def _end_chunk(self) -> None:
        current = self._current
        assert current is not None
        self._current = None
        self._ingest.complete(current)

    def _fail_stream(self, err: LucidError, req: int | None = None) -> None:
        """The stream cannot be parsed any more (or an ActAs was refused): reply once, then
        close this connection."""
        if req is None:
            context_req = err.context.get("req")
            req = context_req if isinstance(context_req, int) else 0
        self._note_client_error(err)
        self.send(p.error_reply(req, err))
        self.close()

    def _note_client_error(self, err: LucidError) -> None:
        """Log this connection's first refusal (rate-limited across connections)."""
        if not self._error_logged:
            self._error_logged = True
            _client_errors.report(self.peer.uid, self.peer.pid, err.code, err.message)

    # -- replies ------------------------------------------------------------------------

    def send(self, message: p.Message) -> None:
        """Queue a reply; the replies of one loop pass go out in one write (a batch of acks
        from a worker is one syscall and one wake-up of the client, not one per chunk)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._replies.append(p.encode_frame(message))
        if len(self._replies) == 1:
            asyncio.get_running_loop().call_soon(self._flush_replies)

    def _flush_replies(self) -> None:
        replies, self._replies = self._replies, []
        transport = self._transport
        if replies and transport is not None and not transport.is_closing():
            self._active_at = time.monotonic()
            transport.write(replies[0] if len(replies) == 1 else b"".join(replies))

    def close(self) -> None:
        self._closing = True  # nothing more it sent is handled (a refused ActAs's chunks)
        if self._transport is not None:
            self._flush_replies()
            self._transport.close()

    # -- bounds per connection (issue 10) -----------------------------------------------

    def _apply_bounds(self) -> None:
        """Refuse a connection over ``max_connections``; else bound its reply buffer and start
        watching its timeouts."""
        transport = self._transport
        assert transport is not None
        config = self._ingest.config
        if not self._ingest.accepts_connection():
            self._ingest.connections.discard(self)
            busy = BusyError(f"too many connections (max_connections = {config.max_connections})")
            transport.write(p.encode_frame(p.error_reply(0, busy)))
            transport.close()
            self._transport = None
            return
        transport.set_write_buffer_limits(high=config.max_reply_buffer)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self._schedule_check()

    def hold(self, run: SlotRun) -> None:
        """One more admitted chunk of this connection (Ingest.admit)."""
        self.chunks_in_flight += 1
        self.slots_held += run.count

    def unhold(self, run: SlotRun) -> None:
        """That chunk was answered or abandoned (Ingest._release)."""
        self.chunks_in_flight -= 1
        self.slots_held -= run.count

    def pause_writing(self) -> None:
        """The transport buffers more than ``max_reply_buffer``: stop reading this client
        until it reads its replies (its own acks keep coming; its new chunks wait)."""
        self._pause(_WRITING)

    def resume_writing(self) -> None:
        self._resume(_WRITING)

    def _pause(self, reason: str) -> None:
        self._pauses.pause(self._transport, reason)

    def _resume(self, reason: str) -> None:
        self._pauses.resume(self._transport, reason)

    def _yield_pass(self) -> None:
        """This connection used its frames of this loop pass: pause it and carry on with what
        is buffered on the next pass, so every other connection is served in between."""
        if not self._next_pass_due:
            self._next_pass_due = True
            self._pause(_FAIR)
            asyncio.get_running_loop().call_soon(self._next_pass)

    def _next_pass(self) -> None:
        self._next_pass_due = False
        self._frames_left = FRAMES_PER_PASS
        if self._transport is None:
            return
        self._process_events()
        if not self._next_pass_due:
            self._resume(_FAIR)

    def _schedule_check(self) -> None:
        config = self._ingest.config
        pressure_timeout = config.payload_timeout * PRESSURE_TIMEOUT_FRACTION
        period = min(CHECK_INTERVAL_S, pressure_timeout / 2, config.idle_timeout / 4)
        self._check = asyncio.get_running_loop().call_later(period, self._check_bounds)

    def _check_bounds(self) -> None:
        """The periodic check: payload timeout, a paused peer that hung up, idle timeout."""
        self._check = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        config = self._ingest.config
        counters = self._ingest.counters
        now = time.monotonic()
        in_payload = self._current is not None or self._discarding
        limit = config.payload_timeout
        if self._current is not None and self._ingest.has_waiters():
            limit *= PRESSURE_TIMEOUT_FRACTION  # its slots are wanted now
        if in_payload and now - self._payload_at > limit:
            counters["payload_timeouts_total"] += 1
            self._drop(PayloadTimeoutError(f"no payload byte for {limit:g} s (payload_timeout)"))
            return
        # A paused transport reads nothing, so it would never see EOF: ask the kernel.
        if self._pauses and peer_hung_up(self._fd):
            counters["peer_hangups_total"] += 1
            log.info("event=peer_hung_up while=%s", self._pauses.describe())
            self._drop(None)
            return
        idle = (
            not in_payload
            and self.chunks_in_flight == 0
            and self._blocked_start is None
            and self._delegation is None
        )
        if idle and now - self._active_at > config.idle_timeout:
            counters["idle_timeouts_total"] += 1
            self._drop(
                IdleTimeoutError(f"nothing sent for {config.idle_timeout:g} s (idle_timeout)")
            )
            return
        self._schedule_check()

    def _drop(self, err: LucidError | None) -> None:
        """Free what this connection holds now, tell it why (if it can still hear), close it.

        A client over its reply buffer is not reading: it is aborted rather than closed, since a
        close would wait for it to read everything first.
        """
        if err is not None:
            log.info("event=connection_dropped code=%s", err.code)  # once: it closes
        if self._current is not None:
            self._ingest.abandon(self._current)
            self._current = None
        if self._blocked_start is not None:
            self._ingest.unblock(self)
            self._blocked_start = None
        transport = self._transport
        if transport is None:
            return
        if err is None or _WRITING in self._pauses:
            transport.abort()
        else:
            self.send(p.error_reply(0, err))
            self.close()
