"""Sessions this host does not hold, read from the object store (layer 3, issue 14).

A request naming a session the ledger does not know asks here before it is refused: the
bucket is searched under every host of the prefix, and a session found is fetched and
verified as ``lucidd restore`` does (every record against its pack, the packs against the
newest checkpoint signed by that host's key), written into the state folder with a ``remote``
marker naming its host, and loaded like any session. From then on it is served from the local
copy. It is read-only here: its view says finalized (no chunk is admitted to it), and the
replicator never uploads it again under this host's id.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from lucidd.daemon.aggregator.anchor_log import unpack_entries
from lucidd.daemon.aggregator.ledger import Ledger
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.daemon.aggregator.notary import VKEY_FILE
from lucidd.daemon.aggregator.recovery import recover_segments
from lucidd.daemon.aggregator.session import SessionLedger
from lucidd.daemon.config import Config
from lucidd.daemon.replication import layout
from lucidd.daemon.replication.objects import (
    ObjectStore,
    ReplicationTarget,
    resolve_s3_credentials,
)
from lucidd.daemon.replication.restore import (
    fetch_session,
    list_hosts,
    list_sessions,
    write_segment,
    write_session,
)
from lucidd.daemon.store import EVICTED_FILE, REMOTE_FILE, SessionPaths, fsync_dir, read_meta
from lucidd.merkle import leaf_hash
from lucidd.note import Verifier

log = logging.getLogger("lucidd.daemon.aggregator.remote")


class RemoteCheckpoints:
    """Another host's anchor checkpoints and attestations, as fetched (NoteFolder's reads)."""

    def __init__(self, objects: dict[tuple[int, str | None], bytes]) -> None:
        self._objects = objects

    def index(self) -> dict[int, set[str]]:
        found: dict[int, set[str]] = {}
        for size, kind in self._objects:
            kinds = found.setdefault(size, set())
            if kind is not None:
                kinds.add(kind)
        return found

    def read(self, size: int, kind: str | None = None) -> bytes | None:
        return self._objects.get((size, kind))


@dataclass
class RemoteAnchorLog:
    """Another host's anchor log rebuilt in memory from its replicated entries: what a
    receipt of one of its sessions needs (AnchorLog's reading side)."""

    merkle: MerkleLog
    checkpoints: RemoteCheckpoints
    by_session: dict[bytes, list[tuple[int, int]]]

    def logged(self, session: bytes) -> list[tuple[int, int]]:
        return self.by_session.get(session, [])


class RemoteSessions:
    def __init__(self, state_dir: Path, store: ObjectStore, prefix: str) -> None:
        self.state_dir = state_dir
        self.store = store
        self.prefix = prefix
        self._hosts: dict[str, layout.HostRecord] = {}

    async def hosts(self) -> dict[str, layout.HostRecord]:
        self._hosts = await list_hosts(self.store, self.prefix)
        return self._hosts

    async def sessions_by_host(self) -> dict[str, list[bytes]]:
        return {
            host_id: await list_sessions(self.store, self.prefix, host_id)
            for host_id in sorted(await self.hosts())
        }

    async def _holder(self, session_id: bytes) -> str | None:
        for host_id in sorted(await self.hosts()):
            if await self.store.exists(layout.meta_key(self.prefix, host_id, session_id)):
                return host_id
        return None

    async def anchor_log(self, host_id: str) -> RemoteAnchorLog:
        """That host's anchor log as far as its entries are replicated (fetched each time: a
        receipt is rare, and the log grows)."""
        base = layout.host_prefix(self.prefix, host_id) + "anchor/"
        entries: list[tuple[int, bytes]] = []
        objects: dict[tuple[int, str | None], bytes] = {}
        for key in await self.store.list(base):
            name = key[len(base) :]
            data = await self.store.get(key)
            if data is None:
                continue
            if name.startswith("entries/") and (span := layout.parse_entries_name(name)):
                entries.append((span[0], data))
            elif name.startswith("checkpoints/") and (sized := layout.parse_size_name(name)):
                objects[sized] = data
        log_ = MerkleLog()
        by_session: dict[bytes, list[tuple[int, int]]] = {}
        for first, data in sorted(entries):
            if first != log_.size:
                break  # a gap: the rest cannot be placed
            for session, size, digest in unpack_entries(data):
                index = log_.append(leaf_hash(digest))
                by_session.setdefault(session, []).append((size, index))
        # A checkpoint past the replicated entries cannot be proven here.
        objects = {key: data for key, data in objects.items() if key[0] <= log_.size}
        return RemoteAnchorLog(log_, RemoteCheckpoints(objects), by_session)

    async def fetch_back(self, ledger: Ledger, session_id: bytes) -> SessionLedger:
        """Bring an evicted session's records back (local_retention freed them), verified
        against this host's own signed checkpoints, and load it again."""
        paths = SessionPaths.of(self.state_dir, session_id)
        host_id = paths.evicted_to()
        assert host_id is not None, "not an evicted session"
        verifiers = [Verifier.from_vkey((self.state_dir / VKEY_FILE).read_text().strip())]
        _, records, _, _ = await fetch_session(
            self.store, self.prefix, host_id, session_id, verifiers
        )
        write_segment(paths, records)
        (paths.root / EVICTED_FILE).unlink()
        fsync_dir(paths.root)
        meta = ledger.evicted.pop(session_id)
        session = ledger.load(session_id, paths, meta)
        recover_segments(session, ledger.keyring, repair=False)
        session.sync()
        log.info("event=session_fetched_back session=%s", uuid.UUID(bytes=session_id))
        return session

    async def verified_copy(self, session: SessionLedger, host_id: str) -> bool:
        """Whether the object store holds all of a finalized session, verified against its
        own signed checkpoints, with the same root as here (before its records are freed)."""
        verifiers = [Verifier.from_vkey((self.state_dir / VKEY_FILE).read_text().strip())]
        _, records, checkpoints, final = await fetch_session(
            self.store, self.prefix, host_id, session.session_id, verifiers
        )
        size = session.merkle.size
        return (
            final is not None
            and len(records) == size
            and max(checkpoints) == size
            and all(index == position for position, (index, _) in enumerate(records))
        )

    async def hydrate(self, ledger: Ledger, session_id: bytes) -> SessionLedger | None:
        """Fetch, verify and load a session held by some host of the bucket (None: none has
        it). Raises the restore's error when what is stored does not verify."""
        host_id = await self._holder(session_id)
        if host_id is None:
            return None
        record = self._hosts[host_id]
        verifiers = [Verifier.from_vkey(record.vkey)]
        meta, records, checkpoints, final = await fetch_session(
            self.store, self.prefix, host_id, session_id, verifiers
        )
        paths = SessionPaths.of(self.state_dir, session_id)
        if session_id not in ledger.sessions and not paths.meta.exists():
            paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (paths.root / REMOTE_FILE).write_text(host_id + "\n")
            write_session(
                self.state_dir,
                session_id,
                meta=meta,
                records=records,
                checkpoints=checkpoints,
                final=final,
                record_progress=False,  # not this host's to upload
            )
        session = ledger.sessions.get(session_id) or ledger.load(
            session_id, paths, read_meta(paths)
        )
        recover_segments(session, ledger.keyring, repair=False)
        session.sync()
        log.info(
            "event=remote_session_loaded session=%s host_id=%s chunks=%d",
            uuid.UUID(bytes=session_id),
            host_id,
            len(records),
        )
        return session


def configured_remote(
    config: Config, state_dir: Path, credentials: Path | None
) -> RemoteSessions | None:
    """Reading other hosts' sessions from the object store (None: replication not configured)."""
    if not config.replication_url:
        return None
    target = ReplicationTarget.parse(
        config.replication_url, config.replication_endpoint, config.replication_region
    )
    creds = resolve_s3_credentials(config.replication_credentials, credentials, state_dir)
    return RemoteSessions(state_dir, ObjectStore(target, creds), target.prefix)
