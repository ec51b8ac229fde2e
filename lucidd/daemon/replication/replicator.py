"""The replicator process (issue 14): upload what is durable locally to the object store.

Two sources, one set of uploads:

- the *feed*: the supervisor forwards every worker batch (:class:`ipc.Replicate`: where each
  record lies in its segment), so records are uploaded within a fraction of a second, grouped
  per session into packs (``layout.pack_frame``) of up to PACK_BYTES;
- the *scan*, every SCAN_INTERVAL_S and at start: each session's index, checkpoints and FINAL
  record against what :class:`SessionProgress` says is uploaded. It finds what the feed missed
  (a restart, a full queue, a crash of this process), so the feed may drop, never the scan.

Order on the object store, so that whatever a reader finds is usable: a session's ``meta``
before its packs, a checkpoint of size ``n`` only once records ``0..n-1`` are uploaded, the
FINAL record last. Every put is create-only. A pack's name holds the digest of its bytes, so a
conflict means tampering: an alarm in the log and in ``health``, never an overwrite.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from lucidd.daemon import ipc
from lucidd.daemon.aggregator.anchor_log import ENTRY_SIZE
from lucidd.daemon.replication import layout
from lucidd.daemon.replication.objects import ObjectConflictError, ObjectStore
from lucidd.daemon.replication.pack_reader import read_pack
from lucidd.daemon.replication.progress import REPLICATION_DIR, SessionProgress
from lucidd.daemon.store import (
    FINAL_FILE,
    META_FILE,
    SessionPaths,
    list_session_dirs,
    read_index_entries,
)
from lucidd.errors import LucidError

log = logging.getLogger("lucidd.daemon.replication.replicator")

#: A pack is cut at this many record bytes (or RECORDS_PER_PACK records).
PACK_BYTES: Final = 8 << 20
RECORDS_PER_PACK: Final = 4096
#: Records of the feed wait at most this long to be grouped with others.
GROUP_S: Final = 0.2
SCAN_INTERVAL_S: Final = 2.0
STATUS_INTERVAL_S: Final = 1.0
#: Uploads in flight at once.
CONCURRENT_UPLOADS: Final = 4
RETRY_BASE_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
#: Beyond this many queued records the feed is dropped (the scan finds them later): the
#: replicator's memory stays bounded however long the object store is away.
MAX_QUEUED: Final = 200_000
HOST_ID_FILE: Final = "host_id"
CHECKPOINTS_DIR: Final = "checkpoints"


def resolve_host_id(state_dir: Path) -> str:
    """This host's id in the object store, made once (a random UUID) and kept in the state."""
    path = state_dir / HOST_ID_FILE
    try:
        return uuid.UUID(path.read_text().strip()).hex
    except FileNotFoundError:
        pass
    host_id = uuid.uuid4().hex
    tmp = path.with_name(f".{HOST_ID_FILE}.tmp")
    tmp.write_text(host_id + "\n")
    os.replace(tmp, path)
    return host_id


@dataclass
class Pending:
    """Records of one session waiting for their pack."""

    records: dict[int, ipc.Sealed] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)
    nbytes: int = 0
    waited_for: set[int] = field(default_factory=set)  # chunks whose acks wait (replicated)
    #: Records in a pack being uploaded now, and the bytes of those that are not.
    taken: set[int] = field(default_factory=set)
    free_bytes: int = 0

    def untaken(self) -> int:
        return len(self.records) - len(self.taken)


