"""The supervisor's side of key distribution (layer 3, docs/keys.md "Online rotation").

The supervisor holds the daemon's keyring: every child it starts gets it in its spec. When
the aggregator installs a keyring (an online rotation, a retire, or a SIGHUP reload it
checked), :class:`KeyringLink` keeps it for the children started from then on, sends it to
every worker's inbox and, once every live worker has confirmed, answers the aggregator
(``KeyringInstalled``), which only then lets any session's metadata name a new key.

Why a worker that dies while the supervisor waits for it counts as confirmed: its
replacement is started from the spec, which already holds the new keyring. The inbox is a
FIFO, so a worker takes the keyring before any chunk dispatched after it. Keys travel only
over the private pipes, and nothing here logs them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lucidd.crypto import Keyring
from lucidd.daemon import ipc
from lucidd.daemon.keyfile import load_keyring
from lucidd.daemon.passphrase import PassphraseSource
from lucidd.daemon.supervisor.dispatch import WorkerLink
from lucidd.errors import LucidError

log = logging.getLogger("lucidd.daemon.supervisor.keyring_link")


class KeyringLink:
    """The daemon's keyring as the supervisor holds it, and the distributions under way."""

    def __init__(
        self,
        keyring: Keyring,
        to_aggregator: Callable[[Any], None],
        path: Path,
        credentials_dir: str,
    ) -> None:
        self.keyring = keyring
        self._to_aggregator = to_aggregator
        #: The file the daemon started from (a SIGHUP reads it again) and systemd's
        #: credentials folder (a locked keyring's passphrase credential).
        self._path = path
        self._credentials_dir = credentials_dir or None
        self._reload: asyncio.Task[None] | None = None
        # The supervisor's own serials, not the aggregator's tokens: a replaced aggregator
        # starts its tokens again, and a confirmation of an older keyring must never count
        # for a newer one.
        self._serials = itertools.count(1)
        #: serial -> (the aggregator's token, worker slots that have not confirmed yet)
        self._waiting: dict[int, tuple[int, set[int]]] = {}

    def install(self, message: ipc.InstallKeyring, workers: list[WorkerLink]) -> None:
        """Keep ``message``'s keyring for new children, send it to every worker with an inbox,
        and answer the aggregator once all of them hold it."""
        self.keyring = Keyring.parse(message.keyring)  # before any spawn can read the spec
        serial = next(self._serials)
        waiting: set[int] = set()
        for k, link in enumerate(workers):
            if link.writer is not None:
                link.writer.send(ipc.UseKeyring(serial, message.keyring))
                waiting.add(k)
        self._waiting[serial] = (message.token, waiting)
        log.info(
            "event=keyring_distributing current=%d keys=%d workers=%d",
            self.keyring.current_id,
            len(self.keyring.key_ids),
            len(waiting),
        )
        self._answer_if_done(serial)

    def confirmed(self, message: ipc.KeyringInUse) -> None:
        """Worker ``message.worker`` holds the keyring of serial ``message.token``."""
        entry = self._waiting.get(message.token)
        if entry is not None:
            entry[1].discard(message.worker)
            self._answer_if_done(message.token)

    def worker_gone(self, worker: int) -> None:
        """Slot ``worker`` lost its process (or its start failed): its next process starts
        from the spec, which holds the newest keyring, so it is waited for no longer."""
        for serial in list(self._waiting):
            self._waiting[serial][1].discard(worker)
            self._answer_if_done(serial)

    def aggregator_replaced(self) -> None:
        """The aggregator that asked is dead; its successor starts with :attr:`keyring` and
        its tokens start again, so no answer of the old ones may reach it."""
        for serial in list(self._waiting):
            self._waiting[serial][1].clear()
        self._waiting.clear()

    # -- SIGHUP -------------------------------------------------------------------------

    def reload_requested(self) -> None:
        """SIGHUP (``systemctl reload``): only enqueue the reading (signal handlers do no
        work); a SIGHUP while one is read is folded into it."""
        if self._reload is None or self._reload.done():
            self._reload = asyncio.ensure_future(self._reload_keyring())

    async def _reload_keyring(self) -> None:
        """Read the keyring from the file the daemon started from, in a thread (a locked one
        costs an Argon2id derivation, and this loop carries the acks), and hand it to the
        aggregator, which refuses it (one log line) if it lacks a key some session needs and
        otherwise installs it as a rotation does. Clients stay connected throughout."""
        source = PassphraseSource(
            self._credentials_dir, under_systemd=bool(os.environ.get("INVOCATION_ID"))
        )
        loop = asyncio.get_running_loop()
        try:
            keyring = await loop.run_in_executor(None, load_keyring, self._path, source)
        except LucidError as err:  # its message names the path and the problem, never a key
            log.error("event=keyring_reload_refused code=%s error=%s", err.code, err.message)
            return
        log.info("event=keyring_reload_read path=%s keys=%d", self._path, len(keyring.key_ids))
        self._to_aggregator(ipc.ReloadKeyring(keyring.serialize()))

    def _answer_if_done(self, serial: int) -> None:
        token, waiting = self._waiting[serial]
        if not waiting:
            del self._waiting[serial]
            self._to_aggregator(ipc.KeyringInstalled(token))
            log.info("event=keyring_distributed current=%d", self.keyring.current_id)
