"""File descriptors of the supervisor: the limit, the reserve and the budget (layer 2).

Every data connection costs the supervisor one descriptor, and so does everything it needs to
keep the daemon alive: the pipes, sentinels and forkserver socket of a respawn, the listening
sockets, the notify socket. A host where clients hold every descriptor must not be able to
stop a respawn, so:

- at start :func:`raise_nofile_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard limit
  (systemd's default soft limit is 1024; the unit sets ``LimitNOFILE=``);
- :func:`fds_needed` is what the supervisor keeps for itself, and :func:`fd_budget` what is
  left for data connections; the supervisor closes a connection accepted beyond the budget at
  once (``config.connection_limit(config, Ingest.fd_budget)``), so connections never eat the
  reserve: ``max_connections`` is clamped to :func:`fd_budget`, never exceeds it;
- :class:`FdReserve` holds a few spare descriptors that a respawn releases first, so that it
  finds room even when something unforeseen took the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Iterator
from typing import Final

__all__ = [
    "BASE_FDS",
    "FDS_PER_WORKER",
    "RESERVE_FDS",
    "FdReserve",
    "connection_budget",
    "fd_budget",
    "fds_needed",
    "open_fd_count",
    "raise_and_log_nofile_limit",
    "raise_nofile_limit",
]

log = logging.getLogger("lucidd.daemon.supervisor.fds")

#: stdio, the two listening sockets, the notify socket, the event loop's own (epoll, signal
#: pipe, timers), the forkserver's socket and alive pipe, the aggregator's two pipes, sentinel
#: and process handle; rounded up from a count of /proc/PID/fd (docs/bench.md).
BASE_FDS: Final = 40
#: Per worker: both ends of its results and acks pipes (held across incarnations), its inbox,
#: its region socket (shared_regions), its sentinel and process handle (counted, rounded up:
#: docs/bench.md). A client's shared-memory region costs one more, counted with clients
#: (Ingest.fds_left).
FDS_PER_WORKER: Final = 8
#: Spare descriptors a respawn releases before it creates pipes and asks the forkserver for a
#: process (it needs 10 at its peak, with both ends of the region socket; the aggregator 10).
RESERVE_FDS: Final = 16
#: Connections the kernel may complete before the supervisor gets to close those beyond the
#: budget (the listen backlog): a burst of accepts may overshoot by this much.
ACCEPT_BURST_FDS: Final = 128


def fds_needed(workers: int) -> int:
    """Descriptors the supervisor keeps for itself with ``workers`` workers (never lent out)."""
    return BASE_FDS + FDS_PER_WORKER * workers + RESERVE_FDS + ACCEPT_BURST_FDS


def fd_budget(soft_limit: int, workers: int) -> int:
    """How many data connections may be open at once under ``soft_limit`` (0 or more).

    ``max_connections`` must be clamped to this: a connection past it would take a descriptor
    the daemon needs to respawn a child or accept on its control socket.
    """
    if soft_limit == resource.RLIM_INFINITY:
        return 2**31 - 1
    return max(0, soft_limit - fds_needed(workers))


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(old soft, new soft)``.

    The children inherit it. ``select()`` is never used, so descriptors above 1024 are fine.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def open_fd_count() -> int:
    """How many descriptors this process has open now (Linux ``/proc/self/fd``)."""
    return len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor


def raise_and_log_nofile_limit() -> None:
    """Take every descriptor the hard limit allows (children inherit it); log the change."""
    try:
        old, new = raise_nofile_limit()
    except OSError as exc:  # a seccomp filter (SystemCallFilter=~@resources): LimitNOFILE=
        log.warning("event=nofile_unchanged error=%r", exc.strerror)
        return
    if old != new:
        log.info("event=nofile_raised from=%d to=%d", old, new)


def connection_budget(workers: int) -> int:
    """Data connections allowed at once: what the descriptor limit leaves after the
    supervisor's own needs (:func:`fd_budget`). Logged, with what is open now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = fd_budget(soft, workers)
    log.info(
        "event=fd_budget nofile=%d hard=%d reserved=%d open=%d connections=%d",
        soft,
        hard,
        fds_needed(workers),
        open_fd_count(),
        budget,
    )
    if budget == 0:
        log.warning(
            "event=fd_limit_low nofile=%d needed=%d detail=no data connection can be "
            "accepted; raise LimitNOFILE= (ulimit -n)",
            soft,
            fds_needed(workers),
        )
    return budget


class FdReserve:
    """Spare descriptors (``/dev/null``) held so that a respawn always finds room.

    Opened early, they have low numbers: released, they are usable even when the soft limit
    was lowered under the process (``prlimit``) below the numbers in use.
    """

    def __init__(self, count: int = RESERVE_FDS) -> None:
        self._count = count
        self._fds: list[int] = []
        self._fill()

    @property
    def held(self) -> int:
        return len(self._fds)

    def _fill(self) -> None:
        with contextlib.suppress(OSError):  # as many as the limit allows now; more next time
            while len(self._fds) < self._count:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Close the spares for the duration of the block, then take back what is free."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        try:
            yield
        finally:
            self._fill()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
