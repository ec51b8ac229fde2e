"""The supervisor process (``lucidd serve``, DESIGN §2): composition and lifecycle only.

Start-up order: stale ring and socket cleanup → keyring → ring → sockets → aggregator and
workers (forkserver) → wait for the aggregator's recovered session table → serve the data
socket → ``READY=1``. Shutdown on SIGTERM/SIGINT: ``STOPPING=1``, stop accepting, refuse new
chunks, let every admitted chunk reach its ack, close the workers' pipes (EOF ends them), stop
the aggregator (it syncs every log), unlink the ring, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import uvloop

from lucidd import ipc
from lucidd.channels import PipeReader, PipeWriter
from lucidd.children import Child, Children, forkserver_context
from lucidd.config import Config
from lucidd.errors import ConfigError
from lucidd.ingest import DataProtocol, Ingest, WorkerLink
from lucidd.keys import CREDENTIAL_NAME, resolve_keyring, state_keyring_path
from lucidd.ring import Ring, remove_stale_rings, ring_name
from lucidd.systemd import listen_fds, notify

log = logging.getLogger("lucidd.supervisor")

DATA_SOCKET: Final = "data.sock"
CONTROL_SOCKET: Final = "control.sock"
SOCKET_MODE: Final = 0o660
STATUS_INTERVAL_S: Final = 1.0
DRAIN_TIMEOUT_S: Final = 25.0  # inside systemd's TimeoutStopSec=30


def keyring_path(config: Config, env: dict[str, str]) -> Path:
    """Load (or create) the keyring and return the file the children should load."""
    state_dir = Path(config.state_dir)
    configured = Path(config.keyring) if config.keyring else None
    credentials = env.get("CREDENTIALS_DIRECTORY")
    resolve_keyring(state_dir, configured, credentials)
    if credentials and os.path.lexists(Path(credentials) / CREDENTIAL_NAME):
        return Path(credentials) / CREDENTIAL_NAME
    return configured if configured is not None else state_keyring_path(state_dir)


def bind_socket(path: Path) -> socket.socket:
    """Bind a listening Unix socket at ``path`` (mode 0660), replacing a stale socket file.

    A socket file that still accepts connections belongs to a running daemon: refuse to start.
    """
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left behind by a crashed run
        else:
            raise ConfigError(f"another lucidd is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Supervisor:
    """Owns the sockets, the ring and the children; runs the data path on its loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._stop = asyncio.Event()
        self._bound: list[Path] = []
        self._ready: asyncio.Future[list[ipc.SessionView]] | None = None
        self._ingest: Ingest | None = None
        self._children: Children | None = None
        self._stopping = False
        self.exit_code = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        config = self.config
        env = dict(os.environ)
        Path(config.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        runtime = Path(config.runtime_dir)
        runtime.mkdir(mode=0o750, parents=True, exist_ok=True)
        keyring = str(keyring_path(config, env))
        for name in remove_stale_rings():
            log.warning("event=stale_ring_removed name=%s", name)
        ring = Ring(ring_name(os.getpid()), config.ring_size)
        try:
            data_sock, control_sock = self._sockets(runtime)
            await self._start(loop, ring, keyring, data_sock, control_sock)
        finally:
            self._cleanup(ring)
        return self.exit_code

    def _sockets(self, runtime: Path) -> tuple[socket.socket, socket.socket]:
        activated = listen_fds()
        socks: list[socket.socket] = []
        for name, filename in (("data", DATA_SOCKET), ("control", CONTROL_SOCKET)):
            if name in activated:
                sock = socket.socket(fileno=activated[name])
                sock.setblocking(False)
            else:
                sock = bind_socket(runtime / filename)
                self._bound.append(runtime / filename)
            socks.append(sock)
        return socks[0], socks[1]

    async def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        ring: Ring,
        keyring: str,
        data_sock: socket.socket,
        control_sock: socket.socket,
    ) -> None:
        config = self.config
        ctx = forkserver_context()
        children = Children(ctx)
        self._children = children
        to_agg_r, to_agg_w = ctx.Pipe(duplex=False)
        from_agg_r, from_agg_w = ctx.Pipe(duplex=False)
        worker_pipes = [
            (ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)) for _ in range(config.workers)
        ]
        links = [
            WorkerLink(PipeWriter(loop, _take_fd(inbox_w))) for (_, inbox_w), _ in worker_pipes
        ]
        to_aggregator = PipeWriter(loop, _take_fd(to_agg_w))
        ingest = Ingest(config, ring.buf, links, to_aggregator.send)
        self._ingest = ingest
        self._ready = loop.create_future()
        PipeReader(
            loop,
            _take_fd(from_agg_r),
            ipc.decoder(ipc.AggregatorToSupervisor),
            self._on_aggregator,
            self._aggregator_gone,
        )
        agg_spec = ipc.AggregatorSpec(config, keyring, ring.name, ring.size)
        children.start_aggregator(
            agg_spec, control_sock, to_agg_r, from_agg_w, [out_r for _, (out_r, _) in worker_pipes]
        )
        for k, ((inbox_r, _), (_, outbox_w)) in enumerate(worker_pipes):
            children.start_worker(
                ipc.WorkerSpec(k, config, keyring, ring.name, ring.size), inbox_r, outbox_w
            )
        for conn in (to_agg_r, from_agg_w, control_sock):
            conn.close()
        for (inbox_r, _), (out_r, outbox_w) in worker_pipes:
            for conn in (inbox_r, out_r, outbox_w):
                conn.close()
        children.watch(loop, self._child_died)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        with contextlib.suppress(asyncio.CancelledError):
            ingest.load_sessions(await self._ready)
        if self._stop.is_set():
            await self._shutdown(loop, None, to_aggregator)
            return
        server = await loop.create_unix_server(lambda: DataProtocol(ingest), sock=data_sock)
        notify(f"READY=1\nSTATUS=serving with {config.workers} workers\nMAINPID={os.getpid()}")
        log.info(
            "event=ready workers=%d runtime_dir=%s state_dir=%s durability=%s",
            config.workers,
            config.runtime_dir,
            config.state_dir,
            config.durability,
        )
        status = asyncio.ensure_future(self._report_status(to_aggregator))
        await self._stop.wait()
        status.cancel()
        await self._shutdown(loop, server, to_aggregator)

    async def _shutdown(
        self,
        loop: asyncio.AbstractEventLoop,
        server: asyncio.AbstractServer | None,
        to_aggregator: PipeWriter,
    ) -> None:
        self._stopping = True
        notify("STOPPING=1")
        log.info("event=stopping")
        ingest = self._ingest
        children = self._children
        assert ingest is not None and children is not None
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
        children.unwatch(loop)
        for link in ingest.workers:
            link.writer.close()  # EOF: each worker finishes its batch and exits
        for child in children.workers:
            await loop.run_in_executor(None, child.process.join, 10.0)
        to_aggregator.send(ipc.Shutdown())
        await asyncio.sleep(0)
        await loop.run_in_executor(None, children.join_all)
        log.info("event=stopped exit_code=%d", self.exit_code)

    def _cleanup(self, ring: Ring) -> None:
        self._ingest = None
        gc.collect()  # drop every memoryview slice of the ring before closing it
        ring.close_and_unlink()
        for path in self._bound:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _report_status(self, to_aggregator: PipeWriter) -> None:
        while True:
            ingest = self._ingest
            children = self._children
            if ingest is None or children is None:
                return
            metrics = dict(ingest.counters)
            metrics["in_flight"] = float(ingest.in_flight)
            metrics["ring_slots_used"] = float(ingest.slots.used)
            metrics["ring_slots_total"] = float(ingest.slots.count)
            metrics["connections"] = float(len(ingest.connections))
            to_aggregator.send(ipc.SupervisorStatus(children.process_table(), metrics))
            notify(
                f"STATUS=in flight {ingest.in_flight}, acked "
                f"{int(metrics['chunks_acked_total'])}, sessions {len(ingest.gates)}"
            )
            await asyncio.sleep(STATUS_INTERVAL_S)

    # -- messages and events ------------------------------------------------------------

    def _on_aggregator(self, message: Any) -> None:
        ingest = self._ingest
        if ingest is None:
            return
        if isinstance(message, ipc.Outcomes):
            ingest.on_outcomes(message)
        elif isinstance(message, ipc.SessionChanged):
            ingest.on_session_changed(message)
        elif isinstance(message, ipc.CompareResult):
            ingest.on_compared(message)
        elif isinstance(message, ipc.FreezeRequest):
            ingest.on_freeze(message)
        elif isinstance(message, ipc.ThawRequest):
            ingest.on_thaw(message)
        elif (
            isinstance(message, ipc.AggregatorReady)
            and self._ready is not None
            and not self._ready.done()
        ):
            self._ready.set_result(message.sessions)

    def _aggregator_gone(self) -> None:
        if not self._stopping:
            log.critical("event=aggregator_lost action=stop")
            self.exit_code = 1
            self._stop.set()
            if self._ready is not None and not self._ready.done():
                self._ready.cancel()

    def _child_died(self, child: Child) -> None:
        if self._stopping:
            return
        code = child.process.exitcode
        log.error(
            "event=child_died role=%s pid=%s exitcode=%s", child.role, child.process.pid, code
        )
        if child.role == "aggregator":
            self._aggregator_gone()
            return
        ingest = self._ingest
        if ingest is not None:
            ingest.worker_died(int(child.role.removeprefix("worker")))


def _take_fd(conn: Connection) -> int:
    fd = os.dup(conn.fileno())
    conn.close()
    return fd


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    if config.durability != "fsync":
        log.warning(
            "event=durability_os detail=acks are sent after write(2) without fdatasync; "
            "acknowledged chunks can be lost on power failure"
        )
    return uvloop.run(Supervisor(config).run())
