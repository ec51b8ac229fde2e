"""Signed checkpoints (layer 2): of each session, and of the host's anchor log.

The notary holds the host's signing key and origin. A session checkpoint has the origin
``<host origin>/<session id>``, the anchor log's ``<host origin>/anchor``; both are C2SP signed
notes (:mod:`lucidd.note`) signed by the key named ``<host origin>``. A checkpoint is signed
only once its log is durable at that size, stored create-only by size (:class:`NoteFolder`),
and every stored session checkpoint becomes a leaf of the anchor log. Ed25519 signatures are
deterministic, so signing the same size again gives the same bytes; a stored note still wins
over a fresh one (it is what may already have been handed out or anchored).
"""

from __future__ import annotations

import logging
import re
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from lucidd.daemon.aggregator.anchor_log import AnchorLog
from lucidd.daemon.aggregator.note_files import NoteFolder
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.config import valid_origin
from lucidd.daemon.store import write_atomically
from lucidd.errors import ConfigError, LucidError
from lucidd.merkle import Checkpoint
from lucidd.note import Signer, sign_checkpoint

log = logging.getLogger("lucidd.daemon.aggregator.notary")

CHECKPOINTS_DIR: Final = "checkpoints"
ANCHOR_ORIGIN_SUFFIX: Final = "anchor"


def session_origin(host_origin: str, session_id: bytes) -> str:
    return f"{host_origin}/{uuid.UUID(bytes=session_id)}"


def anchor_origin(host_origin: str) -> str:
    return f"{host_origin}/{ANCHOR_ORIGIN_SUFFIX}"


class Notary:
    """Signs, stores and logs checkpoints; remembers which sessions grew since their last."""

    def __init__(self, signer: Signer, host_origin: str, anchor_log: AnchorLog) -> None:
        self.signer = signer
        self.host_origin = host_origin
        self.anchor_log = anchor_log
        #: Sessions that got leaves since their last stored checkpoint (checked each tick).
        self.grown: set[bytes] = set()

    @staticmethod
    def folder(session: SessionLedger) -> NoteFolder:
        return NoteFolder(session.paths.root / CHECKPOINTS_DIR)

    def last_logged_size(self, session_id: bytes) -> int:
        logged = self.anchor_log.logged(session_id)
        return logged[-1][0] if logged else 0

    def note_growth(self, sessions: Iterable[tuple[bytes, int]]) -> None:
        """Sessions (id, size) that may have grown past their last checkpoint."""
        for session_id, size in sessions:
            if size > self.last_logged_size(session_id):
                self.grown.add(session_id)

    def sign(self, origin: str, size: int, root: bytes) -> bytes:
        return sign_checkpoint(Checkpoint(origin, size, root), self.signer)

    def session_note(self, session: SessionLedger, size: int) -> bytes:
        """A signed checkpoint of the session at ``size`` (not stored, not logged)."""
        origin = session_origin(self.host_origin, session.session_id)
        return self.sign(origin, size, session.merkle.root(size))

    def checkpoint_session(self, session: SessionLedger, size: int | None = None) -> bytes:
        """Sign, store and log the session's checkpoint of ``size`` (default: its size).

        The session is synced first (a signed size must survive a crash). Durable when it
        returns except the anchor-log leaf, which is durable at the next anchor-log sync.
        """
        size = session.merkle.size if size is None else size
        session.sync()
        folder = self.folder(session)
        note = folder.read(size)
        if note is None:
            note = self.session_note(session, size)
            if not folder.write(size, note):
                note = folder.read(size) or note
        self.anchor_log.append(session.session_id, size, note)
        return note

    def stored_session_note(self, session: SessionLedger, size: int) -> bytes | None:
        return self.folder(session).read(size)

    def checkpoint_grown(self, sessions: dict[bytes, SessionLedger]) -> int:
        """Checkpoint every session that grew since its last checkpoint; how many were."""
        grown, self.grown = self.grown, set()
        written = 0
        for session_id in grown:
            session = sessions.get(session_id)
            if session is None or session.merkle.size <= self.last_logged_size(session_id):
                continue
            try:
                self.checkpoint_session(session)
            except (OSError, LucidError) as exc:  # disk full: tried again at the next tick
                self.grown.add(session_id)
                log.error(
                    "event=checkpoint_failed session=%s error=%s",
                    uuid.UUID(bytes=session_id),
                    exc,
                )
                continue
            written += 1
        return written

    # -- the anchor log ----------------------------------------------------------------

    def checkpoint_anchor_log(self) -> tuple[int, bytes] | None:
        """Sign and store the anchor log's checkpoint at its current size (None: empty).

        The log is synced first. The stored checkpoint of that size is returned if there is
        one already.
        """
        anchor = self.anchor_log
        size = anchor.size
        if size == 0:
            return None
        stored = anchor.checkpoints.read(size)
        if stored is not None:
            return size, stored
        anchor.sync()
        note = self.sign(anchor_origin(self.host_origin), size, anchor.merkle.root(size))
        if not anchor.checkpoints.write(size, note):
            note = anchor.checkpoints.read(size) or note
        return size, note

    def anchor_sizes(self) -> list[int]:
        return self.anchor_log.checkpoints.sizes()

    def attestations(self, size: int) -> dict[str, bytes]:
        folder = self.anchor_log.checkpoints
        found = {}
        for kind in folder.kinds(size):
            data = folder.read(size, kind)
            if data is not None:
                found[kind] = data
        return found

    def store_attestation(self, size: int, backend: str, data: bytes) -> None:
        self.anchor_log.checkpoints.write(size, data, kind=backend)


def signing_key_name(host_origin: str) -> str:
    """The note key name: the host origin (it is what a verifier pins beside the key)."""
    return host_origin


ORIGIN_FILE: Final = "origin"
#: The public verifier key, for parts that must not hold the signing key (the replicator).
VKEY_FILE: Final = "vkey"


def publish_verifier_key(state_dir: Path, vkey: str) -> None:
    """Write ``<state>/vkey`` (public) unless it already says ``vkey``."""
    path = state_dir / VKEY_FILE
    try:
        if path.read_text().strip() == vkey:
            return
    except FileNotFoundError:
        pass
    write_atomically(path, f"{vkey}\n".encode())


def default_origin() -> str:
    """``<host name>/lucidd``, lowercased, with characters an origin may not hold dropped."""
    host = re.sub(r"[^a-z0-9.-]", "", socket.gethostname().lower()).strip(".-") or "localhost"
    return f"{host}/lucidd"


def resolve_origin(configured: str, state_dir: Path) -> str:
    """The host origin: the ``origin`` setting, else the one stored at first start.

    Without a setting, the default is derived from the host name once and written to
    ``<state>/origin``, so renaming the host later changes neither the origins of its logs nor
    its key name (verifiers keep their pinned ``vkey``).
    """
    if configured:
        return configured
    path = state_dir / ORIGIN_FILE
    try:
        stored = path.read_text("utf-8").strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        if not valid_origin(stored):
            raise ConfigError(f"{path} holds an invalid origin {stored!r}; set origin")
        return stored
    origin = default_origin()
    write_atomically(path, f"{origin}\n".encode())
    return origin
