"""The aggregator's book of sessions (layer 2): every session of one state folder.

One :class:`~lucidd.daemon.aggregator.session.SessionLedger` per session (built and loaded by
:func:`~lucidd.daemon.aggregator.recovery.open_session`), one :class:`Ledger`
per aggregator process; the aggregator is the single writer of every file here except the
segments (DESIGN §2, §7). Nothing in memory is authoritative: on start the ledger is rebuilt
from the files, and the files from the records (the recovery scan). The sessions' open files
are a cache of the least recently used (``release_idle``), so the descriptors held stay
bounded however many sessions the host sees.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from lucidd.crypto import (
    COMPRESSIONS,
    SESSION_ID_SIZE,
    Keyring,
    new_session_secret,
    unwrap_secret,
    wrap_secret,
)
from lucidd.daemon import ipc
from lucidd.daemon.aggregator.recovery import open_session
from lucidd.daemon.aggregator.session import SessionLedger, damaged_view
from lucidd.daemon.store import (
    EVICTED_FILE,
    LEDGER_STATE_FILE,
    SessionMeta,
    SessionPaths,
    create_session_dir,
    fsync_dir,
    list_session_dirs,
    new_meta,
    read_meta,
    shred_session,
    write_atomically,
)
from lucidd.errors import (
    BadRequestError,
    DamagedSessionError,
    KeyringError,
    LucidError,
    SessionFinalizedError,
    UnknownSessionError,
)

#: The aggregator keeps the files of at most this many sessions open (the rest are closed and
#: reopened on use), holding at most MAX_OPEN_DESCRIPTORS: a session's log holds one
#: descriptor per tree level (21 at a million chunks) plus its folder and its index.
MAX_OPEN_SESSIONS: Final = 64
MAX_OPEN_DESCRIPTORS: Final = 384
#: Below this many sessions in use, counting their descriptors is not worth it (each holds at
#: most 66 at 2**63 chunks, so 4 of them stay far below MAX_OPEN_DESCRIPTORS).
MIN_SESSIONS_TO_COUNT: Final = 4


class Ledger:
    """Every session of one state folder."""

    def __init__(self, state_dir: Path, keyring: Keyring) -> None:
        """Load every session folder. One whose metadata cannot be read or decoded, or whose
        secret the keyring cannot unwrap, is kept aside in :attr:`unreadable` (every request
        naming it is refused as ``damaged``) and the others are served. Only a keyring that
        opens none of the sessions with readable metadata stops the start (KeyringError, a
        configuration error: exit 78)."""
        self.state_dir = state_dir
        self.keyring = keyring
        self.sessions: dict[bytes, SessionLedger] = {}
        #: Sessions whose files may be open, least recently used first (release_idle).
        self._in_use: OrderedDict[bytes, None] = OrderedDict()
        self._releasing = False
        #: The session used last: its repeated uses (several per chunk indexed) cost nothing.
        self._last_used: SessionLedger | None = None
        #: Session id -> what is wrong with it, for the sessions that cannot be loaded.
        self.unreadable: dict[bytes, str] = {}
        #: Sessions whose records were freed locally (local_retention): id -> metadata.
        self.evicted: dict[bytes, SessionMeta] = {}
        readable = 0
        refused: list[LucidError] = []
        for session_id, paths in list_session_dirs(state_dir):
            try:
                meta = read_meta(paths)
            except (OSError, LucidError) as exc:
                self.unreadable[session_id] = f"its metadata cannot be read: {exc}"
                continue
            readable += 1
            if paths.evicted_to() is not None:
                self.evicted[session_id] = meta
                continue
            try:
                self.load(session_id, paths, meta)
            except DamagedSessionError:  # its files: kept aside, the others are served
                continue
            except LucidError as err:  # its secret: the keyring may be the wrong one
                refused.append(err)
        if refused and len(refused) == readable:
            first = refused[0]
            raise KeyringError(
                f"the keyring opens none of the {readable} stored session(s) "
                f"({first.code}: {first.message})"
            )

    def load(self, session_id: bytes, paths: SessionPaths, meta: SessionMeta) -> SessionLedger:
        """Open one session folder and add it (also for a session restored while running).

        A secret the keyring cannot unwrap, or files that cannot be opened, put the session in
        :attr:`unreadable` and raise the error (its code says which).
        """
        try:
            secret = unwrap_secret(self.keyring, session_id, meta.wrapped_secret)
        except LucidError as err:
            self.unreadable[session_id] = (
                f"its secret cannot be unwrapped: {err.code}: {err.message}"
            )
            raise
        try:
            session = open_session(session_id, paths, meta)
        except (OSError, LucidError) as exc:
            self.unreadable[session_id] = f"its files cannot be opened: {exc}"
            raise DamagedSessionError(self.unreadable[session_id], session=session_id) from None
        session._secret = secret
        self._add(session)
        return session

    def __iter__(self) -> Iterator[SessionLedger]:
        return iter(self.sessions.values())

    def damaged_error(self, session_id: bytes) -> DamagedSessionError | None:
        """The refusal for a session that cannot be loaded, None for any other id."""
        problem = self.unreadable.get(session_id)
        if problem is None:
            return None
        return DamagedSessionError(
            f"session {uuid.UUID(bytes=session_id)} is damaged: {problem}", session=session_id
        )

    def views(self) -> list[ipc.SessionView]:
        """What the supervisor admits by: every session, the unreadable ones as damaged."""
        views = [session.view() for session in self.sessions.values()]
        views += [damaged_view(session_id) for session_id in self.unreadable]
        views += [
            ipc.SessionView(sid, ipc.SESSION_FINALIZED, meta.compression, 0, 0, [], meta.owner_uid)
            for sid, meta in self.evicted.items()
        ]
        return views

    @property
    def damaged_count(self) -> int:
        return len(self.unreadable) + sum(1 for s in self.sessions.values() if s.damaged)

    def get(self, session_id: bytes) -> SessionLedger:
        session = self.sessions.get(session_id)
        if session is None:
            damaged = self.damaged_error(session_id)
            if damaged is not None:
                raise damaged
            raise UnknownSessionError(
                f"no session {uuid.UUID(bytes=session_id)}", session=session_id
            )
        return session

    def open(
        self,
        session_id: bytes | None,
        compression: str,
        owner_uid: int,
        label: str = "",
        chunk_size: int = 0,
    ) -> SessionLedger:
        """Create a session owned by ``owner_uid``; durable when it returns.

        An existing id returns that session as it is (whoever owns it): the caller checks
        whether the peer may use it.
        """
        if compression not in COMPRESSIONS:
            raise BadRequestError(
                f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}"
            )
        if session_id is None:
            session_id = uuid.uuid4().bytes
        existing = self.sessions.get(session_id)
        if existing is not None:
            return existing
        if session_id in self.evicted:
            raise SessionFinalizedError("session is finalized", session=session_id)
        damaged = self.damaged_error(session_id)
        if damaged is not None:
            raise damaged
        if len(session_id) != SESSION_ID_SIZE:
            raise BadRequestError("session id must be 16 bytes")
        secret = new_session_secret()
        wrapped = wrap_secret(self.keyring, session_id, secret)
        paths = SessionPaths.of(self.state_dir, session_id)
        meta = new_meta(
            session_id,
            wrapped,
            compression,
            ipc.SESSION_OPEN,
            owner_uid,
            label=label,
            chunk_size=chunk_size,
        )
        create_session_dir(paths, meta)
        session = open_session(session_id, paths, meta)
        self._add(session)
        return session

    # -- the cache of open files ----------------------------------------------------------

    def _add(self, session: SessionLedger) -> None:
        self.sessions[session.session_id] = session
        session.on_use = self._used
        self._used(session)
        self.release_idle()

    def _used(self, session: SessionLedger) -> None:
        if session is self._last_used:
            return
        self._last_used = session
        in_use = self._in_use
        key = session.session_id
        if key in in_use:
            in_use.move_to_end(key)
            return
        in_use[key] = None
        # Between syncs too: a burst of reads over many sessions must not run out of fds.
        if len(in_use) > 2 * MAX_OPEN_SESSIONS and not self._releasing:
            self.release_idle()

    def release_idle(self) -> None:
        """Close the files of the least recently used sessions beyond the cache's bounds.

        At most MAX_OPEN_SESSIONS sessions, holding at most MAX_OPEN_DESCRIPTORS, keep files
        open; every other session reopens its files on its next use. A session whose state
        is not durable yet (a full disk) stays open and is tried again on the next call.
        """
        in_use = self._in_use
        if len(in_use) <= MIN_SESSIONS_TO_COUNT or self._releasing:
            return
        self._releasing = True  # a release syncs, and a sync may use files: no re-entry
        try:
            self._release_lru()
        finally:
            self._releasing = False

    def _release_lru(self) -> None:
        self._last_used = None  # it may be released below: its next use must count again
        in_use = self._in_use
        held = sum(s.open_descriptors for i in in_use if (s := self.sessions.get(i)))
        kept: list[bytes] = []
        while in_use and (len(in_use) > MAX_OPEN_SESSIONS or held > MAX_OPEN_DESCRIPTORS):
            key, _ = in_use.popitem(last=False)
            session = self.sessions.get(key)
            if session is None:
                continue
            before = session.open_descriptors
            try:
                released = session.release_files()
            except (OSError, LucidError):
                released = False
            if released:
                held -= before
            else:
                kept.append(key)
        for key in kept:  # not durable yet: keep their files, retry next time
            in_use[key] = None
            in_use.move_to_end(key, last=False)

    def require_open(self, session_id: bytes) -> SessionLedger:
        session = self.get(session_id)
        if session.state == ipc.SESSION_FINALIZED:
            raise SessionFinalizedError("session is finalized", session=session_id)
        return session

    def shred(self, session_id: bytes) -> None:
        session = self.get(session_id)
        del self.sessions[session_id]
        self._in_use.pop(session_id, None)
        self._last_used = None
        with contextlib.suppress(OSError):
            session.merkle.close()
            session.index.close()
        shred_session(session.paths)

    def evict(self, session_id: bytes, host_id: str) -> None:
        """Free a finalized session's records locally (they are verified in the object store
        under ``host_id``): its segments, index, Merkle files and ledger state go; its
        metadata, checkpoints and FINAL record stay, so it is still listed and its owner
        known. The marker is written first, so a crash half-way leaves an evicted session."""
        session = self.get(session_id)
        paths = session.paths
        write_atomically(paths.root / EVICTED_FILE, f"{host_id}\n".encode())
        del self.sessions[session_id]
        self._in_use.pop(session_id, None)
        self._last_used = None
        session.close()
        for name in paths.segments():
            paths.segment(name).unlink()
        for path in (paths.index, paths.root / LEDGER_STATE_FILE):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(paths.merkle, ignore_errors=True)
        fsync_dir(paths.root)
        self.evicted[session_id] = session.meta

    def sync(self) -> None:
        for session in self.sessions.values():
            session.sync()
        self.release_idle()

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
