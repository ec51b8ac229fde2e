"""Starting and watching the child processes (layer 3).

Children are started by a ``forkserver`` that preloads the worker and aggregator modules
(DESIGN §2): the supervisor runs an event loop with threads, which must never be forked, and
the preloaded server shares the pages of cryptography and friends between all children.
Each child's ``sentinel`` becomes readable when it exits; the loop watches the sentinels so a
death is noticed at once, without polling.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Final

from lucidd.aggregator import aggregator_main
from lucidd.ipc import AggregatorSpec, ProcessInfo, WorkerSpec
from lucidd.worker import worker_main

log = logging.getLogger("lucidd.children")

JOIN_TIMEOUT_S: Final = 10.0


def forkserver_context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, ForkServerContext)
    ctx.set_forkserver_preload(["lucidd.worker", "lucidd.aggregator"])
    return ctx


@dataclass
class Child:
    role: str
    process: BaseProcess
    restarts: int = 0

    def info(self) -> ProcessInfo:
        alive = self.process.is_alive()
        return ProcessInfo(self.role, self.process.pid or 0, alive, self.restarts)


class Children:
    """The aggregator and the workers; who they are, whether they live, how they end."""

    def __init__(self, ctx: ForkServerContext) -> None:
        self._ctx = ctx
        self.aggregator: Child | None = None
        self.workers: list[Child] = []
        self._on_death: Callable[[Child], None] | None = None

    def start_aggregator(
        self,
        spec: AggregatorSpec,
        control_sock: socket.socket,
        from_supervisor: multiprocessing.connection.Connection,
        to_supervisor: multiprocessing.connection.Connection,
        from_workers: list[multiprocessing.connection.Connection],
    ) -> Child:
        process = self._ctx.Process(
            target=aggregator_main,
            args=(spec, control_sock, from_supervisor, to_supervisor, from_workers),
            name="lucidd-aggregator",
            daemon=False,
        )
        process.start()
        self.aggregator = Child("aggregator", process)
        return self.aggregator

    def start_worker(
        self,
        spec: WorkerSpec,
        inbox: multiprocessing.connection.Connection,
        outbox: multiprocessing.connection.Connection,
    ) -> Child:
        process = self._ctx.Process(
            target=worker_main,
            args=(spec, inbox, outbox),
            name=f"lucidd-worker{spec.worker_id}",
            daemon=False,
        )
        process.start()
        child = Child(f"worker{spec.worker_id}", process)
        self.workers.append(child)
        return child

    def all(self) -> list[Child]:
        return [*([self.aggregator] if self.aggregator else []), *self.workers]

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[Child], None]) -> None:
        """Call ``on_death(child)`` on the loop as soon as any child exits."""
        for child in self.all():
            sentinel = child.process.sentinel
            loop.add_reader(sentinel, self._died, loop, child)
        self._on_death = on_death

    def _died(self, loop: asyncio.AbstractEventLoop, child: Child) -> None:
        loop.remove_reader(child.process.sentinel)
        if self._on_death is not None:
            self._on_death(child)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        for child in self.all():
            loop.remove_reader(child.process.sentinel)

    def process_table(self) -> list[ProcessInfo]:
        return [ProcessInfo("supervisor", os.getpid(), True, 0), *(c.info() for c in self.all())]

    def join_all(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Wait for every child; kill what has not exited by then."""
        for child in self.all():
            child.process.join(timeout)
            if child.process.is_alive():
                log.error("event=child_kill role=%s pid=%s", child.role, child.process.pid)
                child.process.kill()
                child.process.join()
