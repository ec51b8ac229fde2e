"""Admission (layer 3): which chunk may enter, where it goes, and who is told what.

:class:`Ingest` is the single owner of admission state: the sessions' gates (owner, writer's
lease, stored indices, freezes), the slot allocator, the in-flight table and the worker links.
It does no socket I/O: a connection is anything that fits :class:`Client` (the data socket's
:class:`~lucidd.daemon.supervisor.ingest.DataProtocol` in the daemon; plain objects in unit
tests), so admission is tested without a socket. Everything runs on the supervisor's event
loop, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import AccessPolicy, Peer
from lucidd.daemon.channels import PipeWriter
from lucidd.daemon.config import Config, connection_limit
from lucidd.daemon.logs import RefusalLog
from lucidd.daemon.supervisor.slots import SlotAllocator, SlotRun
from lucidd.errors import (
    BusyError,
    DamagedSessionError,
    DuplicateIndexError,
    InternalError,
    LucidError,
    RequestTimeoutError,
    SessionBusyError,
    SessionFinalizedError,
    SessionFullError,
    error_from_wire,
)
from lucidd.vocabulary import SessionState

log = logging.getLogger("lucidd.daemon.supervisor.admission")

#: A chunk whose worker timed out is retried once; a second timeout fails it.
MAX_ATTEMPTS: Final = 2
#: How many payload bytes a worker is given before the next worker is used (see _pick_worker).
PACK_BYTES: Final = 2 * 1024 * 1024
#: A gate's state between a new id's first chunk and the aggregator's answer.
SESSION_OPENING: Final = SessionState.OPENING


class ChunkKind(StrEnum):
    """What the supervisor does with an admitted chunk."""

    SEAL = "seal"  # a new index: a worker seals and stores it
    COMPARE = "compare"  # a stored index resent: the aggregator compares it with the record


_SEAL: Final = ChunkKind.SEAL
_COMPARE: Final = ChunkKind.COMPARE


class Client(Protocol):
    """What admission needs of one data connection."""

    peer: Peer
    #: Sessions this connection holds the writer's lease of (SessionGate.writer).
    leases: set[bytes]
    chunks_in_flight: int
    slots_held: int
    waits_for_own: bool

    def send(self, message: p.Message) -> None:
        """Queue a reply to the client."""

    def hold(self, run: SlotRun) -> None:
        """One more admitted chunk of this connection."""

    def unhold(self, run: SlotRun) -> None:
        """That chunk was answered or abandoned."""

    def retry_admission(self) -> bool:
        """Capacity was freed: try the chunk that waited; True if the connection proceeds."""

    def close(self) -> None:
        """Send what is queued, then close (at shutdown)."""


@dataclass(eq=False)
class InFlight:
    """One admitted chunk from ChunkStart to its ack (or error)."""

    conn: Client
    req: int
    session: bytes
    index: int
    length: int
    run: SlotRun
    kind: str
    received: int = 0
    worker: int = -1  # the worker sealing it; -1 while not dispatched (or being recovered)
    dispatched_ns: int = 0
    attempts: int = 0  # worker timeouts this chunk went through


@dataclass(eq=False)
class SessionGate:
    """The supervisor's admission view of one session (DESIGN §2)."""

    session: bytes
    state: str
    compression: str
    owner_uid: int
    plaintext_bytes: int = 0
    prefix: int = 0
    above: set[int] = field(default_factory=set)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    waiting_for_open: list[InFlight] = field(default_factory=list)
    frozen: bool = False
    freeze_tokens: list[int] = field(default_factory=list)
    #: The one connection that may write to the session now (its lease ends when it closes).
    writer: Client | None = None

    def stored(self, index: int) -> bool:
        return index < self.prefix or index in self.above

    def mark_stored(self, index: int) -> None:
        if index == self.prefix:
            self.prefix += 1
            above = self.above
            while self.prefix in above:
                above.remove(self.prefix)
                self.prefix += 1
        elif index > self.prefix:
            self.above.add(index)


#: The incarnation of a slot with no process: no worker's batch matches it.
NO_INCARNATION: Final = -1


