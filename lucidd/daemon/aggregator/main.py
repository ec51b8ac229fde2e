"""The Merkle aggregator process (DESIGN §2): order, Merkle, index, acks, control socket.

Receives each worker's group-commit outcome, indexes the records, appends leaves in index order
(the reorder window), and serves the control socket. Everything it holds in memory is rebuilt
from the state folder on start.

Departure from DESIGN §2: the workers, not the aggregator, acknowledge chunks to the supervisor
(one process hop fewer per chunk; figures in docs/bench.md). A worker writes each batch to
this process first and to the supervisor second, and this process drains its worker pipes
(:meth:`Aggregator.catch_up`) before it serves any request, so a client that holds an ack and
then asks about the chunk always finds it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections import defaultdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import uvloop

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.aggregator.anchor_log import AnchorLog
from lucidd.daemon.aggregator.anchoring import Anchorer, configured_backends
from lucidd.daemon.aggregator.control import ControlLimits, ControlProtocol
from lucidd.daemon.aggregator.key_rotation import KeyRotation
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.notary import (
    Notary,
    publish_verifier_key,
    resolve_origin,
    signing_key_name,
)
from lucidd.daemon.aggregator.recovery import recover_segments
from lucidd.daemon.aggregator.remote import configured_remote
from lucidd.daemon.aggregator.retention import LocalRetention
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.aggregator.startup import recover_ledger
from lucidd.daemon.channels import PipeReader, PipeWriter, take_fd
from lucidd.daemon.config import config_as_dict
from lucidd.daemon.histograms import (
    BATCH_CHUNKS,
    FSYNC,
    SEAL,
    WRITE,
    HistogramAccumulator,
    batch_chunk_bounds,
    merge_histograms,
    snapshots,
    time_histograms,
)
from lucidd.daemon.keyfile import load_keyring
from lucidd.daemon.logs import setup_logging
from lucidd.daemon.peers import access_policy
from lucidd.daemon.procutil import (
    die_with_parent,
    keep_keys_out_of_dumps,
    leave_shutdown_to_the_supervisor,
)
from lucidd.daemon.ring import RingReader
from lucidd.daemon.signing_key import resolve_signing_key
from lucidd.daemon.store import storage_error
from lucidd.errors import LucidError

log = logging.getLogger("lucidd.daemon.aggregator.main")

SYNC_INTERVAL_S = 1.0
#: The worker pipes are drained on every request and on a timer (see Aggregator.catch_up):
#: every DRAIN_MIN_S while batches arrive, backing off to DRAIN_MAX_S while none do.
DRAIN_MIN_S = 0.005
DRAIN_MAX_S = 0.2
#: Every figure the aggregator counts (present from the start, at 0).
AGGREGATOR_COUNTERS = (
    "chunks_sealed_total",
    "chunks_failed_total",
    "plaintext_bytes_total",
    "batches_total",
    "stage_queue_wait_seconds_total",
    "stage_seal_seconds_total",
    "stage_write_seconds_total",
    "stage_fsync_seconds_total",
    "stage_aggregate_seconds_total",
    "checkpoints_signed_total",
)


class Aggregator:
    """State and loop of the aggregator process; implements ``services.ControlServices``."""

    def __init__(
        self,
        spec: ipc.AggregatorSpec,
        control_sock: socket.socket,
        from_supervisor: Connection,
        to_supervisor: Connection,
        from_workers: list[Connection],
        *,
        credentials_dir: str | None = None,
    ) -> None:
        self.config = spec.config
        self.default_compression = spec.config.compression
        self.policy = access_policy(spec.config.admin_group)
        state_dir = Path(spec.config.state_dir)
        self.ledger = Ledger(state_dir, ipc.spec_keyring(spec, load_keyring))
        origin = resolve_origin(spec.config.origin, state_dir)
        credentials = Path(credentials_dir) if credentials_dir else None
        signer = resolve_signing_key(state_dir, credentials, signing_key_name(origin))
        publish_verifier_key(state_dir, signer.verifier.vkey)
        self.notary = Notary(signer, origin, AnchorLog.open(state_dir))
        self.anchorer = Anchorer(
            self.notary, configured_backends(spec.config, state_dir, credentials)
        )
        self.remote = configured_remote(spec.config, state_dir, credentials)
        self._retention = LocalRetention(self.ledger, state_dir, self.remote, self.session_lock)
        self._ring = RingReader(spec.ring_name, spec.ring_size)
        self._control_sock = control_sock
        self._fds = (
            take_fd(from_supervisor),
            take_fd(to_supervisor),
            [take_fd(c) for c in from_workers],
        )
        self._tokens = itertools.count(1)
        self._freezes: dict[int, asyncio.Future[None]] = {}
        self._locks: dict[bytes, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._processes: list[ipc.ProcessInfo] = []
        self._reasons: list[str] = []
        self._supervisor_metrics: dict[str, float] = {}
        self._supervisor_histograms: dict[str, p.Histogram] = {}
        self._control_limits = ControlLimits.from_config(spec.config)
        self._counters: dict[str, float] = dict.fromkeys(AGGREGATOR_COUNTERS, 0.0)
        #: Per group commit, of every worker (lucidd.daemon.histograms).
        self._histograms: dict[str, HistogramAccumulator] = time_histograms((SEAL, WRITE, FSYNC))
        self._histograms[BATCH_CHUNKS] = HistogramAccumulator(
            batch_chunk_bounds(spec.config.batch_size)
        )
        self.keys = KeyRotation(self.ledger, Path(spec.keyring_path), credentials_dir, self._send)
        self._stop = asyncio.Event()
        self._to_supervisor: PipeWriter | None = None
        self._from_workers: list[PipeReader] = []

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        from_sup, to_sup, from_workers = self._fds
        self._to_supervisor = PipeWriter(loop, to_sup)
        decode_sup = ipc.decoder(ipc.SupervisorToAggregator)
        PipeReader(loop, from_sup, decode_sup, self._on_supervisor, self._stop.set)
        self._from_workers = [
            PipeReader(
                loop,
                fd,
                ipc.decoder(ipc.WorkerToAggregator),
                self._on_batch,
                _noop,
                watch=False,
            )
            for fd in from_workers
        ]
        limits = self._control_limits
        server = await loop.create_unix_server(
            lambda: ControlProtocol(self, limits), sock=self._control_sock
        )
        views = self.ledger.views()
        self._send(ipc.AggregatorReady(views))
        self.notary.note_growth((v.session, v.prefix) for v in views)
        log.info(
            "event=aggregator_ready sessions=%d origin=%s key=%s",
            len(self.ledger.sessions),
            self.notary.host_origin,
            self.notary.signer.verifier.vkey,
        )
        tasks = [
            asyncio.ensure_future(job)
            for job in (
                self._sync_periodically(),
                self._drain_periodically(),
                self._checkpoint_periodically(),
                self._anchor_periodically(),
                self.anchorer.run(),
                self._retention.run(self.config.local_retention),
            )
        ]
        if self.config.metrics_listen:
            # Imported only then: uvicorn comes with lucidd[http] (checked by lucidd serve).
            from lucidd.daemon.aggregator.metrics_http import serve_metrics  # noqa: PLC0415

            listen = self.config.metrics_listen
            tasks.append(asyncio.ensure_future(serve_metrics(listen, self.metrics_reply)))
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        server.close()
        self.ledger.close()
        self.notary.anchor_log.close()
        self._ring.close()
        log.info("event=aggregator_stopped")

    async def _drain_periodically(self) -> None:
        interval = DRAIN_MIN_S
        while True:
            await asyncio.sleep(interval)
            before = self._counters["batches_total"]
            self.catch_up()
            busy = self._counters["batches_total"] != before
            interval = DRAIN_MIN_S if busy else min(DRAIN_MAX_S, interval * 2)

    async def _sync_periodically(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            for session in self.ledger:
                try:
                    session.sync()
                except (OSError, LucidError) as exc:
                    # Disk full or an I/O error: retried every tick until space is back.
                    log.error(
                        "event=ledger_sync_failed session=%s error=%s",
                        session.paths.root.name,
                        exc,
                    )
            self.ledger.release_idle()
            try:
                self.notary.anchor_log.sync()
            except (OSError, LucidError) as exc:
                log.error("event=anchor_log_sync_failed error=%s", exc)

    async def _checkpoint_periodically(self) -> None:
        """A signed checkpoint of every session that grew, each ``checkpoint_interval``."""
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            self.catch_up()
            self._counters["checkpoints_signed_total"] += self.notary.checkpoint_grown(
                self.ledger.sessions
            )
            self.ledger.release_idle()

    async def _anchor_periodically(self) -> None:
        """A signed checkpoint of the anchor log each ``anchor_interval``, then anchoring."""
        while True:
            await asyncio.sleep(self.config.anchor_interval)
            self.anchor_now()

    def anchor_now(self) -> tuple[int, bytes] | None:
        """Sign the anchor log's checkpoint at its size (if it grew) and wake the backends."""
        try:
            made = self.notary.checkpoint_anchor_log()
        except (OSError, LucidError) as exc:
            log.error("event=anchor_checkpoint_failed error=%s", exc)
            return None
        if made is not None:
            self.anchorer.kick()
        return made

    def _send(self, message: Any) -> None:
        assert self._to_supervisor is not None
        self._to_supervisor.send(message)

    # -- from workers -------------------------------------------------------------------

    def catch_up(self) -> None:
        """Index every batch the workers have written so far (read-your-writes).

        A worker writes a batch here before it sends the ack, so a request that arrives after
        the ack finds the batch in the pipe. The pipes are not watched by the loop: a batch
        wakes nobody (the ack path has the cores to itself: a lower p50 at 1 in flight, see
        docs/bench.md) and is indexed on the next request or drain tick, many batches
        per wake-up under load.
        """
        for reader in self._from_workers:
            reader.read_available()

    def _on_batch(self, batch: ipc.SealedBatch) -> None:
        """Index a group commit (its worker acknowledges it to the supervisor itself)."""
        started = time.monotonic_ns()
        sealed_count = 0
        for sealed in batch.sealed:
            session = self.ledger.sessions.get(sealed.session)
            if session is None:  # shredded since: nothing to index
                continue
            sealed_count += 1
            self.notary.grown.add(sealed.session)
            if session.stored_leaf(sealed.index) is None:
                session.index_sealed(sealed)
        counters = self._counters
        counters["stage_aggregate_seconds_total"] += (time.monotonic_ns() - started) / 1e9
        counters["stage_queue_wait_seconds_total"] += batch.times.queue_wait / 1e9
        counters["chunks_sealed_total"] += sealed_count
        counters["chunks_failed_total"] += len(batch.failed)
        counters["plaintext_bytes_total"] += batch.plaintext_bytes
        times = batch.times
        if times.chunks:  # the group commit's first message (ipc.StageTimes): count it once
            counters["batches_total"] += 1
            counters["stage_seal_seconds_total"] += times.seal / 1e9
            counters["stage_write_seconds_total"] += times.write / 1e9
            counters["stage_fsync_seconds_total"] += times.fsync / 1e9
            histograms = self._histograms
            histograms[SEAL].observe(times.seal / 1e9)
            histograms[WRITE].observe(times.write / 1e9)
            histograms[FSYNC].observe(times.fsync / 1e9)
            histograms[BATCH_CHUNKS].observe(times.chunks)

    # -- from the supervisor ------------------------------------------------------------

    def _on_supervisor(self, message: Any) -> None:
        # A freeze, compare or worker recovery must see every batch acked before it.
        self.catch_up()
        if isinstance(message, ipc.OpenRequest):
            self._open_implicitly(message)
        elif isinstance(message, ipc.Frozen):
            future = self._freezes.pop(message.token, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif isinstance(message, ipc.CompareRequest):
            self._send(self._compare(message))
        elif isinstance(message, ipc.SupervisorStatus):
            self._processes = message.processes
            self._supervisor_metrics = message.metrics
            self._supervisor_histograms = message.histograms
            self._reasons = message.reasons
        elif isinstance(message, ipc.RecoverWorker):
            self._send(self._recover_worker(message))
        elif isinstance(message, ipc.Shutdown):
            self._stop.set()
        elif isinstance(message, ipc.KeyringInstalled):
            self.keys.installed(message)
        elif isinstance(message, ipc.ReloadKeyring):
            self.keys.start_reload(message.keyring)

    def _recover_worker(self, request: ipc.RecoverWorker) -> ipc.Outcomes:
        """Index (and ack) what a dead worker made durable but never reported."""
        acked: list[ipc.Acked] = []
        for session_id in request.sessions:
            session = self.ledger.sessions.get(session_id)
            if session is None:
                continue
            try:
                found, _ = recover_segments(
                    session, self.ledger.keyring, request.worker, repair=False
                )
            except OSError as exc:
                log.error(
                    "event=worker_recovery_failed worker=%d errno=%s", request.worker, exc.errno
                )
                continue
            acked.extend(found)
        log.info("event=worker_recovered worker=%d records=%d", request.worker, len(acked))
        return ipc.Outcomes(acked, [], token=request.token)

    def _open_implicitly(self, request: ipc.OpenRequest) -> None:
        try:
            try:
                session = self.ledger.open(request.session, request.compression, request.owner_uid)
            except OSError as exc:
                raise storage_error(exc, "opening a session") from None
        except LucidError as err:
            view = ipc.SessionView(
                request.session, "error", request.compression, 0, 0, [], request.owner_uid
            )
            self._send(ipc.SessionChanged(view, error_code=err.code, error_message=err.message))
            return
        self._send(ipc.SessionChanged(session.view()))

    def _compare(self, request: ipc.CompareRequest) -> ipc.CompareResult:
        """Is a resent chunk byte-identical to the stored one? (Open and compare.)"""
        try:
            session = self.ledger.get(request.session)
            plaintext, _ = session.read_chunk(self.ledger.keyring, request.index)
            leaf = session.entry(request.index).leaf_hash
        except LucidError as err:
            return ipc.CompareResult(request.token, False, b"", err.code, err.message)
        payload = self._ring.payload(request.offset, request.length)
        try:
            equal = payload == plaintext
        finally:
            payload.release()
        return ipc.CompareResult(request.token, equal, leaf)

    # -- ControlServices ----------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return config_as_dict(self.config)

    def health(self) -> p.HealthReply:
        # The supervisor's table lists every process, this one included.
        rows = self._processes or [ipc.ProcessInfo("aggregator", os.getpid(), True, 0)]
        statuses = [
            p.ProcessStatus(r.role, r.pid, r.alive, _rss(r.pid) if r.alive else 0, r.restarts)
            for r in rows
        ]
        reasons = list(self._reasons)
        if not self._processes:
            reasons.append("the supervisor has not reported yet")
        reasons += [f"{r.role}: not running" for r in rows if not r.alive]
        damaged = self.ledger.damaged_count
        if damaged:
            reasons.append(f"{damaged} damaged session(s): see lucidctl sessions, lucidctl check")
        return p.HealthReply(
            req=0,
            status="degraded" if reasons else "ok",
            processes=statuses,
            reasons=reasons,
            damaged_sessions=damaged,
        )

    def metrics(self) -> dict[str, float]:
        merged = dict(self._supervisor_metrics)
        merged.update(self._counters)
        merged["sessions"] = float(len(self.ledger.sessions) + len(self.ledger.unreadable))
        merged["sessions_damaged"] = float(self.ledger.damaged_count)
        merged["control_connections"] = float(len(self._control_limits.connections))
        merged["control_connections_refused_total"] = float(self._control_limits.refused)
        return merged

    def histograms(self) -> dict[str, p.Histogram]:
        return merge_histograms(self._supervisor_histograms, snapshots(self._histograms))

    def metrics_reply(self) -> p.MetricsReply:
        """What a scrape of ``metrics_listen`` renders (the control reply's content)."""
        return p.MetricsReply(0, self.metrics(), self.histograms())

    def session_lock(self, session_id: bytes) -> asyncio.Lock:
        return self._locks[session_id]

    async def freeze(self, session_id: bytes) -> None:
        token = next(self._tokens)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._freezes[token] = future
        self._send(ipc.FreezeRequest(token, session_id))
        await future

    def thaw(self, session_id: bytes) -> None:
        self._send(ipc.ThawRequest(session_id))

    def session_changed(self, session: SessionLedger) -> None:
        self._send(ipc.SessionChanged(session.view()))

    def session_shredded(self, session_id: bytes) -> None:
        view = ipc.SessionView(session_id, ipc.SESSION_SHREDDED, "", 0, 0, [])
        self._send(ipc.SessionChanged(view))
        self._locks.pop(session_id, None)


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def _noop() -> None:
    """A worker pipe reached EOF: that worker died; the supervisor replaces it."""


def aggregator_main(
    spec: ipc.AggregatorSpec,
    control_sock: socket.socket,
    from_supervisor: Connection,
    to_supervisor: Connection,
    from_workers: list[Connection],
) -> None:
    """Entry point in the child process (started by the forkserver)."""
    keep_keys_out_of_dumps()  # it loads the keyring
    die_with_parent()
    leave_shutdown_to_the_supervisor()
    setup_logging("aggregator", spec.config.log_level)
    started = time.monotonic()
    # Read at this process's edge: where systemd put the credentials (the signing key's).
    credentials_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    try:
        aggregator = Aggregator(
            spec,
            control_sock,
            from_supervisor,
            to_supervisor,
            from_workers,
            credentials_dir=credentials_dir,
        )
        log.info("event=ledger_loaded seconds=%.3f", time.monotonic() - started)
        recover_ledger(aggregator.ledger, repair=spec.repair)
    except LucidError as err:
        # A keyring that cannot open the stored sessions, a damaged state folder: say why
        # and exit with the error's status (78 for configuration); the supervisor decides.
        log.error("event=aggregator_start_failed code=%s error=%s", err.code, err.message)
        os._exit(err.exit_code)
    uvloop.run(aggregator.run())
