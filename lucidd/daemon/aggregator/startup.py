"""Crash recovery at start (layer 3): every session's segments indexed beyond the last sync.

The aggregator runs :func:`recover_ledger` once, after loading its ledger and before it serves
(aggregator.main); a dead worker's segments are recovered one worker at a time instead
(``Aggregator._recover_worker``). What one session's recovery does is aggregator.recovery's.
"""

from __future__ import annotations

import logging
import time
import uuid

from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.recovery import recover_segments
from lucidd.daemon.store import storage_error
from lucidd.errors import LucidError

log = logging.getLogger("lucidd.daemon.aggregator.startup")


def recover_ledger(ledger: Ledger, *, repair: bool) -> None:
    """Index what the segments hold beyond the last sync (crash recovery), then sync.

    A sync that fails here (disk full, an I/O error) is logged and left to the periodic
    sync, which retries every tick: the daemon starts and serves what it recovered.
    """
    started = time.monotonic()
    records = 0
    for name in ledger.unreadable:
        damaged = ledger.damaged_error(name)
        log.error("event=session_damaged session=%s error=%s", _sid(name), damaged)
    for session in ledger:
        where = session.paths.root.name
        try:
            acked, repairs = recover_segments(session, ledger.keyring, repair=repair)
        except (OSError, LucidError) as exc:
            # An I/O error reading its files: logged; the session serves what is indexed.
            error = storage_error(exc, "recovery") if isinstance(exc, OSError) else exc
            log.error("event=recovery_failed session=%s error=%s", where, error)
            continue
        records += len(acked)
        for event, details in repairs:
            log.warning("event=%s session=%s %s", event, where, details)
        if session.damaged:
            log.warning(
                "event=session_damaged session=%s missing=%d quarantined=%d",
                where,
                len(session.missing),
                len(session.quarantine),
            )
        try:
            session.sync()
        except (OSError, LucidError) as exc:
            log.error("event=ledger_sync_failed session=%s error=%s", where, exc)
        ledger.release_idle()
    log.info(
        "event=recovered sessions=%d damaged=%d records_indexed=%d seconds=%.3f",
        len(ledger.sessions) + len(ledger.unreadable),
        ledger.damaged_count,
        records,
        time.monotonic() - started,
    )


def _sid(session_id: bytes) -> str:
    return str(uuid.UUID(bytes=session_id))
