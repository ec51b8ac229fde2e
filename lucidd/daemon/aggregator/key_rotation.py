"""Master-key rotation with the daemon running (layer 3, docs/keys.md "Online rotation").

The aggregator owns the sessions' metadata, so it re-wraps them; the workers unwrap secrets
from that metadata themselves, so they must hold a key before any metadata names it. The order,
which keeps every session openable after a crash at any point (``kill -9`` of the aggregator
or of the whole daemon):

1. the new keyring (old keys and new) is made durable in the file the daemon starts from;
2. the supervisor hands it to every worker and keeps it for the children it starts later
   (:class:`~lucidd.daemon.ipc.InstallKeyring`), and answers once every live worker holds it;
3. only then does the ledger use it: new sessions are wrapped under the new key, and every
   session is re-wrapped, one metadata file at a time (temp file, fsync, rename, folder
   fsync), on the loop with a yield after each, so requests and chunks keep flowing;
4. a key leaves the keyring (``retire``) only once no session names it: file first, then the
   workers.

A SIGHUP reload is step 2 and 3's install for a keyring read again from its source, refused
(one log line) if it lacks a key some session needs. Metadata writes happen on the loop, never
in a thread, so no other writer of a session's metadata (finalize, chunk size) interleaves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from lucidd import protocol as p
from lucidd.crypto import Keyring, is_locked, rewrap_secret, wrapped_key_id
from lucidd.daemon import ipc
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.key_usage import KeyUsage, check_retirable, lacking_keys
from lucidd.daemon.keyfile import read_keyring_file, remove_keyring_temps, replace_keyring
from lucidd.daemon.store import SessionMeta, SessionPaths, read_meta, session_dir_name, write_meta
from lucidd.errors import KeyringError, LucidError

log = logging.getLogger("lucidd.daemon.aggregator.key_rotation")


class KeyRotation:
    """The aggregator's key operations; one at a time (``_lock``)."""

    def __init__(
        self,
        ledger: Ledger,
        keyring_path: Path,
        credentials_dir: str | None,
        send: Callable[[Any], None],
    ) -> None:
        self._ledger = ledger
        self._path = keyring_path
        self._credentials_dir = Path(credentials_dir) if credentials_dir else None
        self._send = send
        self._lock = asyncio.Lock()
        self._tokens = itertools.count(1)
        self._installs: dict[int, asyncio.Future[None]] = {}
        self._reloads: set[asyncio.Task[None]] = set()
        #: Whether every worker is known to hold the ledger's keyring. Not at start: a
        #: replaced aggregator may start with a keyring the supervisor is still handing out.
        self._confirmed = False

    # -- what the sessions need ----------------------------------------------------------

    def usage(self) -> KeyUsage:
        """Every session's key id: loaded, evicted, and unreadable ones read from disk (a
        session the keyring could not open still names its key)."""
        usage = KeyUsage()
        ledger = self._ledger
        for session in ledger.sessions.values():
            usage.by_session[session.session_id] = wrapped_key_id(session.meta.wrapped_secret)
        for session_id, meta in ledger.evicted.items():
            usage.by_session[session_id] = wrapped_key_id(meta.wrapped_secret)
        for session_id in ledger.unreadable:
            try:
                meta = read_meta(SessionPaths.of(ledger.state_dir, session_id))
                usage.by_session[session_id] = wrapped_key_id(meta.wrapped_secret)
            except (OSError, LucidError):
                usage.unreadable[session_id] = "its metadata cannot be read"
        return usage

    def describe(self, req: int) -> p.KeysReply:
        keyring, usage = self._ledger.keyring, self.usage()
        keys = [
            p.KeyInfo(
                id=kid,
                current=kid == keyring.current_id,
                sessions=len(usage.sessions_of(kid)),
                created_ns=keyring.created_ns(kid),
            )
            for kid in keyring.key_ids
        ]
        missing = [
            p.MissingKey(session=sid, key_id=kid)
            for sid, kid in usage.by_session.items()
            if kid not in keyring.key_ids
        ]
        return p.KeysReply(
            req=req,
            current=keyring.current_id,
            keys=keys,
            missing=missing,
            unreadable=sorted(usage.unreadable),
        )

    # -- requests ------------------------------------------------------------------------

    async def rotate(self, req: int, *, force_new: bool) -> p.KeysChanged:
        """Add a key unless an earlier rotation is unfinished (or ``force_new``), make it
        durable, install it, re-wrap every session (see the module's order)."""
        async with self._lock:
            keyring = await self._keyring_file()
            usage = self.usage()
            stale = [
                sid
                for sid, kid in usage.by_session.items()
                if kid != keyring.current_id and kid in keyring.key_ids
            ]
            added: int | None = None
            if force_new or not stale:
                keyring = keyring.rotated(time.time_ns())
                await asyncio.to_thread(replace_keyring, keyring, self._path)  # durable first
                added = keyring.current_id
                log.info("event=key_added key=%d path=%s", added, self._path)
            await self._install(keyring)
            rewrapped = await self._rewrap_all()
            return p.KeysChanged(
                req=req,
                current=keyring.current_id,
                keys=len(keyring.key_ids),
                rewrapped=rewrapped,
                added=added,
            )

    async def rewrap(self, req: int) -> p.KeysChanged:
        """Re-wrap every session under the current key; adds no key and writes no keyring,
        so it works with a keyring the daemon cannot write (a systemd credential)."""
        async with self._lock:
            await self._install(self._ledger.keyring)
            rewrapped = await self._rewrap_all()
            keyring = self._ledger.keyring
            return p.KeysChanged(
                req=req, current=keyring.current_id, keys=len(keyring.key_ids), rewrapped=rewrapped
            )

    async def retire(self, req: int, key_id: int) -> p.KeysChanged:
        """Remove ``key_id`` from the file, then from the workers, once no session names it."""
        async with self._lock:
            keyring = await self._keyring_file()
            if key_id not in keyring.key_ids:
                raise KeyringError(f"the keyring has no key {key_id}", key_id=key_id)
            if key_id in (keyring.current_id, self._ledger.keyring.current_id):
                raise KeyringError(
                    f"key {key_id} is the current key; rotate first, then retire it",
                    key_id=key_id,
                )
            check_retirable(key_id, self.usage())
            keyring = keyring.without(key_id)
            await asyncio.to_thread(replace_keyring, keyring, self._path)
            log.info("event=key_retired key=%d path=%s", key_id, self._path)
            await self._install(keyring)
            return p.KeysChanged(
                req=req, current=keyring.current_id, keys=len(keyring.key_ids), retired=key_id
            )

    def start_reload(self, text: bytes) -> None:
        """Run :meth:`reload` in a task of its own (the supervisor's pipe is not waited on)."""
        task = asyncio.ensure_future(self._reload_logged(text))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_logged(self, text: bytes) -> None:
        try:
            await self.reload(text)
        except LucidError as err:  # its message names no key
            log.error("event=keyring_reload_failed code=%s error=%s", err.code, err.message)

    async def reload(self, text: bytes) -> None:
        """SIGHUP: install the keyring read again from its source, unless it lacks a key some
        session needs (then the old one stays; one log line, no key material)."""
        async with self._lock:
            keyring = Keyring.parse(text)
            lacking = lacking_keys(keyring, self._ledger.keyring, self.usage())
            if lacking:
                log.error(
                    "event=keyring_reload_refused reason=lacks_keys_in_use keys=%s",
                    ",".join(map(str, lacking)),
                )
                return
            if keyring == self._ledger.keyring:
                log.info("event=keyring_reload_unchanged current=%d", keyring.current_id)
                return
            await self._install(keyring)

    async def load(self, req: int, text: bytes) -> p.KeysChanged:
        """``LoadKeyring``: install a keyring sent over the control socket (a decrypted
        credential, ``lucidd keys load``), as :meth:`reload` does, but answering why not."""
        async with self._lock:
            if is_locked(text):
                raise KeyringError("send the keyring unlocked: the daemon keeps no passphrase")
            try:
                keyring = Keyring.parse(text)
            except KeyringError as err:
                raise KeyringError(f"the keyring sent: {err.message}") from None
            lacking = lacking_keys(keyring, self._ledger.keyring, self.usage())
            if lacking:
                raise KeyringError(
                    f"the keyring sent lacks key(s) {', '.join(map(str, lacking))} that "
                    "sessions need: the daemon keeps the one it has"
                )
            await self._install(keyring)
            log.info("event=keyring_loaded current=%d", keyring.current_id)
            return p.KeysChanged(req=req, current=keyring.current_id, keys=len(keyring.key_ids))

    def installed(self, message: ipc.KeyringInstalled) -> None:
        """The supervisor's answer: every live worker holds the keyring of ``token``."""
        future = self._installs.pop(message.token, None)
        if future is not None and not future.done():
            future.set_result(None)

    # -- steps ---------------------------------------------------------------------------

    async def _keyring_file(self) -> Keyring:
        """The keyring in the file the daemon starts from, which a rotation or retire
        replaces; refused where the daemon cannot write it, or where it lost a key that
        sessions need (edited since the daemon read it)."""
        path = self._path
        if self._credentials_dir is not None and path.parent == self._credentials_dir:
            raise KeyringError(
                f"the keyring is the systemd credential {path}, which lucidd cannot write: add a "
                "key to a decrypted copy ('lucidd keys add --keyring COPY'), encrypt it back "
                "with systemd-creds encrypt, restart or reload lucidd, then run "
                "'lucidd keys rewrap' (docs/keys.md, systemd)",
                path=str(path),
            )
        data = await asyncio.to_thread(read_keyring_file, path)
        # A killed rotation's temp copies of the keys: while the daemon runs, it is the only
        # writer of its keyring (one key operation at a time), so none is being written.
        await asyncio.to_thread(remove_keyring_temps, path)
        if is_locked(data):
            raise KeyringError(
                f"keyring {path} is passphrase-locked and the daemon keeps no passphrase to "
                "lock it again: rotate offline (stop lucidd, then 'lucidd keys rotate')",
                path=str(path),
            )
        try:
            keyring = Keyring.parse(data)
        except KeyringError as err:
            raise KeyringError(f"keyring {path}: {err.message}", path=str(path)) from None
        lacking = lacking_keys(keyring, self._ledger.keyring, self.usage())
        if lacking:
            raise KeyringError(
                f"keyring {path} lacks key(s) {', '.join(map(str, lacking))} that sessions "
                "need (it changed since lucidd read it): put them back before rotating",
                path=str(path),
            )
        return keyring

    async def _install(self, keyring: Keyring) -> None:
        """Every worker holds ``keyring`` when this returns; then the ledger uses it."""
        if self._confirmed and keyring == self._ledger.keyring:
            return
        token = next(self._tokens)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._installs[token] = future
        self._send(ipc.InstallKeyring(token, keyring.serialize()))
        await future
        self._ledger.keyring = keyring
        self._confirmed = True
        log.info(
            "event=keyring_installed current=%d keys=%d", keyring.current_id, len(keyring.key_ids)
        )

    async def _rewrap_all(self) -> int:
        """Re-wrap every session not under the current key; how many. Sessions the keyring
        cannot re-wrap are named at the end (KeyringError), after all the others are done."""
        keyring = self._ledger.keyring
        usage = self.usage()
        failed = [f"{session_dir_name(sid)} (unreadable metadata)" for sid in usage.unreadable]
        done = 0
        for session_id, key_id in usage.by_session.items():
            if key_id == keyring.current_id:
                continue
            try:
                if self._rewrap_one(keyring, session_id):
                    done += 1
            except (OSError, LucidError) as exc:
                failed.append(f"{session_dir_name(session_id)} ({exc})")
            await asyncio.sleep(0)  # requests and acks between two sessions
        log.info("event=sessions_rewrapped count=%d failed=%d", done, len(failed))
        if failed:
            raise KeyringError(
                f"{len(failed)} session(s) could not be re-wrapped: {'; '.join(sorted(failed))}",
                sessions=len(failed),
            )
        return done

    def _rewrap_one(self, keyring: Keyring, session_id: bytes) -> bool:
        """Replace one session's metadata durably; False if it is gone (shredded) meanwhile."""
        ledger = self._ledger
        session = ledger.sessions.get(session_id)
        meta: SessionMeta
        if session is not None:
            meta, paths = session.meta, session.paths
        elif session_id in ledger.evicted:
            meta, paths = ledger.evicted[session_id], SessionPaths.of(ledger.state_dir, session_id)
        elif session_id in ledger.unreadable:  # its key was missing at load: re-wrap if back
            paths = SessionPaths.of(ledger.state_dir, session_id)
            meta = read_meta(paths)
        else:
            return False  # shredded since the usage was read
        if wrapped_key_id(meta.wrapped_secret) == keyring.current_id:
            return False
        wrapped = rewrap_secret(keyring, session_id, meta.wrapped_secret)
        replaced = msgspec.structs.replace(meta, wrapped_secret=wrapped)
        write_meta(paths, replaced)
        if session is not None:
            session.meta = replaced
        elif session_id in ledger.evicted:
            ledger.evicted[session_id] = replaced
        return True
