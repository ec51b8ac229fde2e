"""``lucidd restore``: bring a host's sessions back from the object store (layer 3).

For each session: its metadata, every pack (each record checked against the pack's footer:
``layout.pack_records``), its signed checkpoints and its FINAL record. Before anything is
written, the leaves are put in index order and the tree's root must equal the root of the
newest replicated checkpoint, whose signature must verify with the host's key (``host``
record, or ``--vkey``): a missing, flipped or foreign object refuses the session, naming the
object. The records are written to one segment per session (worker number RESTORE_WORKER,
which no live worker uses), so the daemon's own recovery at its next start rebuilds the index
and the Merkle log from them as after any crash. The replicator's progress is written too, so
nothing restored is uploaded again.

It runs with the daemon stopped (it takes the state folder's lock).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from lucidd import merkle
from lucidd.daemon.aggregator.anchor_log import ENTRY_SIZE
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.daemon.replication import layout
from lucidd.daemon.replication.objects import ObjectStore
from lucidd.daemon.replication.progress import REPLICATION_DIR, SessionProgress
from lucidd.daemon.replication.replicator import CHECKPOINTS_DIR, HOST_ID_FILE
from lucidd.daemon.store import (
    FINAL_FILE,
    META_FILE,
    SessionMeta,
    SessionPaths,
    fsync_dir,
    segment_name,
    write_all,
    write_atomically,
    write_meta,
)
from lucidd.errors import FormatError, IntegrityError, LucidError
from lucidd.note import Verifier, open_checkpoint
from lucidd.vocabulary import SessionState

log = logging.getLogger("lucidd.daemon.replication.restore")

#: The worker number of restored segments (no live worker has it: workers are 0..49).
RESTORE_WORKER: Final = 65535
_META: Final = msgspec.msgpack.Decoder(SessionMeta)


class RestoreError(LucidError):
    """What the object store holds for a session does not verify; nothing was written."""

    code = "integrity"
    exit_code = IntegrityError.exit_code


@dataclass(frozen=True)
class Restored:
    session: bytes
    chunks: int
    size: int
    root: bytes


async def list_hosts(store: ObjectStore, prefix: str) -> dict[str, layout.HostRecord]:
    """Every host under the prefix, by host id (those with a readable ``host`` record)."""
    found: dict[str, layout.HostRecord] = {}
    base = layout.host_prefix(prefix, "")[:-1]  # "PREFIX/" or ""
    for key in await store.list(base):
        parts = key[len(base) :].split("/")
        if len(parts) == 2 and parts[1] == "host":
            data = await store.get(key)
            if data is not None:
                try:
                    found[parts[0]] = msgspec.json.decode(data, type=layout.HostRecord)
                except msgspec.DecodeError:
                    continue
    return found


async def list_sessions(store: ObjectStore, prefix: str, host_id: str) -> list[bytes]:
    base = layout.host_prefix(prefix, host_id) + "sessions/"
    sessions = set()
    for key in await store.list(base):
        name = key[len(base) :].split("/", 1)[0]
        try:
            sessions.add(uuid.UUID(name).bytes)
        except ValueError:
            continue
    return sorted(sessions)


async def fetch_session(
    store: ObjectStore, prefix: str, host_id: str, session: bytes, verifiers: list[Verifier]
) -> tuple[SessionMeta, list[tuple[int, bytes]], dict[int, bytes], bytes | None]:
    """Everything replicated of one session, verified; RestoreError (naming why) otherwise."""
    sid = uuid.UUID(bytes=session)
    base = layout.session_prefix(prefix, host_id, session)
    meta_raw = await store.get(base + META_FILE)
    if meta_raw is None:
        raise RestoreError(f"session {sid}: no meta object at {base}{META_FILE}")
    try:
        meta = _META.decode(meta_raw)
    except msgspec.DecodeError as exc:
        raise RestoreError(f"session {sid}: unreadable meta object: {exc}") from None
    if meta.session != session:
        raise RestoreError(f"session {sid}: its meta object names another session")
    records: dict[int, bytes] = {}
    checkpoints: dict[int, bytes] = {}
    final: bytes | None = None
    for key in await store.list(base):
        rest = key[len(base) :]
        if rest.startswith("packs/"):
            pack = await store.get(key)
            if pack is None:
                raise RestoreError(f"session {sid}: pack {key} vanished")
            try:
                for entry, record in layout.pack_records(pack, session):
                    records[entry.index] = record
            except FormatError as exc:
                raise RestoreError(f"session {sid}: pack {key}: {exc.message}") from None
        elif rest.startswith(f"{CHECKPOINTS_DIR}/"):
            parsed = layout.parse_size_name(rest)
            data = await store.get(key)
            if parsed is not None and parsed[1] is None and data is not None:
                checkpoints[parsed[0]] = data
        elif rest == FINAL_FILE:
            final = await store.get(key)
    ordered = sorted(records.items())
    _check_against_checkpoints(sid, ordered, checkpoints, verifiers)
    return meta, ordered, checkpoints, final


def _check_against_checkpoints(
    sid: uuid.UUID,
    ordered: list[tuple[int, bytes]],
    checkpoints: dict[int, bytes],
    verifiers: list[Verifier],
) -> None:
    if not checkpoints:
        raise RestoreError(f"session {sid}: no signed checkpoint was replicated yet")
    log_ = MerkleLog()
    for position, (index, record) in enumerate(ordered):
        if index != position:
            break  # records past a gap are restored, but only the prefix is checkpointed
        log_.append(merkle.leaf_hash(record))
    for size, note in sorted(checkpoints.items()):
        try:
            checkpoint, _ = open_checkpoint(note, verifiers)
        except (FormatError, IntegrityError) as exc:
            raise RestoreError(f"session {sid}: checkpoint {size}: {exc.message}") from None
        if checkpoint.size != size or not checkpoint.origin.endswith(f"/{sid}"):
            raise RestoreError(f"session {sid}: checkpoint {size} is for another tree")
        if size > log_.size:
            raise RestoreError(
                f"session {sid}: checkpoint {size} covers chunks that no pack holds "
                f"(the packs hold 0..{log_.size - 1} in order)"
            )
        if log_.root(size) != checkpoint.root:
            raise RestoreError(
                f"session {sid}: the packs do not hash to the signed root of size {size}"
            )


def write_session(
    state_dir: Path,
    session: bytes,
    *,
    meta: SessionMeta,
    records: list[tuple[int, bytes]],
    checkpoints: dict[int, bytes],
    final: bytes | None,
    record_progress: bool = True,
) -> None:
    """Write a verified session into the state folder (refused if it is there already).

    ``record_progress``: tell the replicator it is uploaded (a restore of this host's own
    session); False for a read-only copy of another host's.
    """
    paths = SessionPaths.of(state_dir, session)
    if paths.meta.exists():
        raise FileExistsError(f"session {uuid.UUID(bytes=session)} is already in {state_dir}")
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_segment(paths, records)
    folder = paths.root / CHECKPOINTS_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    for size, note in checkpoints.items():
        write_atomically(folder / f"{size:020d}", note)
    if final is not None:
        write_atomically(paths.final, final)
        meta = msgspec.structs.replace(meta, state=SessionState.FINALIZED)
    write_meta(paths, meta)  # last: a folder without meta is ignored (a torn restore)
    fsync_dir(paths.root.parent)
    if not record_progress:
        return
    progress = SessionProgress(state_dir / REPLICATION_DIR / str(uuid.UUID(bytes=session)))
    if records:
        progress.add_records([index for index, _ in records])
    progress.add_object(META_FILE)
    for size in checkpoints:
        progress.add_object(f"{CHECKPOINTS_DIR}/{size:020d}")
    if final is not None:
        progress.add_object(FINAL_FILE)
    progress.close()


def write_segment(paths: SessionPaths, records: list[tuple[int, bytes]]) -> None:
    """The records, in one segment of worker RESTORE_WORKER (fsynced); the daemon's recovery
    indexes it like any segment."""
    segment = paths.segment(segment_name(RESTORE_WORKER, 0))
    fd = os.open(segment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for _, record in records:
            write_all(fd, record)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(paths.root)


def adopt_host_id(state_dir: Path, host_id: str) -> None:
    """Continue replicating under ``host_id`` (a host restored onto a new disk)."""
    write_atomically(state_dir / HOST_ID_FILE, f"{host_id}\n".encode())


async def restore(
    store: ObjectStore,
    prefix: str,
    state_dir: Path,
    host_id: str,
    *,
    sessions: list[bytes] | None,
    extra_vkeys: list[str],
) -> list[Restored]:
    """Restore ``sessions`` (default: every session of the host not held locally)."""
    hosts = await list_hosts(store, prefix)
    verifiers = [Verifier.from_vkey(v) for v in extra_vkeys]
    record = hosts.get(host_id)
    if record is not None:
        verifiers.append(Verifier.from_vkey(record.vkey))
    if not verifiers:
        raise RestoreError(
            f"no host record for {host_id} and no --vkey: nothing to check the checkpoints with"
        )
    wanted = sessions if sessions is not None else await list_sessions(store, prefix, host_id)
    done = []
    for session in wanted:
        if sessions is None and SessionPaths.of(state_dir, session).meta.exists():
            continue
        meta, records, checkpoints, final = await fetch_session(
            store, prefix, host_id, session, verifiers
        )
        write_session(
            state_dir, session, meta=meta, records=records, checkpoints=checkpoints, final=final
        )
        size = max(checkpoints)
        note_root = open_checkpoint(checkpoints[size], verifiers)[0].root
        done.append(Restored(session, len(records), size, note_root))
        log.info(
            "event=session_restored session=%s chunks=%d", uuid.UUID(bytes=session), len(records)
        )
    if sessions is None:
        await restore_anchor_log(store, prefix, state_dir, host_id)
    return done


async def restore_anchor_log(
    store: ObjectStore, prefix: str, state_dir: Path, host_id: str
) -> None:
    """The host's anchor log from its replicated entries, checkpoints and attestations, when
    the state folder has none (a lost disk): the daemon's AnchorLog.open rebuilds the tree from
    the entries, so receipts keep proving into the same log. Its objects are recorded as
    uploaded for the replicator."""
    anchor = state_dir / "anchor"
    if anchor.exists():
        return
    base = layout.host_prefix(prefix, host_id) + "anchor/"
    spans: list[tuple[int, bytes]] = []
    notes: dict[str, bytes] = {}
    for key in await store.list(base):
        name = key[len(base) :]
        data = await store.get(key)
        if data is None:
            continue
        if name.startswith("entries/") and (span := layout.parse_entries_name(name)):
            spans.append((span[0], data))
        elif name.startswith(f"{CHECKPOINTS_DIR}/") and layout.parse_size_name(name):
            notes[name] = data
    if not spans:
        return
    entries = bytearray()
    names = []
    for first, data in sorted(spans):
        if first * ENTRY_SIZE != len(entries):
            break  # a gap: keep the prefix
        entries += data
        names.append(f"anchor/entries/{first:020d}-{len(data) // ENTRY_SIZE:020d}")
    (anchor / CHECKPOINTS_DIR).mkdir(mode=0o700, parents=True)
    write_atomically(anchor / "entries.bin", bytes(entries))
    for name, data in notes.items():
        write_atomically(anchor / name, data)
    progress = SessionProgress(state_dir / REPLICATION_DIR / "anchor")
    for name in [*names, *(f"anchor/{n.split('/', 1)[1]}" for n in notes)]:
        progress.add_object(name)
    progress.close()