@dataclass
class WorkerLink:
    #: None while the slot has no process and no inbox (its respawn failed and is retried):
    #: such a slot is given no chunks.
    writer: PipeWriter | None
    incarnation: int = 0  # of the process behind ``writer`` (WorkerSpec.incarnation)
    #: CLOCK_MONOTONIC seconds when its process starts (later than now: a delayed respawn).
    ready_at: float = 0.0
    outstanding: int = 0
    outstanding_bytes: int = 0


class Wait(Exception):  # noqa: N818 - flow control, not an error
    """Admission must wait for ring space or in-flight capacity (backpressure)."""


class WaitOwn(Wait):
    """The connection itself is at its bound (in flight, or its share of the ring): it waits
    for its own acks, and does not hold up the connections queued behind it."""


class Ingest:
    """Admission, dispatch and acknowledgement for every data connection."""

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
        self.workers = workers
        self._to_aggregator = to_aggregator
        self.slots = SlotAllocator(config.ring_size // config.slot_size, config.slot_size)
        self.gates: dict[bytes, SessionGate] = {}
        self.in_flight = 0
        self.draining = False
        self._blocked: deque[Client] = deque()
        self._compares: dict[int, InFlight] = {}
        #: RecoverWorker token -> (dead worker, its chunks awaiting the scan's verdict)
        self._recoveries: dict[int, tuple[int, list[InFlight]]] = {}
        self._tokens = itertools.count(1)
        self.connections: set[Client] = set()
        #: Connections beyond min(max_connections, this) get ``busy`` and are closed as soon as
        #: they are accepted, so clients never take the descriptors the supervisor keeps for
        #: itself. Set by the supervisor from fds.fd_budget; None: no clamp.
        self.fd_budget: int | None = None
        #: Chunks that found no worker slot with an inbox; dispatched when one is back.
        self._parked: list[InFlight] = []
        self.counters: dict[str, float] = {
            "chunks_received_total": 0.0,
            "chunks_acked_total": 0.0,
            "chunks_refused_total": 0.0,
            "bytes_received_total": 0.0,
            "backpressure_pauses_total": 0.0,
            "connections_refused_total": 0.0,
            "stage_ack_seconds_total": 0.0,
            "payload_timeouts_total": 0.0,
            "idle_timeouts_total": 0.0,
            "peer_hangups_total": 0.0,
        }
        self.drained = asyncio.Event()
        self._aggregator_handlers: dict[type, Callable[[Any], None]] = {
            ipc.Outcomes: self.on_outcomes,
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
            for link in self.workers:
                if link.writer is not None:
                    link.writer.send(ipc.Forget(view.session))
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
            self.gates[view.session] = _gate_from_view(view)
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
                    self._dispatch(gate, chunk)
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
        self._check_connection_bounds(conn, start.length)
        if self.in_flight >= self.config.max_in_flight:
            raise Wait
        run = self.slots.allocate(start.length)
        if run is None:
            raise Wait
        chunk = InFlight(conn, start.req, start.session, start.index, start.length, run, kind)
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
            self._dispatch(gate, chunk)

    def _dispatch(self, gate: SessionGate, chunk: InFlight, avoid: int = -1) -> None:
        workers = self.workers
        # Every link with an inbox takes messages, but one whose process starts later
        # (respawn backoff) only when no other can; a slot without an inbox takes none.
        usable = [i for i in range(len(workers)) if workers[i].writer is not None]
        if not usable:
            chunk.worker = -1
            self._parked.append(chunk)
            return
        now = time.monotonic()
        others = [i for i in usable if i != avoid]
        candidates = [i for i in others if workers[i].ready_at <= now] or others or usable
        k = _pick_worker(workers, candidates, chunk.length)
        link = workers[k]
        assert link.writer is not None
        link.outstanding += 1
        link.outstanding_bytes += chunk.length
        chunk.worker = k
        chunk.dispatched_ns = time.monotonic_ns()
        link.writer.send(
            ipc.Seal(
                chunk.session,
                chunk.index,
                chunk.run.offset,
                chunk.length,
                gate.compression,
                chunk.dispatched_ns,
            )
        )

    def worker_died(self, worker: int) -> None:
        """A worker died: first learn what it made durable, then re-dispatch the rest.

        Its chunks' bytes are still in the ring. Re-sealing a chunk the dead worker had
        already written would leave two records of one index, so the aggregator first scans
        that worker's segments (``RecoverWorker``); the reply acks what it found, and only the
        chunks still unacknowledged then go to a live worker (:meth:`_recovered`). The slot
        takes no chunks until :meth:`worker_link` gives it a new inbox.
        """
        orphans = self._detach(worker)
        token = next(self._tokens)
        self._recoveries[token] = (worker, orphans)
        sessions = sorted({chunk.session for chunk in orphans})
        self._to_aggregator(ipc.RecoverWorker(token, worker, sessions))

    def worker_not_started(self, worker: int) -> None:
        """A (delayed) respawn failed: its inbox is gone, and no process ever read it, so the
        chunks sent to it go to another worker at once."""
        for chunk in self._detach(worker):
            gate = self.gates.get(chunk.session)
            if gate is not None and gate.in_flight.get(chunk.index) is chunk:
                self._dispatch(gate, chunk)

    def worker_link(self, worker: int, link: WorkerLink) -> None:
        """Give slot ``worker`` the inbox of its new process (which may start later)."""
        old = self.workers[worker].writer
        if old is not None:
            old.close()
        self.workers[worker] = link
        parked, self._parked = self._parked, []
        for chunk in parked:
            gate = self.gates.get(chunk.session)
            if gate is not None and gate.in_flight.get(chunk.index) is chunk:
                self._dispatch(gate, chunk)

    def _detach(self, worker: int) -> list[InFlight]:
        """Close slot ``worker``'s inbox; return its chunks, now dispatched to nobody."""
        old = self.workers[worker].writer
        if old is not None:
            old.close()
        self.workers[worker] = WorkerLink(None, NO_INCARNATION)
        orphans = [
            chunk
            for gate in self.gates.values()
            for chunk in gate.in_flight.values()
            if chunk.worker == worker
        ]
        for chunk in orphans:
            chunk.worker = -1
        return orphans

    def _recovered(self, worker: int, orphans: list[InFlight]) -> None:
        for chunk in orphans:
            gate = self.gates.get(chunk.session)
            if gate is None or gate.in_flight.get(chunk.index) is not chunk:
                continue  # acknowledged by the recovery, or gone
            if chunk.attempts >= MAX_ATTEMPTS:
                err = RequestTimeoutError(
                    f"chunk {chunk.index} was not sealed within worker_timeout "
                    f"({self.config.worker_timeout:g} s), twice",
                    session=chunk.session,
                    index=chunk.index,
                )
                self._finish(chunk, err)
            else:
                # After a timeout, prefer another worker: the replacement of the one that
                # hung would see the same fate if the fault was in that process's state.
                self._dispatch(gate, chunk, avoid=worker if chunk.attempts else -1)

    def overdue_workers(self, now_ns: int) -> list[int]:
        """Workers holding a chunk for longer than ``worker_timeout``; marks those chunks."""
        limit = int(self.config.worker_timeout * 1e9)
        overdue: set[int] = set()
        for gate in self.gates.values():
            for chunk in gate.in_flight.values():
                if chunk.worker >= 0 and now_ns - chunk.dispatched_ns > limit:
                    chunk.attempts += 1
                    overdue.add(chunk.worker)
        return sorted(overdue)

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
        for token, (worker, orphans) in self._recoveries.items():
            sessions = sorted({chunk.session for chunk in orphans})
            self._to_aggregator(ipc.RecoverWorker(token, worker, sessions))

    def merge_sessions(self, views: list[ipc.SessionView]) -> None:
        """Take a (new) aggregator's session table without losing what is in flight here."""
        for view in views:
            gate = self.gates.get(view.session)
            if gate is None:
                self.gates[view.session] = _gate_from_view(view)
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

    # -- outcomes -----------------------------------------------------------------------

    def on_sealed_batch(self, batch: ipc.SealedBatch) -> None:
        """A worker's group commit: ack its durable chunks, refuse its failed ones.

        A message that a worker wrote just before it died and that is read after its death
        was handled is ignored: the recovery scan (``worker_died``) acks every record that
        worker made durable and re-dispatches the rest.
        """
        worker = batch.worker
        if not 0 <= worker < len(self.workers):
            return
        if batch.incarnation != self.workers[worker].incarnation:
            return
        for sealed in batch.sealed:
            chunk = self._take_from(worker, sealed.session, sealed.index)
            if chunk is not None:
                self._finish(chunk, None, sealed.leaf_hash)
        if batch.sealed:
            self.counters["stage_ack_seconds_total"] += (
                (time.monotonic_ns() - batch.sent_ns) * len(batch.sealed) / 1e9
            )
        for failed in batch.failed:
            chunk = self._take_from(worker, failed.session, failed.index)
            if chunk is not None:
                err = error_from_wire(
                    failed.code, failed.message, session=failed.session, index=failed.index
                )
                self._finish(chunk, err)

    def on_outcomes(self, outcomes: ipc.Outcomes) -> None:
        """The verdict of a RecoverWorker scan."""
        for acked in outcomes.acked:
            chunk = self._take(acked.session, acked.index)
            if chunk is not None:
                self._finish(chunk, None, acked.leaf_hash)
        for failed in outcomes.failed:
            chunk = self._take(failed.session, failed.index)
            if chunk is not None:
                err = error_from_wire(
                    failed.code, failed.message, session=failed.session, index=failed.index
                )
                self._finish(chunk, err)
        if outcomes.token:
            recovery = self._recoveries.pop(outcomes.token, None)
            if recovery is not None:
                self._recovered(*recovery)

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
        self._finish(chunk, err, result.leaf_hash)

    def _take_from(self, worker: int, session: bytes, index: int) -> InFlight | None:
        gate = self.gates.get(session)
        chunk = gate.in_flight.get(index) if gate is not None else None
        if chunk is None or chunk.worker != worker or chunk.kind != _SEAL:
            return None
        return self._take(session, index)

    def _take(self, session: bytes, index: int) -> InFlight | None:
        gate = self.gates.get(session)
        chunk = gate.in_flight.get(index) if gate is not None else None
        if chunk is not None and chunk.worker >= 0:
            link = self.workers[chunk.worker]
            link.outstanding -= 1
            link.outstanding_bytes -= chunk.length
        return chunk

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
        else:
            self.counters["chunks_refused_total"] += 1
            chunk.conn.send(p.error_reply(chunk.req, err))
        self._release(chunk)
        if gate is not None:
            self._maybe_frozen(gate)

    def _release(self, chunk: InFlight) -> None:
        self.slots.free(chunk.run)
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
        """
        if conn.chunks_in_flight >= self.config.connection_max_in_flight:
            raise WaitOwn
        needed = conn.slots_held + self.slots.slots_for(length)
        if conn.slots_held and needed > self.share_slots and self.has_waiters():
            raise WaitOwn

    def has_waiters(self) -> bool:
        """Whether a connection waits for ring room or daemon-wide in-flight capacity (not
        one that waits for its own acks)."""
        return any(not conn.waits_for_own for conn in self._blocked)

    def accepts_connection(self) -> bool:
        """Whether a connection just added to :attr:`connections` may stay (max_connections)."""
        if len(self.connections) <= connection_limit(self.config, self.fd_budget):
            return True
        self.counters["connections_refused_total"] += 1
        self._refusals.refused(connection_limit(self.config, self.fd_budget))
        return False

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


def _pick_worker(workers: list[WorkerLink], live: list[int], length: int) -> int:
    """The worker for the next chunk: pack, then spread.

    Each worker commits (fdatasyncs) once per batch, and a batch is what waits in its pipe.
    Spreading chunks thinly over all workers gives every fsync about one chunk (figures in
    docs/bench.md). So a chunk goes to the first worker
    holding less than :data:`PACK_BYTES` — the first one that is idle, with one chunk in
    flight, so latency does not suffer — and only when all are that full to the least loaded.
    More workers join as the load grows, and while one is in its fsync the next fills up.
    """
    for i in live:
        link = workers[i]
        if link.outstanding == 0 or link.outstanding_bytes + length <= PACK_BYTES:
            return i
    return min(live, key=lambda i: workers[i].outstanding_bytes)


def _gate_from_view(view: ipc.SessionView) -> SessionGate:
    return SessionGate(
        view.session,
        view.state,
        view.compression,
        view.owner_uid,
        view.plaintext_bytes,
        view.prefix,
        set(view.above),
    )
