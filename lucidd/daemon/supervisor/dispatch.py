"""Dispatch (layer 3): the worker side of admission — which worker seals a chunk, what
becomes of a dead worker's chunks, and the workers' outcomes.

:class:`Dispatcher` owns the worker links (one inbox pipe per worker slot), the chunks that
wait for a slot with an inbox, and the recoveries under way. It sends every admitted chunk
that :class:`~lucidd.daemon.supervisor.admission.Ingest` hands it to a worker
(:func:`_pick_worker`), asks the aggregator which chunks a dead worker made durable before it
re-dispatches the rest, and takes each worker's group commit (``SealedBatch``) and each
recovery verdict (``Outcomes``). The answer to the client and the release of the slots are
admission's (the ``finish`` callback). Everything runs on the supervisor's event loop.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from lucidd.daemon import ipc
from lucidd.daemon.channels import PipeWriter
from lucidd.daemon.config import Config
from lucidd.daemon.supervisor.gates import ChunkKind, InFlight, SessionGate
from lucidd.daemon.supervisor.regions import RegionTable
from lucidd.daemon.supervisor.replication_link import ReplicationLink
from lucidd.errors import LucidError, RequestTimeoutError, error_from_wire

#: A chunk whose worker timed out is retried once; a second timeout fails it.
MAX_ATTEMPTS: Final = 2
#: How many payload bytes a worker is given before the next worker is used (see _pick_worker).
PACK_BYTES: Final = 2 * 1024 * 1024
#: The incarnation of a slot with no process: no worker's batch matches it.
NO_INCARNATION: Final = -1

_SEAL: Final = ChunkKind.SEAL


class Finish(Protocol):
    """How admission answers a chunk: an ack (``err`` None) or its error; frees its slots."""

    def __call__(self, chunk: InFlight, err: LucidError | None, leaf_hash: bytes = b"") -> None:
        """Reply to the client, update the gate and release the slots."""


@dataclass
class WorkerLink:
    #: None while the slot has no process and no inbox (its respawn failed and is retried):
    #: such a slot is given no chunks.
    writer: PipeWriter | None
    incarnation: int = 0  # of the process behind ``writer`` (WorkerSpec.incarnation)
    #: Where client regions are handed to its process (shared_regions); None without one.
    region_sock: socket.socket | None = None
    #: CLOCK_MONOTONIC seconds when its process starts (later than now: a delayed respawn).
    ready_at: float = 0.0
    outstanding: int = 0
    outstanding_bytes: int = 0


class Dispatcher:
    """The worker side of admission: dispatch, worker recovery and outcomes."""

    def __init__(
        self,
        config: Config,
        workers: list[WorkerLink],
        gates: dict[bytes, SessionGate],
        to_aggregator: Callable[[Any], None],
        *,
        finish: Finish,
        counters: dict[str, float],
        tokens: itertools.count[int],
        regions: RegionTable,
    ) -> None:
        self.config = config
        self.workers = workers
        #: Client shared-memory regions (admission's table): handed to a worker on first use.
        self.regions = regions
        #: Admission's gates (shared, not copied): the chunks in flight are found there.
        self._gates = gates
        self._to_aggregator = to_aggregator
        self._finish = finish
        self._counters = counters
        #: Shared with admission's compare requests: one token space towards the aggregator.
        self._tokens = tokens
        #: RecoverWorker token -> (dead worker, its chunks awaiting the scan's verdict)
        self._recoveries: dict[int, tuple[int, list[InFlight]]] = {}
        #: Chunks that found no worker slot with an inbox; dispatched when one is back.
        self._parked: list[InFlight] = []
        #: The replicator's feed, and where acks wait with ``durability = "replicated"``
        #: (None: no replication configured).
        self.replication: ReplicationLink | None = None

    def finish(self, chunk: InFlight, err: LucidError | None, leaf_hash: bytes = b"") -> None:
        """Answer the client (admission's ``_finish``): for the replication link."""
        self._finish(chunk, err, leaf_hash)

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, gate: SessionGate, chunk: InFlight, avoid: int = -1) -> None:
        """Send ``chunk`` to a worker (not ``avoid`` while another can take it), or park it
        while no slot has an inbox."""
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
        region = chunk.region
        k = _pick_worker(workers, candidates, chunk.length)
        while region is not None and not self.regions.share(region, k):
            # That worker's region socket is full or gone: another worker, or wait for a
            # (re)started one, like a chunk that finds no inbox.
            candidates.remove(k)
            if not candidates:
                chunk.worker = -1
                self._parked.append(chunk)
                return
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
                chunk.region_offset if region is not None else chunk.run.offset,
                chunk.length,
                gate.compression,
                chunk.dispatched_ns,
                region.id if region is not None else 0,
            )
        )

    def forget(self, session: bytes) -> None:
        """The session was shredded: every worker drops what it keeps of it."""
        for link in self.workers:
            if link.writer is not None:
                link.writer.send(ipc.Forget(session))

    # -- worker deaths and respawns -----------------------------------------------------

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
            gate = self._gates.get(chunk.session)
            if gate is not None and gate.in_flight.get(chunk.index) is chunk:
                self.dispatch(gate, chunk)

    def worker_link(self, worker: int, link: WorkerLink) -> None:
        """Give slot ``worker`` the inbox of its new process (which may start later)."""
        self._close_link(worker)
        self.workers[worker] = link
        self._dispatch_parked()

    def _dispatch_parked(self) -> None:
        """Try the parked chunks again (a slot has an inbox again, or a worker took a batch
        off its region socket)."""
        parked, self._parked = self._parked, []
        for chunk in parked:
            gate = self._gates.get(chunk.session)
            if gate is not None and gate.in_flight.get(chunk.index) is chunk:
                self.dispatch(gate, chunk)

    def _close_link(self, worker: int) -> None:
        """Close slot ``worker``'s inbox and region socket; it holds no region any more."""
        old = self.workers[worker]
        if old.writer is not None:
            old.writer.close()
        if old.region_sock is not None:
            old.region_sock.close()
        self.regions.worker_replaced(worker)

    def _detach(self, worker: int) -> list[InFlight]:
        """Close slot ``worker``'s inbox; return its chunks, now dispatched to nobody."""
        self._close_link(worker)
        self.workers[worker] = WorkerLink(None, NO_INCARNATION)
        orphans = [
            chunk
            for gate in self._gates.values()
            for chunk in gate.in_flight.values()
            if chunk.worker == worker
        ]
        for chunk in orphans:
            chunk.worker = -1
        return orphans

    def _recovered(self, worker: int, orphans: list[InFlight]) -> None:
        for chunk in orphans:
            gate = self._gates.get(chunk.session)
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
                self.dispatch(gate, chunk, avoid=worker if chunk.attempts else -1)

    def overdue_workers(self, now_ns: int) -> list[int]:
        """Workers holding a chunk for longer than ``worker_timeout``; marks those chunks."""
        limit = int(self.config.worker_timeout * 1e9)
        overdue: set[int] = set()
        for gate in self._gates.values():
            for chunk in gate.in_flight.values():
                if chunk.worker >= 0 and now_ns - chunk.dispatched_ns > limit:
                    chunk.attempts += 1
                    overdue.add(chunk.worker)
        return sorted(overdue)

    def repeat_recoveries(self) -> None:
        """A new aggregator runs: ask again for every scan the dead one may have swallowed."""
        for token, (worker, orphans) in self._recoveries.items():
            sessions = sorted({chunk.session for chunk in orphans})
            self._to_aggregator(ipc.RecoverWorker(token, worker, sessions))

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
        link = self.replication
        for sealed in batch.sealed:
            chunk = self._take_from(worker, sealed.session, sealed.index)
            if chunk is None:
                continue
            if link is not None and link.wait:
                link.hold(chunk, sealed)  # answered once its pack is in the object store
            else:
                self._finish(chunk, None, sealed.leaf_hash)
        if link is not None:
            link.forward(batch.sealed)
        if batch.sealed:
            self._counters["stage_ack_seconds_total"] += (
                (time.monotonic_ns() - batch.sent_ns) * len(batch.sealed) / 1e9
            )
        for failed in batch.failed:
            chunk = self._take_from(worker, failed.session, failed.index)
            if chunk is not None:
                err = error_from_wire(
                    failed.code, failed.message, session=failed.session, index=failed.index
                )
                self._finish(chunk, err)
        if self._parked:
            self._dispatch_parked()

    def on_outcomes(self, outcomes: ipc.Outcomes) -> None:
        """The verdict of a RecoverWorker scan."""
        link = self.replication
        for acked in outcomes.acked:
            chunk = self._take(acked.session, acked.index)
            if chunk is None:
                continue
            if link is not None and link.wait:
                # Where the dead worker put it is the index's to say: the replicator's scan
                # finds it there (an empty segment name asks for that).
                sealed = ipc.Sealed(acked.session, acked.index, acked.leaf_hash, "", 0, 0, 0)
                link.hold(chunk, sealed)
                link.forward([sealed])
            else:
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

    def _take_from(self, worker: int, session: bytes, index: int) -> InFlight | None:
        gate = self._gates.get(session)
        chunk = gate.in_flight.get(index) if gate is not None else None
        if chunk is None or chunk.worker != worker or chunk.kind != _SEAL:
            return None
        return self._take(session, index)

    def _take(self, session: bytes, index: int) -> InFlight | None:
        gate = self._gates.get(session)
        chunk = gate.in_flight.get(index) if gate is not None else None
        if chunk is not None and chunk.worker >= 0:
            link = self.workers[chunk.worker]
            link.outstanding -= 1
            link.outstanding_bytes -= chunk.length
        return chunk


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
