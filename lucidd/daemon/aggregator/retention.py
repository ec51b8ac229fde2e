"""Local retention (layer 3, issue 14): finalized sessions freed locally once replicated.

With ``local_retention`` set and replication configured, a finalized session of this host
whose final record is uploaded, and whose copy in the object store verifies
(:meth:`~lucidd.daemon.aggregator.remote.RemoteSessions.verified_copy`), has its local
records freed ``local_retention`` seconds after they were last written here (finalized, or
fetched back by a read); a later read fetches them back (aggregator.services). A copy that
cannot be checked or is incomplete keeps the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from lucidd.daemon import ipc
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.remote import RemoteSessions
from lucidd.daemon.replication.progress import REPLICATION_DIR, SessionProgress
from lucidd.daemon.replication.replicator import HOST_ID_FILE
from lucidd.daemon.store import FINAL_FILE, SessionPaths
from lucidd.errors import LucidError

log = logging.getLogger("lucidd.daemon.aggregator.retention")

#: How often finalized sessions are checked against local_retention (at most).
RETENTION_CHECK_S: Final = 60.0


class LocalRetention:
    """The retention pass over a ledger; it evicts under the session's lock, so it never
    races a control request on the same session (``session_lock`` is the aggregator's)."""

    def __init__(
        self,
        ledger: Ledger,
        state_dir: Path,
        remote: RemoteSessions | None,
        session_lock: Callable[[bytes], asyncio.Lock],
    ) -> None:
        self.ledger = ledger
        self.state_dir = state_dir
        self.remote = remote
        self.session_lock = session_lock

    async def run(self, retention: float) -> None:
        """Free the local records of finalized, fully replicated sessions after
        ``retention`` s (the object store's copy verified first); reads fetch them back.
        Returns at once without retention or replication."""
        if not retention or self.remote is None:
            return
        while True:
            await asyncio.sleep(min(RETENTION_CHECK_S, retention / 2))
            await self.free_retained(self.remote, retention)

    async def free_retained(self, remote: RemoteSessions, retention: float) -> None:
        """One pass: every session due is checked, and freed if its copy verifies."""
        host_id = _read_text(self.state_dir / HOST_ID_FILE)
        if host_id is None:
            return
        now = time.time()
        for session in list(self.ledger):
            if session.remote_host is not None or session.state != ipc.SESSION_FINALIZED:
                continue
            written = _last_written(session.paths)
            if written is None or now - written < retention:
                continue
            sid = session.paths.root.name
            progress = SessionProgress(self.state_dir / REPLICATION_DIR / sid)
            uploaded = FINAL_FILE in progress.objects
            progress.close()
            if not uploaded:
                continue
            try:
                verified = await remote.verified_copy(session, host_id)
            except (OSError, LucidError) as exc:
                log.warning("event=retention_check_failed session=%s error=%s", sid, exc)
                continue
            if not verified:
                log.warning("event=retention_kept session=%s reason=replica_incomplete", sid)
                continue
            async with self.session_lock(session.session_id):
                if session.session_id in self.ledger.sessions:
                    self.ledger.evict(session.session_id, host_id)
                    log.info("event=session_freed_locally session=%s", sid)


def _last_written(paths: SessionPaths) -> float | None:
    """When the session's records were last written here: its FINAL record, or the segment
    a read fetched back (so a session just read is kept another ``local_retention``)."""
    try:
        return max(
            path.stat().st_mtime
            for path in (paths.final, *(paths.segment(name) for name in paths.segments()))
        )
    except FileNotFoundError:
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
