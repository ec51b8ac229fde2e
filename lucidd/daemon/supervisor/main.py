"""The supervisor process (``lucidd serve``, DESIGN §2): composition and lifecycle only.

Start-up order: stale ring and socket cleanup → keyring → ring → sockets → aggregator and
workers (forkserver) → wait for the aggregator's recovered session table → serve the data
socket → ``READY=1``. Shutdown on SIGTERM/SIGINT: ``STOPPING=1``, stop accepting, refuse new
chunks, let every admitted chunk reach its ack, close the workers' pipes (EOF ends them), stop
the aggregator (it syncs every log), unlink the ring, exit 0.
SIGHUP re-reads the keyring from its source and hands it to the aggregator, which checks and
installs it (:mod:`.keyring_link`, docs/keys.md); clients stay connected.

The parts it composes do the rest: the listening sockets are :mod:`.sockets`'s, the descriptor
limit and budget :mod:`.fds`'s, the respawn and retry delays :mod:`.respawn`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Final

import uvloop

from lucidd.daemon import ipc
from lucidd.daemon.config import LOCALLY_SYNCED, Config
from lucidd.daemon.default_dirs import fallback_runtime_dir
from lucidd.daemon.folders import (
    PRIVATE_RUNTIME_DIR_MODE,
    RUNTIME_DIR_MODE,
    STATE_DIR_MODE,
    ensure_own_folder,
    lock_state_folder,
)
from lucidd.daemon.histograms import snapshots
from lucidd.daemon.keyfile import load_keyring
from lucidd.daemon.passphrase import daemon_keyring
from lucidd.daemon.peers import access_policy
from lucidd.daemon.procutil import keep_keys_out_of_dumps
from lucidd.daemon.ring import Ring, remove_stale_rings, ring_name
from lucidd.daemon.supervisor.admission import Ingest
from lucidd.daemon.supervisor.children import AGGREGATOR, REPLICATOR, Child, Children
from lucidd.daemon.supervisor.dispatch import WorkerLink
from lucidd.daemon.supervisor.fds import connection_budget, raise_and_log_nofile_limit
from lucidd.daemon.supervisor.ingest import DataProtocol
from lucidd.daemon.supervisor.keyring_link import KeyringLink
from lucidd.daemon.supervisor.replication_link import ReplicationLink
from lucidd.daemon.supervisor.respawn import Respawns
from lucidd.daemon.supervisor.sockets import listening_sockets
from lucidd.daemon.supervisor.systemd import Watchdog, listen_fds, notify
from lucidd.errors import EX_CONFIG

log = logging.getLogger("lucidd.daemon.supervisor.main")

STATUS_INTERVAL_S: Final = 1.0
#: The aggregator answers ``metrics`` from the counters the supervisor last relayed; while they
#: change they are relayed this often, so a reading lags the supervisor by at most this much.
METRICS_RELAY_S: Final = 0.1
DRAIN_TIMEOUT_S: Final = 25.0  # inside systemd's TimeoutStopSec=30
TIMEOUT_CHECK_S: Final = 0.5
EXTEND_INTERVAL_S: Final = 5.0
EXTEND_BY_S: Final = 15.0


class Supervisor:
    """Owns the sockets, the ring and the children; runs the data path on its loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = asyncio.Event()
        self._bound: list[Path] = []
        self._ready: asyncio.Future[list[ipc.SessionView]] | None = None
        # The running parts, built once by _build before any callback or task can run.
        self._ingest: Ingest
        self._children: Children
        self._aggregator_spec: ipc.AggregatorSpec
        self._stopping = False
        self._watchdog = Watchdog.from_env() if config.watchdog else None
        self._state_lock = -1  # the flock on the state folder (folders.lock_state_folder)
        #: Respawn and spawn-retry delays by role, and why health is degraded meanwhile.
        self._respawns = Respawns()
        #: The replicator's feed and held acks (None: no replication_url).
        self._replication: ReplicationLink | None = None
        self._credentials_dir = ""
        #: The daemon's keyring, which every child gets in its spec, and its distribution to
        #: the workers (online rotation, SIGHUP reload); set by run() before any child starts.
        self._keys: KeyringLink
        self.exit_code = 0

    async def run(self) -> int:
        config = self.config
        access_policy(config.admin_group)  # an unknown admin_group stops the start (exit 78)
        env = dict(os.environ)
        self._credentials_dir = env.get("CREDENTIALS_DIRECTORY", "")
        keep_keys_out_of_dumps()  # before the keyring is read
        ensure_own_folder(Path(config.state_dir), STATE_DIR_MODE, "state folder")
        self._state_lock = lock_state_folder(Path(config.state_dir))  # held until exit
        runtime = Path(config.runtime_dir)
        private = config.runtime_dir == fallback_runtime_dir(os.getuid())
        mode = PRIVATE_RUNTIME_DIR_MODE if private else RUNTIME_DIR_MODE
        ensure_own_folder(runtime, mode, "runtime folder")
        path, unlocked = daemon_keyring(
            config.state_dir, config.keyring, env.get("CREDENTIALS_DIRECTORY"), env
        )
        self._keys = KeyringLink(
            unlocked or load_keyring(path), self._to_aggregator, path, self._credentials_dir
        )
        keyring = str(path)
        for name in remove_stale_rings():
            log.warning("event=stale_ring_removed name=%s", name)
        ring = Ring(ring_name(os.getpid()), config.ring_size)
        try:
            data_sock, control_sock = listening_sockets(runtime, listen_fds(), self._bound)
            await self._serve(ring, keyring, data_sock, control_sock)
        finally:
            self._cleanup(ring)
        return self.exit_code

    async def _serve(
        self, ring: Ring, keyring: str, data_sock: socket.socket, control_sock: socket.socket
    ) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        # Before any child exists: a stop that comes during the start is an orderly one.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._keys.reload_requested)
        ingest = self._build(loop, ring, keyring, control_sock)
        self._ready = loop.create_future()
        self._spawn_aggregator(repair=True)
        if self._replication is not None:
            self._spawn_replicator()
        recovery = asyncio.ensure_future(self._extend_timeout_while_recovering())
        stop_wait = asyncio.ensure_future(self._stop.wait())
        ready = self._ready
        waiters: set[asyncio.Future[Any]] = {ready, stop_wait}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            recovery.cancel()
            stop_wait.cancel()
        if ready.done() and not ready.cancelled():
            ingest.merge_sessions(ready.result())
        else:
            self._abandon_recovery()
        server = None
        if not self._stop.is_set():
            server = await loop.create_unix_server(lambda: DataProtocol(ingest), sock=data_sock)
            self._send_status()  # health is complete from the first request on
            notify(f"READY=1\nSTATUS=serving with {config.workers} workers\nMAINPID={os.getpid()}")
            log.info(
                "event=ready workers=%d runtime_dir=%s state_dir=%s durability=%s",
                config.workers,
                config.runtime_dir,
                config.state_dir,
                config.durability,
            )
            tasks = [
                asyncio.ensure_future(self._report_status()),
                asyncio.ensure_future(self._relay_metrics()),
                asyncio.ensure_future(self._police_timeouts()),
            ]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
        await self._shutdown(server)

    def _build(
        self,
        loop: asyncio.AbstractEventLoop,
        ring: Ring,
        keyring: str,
        control_sock: socket.socket,
    ) -> Ingest:
        """Admission, then the children whose results go straight to it, then the workers'
        links into admission: every part exists before anything can call it."""
        config = self.config
        keys = self._keys

        def worker_spec(k: int) -> ipc.WorkerSpec:
            # Read at each start: a replaced worker holds the keyring the live ones hold.
            return ipc.WorkerSpec(k, config, keyring, ring.name, ring.size, keyring=keys.keyring)

        ingest = Ingest(
            config, ring.buf, [], self._to_aggregator, access_policy(config.admin_group)
        )
        ingest.fd_budget = connection_budget(config.workers)
        children = Children(
            loop,
            worker_spec,
            config.workers,
            control_sock,
            on_death=self._child_died,
            on_worker_batch=ingest.dispatcher.on_sealed_batch,
            on_start_failed=self._worker_start_failed,
            on_worker_keyring=self._keys.confirmed,
        )
        self._ingest, self._children = ingest, children
        if config.replication_url:
            self._replication = ReplicationLink(
                children.send_to_replicator,
                ingest.dispatcher.finish,
                wait=config.durability == "replicated",
                timeout=config.replication_timeout,
            )
            ingest.dispatcher.replication = self._replication
        self._aggregator_spec = ipc.AggregatorSpec(config, keyring, ring.name, ring.size)
        ingest.dispatcher.workers.extend(
            WorkerLink(*children.spawn_worker(k)) for k in range(config.workers)
        )
        return ingest

    def _spawn_replicator(self) -> None:
        """Start (or replace) the replicator; a spawn that fails is retried with backoff."""
        link = self._replication
        if link is None or self._stopping or self._stop.is_set():
            return
        spec = ipc.ReplicatorSpec(self.config, self._credentials_dir)
        try:
            self._children.spawn_replicator(spec, link.on_message, _nothing)
        except OSError as exc:
            retry = self._spawn_failed(REPLICATOR, exc)
            asyncio.get_running_loop().call_later(retry, self._spawn_replicator)
            return
        self._respawns.spawned(REPLICATOR)
        link.replaced()

    def _to_aggregator(self, message: Any) -> None:
        # Admission and the children need each other; this one hop breaks the cycle.
        self._children.send_to_aggregator(message)

    def _abandon_recovery(self) -> None:
        """Stopped before the aggregator finished its start-up recovery: end it now.

        Nothing was accepted yet (the data socket is served only after READY), and recovery
        is idempotent (the next start repeats it from the records), so a long recovery need
        not run to its end before a SIGTERM is obeyed. A recovering aggregator reads no pipe,
        so it is killed rather than asked.
        """
        aggregator = self._children.aggregator
        if aggregator is not None and aggregator.process.is_alive():
            log.warning("event=recovery_abandoned pid=%s", aggregator.process.pid)
            aggregator.process.kill()

    def _spawn_aggregator(self, repair: bool) -> None:
        spec = dataclasses.replace(self._aggregator_spec, repair=repair, keyring=self._keys.keyring)
        self._children.spawn_aggregator(spec, self._on_aggregator, self._aggregator_eof)

    async def _extend_timeout_while_recovering(self) -> None:
        """A long recovery scan must not trip systemd's start timeout; a recovery whose
        aggregator died is not one long scan, and ``TimeoutStartSec=`` must end it."""
        while True:
            await asyncio.sleep(EXTEND_INTERVAL_S)
            aggregator = self._children.aggregator
            if aggregator is not None and aggregator.restarts > 0:
                return
            notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY_S * 1e6)}\nSTATUS=recovering")

    async def _shutdown(self, server: asyncio.AbstractServer | None) -> None:
        self._stopping = True
        notify("STOPPING=1")
        log.info("event=stopping")
        ingest, children = self._ingest, self._children
        if server is not None:
            server.close()
        ingest.start_draining()
        try:
            await asyncio.wait_for(ingest.drained.wait(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.error("event=drain_timeout in_flight=%d", ingest.in_flight)
            self.exit_code = 1
        for conn in list(ingest.connections):
            conn.close()
        await asyncio.sleep(0)
        await children.stop(
            [link.writer for link in ingest.dispatcher.workers if link.writer is not None]
        )
        log.info("event=stopped exit_code=%d", self.exit_code)

    def _cleanup(self, ring: Ring) -> None:
        with contextlib.suppress(AttributeError):  # a start that failed before _build
            del self._ingest  # admission holds the ring's views
        gc.collect()  # drop every memoryview slice of the ring before closing it
        try:
            ring.close_and_unlink()
        except BufferError:
            log.error("event=ring_close_failed detail=views still exported; unlinking anyway")
            ring.unlink()
        for path in self._bound:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- periodic duties ----------------------------------------------------------------

    async def _report_status(self) -> None:
        interval = STATUS_INTERVAL_S
        if self._watchdog is not None:
            interval = min(interval, self._watchdog.interval_s)
        ingest, children = self._ingest, self._children
        while True:
            self._send_status()
            message = (
                f"STATUS=in flight {ingest.in_flight}, acked "
                f"{int(ingest.counters['chunks_acked_total'])}, sessions {len(ingest.gates)}"
            )
            # WATCHDOG=1 only while this loop runs and every child is alive (sd_watchdog).
            if self._watchdog is not None and children.all_alive():
                message += "\nWATCHDOG=1"
            notify(message)
            await asyncio.sleep(interval)

    async def _relay_metrics(self) -> None:
        """Relay the supervisor's counters while they change (one small pipe message per
        METRICS_RELAY_S under load, none while idle), so ``metrics`` taken right after a burst
        of acks already counts them (``stage_ack_seconds_total``, ``chunks_acked_total``, and
        the ``ack_latency_seconds`` histogram, which changes only with them)."""
        last: dict[str, float] = {}
        ingest = self._ingest
        while True:
            await asyncio.sleep(METRICS_RELAY_S)
            if ingest.counters != last:
                last = dict(ingest.counters)
                self._send_status()

    def _send_status(self) -> None:
        """Tell the aggregator the process table and the supervisor's figures."""
        ingest, children = self._ingest, self._children
        metrics = dict(ingest.counters)
        metrics["in_flight"] = float(ingest.in_flight)
        metrics["ring_slots_used"] = float(ingest.slots.used)
        metrics["ring_slots_total"] = float(ingest.slots.count)
        metrics["connections"] = float(len(ingest.connections))
        metrics["shared_regions"] = float(len(ingest.regions.regions))
        metrics["shared_region_bytes"] = float(ingest.regions.bytes)
        metrics["worker_restarts_total"] = float(
            sum(c.restarts for c in children.workers if c is not None)
        )
        aggregator = children.aggregator
        metrics["aggregator_restarts_total"] = float(aggregator.restarts if aggregator else 0)
        reasons = self._respawns.reasons()
        link = self._replication
        if link is not None:
            metrics.update(link.metrics())
            replicator = children.replicator
            metrics["replicator_restarts_total"] = float(replicator.restarts if replicator else 0)
            why = link.reason()
            if why is not None:
                reasons.append(why)
        histograms = snapshots(ingest.histograms)
        children.send_to_aggregator(
            ipc.SupervisorStatus(children.process_table(), metrics, reasons, histograms)
        )

    async def _police_timeouts(self) -> None:
        """Kill a worker stuck on a chunk for longer than ``worker_timeout``."""
        period = min(TIMEOUT_CHECK_S, self.config.worker_timeout / 2)
        ingest, children = self._ingest, self._children
        while True:
            await asyncio.sleep(period)
            if self._replication is not None:
                self._replication.expire(time.monotonic())
            for k in ingest.dispatcher.overdue_workers(time.monotonic_ns()):
                child = children.workers[k]
                if child is not None and child.process.is_alive():
                    log.error("event=worker_timeout worker=%d pid=%s", k, child.process.pid)
                    child.process.kill()  # the death path recovers and re-dispatches

    # -- messages and events ------------------------------------------------------------

    def _on_aggregator(self, message: Any) -> None:
        """The aggregator's messages are admission's, but for its READY (the start's)."""
        if isinstance(message, ipc.AggregatorReady):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message.sessions)
            else:
                self._ingest.merge_sessions(message.sessions)
                log.info("event=aggregator_back sessions=%d", len(message.sessions))
        elif isinstance(message, ipc.InstallKeyring):
            self._keys.install(message, self._ingest.dispatcher.workers)
        else:
            self._ingest.on_aggregator_message(message)

    def _replace_aggregator(self) -> None:
        """Workers keep acknowledging meanwhile (their results wait in the pipes the new one
        inherits); every request the dead one may have swallowed is repeated. A spawn that
        fails is retried (with a growing delay) until one works."""
        if self._stopping or self._stop.is_set():
            return
        try:
            self._spawn_aggregator(repair=False)
        except OSError as exc:
            retry = self._spawn_failed(AGGREGATOR, exc)
            asyncio.get_running_loop().call_later(retry, self._replace_aggregator)
            return
        self._respawns.spawned(AGGREGATOR)
        self._keys.aggregator_replaced()
        self._ingest.aggregator_replaced()
        self._send_status()

    def _fail_start(self, code: int | None) -> None:
        """The aggregator died before it had recovered the state folder: stop, don't loop.

        Its own log line says why. Exit 78 when it did (a configuration error such as a
        keyring that opens none of the sessions: systemd's RestartPreventExitStatus=78 keeps
        it down); 1 otherwise, so systemd restarts the whole daemon.
        """
        log.error("event=start_failed role=aggregator exitcode=%s", code)
        self.exit_code = EX_CONFIG if code == EX_CONFIG else 1
        if self._ready is not None:
            self._ready.cancel()
        self._stop.set()

    def _aggregator_eof(self) -> None:
        """The aggregator's pipe closed; its sentinel reports the death itself."""

    def _child_died(self, child: Child) -> None:
        code = child.process.exitcode
        log.error(
            "event=child_died role=%s pid=%s exitcode=%s", child.role, child.process.pid, code
        )
        if self._stopping or self._stop.is_set():
            return
        if child.role == REPLICATOR:
            delay = self._respawns.respawn_delay(child.role, child.started)
            asyncio.get_running_loop().call_later(delay, self._spawn_replicator)
            return
        if child.worker is None:  # the aggregator
            if self._ready is not None and not self._ready.done():
                self._fail_start(code)
                return
            delay = self._respawns.respawn_delay(child.role, child.started)
            if delay:
                asyncio.get_running_loop().call_later(delay, self._replace_aggregator)
            else:
                self._replace_aggregator()
            return
        self._ingest.dispatcher.worker_died(child.worker)
        self._keys.worker_gone(child.worker)
        self._respawn_worker(child.worker, self._respawns.respawn_delay(child.role, child.started))

    def _respawn_worker(self, k: int, delay: float) -> None:
        """Replace worker ``k`` (``delay`` seconds from now); its slot takes chunks again
        from then. A spawn that fails is retried with a growing delay, and meanwhile the slot
        takes no chunks and health says why."""
        if self._stopping or self._stop.is_set():
            return
        started = functools.partial(self._worker_started, k)
        try:
            writer, incarnation, regions = self._children.spawn_worker(k, delay, started)
        except OSError as exc:
            self._worker_start_failed(k, exc)
            return
        ready_at = time.monotonic() + delay if delay > 0 else 0.0
        link = WorkerLink(writer, incarnation, regions, ready_at=ready_at)
        self._ingest.dispatcher.worker_link(k, link)
        self._send_status()

    def _worker_started(self, k: int) -> None:
        self._respawns.spawned(f"worker{k}")
        self._ingest.dispatcher.workers[k].ready_at = 0.0  # up: a candidate like any other
        self._send_status()  # the health table changed

    def _worker_start_failed(self, k: int, exc: OSError) -> None:
        if self._stopping or self._stop.is_set():
            return
        self._ingest.dispatcher.worker_not_started(k)
        self._keys.worker_gone(k)
        retry = self._spawn_failed(f"worker{k}", exc)
        asyncio.get_running_loop().call_later(retry, self._respawn_worker, k, 0.0)

    def _spawn_failed(self, role: str, exc: OSError) -> float:
        """Log a failed spawn, say it in health, and return the delay before the next try."""
        retry = self._respawns.spawn_failed(role, exc)
        self._send_status()
        return retry


def _nothing() -> None:
    """The replicator's pipe closed; its sentinel reports the death itself."""


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    raise_and_log_nofile_limit()
    if config.durability not in LOCALLY_SYNCED:
        log.warning(
            "event=durability_os detail=acks are sent after write(2) without fdatasync; "
            "acknowledged chunks can be lost on power failure"
        )
    return uvloop.run(Supervisor(config).run())
