"""Admission (layer 3): which chunk may enter, and what its client is told.

:class:`Ingest` is the client side of the supervisor's data path and the small interface the
data socket uses (``admit``, ``complete``, ``abandon``, ``end_leases``, backpressure). It owns
the sessions' gates (owner, writer's lease, stored indices, freezes), the slot allocator and
the in-flight count, and answers every chunk (:meth:`Ingest._finish`). The worker side —
which worker seals a chunk, a dead worker's recovery, the workers' outcomes — is its
:class:`~lucidd.daemon.supervisor.dispatch.Dispatcher`. It does no socket I/O: a connection is
anything that fits :class:`~lucidd.daemon.supervisor.gates.Client` (the data socket's
:class:`~lucidd.daemon.supervisor.ingest.DataProtocol` in the daemon; plain objects in unit
tests), so admission is tested without a socket. Everything runs on the supervisor's event
loop, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import AccessPolicy
from lucidd.daemon.config import Config, connection_limit
from lucidd.daemon.histograms import ACK_LATENCY, HistogramAccumulator, time_histograms
from lucidd.daemon.logs import RefusalLog
from lucidd.daemon.supervisor.dispatch import Dispatcher, WorkerLink
from lucidd.daemon.supervisor.gates import (
    SESSION_OPENING,
    ChunkKind,
    Client,
    InFlight,
    SessionGate,
    SharedRegion,
    gate_from_view,
)
from lucidd.daemon.supervisor.regions import RegionTable
from lucidd.daemon.supervisor.slots import SlotAllocator, SlotRun
from lucidd.errors import (
    BadRequestError,
    BusyError,
    DamagedSessionError,
    DuplicateIndexError,
    InternalError,
    LucidError,
    SessionBusyError,
    SessionFinalizedError,
    SessionFullError,
    error_from_wire,
)

log = logging.getLogger("lucidd.daemon.supervisor.admission")

_SEAL: Final = ChunkKind.SEAL
_COMPARE: Final = ChunkKind.COMPARE
#: The ring slots of a chunk sealed from its client's shared region: none.
_NO_SLOTS: Final = SlotRun(0, 0, 0)


class Wait(Exception):  # noqa: N818 - flow control, not an error
    """Admission must wait for ring space or in-flight capacity (backpressure)."""


class WaitOwn(Wait):
    """The connection itself is at its bound (in flight, or its share of the ring): it waits
    for its own acks, and does not hold up the connections queued behind it."""


class Ingest:
    """Admission and the answer to every chunk of every data connection (the worker side:
    :attr:`dispatcher`)."""

    def __init__(
        self,
        config: Config,
        ring: memoryview,
        workers: list[WorkerLink],
        to_aggregator: Callable[[Any], None],
        policy: AccessPolicy,
    ) -> None:
        self.config = config
        self.policy = policy
        self.ring = ring
        self._to_aggregator = to_aggregator
        self.slots = SlotAllocator(config.ring_size // config.slot_size, config.slot_size)
        self.gates: dict[bytes, SessionGate] = {}
        self.in_flight = 0
        self.draining = False
        self._blocked: deque[Client] = deque()
        self._compares: dict[int, InFlight] = {}
        self._tokens = itertools.count(1)
        self.connections: set[Client] = set()
        #: Connections beyond min(max_connections, this) get ``busy`` and are closed as soon as
        #: they are accepted, so clients never take the descriptors the supervisor keeps for
        #: itself. Set by the supervisor from fds.fd_budget; None: no clamp.
        self.fd_budget: int | None = None
        self.counters: dict[str, float] = {
            "chunks_received_total": 0.0,
            "chunks_acked_total": 0.0,
            "chunks_refused_total": 0.0,
            "bytes_received_total": 0.0,
            "chunks_shared_total": 0.0,
            "backpressure_pauses_total": 0.0,
            "connections_refused_total": 0.0,
            "stage_ack_seconds_total": 0.0,
            "payload_timeouts_total": 0.0,
            "idle_timeouts_total": 0.0,
            "peer_hangups_total": 0.0,
        }
        #: ``ack_latency_seconds``: payload received -> ack sent (lucidd.daemon.histograms).
        self.histograms: dict[str, HistogramAccumulator] = time_histograms((ACK_LATENCY,))
        self._ack_latency = self.histograms[ACK_LATENCY]
        self.drained = asyncio.Event()
        #: Client shared-memory regions (ShareMemory); their chunks bypass the ring.
        self.regions = RegionTable(config.shared_memory_max, lambda: self.dispatcher.workers)
        #: The worker side: the worker links, dispatch, recovery, the workers' outcomes.
        self.dispatcher = Dispatcher(
            config,
            workers,
            self.gates,
            to_aggregator,
            finish=self._finish,
            counters=self.counters,
            tokens=self._tokens,
            regions=self.regions,
        )
        self._aggregator_handlers: dict[type, Callable[[Any], None]] = {
            ipc.Outcomes: self.dispatcher.on_outcomes,
            ipc.SessionChanged: self.on_session_changed,
            ipc.CompareResult: self.on_compared,
            ipc.FreezeRequest: self.on_freeze,
            ipc.ThawRequest: self.on_thaw,
        }
        #: Slots one connection may hold while another waits for room (connection_ring_share).
        self.share_slots = max(1, int(self.slots.count * config.connection_ring_share))
        self._refusals = RefusalLog(log, "data")

    # -- sessions -----------------------------------------------------------------------

    def on_session_changed(self, message: ipc.SessionChanged) -> None:
        view = message.view
        gate = self.gates.get(view.session)
        if view.state == ipc.SESSION_SHREDDED:
            self.gates.pop(view.session, None)
            self.dispatcher.forget(view.session)
            return
        if message.error_code:
            if gate is not None and gate.state == SESSION_OPENING:
                del self.gates[view.session]
                for chunk in gate.waiting_for_open:
                    err = error_from_wire(
                        message.error_code, message.error_message, session=view.session
                    )
                    self._finish(chunk, err)
            return
        if gate is None:
            self.gates[view.session] = gate_from_view(view)
            return
        was_opening = gate.state == SESSION_OPENING
        gate.state = view.state
        gate.compression = view.compression
        gate.owner_uid = view.owner_uid
        if was_opening:
            # The id may have existed already (opened on the control socket meanwhile):
            # admission assumed the first writer owns it, so check every waiting chunk again.
            waiting, gate.waiting_for_open = gate.waiting_for_open, []
            for chunk in waiting:
                if self.policy.may_touch(chunk.conn.peer, gate.owner_uid):
                    self.dispatcher.dispatch(gate, chunk)
                else:
                    refusal = self.policy.refusal(chunk.conn.peer, gate.session, exists=True)
                    self._finish(chunk, refusal)

    def on_aggregator_message(self, message: Any) -> None:
        """One message of the aggregator's (all but its READY, which the supervisor awaits)."""
        handler = self._aggregator_handlers.get(type(message))
        if handler is not None:
            handler(message)

    def on_freeze(self, request: ipc.FreezeRequest) -> None:
        gate = self.gates.get(request.session)
        if gate is None:
            self._to_aggregator(ipc.Frozen(request.token))
            return
        gate.frozen = True
        gate.freeze_tokens.append(request.token)
        self._maybe_frozen(gate)

    def on_thaw(self, request: ipc.ThawRequest) -> None:
        gate = self.gates.get(request.session)
        if gate is not None:
            gate.frozen = False

    def _maybe_frozen(self, gate: SessionGate) -> None:
        if gate.frozen and not gate.in_flight and gate.freeze_tokens:
            for token in gate.freeze_tokens:
                self._to_aggregator(ipc.Frozen(token))
            gate.freeze_tokens.clear()

    # -- admission ----------------------------------------------------------------------

    def admit(self, conn: Client, start: p.ChunkStart) -> InFlight:
        """Admit a chunk or raise its typed refusal; raises Wait for backpressure."""
        if self.draining:
            raise BusyError("daemon is shutting down", session=start.session, index=start.index)
        peer = conn.peer
        gate = self.gates.get(start.session)
        if gate is None:
            # The first chunk of a new id opens the session, owned by its sender.
            compression = self.config.compression
            gate = SessionGate(start.session, SESSION_OPENING, compression, peer.uid)
            self.gates[start.session] = gate
            self._to_aggregator(ipc.OpenRequest(start.session, compression, peer.uid))
        elif not self.policy.may_touch(peer, gate.owner_uid):
            raise self.policy.refusal(peer, start.session, exists=True)
        context = {"session": start.session, "index": start.index}
        if gate.state == ipc.SESSION_FINALIZED:
            raise SessionFinalizedError("session is finalized", **context)
        if gate.state == ipc.SESSION_DAMAGED:
            raise DamagedSessionError(
                "session is damaged: its metadata or secret cannot be read", **context
            )
        if gate.writer is None:
            gate.writer = conn
            conn.leases.add(start.session)
        elif gate.writer is not conn:
            raise SessionBusyError(
                "another connection is writing to this session (one writer at a time); "
                "try again once it has closed",
                **context,
            )
        if gate.frozen:
            raise BusyError("session is being finalized or shredded", **context)
        if start.index in gate.in_flight:
            raise DuplicateIndexError(f"chunk {start.index} is already in flight", **context)
        kind = _COMPARE if gate.stored(start.index) else _SEAL
        if kind == _SEAL:
            if start.index >= gate.prefix + self.config.reorder_window:
                raise BusyError(
                    f"chunk {start.index} is more than {self.config.reorder_window} past the "
                    f"first missing chunk {gate.prefix}; send earlier chunks first",
                    **context,
                )
            if gate.plaintext_bytes + start.length > self.config.max_session_size:
                raise SessionFullError(
                    f"session would exceed {self.config.max_session_size} bytes", **context
                )
        region = _region_of(conn, start) if start.shared else None
        # A new chunk in shared memory needs no ring slot; a resent one is copied into the
        # ring to be compared (rare), like every chunk that came over the socket.
        in_ring = region is None or kind == _COMPARE
        self._check_connection_bounds(conn, start.length if in_ring else -1)
        if self.in_flight >= self.config.max_in_flight:
            raise Wait
        run = self.slots.allocate(start.length) if in_ring else _NO_SLOTS
        if run is None:
            raise Wait
        chunk = InFlight(conn, start.req, start.session, start.index, start.length, run, kind)
        if region is not None:
            if in_ring:
                _copy_into(self.ring[run.offset : run.offset + start.length], region, start)
            else:
                chunk.region = region
                chunk.region_offset = start.offset
                region.chunks += 1
                self.counters["chunks_shared_total"] += 1
        conn.hold(run)
        gate.in_flight[start.index] = chunk
        self.in_flight += 1
        if kind == _SEAL:
            gate.plaintext_bytes += start.length
        self.counters["chunks_received_total"] += 1
        self.counters["bytes_received_total"] += start.length
        return chunk

    def complete(self, chunk: InFlight) -> None:
        """The payload is in its slot: hand it on."""
        chunk.received_ns = time.monotonic_ns()
        gate = self.gates.get(chunk.session)
        if gate is None:  # shredded while the payload was arriving
            self._finish(chunk, InternalError("session disappeared"))
            return
        if chunk.kind == _COMPARE:
            token = next(self._tokens)
            self._compares[token] = chunk
            self._to_aggregator(
                ipc.CompareRequest(
                    token, chunk.session, chunk.index, chunk.run.offset, chunk.length
                )
            )
        elif gate.state == SESSION_OPENING:
            gate.waiting_for_open.append(chunk)
        else:
            self.dispatcher.dispatch(gate, chunk)

    def aggregator_replaced(self) -> None:
        """A new aggregator runs: repeat every request the dead one may have swallowed."""
        for gate in self.gates.values():
            gate.frozen = False  # the control request that froze it died with the aggregator
            gate.freeze_tokens.clear()
            if gate.state == SESSION_OPENING:
                self._to_aggregator(ipc.OpenRequest(gate.session, gate.compression, gate.owner_uid))
        for token, chunk in self._compares.items():
            self._to_aggregator(
                ipc.CompareRequest(
                    token, chunk.session, chunk.index, chunk.run.offset, chunk.length
                )
            )
        self.dispatcher.repeat_recoveries()

    def merge_sessions(self, views: list[ipc.SessionView]) -> None:
        """Take a (new) aggregator's session table without losing what is in flight here."""
        for view in views:
            gate = self.gates.get(view.session)
            if gate is None:
                self.gates[view.session] = gate_from_view(view)
                continue
            gate.state = view.state
            gate.compression = view.compression
            gate.owner_uid = view.owner_uid
            for index in range(gate.prefix, view.prefix):
                gate.mark_stored(index)
            for index in view.above:
                gate.mark_stored(index)

    def end_leases(self, conn: Client) -> None:
        """``conn`` closed: the sessions it was writing to take another writer."""
        for session in conn.leases:
            gate = self.gates.get(session)
            if gate is not None and gate.writer is conn:
                gate.writer = None
        conn.leases.clear()

    def abandon(self, chunk: InFlight) -> None:
        """The client vanished mid-payload: reclaim the slots, forget the chunk."""
        gate = self.gates.get(chunk.session)
        if gate is not None:
            gate.in_flight.pop(chunk.index, None)
            if chunk.kind == _SEAL:
                gate.plaintext_bytes -= chunk.length
            self._maybe_frozen(gate)
        self._release(chunk)

    # -- answers ------------------------------------------------------------------------

    def on_compared(self, result: ipc.CompareResult) -> None:
        chunk = self._compares.pop(result.token, None)
        if chunk is None:
            return
        if result.code:
            err: LucidError | None = error_from_wire(result.code, result.message)
        elif not result.equal:
            err = DuplicateIndexError(
                f"chunk {chunk.index} is already stored with different bytes",
                session=chunk.session,
                index=chunk.index,
            )
        else:
            err = None
            link = self.dispatcher.replication
            if link is not None and link.wait:
                # Stored already, but maybe not uploaded yet: the same promise as a new chunk.
                # Where the record lies is the index's to say (an empty segment name).
                sealed = ipc.Sealed(chunk.session, chunk.index, result.leaf_hash, "", 0, 0, 0)
                link.hold(chunk, sealed)
                link.forward([sealed])
                return
        self._finish(chunk, err, result.leaf_hash)

    def _finish(self, chunk: InFlight, err: LucidError | None, leaf_hash: bytes = b"") -> None:
        """Reply to the client, update the gate and release the slots."""
        gate = self.gates.get(chunk.session)
        if gate is not None:
            if gate.in_flight.get(chunk.index) is chunk:
                del gate.in_flight[chunk.index]
            if err is None:
                gate.mark_stored(chunk.index)
            elif chunk.kind == _SEAL:
                gate.plaintext_bytes -= chunk.length
        if err is None:
            self.counters["chunks_acked_total"] += 1
            chunk.conn.send(p.Ack(chunk.req, chunk.session, chunk.index, leaf_hash))
            if chunk.received_ns:
                self._ack_latency.observe((time.monotonic_ns() - chunk.received_ns) / 1e9)
        else:
            self.counters["chunks_refused_total"] += 1
            chunk.conn.send(p.error_reply(chunk.req, err))
        self._release(chunk)
        if gate is not None:
            self._maybe_frozen(gate)

    def _release(self, chunk: InFlight) -> None:
        self.slots.free(chunk.run)
        if chunk.region is not None:
            self.regions.chunk_done(chunk.region)
        chunk.conn.unhold(chunk.run)
        self.in_flight -= 1
        self._wake_blocked()
        if self.in_flight == 0 and self.draining:
            self.drained.set()

    # -- bounds per connection (issue 10) -----------------------------------------------

    def _check_connection_bounds(self, conn: Client, length: int) -> None:
        """Raise :class:`_WaitOwn` when ``conn`` is at its own bound.

        ``connection_max_in_flight`` always holds. The ring share holds only while another
        connection waits for room (so one client alone can use the whole ring), and never
        stops a connection that holds nothing (a chunk larger than the share must pass).
        ``length`` -1: the chunk takes no ring slot.
        """
        if conn.chunks_in_flight >= self.config.connection_max_in_flight:
            raise WaitOwn
        if length < 0:
            return
        needed = conn.slots_held + self.slots.slots_for(length)
        if conn.slots_held and needed > self.share_slots and self.has_waiters():
            raise WaitOwn

    def has_waiters(self) -> bool:
        """Whether a connection waits for ring room or daemon-wide in-flight capacity (not
        one that waits for its own acks)."""
        return any(not conn.waits_for_own for conn in self._blocked)

    def accepts_connection(self) -> bool:
        """Whether a connection just added to :attr:`connections` may stay (max_connections)."""
        within_fds = (
            self.fd_budget is None
            or len(self.connections) + len(self.regions.regions) <= self.fd_budget
        )  # a shared-memory region holds a descriptor too
        if within_fds and len(self.connections) <= connection_limit(self.config, self.fd_budget):
            return True
        self.counters["connections_refused_total"] += 1
        self._refusals.refused(connection_limit(self.config, self.fd_budget))
        return False

    def fds_left(self) -> int | None:
        """Descriptors left for clients' connections and regions (None: no bound)."""
        if self.fd_budget is None:
            return None
        return self.fd_budget - len(self.connections) - len(self.regions.regions)

    # -- backpressure -------------------------------------------------------------------

    def block(self, conn: Client) -> None:
        self.counters["backpressure_pauses_total"] += 1
        self._blocked.append(conn)

    def unblock(self, conn: Client) -> None:
        with contextlib.suppress(ValueError):
            self._blocked.remove(conn)

    def _wake_blocked(self) -> None:
        # Oldest first; a connection that still cannot proceed re-queues itself at the back.
        for _ in range(len(self._blocked)):
            if not self._blocked:
                return
            conn = self._blocked.popleft()
            if not conn.retry_admission() and not conn.waits_for_own:
                return

    def start_draining(self) -> None:
        self.draining = True
        if self.in_flight == 0:
            self.drained.set()


def _region_of(conn: Client, start: p.ChunkStart) -> SharedRegion:
    """The connection's region, checked to hold the chunk's bytes (else the typed refusal)."""
    region = conn.region
    context = {"session": start.session, "index": start.index}
    if region is None:
        raise BadRequestError("a shared chunk on a connection without shared memory", **context)
    if start.offset + start.length > region.size:
        raise BadRequestError(
            f"shared chunk at {start.offset}+{start.length} is outside the "
            f"{region.size}-byte region",
            **context,
        )
    return region


def _copy_into(destination: memoryview, region: SharedRegion, start: p.ChunkStart) -> None:
    """Read a shared chunk's bytes into ``destination`` (its ring slots)."""
    with destination:
        done = 0
        while done < destination.nbytes:
            with destination[done:] as rest:
                count = os.preadv(region.fd, [rest], start.offset + done)
            if count <= 0:  # cannot happen: the region is sealed against shrinking
                raise InternalError("shared memory ended early", session=start.session)
            done += count
