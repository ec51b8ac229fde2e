"""Logging set-up shared by every lucidd process (layer 2).

One event per line on stderr, ``key=value`` pairs after the event name. Under journald
(``$JOURNAL_STREAM`` set) each line starts with the ``<N>`` syslog priority so the journal keeps
the level; otherwise a timestamp and the process role lead the line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

_PRIORITY: Final = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def setup_logging(role: str, level: str = "info") -> None:
    """Configure the root logger of this process for ``role`` (supervisor, worker3, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter(f"{role}: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
