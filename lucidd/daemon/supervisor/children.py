"""Starting, watching and replacing the child processes (layer 3).

Children are started by a ``forkserver`` that preloads the worker and aggregator modules
(DESIGN §2): the supervisor runs an event loop with threads, which must never be forked, and
the preloaded server shares the pages of cryptography and friends between all children.
Each child's ``sentinel`` becomes readable when it exits; the loop watches the sentinels so a
death is noticed at once, without polling.

Pipes: every worker ``k`` has a *results pipe* to the aggregator and an *acks pipe* to the
supervisor, and both outlive the processes at their ends. The supervisor keeps both ends of the
results pipe, hands the write end to each incarnation of worker ``k`` and the read end to each
incarnation of the aggregator, so either side can be replaced without the other noticing; it
reads the acks pipe itself, for as long as it runs. Workers write at most ``PIPE_BUF`` bytes per
message (atomic), so a worker killed mid-send never leaves half a message behind. The
supervisor's pipes to a child (a worker's inbox, the aggregator's two) are new for every
incarnation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import functools
import importlib
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Final

from lucidd.daemon import ipc
from lucidd.daemon.channels import PipeReader, PipeWriter, take_fd
from lucidd.daemon.shared_regions import region_socket_pair
from lucidd.daemon.supervisor.fds import FdReserve

log = logging.getLogger("lucidd.daemon.supervisor.children")

JOIN_TIMEOUT_S: Final = 10.0
AGGREGATOR: Final = "aggregator"
REPLICATOR: Final = "replicator"


def forkserver_context() -> ForkServerContext:
    _without_resource_tracker()
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, ForkServerContext)
    ctx.set_forkserver_preload(["lucidd.daemon.preload"])
    return ctx


def _without_resource_tracker() -> None:
    """Keep multiprocessing from starting its resource-tracker process.

    The forkserver starts one first, and it would track nothing of lucidd's: the ring is a plain
    POSIX shm object the supervisor unlinks itself (ring.py) and pipes need no tracking. It
    costs a whole Python process (its size is in docs/bench.md). ``ensure_running``
    probes the tracker by writing to its fd; a /dev/null fd passes the probe, so nothing starts
    and whatever a library might register is discarded.
    """
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and getattr(tracker, "_fd", 0) is None:
        tracker._fd = os.open(os.devnull, os.O_WRONLY)


def _run_child(module: str, function: str, *args: Any) -> None:
    """Child entry point, named by strings so the supervisor never imports the child modules
    (the forkserver has them preloaded; the supervisor stays smaller)."""
    getattr(importlib.import_module(module), function)(*args)


def _nothing() -> None:
    """A callback with nothing to do."""


@dataclass
class Child:
    role: str
    process: BaseProcess
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    #: The worker's slot number (its role is ``worker<k>``); None for the aggregator.
    worker: int | None = None

    def info(self) -> ipc.ProcessInfo:
        alive = self.process.is_alive()
        return ipc.ProcessInfo(self.role, self.process.pid or 0, alive, self.restarts)


@dataclass
class _WorkerEnds:
    """The worker's ends of a new incarnation's inbox pipe and region socket (closed here
    once the process has its copies)."""

    inbox: Connection
    regions: Connection

    def close(self) -> None:
        self.inbox.close()
        self.regions.close()


class Children:
    """The aggregator and the workers: who they are, how they start, die and are replaced."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        worker_spec: Callable[[int], ipc.WorkerSpec],
        workers: int,
        control_sock: socket.socket,
        *,
        on_death: Callable[[Child], None],
        on_worker_batch: Callable[[ipc.SealedBatch], None],
        on_start_failed: Callable[[int, OSError], None],
        on_worker_keyring: Callable[[ipc.KeyringInUse], None] = lambda _: None,
    ) -> None:
        self._loop = loop
        self._ctx = forkserver_context()
        #: Released around every spawn: a respawn finds descriptors even when clients or
        #: anything else took the rest (fds.py).
        self.reserve = FdReserve()
        self._on_start_failed = on_start_failed
        self._worker_spec = worker_spec
        self._control_sock = control_sock
        self._on_death = on_death
        self._results = [self._ctx.Pipe(duplex=False) for _ in range(workers)]
        for results_r, _ in self._results:
            _enlarge_pipe(results_r.fileno())
        self._acks_w: list[Connection] = []
        self._acks_r: list[PipeReader] = []
        for _ in range(workers):
            acks_r, acks_w = self._ctx.Pipe(duplex=False)
            self._acks_w.append(acks_w)
            decoder = ipc.decoder(ipc.WorkerToSupervisor)
            on_message = functools.partial(_from_worker, on_worker_batch, on_worker_keyring)
            self._acks_r.append(PipeReader(loop, take_fd(acks_r), decoder, on_message, _never_eof))
        self.workers: list[Child | None] = [None] * workers
        #: Workers whose replacement waits (respawn backoff): k -> (timer, the worker's ends).
        self._delayed: dict[int, tuple[asyncio.TimerHandle, _WorkerEnds]] = {}
        self.aggregator: Child | None = None
        self._to_aggregator: PipeWriter | None = None
        self._from_aggregator: PipeReader | None = None
        #: The replicator (only with replication_url) and its two pipes.
        self.replicator: Child | None = None
        self._to_replicator: PipeWriter | None = None
        self._from_replicator: PipeReader | None = None
        self.stopping = False

    # -- spawning -----------------------------------------------------------------------

    def spawn_worker(
        self, k: int, delay: float = 0.0, on_started: Callable[[], None] = _nothing
    ) -> tuple[PipeWriter, int, socket.socket]:
        """Start (or replace) worker ``k``, ``delay`` seconds from now; returns at once the
        supervisor's end of its new inbox (messages sent meanwhile wait in the pipe), the
        worker's incarnation (how many times ``k`` was replaced before) and the supervisor's
        end of its new region socket (:mod:`lucidd.daemon.shared_regions`). ``on_started``
        runs once the worker has started (at once, or after ``delay``).

        Raises OSError (EMFILE, EAGAIN, ...) if a pipe or an immediate start fails; nothing
        is left behind then. A delayed start that fails calls ``on_start_failed(k, error)``
        instead: the inbox returned is then closed, and retrying is the caller's decision.
        """
        previous = self.workers[k]
        incarnation = previous.restarts + 1 if previous else 0
        with self.reserve.released():
            inbox_r, inbox_w = self._ctx.Pipe(duplex=False)
            try:
                # Dispatches coalesce: one write (and one wake-up) per worker per loop pass.
                writer = PipeWriter(self._loop, take_fd(inbox_w), coalesce=True)
            except OSError:
                inbox_r.close()
                inbox_w.close()
                raise
            try:
                regions_w, regions_r = region_socket_pair()
            except OSError:
                inbox_r.close()
                writer.close()
                raise
            ends = _WorkerEnds(inbox_r, Connection(regions_r.detach()))
            if delay <= 0:
                try:
                    self._start_worker(k, ends, incarnation, on_started)
                except OSError:
                    ends.close()
                    writer.close()
                    regions_w.close()
                    raise
        if delay > 0:
            handle = self._loop.call_later(
                delay, self._start_delayed, k, ends, incarnation, on_started
            )
            self._delayed[k] = (handle, ends)
        return writer, incarnation, regions_w

    def _start_delayed(
        self, k: int, ends: _WorkerEnds, incarnation: int, on_started: Callable[[], None]
    ) -> None:
        self._delayed.pop(k, None)
        try:
            with self.reserve.released():
                self._start_worker(k, ends, incarnation, on_started)
        except OSError as exc:
            ends.close()
            self._on_start_failed(k, exc)

    def _start_worker(
        self,
        k: int,
        ends: _WorkerEnds,
        incarnation: int,
        on_started: Callable[[], None] = _nothing,
    ) -> None:
        if self.stopping:
            ends.close()
            return
        _, results_w = self._results[k]
        process = self._ctx.Process(
            target=_run_child,
            args=(
                "lucidd.daemon.worker",
                "worker_main",
                dataclasses.replace(self._worker_spec(k), incarnation=incarnation),
                ends.inbox,
                results_w,
                self._acks_w[k],
                ends.regions,
            ),
            name=f"lucidd-worker{k}",
        )
        process.start()  # OSError (EMFILE, EAGAIN): the caller keeps the ends
        ends.close()
        child = Child(f"worker{k}", process, incarnation, worker=k)
        self.workers[k] = child
        self._watch(child)
        on_started()

    def spawn_aggregator(
        self,
        spec: ipc.AggregatorSpec,
        on_message: Callable[[Any], None],
        on_eof: Callable[[], None],
    ) -> None:
        """Start (or replace) the aggregator with fresh pipes to and from the supervisor.

        Raises OSError (EMFILE, EAGAIN, ...) if that fails; the old pipes are then untouched.
        """
        with self.reserve.released():
            self._spawn_aggregator(spec, on_message, on_eof)

    def _spawn_aggregator(
        self,
        spec: ipc.AggregatorSpec,
        on_message: Callable[[Any], None],
        on_eof: Callable[[], None],
    ) -> None:
        pipes: list[Connection] = []
        try:
            to_r, to_w = self._ctx.Pipe(duplex=False)
            pipes += (to_r, to_w)
            from_r, from_w = self._ctx.Pipe(duplex=False)
            pipes += (from_r, from_w)
        except OSError:
            for conn in pipes:
                conn.close()
            raise
        process = self._ctx.Process(
            target=_run_child,
            args=(
                "lucidd.daemon.aggregator.main",
                "aggregator_main",
                spec,
                self._control_sock,
                to_r,
                from_w,
                [r for r, _ in self._results],
            ),
            name="lucidd-aggregator",
        )
        try:
            process.start()
        except OSError:
            for conn in pipes:
                conn.close()
            raise
        to_r.close()
        from_w.close()
        if self._to_aggregator is not None:
            self._to_aggregator.close()
        self._to_aggregator = PipeWriter(self._loop, take_fd(to_w))
        decoder = ipc.decoder(ipc.AggregatorToSupervisor)
        self._from_aggregator = PipeReader(self._loop, take_fd(from_r), decoder, on_message, on_eof)
        previous = self.aggregator
        self.aggregator = Child(AGGREGATOR, process, previous.restarts + 1 if previous else 0)
        self._watch(self.aggregator)

    def spawn_replicator(
        self,
        spec: ipc.ReplicatorSpec,
        on_message: Callable[[Any], None],
        on_eof: Callable[[], None],
    ) -> None:
        """Start (or replace) the replicator with fresh pipes (OSError if that fails)."""
        with self.reserve.released():
            to_r, to_w = self._ctx.Pipe(duplex=False)
            from_r, from_w = self._ctx.Pipe(duplex=False)
            process = self._ctx.Process(
                target=_run_child,
                args=("lucidd.daemon.replication.main", "replicator_main", spec, to_r, from_w),
                name="lucidd-replicator",
            )
            try:
                process.start()
            except OSError:
                for conn in (to_r, to_w, from_r, from_w):
                    conn.close()
                raise
        to_r.close()
        from_w.close()
        if self._to_replicator is not None:
            self._to_replicator.close()
        if self._from_replicator is not None:
            self._from_replicator.close()
        self._to_replicator = PipeWriter(self._loop, take_fd(to_w))
        decoder = ipc.decoder(ipc.ReplicatorToSupervisor)
        self._from_replicator = PipeReader(self._loop, take_fd(from_r), decoder, on_message, on_eof)
        previous = self.replicator
        self.replicator = Child(REPLICATOR, process, previous.restarts + 1 if previous else 0)
        self._watch(self.replicator)

    def send_to_replicator(self, message: Any) -> None:
        """Queue a message for the replicator (lost if it dies: its scan finds the records)."""
        if self._to_replicator is not None:
            self._to_replicator.send(message)

    def send_to_aggregator(self, message: Any) -> None:
        """Queue a message for the current aggregator (lost if it dies: callers resend)."""
        if self._to_aggregator is not None:
            self._to_aggregator.send(message)

    # -- watching -----------------------------------------------------------------------

    def _watch(self, child: Child) -> None:
        self._loop.add_reader(child.process.sentinel, self._died, child)

    def _died(self, child: Child) -> None:
        self._loop.remove_reader(child.process.sentinel)
        child.process.join(0)
        if not self.stopping:
            self._on_death(child)

    def all(self) -> list[Child]:
        children = [self.aggregator, *self.workers, self.replicator]
        return [c for c in children if c is not None]

    def process_table(self) -> list[ipc.ProcessInfo]:
        own = ipc.ProcessInfo("supervisor", os.getpid(), True, 0)
        return [own, *(c.info() for c in self.all())]

    def all_alive(self) -> bool:
        return all(c.process.is_alive() for c in self.all())

    # -- stopping -----------------------------------------------------------------------

    async def stop(self, worker_links: list[PipeWriter]) -> None:
        """Close the workers' inboxes (EOF: each finishes its batch and exits), then stop the
        aggregator once every worker is gone (it syncs every log), then reap everyone."""
        self.stopping = True
        for handle, ends in self._delayed.values():
            handle.cancel()
            ends.close()
        self._delayed.clear()
        for child in self.all():
            if child.process.sentinel is not None:
                self._loop.remove_reader(child.process.sentinel)
        for writer in worker_links:
            writer.close()
        for worker in self.workers:
            if worker is not None:
                await self._loop.run_in_executor(None, _join, worker.process)
        self.send_to_aggregator(ipc.Shutdown())
        self.send_to_replicator(ipc.Shutdown())
        if self.aggregator is not None:
            await self._loop.run_in_executor(None, _join, self.aggregator.process)
        if self.replicator is not None:
            await self._loop.run_in_executor(None, _join, self.replicator.process)
        for results_r, results_w in self._results:
            results_r.close()
            results_w.close()
        for acks_w in self._acks_w:
            acks_w.close()
        for reader in self._acks_r:
            reader.close()
        if self._to_aggregator is not None:
            self._to_aggregator.close()
        if self._from_aggregator is not None:
            self._from_aggregator.close()
        for pipe in (self._to_replicator, self._from_replicator):
            if pipe is not None:
                pipe.close()
        self.reserve.close()


