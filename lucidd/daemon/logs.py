"""Logging set-up shared by every lucidd process (layer 2).

One event per line on stderr, ``key=value`` pairs after the event name. Under journald each line
starts with the ``<N>`` syslog priority (sd-daemon(3)) so the journal keeps the level, and
carries no timestamp (the journal adds its own); otherwise a timestamp and the process role lead
the line. "Under journald" means what sd_journal_stream_fd's users check: ``$JOURNAL_STREAM``
names the device and inode of our stderr, so a daemon started from a journald-connected shell
but writing to a terminal or a file logs plainly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final

#: Client-caused errors logged by one process: a burst, then this many a second.
CLIENT_ERRORS_BURST: Final = 20
CLIENT_ERRORS_PER_SECOND: Final = 1.0

#: syslog's "notice" (priority 5): normal but significant, such as a shred. Between INFO and
#: WARNING, so a daemon logging at info shows it.
NOTICE: Final = 25
logging.addLevelName(NOTICE, "NOTICE")

_PRIORITY: Final = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    NOTICE: 5,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_DEFAULT_PRIORITY: Final = 6


def journal_priority(levelno: int) -> int:
    """The syslog priority of a logging level (custom levels round down to a known one)."""
    known = [level for level in _PRIORITY if level <= levelno]
    return _PRIORITY[max(known)] if known else _PRIORITY[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """Prefix every line of a record (a traceback too) with its ``<N>`` priority: journald
    stores each line as its own entry, and an unprefixed line would be logged as info."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int | None = None) -> bool:
    """True if ``fd`` (default: stderr) is the journald stream named by ``$JOURNAL_STREAM``."""
    value = (env if env is not None else os.environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd if fd is not None else sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def setup_logging(role: str, level: str = "info") -> None:
    """Configure the root logger of this process for ``role`` (supervisor, worker3, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter(f"{role}: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class ClientErrorLog:
    """Errors a client caused (bad frames, refusals), logged without letting clients flood.

    Each connection reports at most its first error (the caller keeps that flag), and the
    whole process logs at most ``burst`` such lines and then ``per_second``; lines dropped by
    the limit are counted and the next line logged says how many. A hostile client that sends
    a million bad frames costs one line, not a million.
    """

    def __init__(
        self,
        logger: logging.Logger,
        per_second: float = CLIENT_ERRORS_PER_SECOND,
        burst: int = CLIENT_ERRORS_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.suppressed = 0

    def report(self, uid: int, pid: int, code: str, message: str) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        suppressed, self.suppressed = self.suppressed, 0
        self._logger.info(
            "event=client_error uid=%d pid=%d code=%s suppressed=%d detail=%s",
            uid,
            pid,
            code,
            suppressed,
            " ".join(message.split())[:200],
        )


#: At most one log line per this many seconds about connections refused over the limit.
REFUSAL_LOG_INTERVAL_S: Final = 10.0


class RefusalLog:
    """Connections refused over a socket's limit: one line per interval, with the count."""

    def __init__(self, logger: logging.Logger, socket_name: str) -> None:
        self._logger = logger
        self._socket = socket_name
        self._unlogged = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL_S

    def refused(self, limit: int) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._logger.warning(
                "event=connections_refused socket=%s refused=%d limit=%d",
                self._socket,
                self._unlogged,
                limit,
            )
            self._logged_at = now
            self._unlogged = 0