class Replicator:
    def __init__(self, config_state: Path, store: ObjectStore, prefix: str, host_id: str) -> None:
        self.state_dir = config_state
        self.store = store
        self.prefix = prefix
        self.host_id = host_id
        self.pending: dict[bytes, Pending] = {}
        self.progress: dict[bytes, SessionProgress] = {}
        self.counters: dict[str, float] = dict.fromkeys(
            (
                "replication_objects_total",
                "replication_bytes_total",
                "replication_records_total",
                "replication_failures_total",
                "replication_conflicts_total",
            ),
            0.0,
        )
        self.problem = ""
        self._delay = 0.0
        self.wake = asyncio.Event()
        #: Chunks whose acks wait but whose location only the index knows (see enqueue).
        self.awaited: set[tuple[bytes, int]] = set()
        self._uploads: set[asyncio.Future[None]] = set()
        self._scan_marks: dict[bytes, tuple[int, int]] = {}
        self._anchor_progress = SessionProgress(config_state / REPLICATION_DIR / "anchor")
        #: Chunks whose acks the supervisor holds, now uploaded (sent and cleared by main).
        self.on_replicated: list[ipc.Acked] = []

    # -- bookkeeping --------------------------------------------------------------------

    def _progress(self, session: bytes) -> SessionProgress:
        found = self.progress.get(session)
        if found is None:
            path = self.state_dir / REPLICATION_DIR / str(uuid.UUID(bytes=session))
            found = self.progress[session] = SessionProgress(path)
        return found

    def queued(self) -> int:
        return sum(len(p.records) for p in self.pending.values())

    def status(self) -> ipc.ReplicatorStatus:
        now = time.monotonic()
        oldest = min((p.since for p in self.pending.values() if p.records), default=now)
        return ipc.ReplicatorStatus(
            pending_chunks=self.queued(),
            pending_bytes=sum(p.nbytes for p in self.pending.values()),
            oldest_pending_s=now - oldest,
            counters=dict(self.counters),
            problem=self.problem,
        )

    def enqueue(self, sealed: ipc.Sealed, wait: bool = False) -> None:
        progress = self._progress(sealed.session)
        if progress.has_record(sealed.index):
            if wait:
                self.on_replicated.append(ipc.Acked(sealed.session, sealed.index, b""))
            return
        if not sealed.segment:  # location unknown (a dead worker's record): the scan finds it
            if wait:
                self.awaited.add((sealed.session, sealed.index))
            self._scan_marks.pop(sealed.session, None)
            return
        if not wait and self.queued() >= MAX_QUEUED:
            return  # the scan finds it
        pending = self.pending.setdefault(sealed.session, Pending())
        if not pending.records:
            pending.since = time.monotonic()
        if sealed.index not in pending.records:
            pending.records[sealed.index] = sealed
            pending.nbytes += sealed.record_length
        if wait or (sealed.session, sealed.index) in self.awaited:
            self.awaited.discard((sealed.session, sealed.index))
            pending.waited_for.add(sealed.index)
            self.wake.set()

    # -- uploading ----------------------------------------------------------------------

    def _due(self, now: float) -> Iterator[bytes]:
        for session, pending in self.pending.items():
            if not pending.untaken():
                continue
            if (
                pending.waited_for - pending.taken
                or pending.free_bytes >= PACK_BYTES
                or pending.untaken() >= RECORDS_PER_PACK
                or now - pending.since >= GROUP_S
            ):
                yield session

    def flush_due(self) -> None:
        """Start uploads of due packs while upload slots are free; returns at once (each
        upload wakes the loop when it ends, so the next pack starts as soon as a slot does)."""
        now = time.monotonic()
        for session in list(self._due(now)):
            while len(self._uploads) < CONCURRENT_UPLOADS and self.pending[session].untaken():
                pending = self.pending[session]
                if not (
                    pending.waited_for - pending.taken
                    or pending.free_bytes >= PACK_BYTES
                    or pending.untaken() >= RECORDS_PER_PACK
                    or now - pending.since >= GROUP_S
                ):
                    break  # what is left waits for more records to group with
                chosen = self._take(session)
                task = asyncio.ensure_future(self._upload_pack(session, chosen))
                self._uploads.add(task)
                task.add_done_callback(self._upload_done)
            if len(self._uploads) >= CONCURRENT_UPLOADS:
                return

    def _upload_done(self, task: asyncio.Future[None]) -> None:
        self._uploads.discard(task)
        self.wake.set()

    def _take(self, session: bytes) -> list[ipc.Sealed]:
        pending = self.pending[session]
        chosen: list[ipc.Sealed] = []
        size = 0
        for index in sorted(pending.records):
            if index in pending.taken:
                continue
            sealed = pending.records[index]
            if chosen and (
                size + sealed.record_length > PACK_BYTES or len(chosen) >= RECORDS_PER_PACK
            ):
                break
            chosen.append(sealed)
            size += sealed.record_length
        pending.taken.update(s.index for s in chosen)
        pending.free_bytes -= size
        return chosen

    def _give_back(self, session: bytes, chosen: list[ipc.Sealed]) -> None:
        """An upload failed: its records wait for the next try."""
        pending = self.pending.get(session)
        if pending is None:
            return
        for sealed in chosen:
            if sealed.index in pending.taken:
                pending.taken.discard(sealed.index)
                pending.free_bytes += sealed.record_length

    async def _upload_pack(self, session: bytes, chosen: list[ipc.Sealed]) -> None:
        paths = SessionPaths.of(self.state_dir, session)
        progress = self._progress(session)
        try:
            await self._ensure_meta(session, paths, progress)
            # Reading and building run in a thread: the loop keeps uploading meanwhile.
            pack = await asyncio.to_thread(read_pack, paths, chosen)
        except FileNotFoundError:  # shredded meanwhile: nothing left to upload
            self._drop(session, [s.index for s in chosen])
            return
        except OSError as exc:
            self._give_back(session, chosen)
            self._failed(f"reading session {uuid.UUID(bytes=session)}: {exc}")
            return
        except LucidError as exc:
            self._give_back(session, chosen)
            self._failed(exc.message)
            return
        key = layout.pack_key(self.prefix, self.host_id, session, chosen[0].index, pack)
        try:
            created = await self.store.put_once(key, pack)
        except ObjectConflictError as exc:
            self._give_back(session, chosen)
            self.counters["replication_conflicts_total"] += 1
            log.error("event=replication_conflict key=%s error=%s", key, exc.message)
            self._failed(_conflict(key))
            return
        except LucidError as exc:
            self._give_back(session, chosen)
            self._failed(exc.message)
            return
        indices = [s.index for s in chosen]
        progress.add_records(indices)
        self._succeeded()
        if created:
            self.counters["replication_objects_total"] += 1
            self.counters["replication_bytes_total"] += len(pack)
        self.counters["replication_records_total"] += len(indices)
        self._drop(session, indices)

    def _drop(self, session: bytes, indices: list[int]) -> None:
        pending = self.pending.get(session)
        if pending is None:
            return
        for index in indices:
            sealed = pending.records.pop(index, None)
            if sealed is not None:
                pending.nbytes -= sealed.record_length
                if index in pending.taken:
                    pending.taken.discard(index)
                else:
                    pending.free_bytes -= sealed.record_length
            if index in pending.waited_for:
                pending.waited_for.discard(index)
                self.on_replicated.append(ipc.Acked(session, index, b""))
        if not pending.records:
            del self.pending[session]
        else:
            pending.since = time.monotonic()

    def _failed(self, problem: str) -> None:
        self.counters["replication_failures_total"] += 1
        if problem != self.problem:
            log.warning("event=replication_failed error=%s", problem)
        self.problem = problem
        self._delay = min(RETRY_MAX_S, max(RETRY_BASE_S, self._delay * 2))

    def _succeeded(self) -> None:
        if self.problem:
            log.info("event=replication_resumed")
        self.problem = ""
        self._delay = 0.0

    async def backoff(self) -> None:
        if self._delay:
            await asyncio.sleep(self._delay)

    async def _put_object(
        self, progress: SessionProgress, name: str, key: str, data: bytes
    ) -> None:
        try:
            await self.store.put_once(key, data)
        except ObjectConflictError as exc:
            self.counters["replication_conflicts_total"] += 1
            log.error("event=replication_conflict key=%s error=%s", key, exc.message)
            raise
        progress.add_object(name)
        self.counters["replication_objects_total"] += 1
        self.counters["replication_bytes_total"] += len(data)

    async def _ensure_meta(
        self, session: bytes, paths: SessionPaths, progress: SessionProgress
    ) -> None:
        if META_FILE in progress.objects:
            return
        data = paths.meta.read_bytes()
        await self._put_object(
            progress, META_FILE, layout.meta_key(self.prefix, self.host_id, session), data
        )

    # -- the scan -----------------------------------------------------------------------

    async def scan(self) -> None:
        """Find what the feed missed; upload checkpoints and FINAL records that are due."""
        for session, paths in list_session_dirs(self.state_dir):
            if paths.remote_host() is not None or paths.evicted_to() is not None:
                continue  # another host's session, or one whose records are uploaded and freed
            try:
                await self._scan_session(session, paths)
            except ObjectConflictError as exc:  # this session's; the others go on
                self._failed(_conflict(str(exc.context.get("key", paths.root.name))))
            except LucidError as exc:  # the store is away: the next scan tries again
                self._failed(exc.message)
                return
            except OSError as exc:
                if paths.root.exists():  # else: shredded meanwhile
                    self._failed(f"scanning {paths.root.name}: {exc}")
            await asyncio.sleep(0)

    async def _scan_session(self, session: bytes, paths: SessionPaths) -> None:
        mark = (_mtime_ns(paths.index), _mtime_ns(paths.root / CHECKPOINTS_DIR))
        progress = self._progress(session)
        if self._scan_marks.get(session) == mark and not self.pending.get(session):
            return
        await self._ensure_meta(session, paths, progress)
        queued = self.pending.get(session)
        for index, entry in read_index_entries(paths.index, progress.prefix):
            if progress.has_record(index) or (queued and index in queued.records):
                continue
            self.enqueue(
                ipc.Sealed(
                    session,
                    index,
                    entry.leaf_hash,
                    entry.segment,
                    entry.offset,
                    entry.record_length,
                    entry.plaintext_length,
                )
            )
        if await self._upload_checkpoints(session, paths, progress):
            self._scan_marks[session] = mark  # nothing deferred: skip until files change

    async def _upload_checkpoints(
        self, session: bytes, paths: SessionPaths, progress: SessionProgress
    ) -> bool:
        """Upload the checkpoints (and FINAL) whose records are all up; True if none waits."""
        folder = paths.root / CHECKPOINTS_DIR
        sizes = sorted(int(name) for name in _listdir(folder) if name.isdigit() and len(name) == 20)
        complete = True
        for size in sizes:
            name = f"{CHECKPOINTS_DIR}/{size:020d}"
            if name in progress.objects:
                continue
            if size > progress.prefix:  # its records are not all up yet
                complete = False
                continue
            data = (folder / f"{size:020d}").read_bytes()
            key = layout.checkpoint_key(self.prefix, self.host_id, session, size)
            await self._put_object(progress, name, key, data)
        if FINAL_FILE not in progress.objects and paths.final.exists():
            final_size = sizes[-1] if sizes else 0
            if (
                progress.prefix >= final_size
                and f"{CHECKPOINTS_DIR}/{final_size:020d}" in progress.objects
            ):
                key = layout.final_key(self.prefix, self.host_id, session)
                await self._put_object(progress, FINAL_FILE, key, paths.final.read_bytes())
            else:
                complete = False
        return complete

    async def scan_anchor(self) -> None:
        """The anchor log's new entries, then its checkpoints of sizes those cover, then their
        attestations (each object once), so a reader can prove any logged checkpoint."""
        progress = self._anchor_progress
        uploaded = max(
            (sum(p) for n in progress.objects if (p := layout.parse_entries_name(n)) is not None),
            default=0,
        )
        try:
            raw = (self.state_dir / "anchor" / "entries.bin").read_bytes()
        except FileNotFoundError:
            raw = b""
        total = len(raw) // ENTRY_SIZE
        if total > uploaded:
            data = raw[uploaded * ENTRY_SIZE : total * ENTRY_SIZE]
            key = layout.anchor_entries_key(self.prefix, self.host_id, uploaded, total - uploaded)
            name = f"anchor/entries/{uploaded:020d}-{total - uploaded:020d}"
            await self._put_object(progress, name, key, data)
            uploaded = total
        folder = self.state_dir / "anchor" / CHECKPOINTS_DIR
        for name in sorted(_listdir(folder)):
            parsed = layout.parse_size_name(name)
            if parsed is None or f"anchor/{name}" in progress.objects or parsed[0] > uploaded:
                continue
            key = layout.anchor_key(self.prefix, self.host_id, parsed[0], parsed[1])
            await self._put_object(progress, f"anchor/{name}", key, (folder / name).read_bytes())

    async def put_host_record(self) -> bool:
        """``<host id>/host`` from the public origin and vkey the aggregator wrote (False: not
        written yet)."""
        try:
            origin = (self.state_dir / "origin").read_text().strip()
            vkey = (self.state_dir / "vkey").read_text().strip()
        except FileNotFoundError:
            return False
        record = layout.HostRecord(self.host_id, origin, vkey)
        key = layout.host_prefix(self.prefix, self.host_id) + "host"
        try:
            await self.store.put_once(key, msgspec.json.encode(record))
        except ObjectConflictError:
            log.warning("event=host_record_differs key=%s (the origin or key changed)", key)
        return True


def _conflict(key: str) -> str:
    return f"conflict at {key}: a different object is there, never overwritten (tampering?)"


def _mtime_ns(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    return st.st_mtime_ns ^ st.st_size


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