#: Results pipes are drained on a timer (aggregator.catch_up), not on every message: room for
#: a few hundred batches keeps a worker from blocking while the aggregator is busy elsewhere.
RESULTS_PIPE_BYTES: Final = 1024 * 1024


def _enlarge_pipe(fd: int) -> None:
    """Grow a pipe's buffer to RESULTS_PIPE_BYTES, or as far as fs.pipe-max-size allows."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, RESULTS_PIPE_BYTES)
    except OSError:
        log.warning("event=pipe_size_unchanged wanted=%d", RESULTS_PIPE_BYTES)


def _from_worker(
    on_batch: Callable[[ipc.SealedBatch], None],
    on_keyring: Callable[[ipc.KeyringInUse], None],
    message: ipc.SealedBatch | ipc.KeyringInUse,
) -> None:
    """A worker's acks pipe carries its group commits and, rarely, a keyring confirmation."""
    if isinstance(message, ipc.KeyringInUse):
        on_keyring(message)
    else:
        on_batch(message)


def _never_eof() -> None:
    """The supervisor holds every acks pipe's write end itself: no EOF while it runs."""


def _join(process: BaseProcess) -> None:
    """Wait for a child; kill it if it has not exited in time."""
    process.join(JOIN_TIMEOUT_S)
    if process.is_alive():
        log.error("event=child_kill pid=%s", process.pid)
        process.kill()
        process.join()
