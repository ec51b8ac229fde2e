"""The supervisor's table of client shared-memory regions (layer 3, docs/protocol.md
*Shared memory*).

A region lives from its ``ShareMemory`` until its connection is gone *and* no chunk in it is
in flight: a worker may still be sealing from it after the client hung up, and a chunk whose
worker died is re-dispatched from the same bytes. Only then are the supervisor's descriptor
and mapping closed and every worker that mapped it told to unmap it (``ForgetRegion``, on the
inbox after any Seal naming it). A worker gets a region's descriptor the first time a chunk in
it is dispatched to it (:meth:`RegionTable.share`), and again after it was replaced.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from lucidd.daemon import ipc
from lucidd.daemon.channels import PipeWriter
from lucidd.daemon.shared_regions import create_region, round_to_pages, send_region
from lucidd.daemon.supervisor.gates import SharedRegion
from lucidd.errors import BadRequestError, BusyError, TooLargeError

log = logging.getLogger("lucidd.daemon.supervisor.regions")


class RegionHolder(Protocol):
    """What the table needs of a worker link: its inbox and its region socket."""

    writer: PipeWriter | None
    region_sock: socket.socket | None


class RegionTable:
    """Every live region; creates, hands out and frees them."""

    def __init__(self, max_size: int, links: Callable[[], Sequence[RegionHolder]]) -> None:
        self.max_size = max_size
        self._links = links
        self._ids = itertools.count(1)
        self.regions: dict[int, SharedRegion] = {}
        self.bytes = 0

    def create(self, size: int, fds_left: int | None) -> SharedRegion:
        """A new region of at least ``size`` bytes, or the typed refusal.

        ``fds_left``: descriptors the supervisor may still spend on clients (None: no bound);
        a region costs one, so none is made when that would eat the supervisor's reserve.
        """
        if self.max_size <= 0:
            raise BusyError("shared memory is off (shared_memory_max = 0)")
        if size <= 0:
            raise BadRequestError("a shared-memory region needs a positive size")
        if size > self.max_size:
            raise TooLargeError(
                f"a shared-memory region of {size} bytes exceeds shared_memory_max "
                f"({self.max_size})",
                limit=self.max_size,
            )
        if fds_left is not None and fds_left < 1:
            raise BusyError("no descriptor left for shared memory; use the socket")
        size = min(round_to_pages(size), round_to_pages(self.max_size))
        try:
            fd = create_region(size)
        except OSError as exc:
            raise BusyError(f"cannot create shared memory: {exc.strerror}") from None
        region = SharedRegion(next(self._ids), fd, size)
        self.regions[region.id] = region
        self.bytes += size
        return region

    def share(self, region: SharedRegion, worker: int) -> bool:
        """Make sure worker slot ``worker`` has ``region``; False if it cannot be handed over
        now (its region socket is full or gone)."""
        if worker in region.workers:
            return True
        sock = self._links()[worker].region_sock
        if sock is None:
            return False
        try:
            send_region(sock, region.id, region.size, region.fd)
        except OSError as exc:
            log.warning("event=region_not_shared worker=%d errno=%s", worker, exc.errno)
            return False
        region.workers.add(worker)
        return True

    def worker_replaced(self, worker: int) -> None:
        """Slot ``worker`` has a new process (or none): it holds no region."""
        for region in self.regions.values():
            region.workers.discard(worker)

    def chunk_done(self, region: SharedRegion) -> None:
        region.chunks -= 1
        if not region.connected and region.chunks == 0:
            self._free(region)

    def disconnected(self, region: SharedRegion) -> None:
        region.connected = False
        if region.chunks == 0:
            self._free(region)

    def _free(self, region: SharedRegion) -> None:
        if self.regions.pop(region.id, None) is None:
            return
        self.bytes -= region.size
        links = self._links()
        for worker in region.workers:
            writer = links[worker].writer if worker < len(links) else None
            if writer is not None:
                writer.send(ipc.ForgetRegion(region.id))
        os.close(region.fd)

    def close_all(self) -> None:
        """At exit: close every descriptor and mapping."""
        for region in list(self.regions.values()):
            region.workers.clear()
            self._free(region)
