"""The replicator process's entry point and loop (DESIGN §2's children, issue 14).

It reads :class:`ipc.Replicate` from the supervisor, uploads (:mod:`.replicator`), answers
:class:`ipc.Replicated` for the chunks whose acks wait, and reports its lag every second.
It holds no key: records are sealed already, the metadata's secret is wrapped, and the S3
credentials come from a file or a systemd credential (never the environment or argv).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

from lucidd.daemon import ipc
from lucidd.daemon.channels import PipeReader, PipeWriter, take_fd
from lucidd.daemon.logs import setup_logging
from lucidd.daemon.procutil import die_with_parent, leave_shutdown_to_the_supervisor
from lucidd.daemon.replication.objects import (
    ObjectStore,
    ReplicationTarget,
    resolve_s3_credentials,
)
from lucidd.daemon.replication.replicator import (
    GROUP_S,
    SCAN_INTERVAL_S,
    STATUS_INTERVAL_S,
    Replicator,
    resolve_host_id,
)
from lucidd.errors import LucidError

log = logging.getLogger("lucidd.daemon.replication.main")


class ReplicatorProcess:
    def __init__(self, spec: ipc.ReplicatorSpec, from_sup: int, to_sup: int) -> None:
        config = spec.config
        state_dir = Path(config.state_dir)
        target = ReplicationTarget.parse(
            config.replication_url, config.replication_endpoint, config.replication_region
        )
        credentials_dir = Path(spec.credentials_dir) if spec.credentials_dir else None
        credentials = resolve_s3_credentials(
            config.replication_credentials, credentials_dir, state_dir
        )
        store = ObjectStore(target, credentials)
        self.replicator = Replicator(state_dir, store, target.prefix, resolve_host_id(state_dir))
        self._fds = (from_sup, to_sup)
        self._stop = asyncio.Event()
        self._to_sup: PipeWriter | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        from_sup, to_sup = self._fds
        self._to_sup = PipeWriter(loop, to_sup)
        decoder = ipc.decoder(ipc.SupervisorToReplicator)
        PipeReader(loop, from_sup, decoder, self._on_message, self._stop.set)
        log.info("event=replicator_ready host_id=%s", self.replicator.host_id)
        tasks = [
            asyncio.ensure_future(job)
            for job in (self._flush_loop(), self._scan_loop(), self._status_loop())
        ]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        log.info("event=replicator_stopped")

    def _on_message(self, message: Any) -> None:
        if isinstance(message, ipc.Replicate):
            for sealed in message.sealed:
                self.replicator.enqueue(sealed, message.wait)
            self._answer()
        elif isinstance(message, ipc.Shutdown):
            self._stop.set()

    def _answer(self) -> None:
        done = self.replicator.on_replicated
        if done and self._to_sup is not None:
            self._to_sup.send(ipc.Replicated(list(done)))
            done.clear()

    async def _flush_loop(self) -> None:
        wake = self.replicator.wake
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), GROUP_S / 2)
            wake.clear()
            await self.replicator.backoff()
            self.replicator.flush_due()
            self._answer()

    async def _scan_loop(self) -> None:
        host_written = False
        while True:
            try:
                if not host_written:
                    host_written = await self.replicator.put_host_record()
                await self.replicator.scan()
                await self.replicator.scan_anchor()
            except (OSError, LucidError) as exc:
                log.warning("event=replication_scan_failed error=%s", exc)
            await asyncio.sleep(SCAN_INTERVAL_S)

    async def _status_loop(self) -> None:
        while True:
            if self._to_sup is not None:
                self._to_sup.send(self.replicator.status())
            await asyncio.sleep(STATUS_INTERVAL_S)


def replicator_main(spec: ipc.ReplicatorSpec, from_sup: Connection, to_sup: Connection) -> None:
    """Entry point in the child process (started by the forkserver)."""
    die_with_parent()
    leave_shutdown_to_the_supervisor()
    setup_logging("replicator", spec.config.log_level)
    try:
        process = ReplicatorProcess(spec, take_fd(from_sup), take_fd(to_sup))
    except LucidError as err:
        log.error("event=replicator_start_failed code=%s error=%s", err.code, err.message)
        os._exit(err.exit_code)
    uvloop.run(process.run())
