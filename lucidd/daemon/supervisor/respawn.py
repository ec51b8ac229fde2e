"""When a child process is tried again (layer 2): the respawn and spawn-retry delays, and
the health reasons meanwhile.

A child that dies soon after its start is replaced after a delay that grows while it keeps
dying young, not in a tight loop; a spawn that fails (EMFILE, EAGAIN, ...) is retried after a
delay that grows while it keeps failing, and health says why the role is down until a spawn
works again. The supervisor asks :class:`Respawns` for each delay and schedules the retry.
"""

from __future__ import annotations

import logging
import time
from typing import Final

log = logging.getLogger("lucidd.daemon.supervisor.respawn")

#: A child that dies within RESPAWN_FAST_S of its start is replaced after a delay that doubles
#: from RESPAWN_BASE_S up to RESPAWN_MAX_S, not in a tight loop.
RESPAWN_FAST_S: Final = 2.0
RESPAWN_BASE_S: Final = 0.1
RESPAWN_MAX_S: Final = 5.0
#: A spawn that failed (EMFILE, EAGAIN, ...) is retried after a delay that doubles from
#: SPAWN_RETRY_BASE_S up to SPAWN_RETRY_MAX_S while it keeps failing.
SPAWN_RETRY_BASE_S: Final = 0.1
SPAWN_RETRY_MAX_S: Final = 2.0


class Respawns:
    """The book of recent child deaths and failed spawns, by role (``aggregator``,
    ``worker<k>``)."""

    def __init__(self) -> None:
        self._fast_deaths: dict[str, int] = {}  # role -> deaths in a row soon after start
        self._spawn_failures: dict[str, int] = {}  # role -> failed spawns in a row
        #: Why health is degraded, by role ("worker1: cannot start a process (...); retrying"),
        #: relayed to the aggregator with every status.
        self._reasons: dict[str, str] = {}

    def reasons(self) -> list[str]:
        """Why health is degraded, one line per role, in the order of the roles."""
        return [self._reasons[role] for role in sorted(self._reasons)]

    def spawn_failed(self, role: str, exc: OSError) -> float:
        """Log a failed spawn, say it in health, and return the delay before the next try."""
        failures = self._spawn_failures.get(role, 0) + 1
        self._spawn_failures[role] = failures
        retry = min(SPAWN_RETRY_MAX_S, SPAWN_RETRY_BASE_S * 2.0 ** (failures - 1))
        reason = exc.strerror or type(exc).__name__
        log.error(
            "event=spawn_failed role=%s errno=%s error=%r attempt=%d retry_s=%.1f",
            role,
            exc.errno,
            reason,
            failures,
            retry,
        )
        self._reasons[role] = f"{role}: cannot start a process ({reason}); retrying"
        return retry

    def spawned(self, role: str) -> None:
        """``role``'s child started: its failures are forgiven, health no longer names it."""
        if self._spawn_failures.pop(role, 0):
            log.info("event=spawn_recovered role=%s", role)
        self._reasons.pop(role, None)

    def respawn_delay(self, role: str, started: float) -> float:
        """The delay before ``role``'s child that just died (started at CLOCK_MONOTONIC
        ``started``) is replaced: 0 for one that lived a while, growing delays for one that
        keeps dying young."""
        lived = time.monotonic() - started
        fast = self._fast_deaths.get(role, 0) + 1 if lived < RESPAWN_FAST_S else 0
        self._fast_deaths[role] = fast
        delay = min(RESPAWN_MAX_S, RESPAWN_BASE_S * 2 ** (fast - 1)) if fast else 0.0
        if delay:
            log.warning("event=respawn_delayed role=%s seconds=%.1f", role, delay)
        return delay
