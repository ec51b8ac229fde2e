"""Session folders on disk: metadata, segments, the chunk index (layer 2, DESIGN §7).

```
<state>/sessions/<uuid>/meta          SessionMeta (msgpack), atomically replaced
<state>/sessions/<uuid>/w<k>-<n>.seg  sealed records appended by worker k (its n-th segment)
<state>/sessions/<uuid>/index.bin     fixed-width IndexEntry per chunk index
<state>/sessions/<uuid>/merkle/       the session's MerkleLog
<state>/sessions/<uuid>/final         the FINAL record, once finalized
<state>/sessions/<uuid>/ledger.state  LedgerState: what the last aggregator sync made durable
<state>/sessions/<uuid>/quarantine/   copies of damaged segment ranges, and their ``list``
```
Records are the truth: they are self-describing and authenticated, so the index and the Merkle
log can always be rebuilt from the segments. Segment files have one writer each (a worker
process); every other file has the aggregator as its single writer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from lucidd.daemon.access import LEGACY_OWNER
from lucidd.errors import FormatError, StorageError

_T = TypeVar("_T")
#: File offsets are signed 64-bit; indices whose entry would lie past that are never stored.
_MAX_OFF_T: Final = 2**63 - 1
SESSIONS_DIR: Final = "sessions"
META_FILE: Final = "meta"
INDEX_FILE: Final = "index.bin"
MERKLE_DIR: Final = "merkle"
FINAL_FILE: Final = "final"
#: In a session folder: a read-only copy of another host's session; it holds that host's id.
REMOTE_FILE: Final = "remote"
#: In a session folder: its records were freed locally (local_retention); they are in the
#: object store, under this host's id, which the file holds.
EVICTED_FILE: Final = "evicted"
META_VERSION: Final = 1
_SEGMENT_NAME = re.compile(r"^w(\d+)-(\d+)\.seg$")

# flags(1) pad(1) worker(2) segment number(4) offset(8) record length(4) leaf hash(32)
# plaintext length(4) pad(8)
_INDEX_ENTRY: Final = struct.Struct(">BxHIQI32sI8x")
INDEX_ENTRY_SIZE: Final = _INDEX_ENTRY.size
_PRESENT: Final = 1


def session_dir_name(session_id: bytes) -> str:
    return str(uuid.UUID(bytes=session_id))


def segment_name(worker: int, number: int) -> str:
    return f"w{worker}-{number:06d}.seg"


def parse_segment_name(name: str) -> tuple[int, int]:
    match = _SEGMENT_NAME.match(name)
    if match is None:
        raise FormatError(f"not a segment file name: {name!r}")
    return int(match.group(1)), int(match.group(2))


def storage_error(exc: OSError, what: str) -> StorageError:
    """A StorageError naming the operation and the errno (never file contents)."""
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    return StorageError(f"{what} failed: {name} ({exc.strerror})", errno=exc.errno)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``; durable (file and folder fsynced) when it returns."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte or raise: a short write (a file-size limit, a nearly full disk) is
    retried, so the error of the next attempt (EFBIG, ENOSPC) surfaces instead of a file
    that is silently cut."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class SessionMeta(msgspec.Struct, frozen=True, kw_only=True):
    """A session's metadata; ``wrapped_secret`` is the session secret under a master key."""

    version: int = META_VERSION
    session: bytes
    wrapped_secret: bytes
    compression: str
    state: str
    created_ns: int
    #: The uid that opened the session (access.LEGACY_OWNER for sessions older than owners).
    owner_uid: int = LEGACY_OWNER
    label: str = ""
    #: The chunk size of the first put (0: not recorded); resumes must use the same.
    chunk_size: int = 0


_meta_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(SessionMeta)


@dataclass(frozen=True)
class SessionPaths:
    """Where one session's files live."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path, session_id: bytes) -> SessionPaths:
        return cls(state_dir / SESSIONS_DIR / session_dir_name(session_id))

    @property
    def meta(self) -> Path:
        return self.root / META_FILE

    @property
    def index(self) -> Path:
        return self.root / INDEX_FILE

    @property
    def merkle(self) -> Path:
        return self.root / MERKLE_DIR

    @property
    def final(self) -> Path:
        return self.root / FINAL_FILE

    def evicted_to(self) -> str | None:
        """The host id under which the freed records are in the object store, or None."""
        try:
            return (self.root / EVICTED_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def remote_host(self) -> str | None:
        """The host whose session this is a read-only copy of (None: this host's own)."""
        try:
            return (self.root / REMOTE_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def segment(self, name: str) -> Path:
        return self.root / name

    def segments(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if _SEGMENT_NAME.match(p.name))


def new_meta(
    session_id: bytes,
    wrapped_secret: bytes,
    compression: str,
    state: str,
    owner_uid: int,
    *,
    label: str = "",
    chunk_size: int = 0,
) -> SessionMeta:
    return SessionMeta(
        session=session_id,
        wrapped_secret=wrapped_secret,
        compression=compression,
        state=state,
        created_ns=time.time_ns(),
        owner_uid=owner_uid,
        label=label,
        chunk_size=chunk_size,
    )


def create_session_dir(paths: SessionPaths, meta: SessionMeta) -> None:
    """Create the folder and write ``meta``; durable when it returns (the open is promised).

    A folder without metadata is the remains of an open that failed half-way (disk full):
    it is reused.
    """
    if paths.meta.exists():
        raise FileExistsError(f"session folder {paths.root} already has metadata")
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fsync_dir(paths.root.parent)
    write_meta(paths, meta)


def write_meta(paths: SessionPaths, meta: SessionMeta) -> None:
    write_atomically(paths.meta, _meta_encoder.encode(meta))


def read_meta(paths: SessionPaths) -> SessionMeta:
    try:
        data = paths.meta.read_bytes()
    except FileNotFoundError:
        raise
    try:
        return _meta_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise FormatError(f"unreadable session metadata {paths.meta}: {exc}") from None


def list_session_dirs(state_dir: Path) -> Iterator[tuple[bytes, SessionPaths]]:
    """Every session folder that has metadata (a folder without it was shredded or torn)."""
    root = state_dir / SESSIONS_DIR
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        try:
            session_id = uuid.UUID(entry.name).bytes
        except ValueError:
            continue
        paths = SessionPaths(entry)
        if paths.meta.exists():
            yield session_id, paths


def shred_session(paths: SessionPaths) -> None:
    """Crypto-shred: the wrapped secret goes first (durably), then every other file."""
    with contextlib.suppress(FileNotFoundError):
        paths.meta.unlink()
        fsync_dir(paths.root)
    shutil.rmtree(paths.root, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(paths.root.parent)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Where chunk ``index``'s record lives, and its leaf hash."""

    worker: int
    segment_number: int
    offset: int
    record_length: int
    leaf_hash: bytes
    plaintext_length: int

    @property
    def segment(self) -> str:
        return segment_name(self.worker, self.segment_number)


_MAX_INDEXED: Final = _MAX_OFF_T // INDEX_ENTRY_SIZE


class ChunkIndex:
    """``index.bin``: entry ``i`` at byte ``i * INDEX_ENTRY_SIZE`` (sparse while out of order).

    Written without fsync: the records are durable, and the index is rebuilt from them. The
    descriptor is a cache: :meth:`release` closes it and the next use reopens the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor = -1
        self._open()

    def _open(self) -> int:
        if self._descriptor < 0:
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._descriptor

    @property
    def _fd(self) -> int:
        return self._open()

    def put(self, index: int, entry: IndexEntry) -> None:
        data = _INDEX_ENTRY.pack(
            _PRESENT,
            entry.worker,
            entry.segment_number,
            entry.offset,
            entry.record_length,
            entry.leaf_hash,
            entry.plaintext_length,
        )
        os.pwrite(self._fd, data, index * INDEX_ENTRY_SIZE)

    def get(self, index: int) -> IndexEntry | None:
        if not 0 <= index < _MAX_INDEXED:  # its offset would not fit off_t: never stored
            return None
        data = os.pread(self._fd, INDEX_ENTRY_SIZE, index * INDEX_ENTRY_SIZE)
        if len(data) < INDEX_ENTRY_SIZE:
            return None
        return _unpack_entry(data, 0)

    def scan(self, first: int = 0) -> Iterator[tuple[int, IndexEntry]]:
        """Every present entry from index ``first`` on, in order (reads in large blocks)."""
        return _scan_index(self._fd, first)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self) -> None:
        """Forget every entry (before a rebuild from the records)."""
        os.ftruncate(self._fd, 0)

    @property
    def open_descriptors(self) -> int:
        return int(self._descriptor >= 0)

    def release(self) -> None:
        """Close the descriptor (the next use reopens the file)."""
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def close(self) -> None:
        self.release()


def _unpack_entry(data: bytes, offset: int) -> IndexEntry | None:
    flags, worker, number, record_offset, length, leaf, plaintext = _INDEX_ENTRY.unpack_from(
        data, offset
    )
    if not flags & _PRESENT:
        return None
    return IndexEntry(worker, number, record_offset, length, leaf, plaintext)


def read_index_entries(path: Path, first: int = 0) -> Iterator[tuple[int, IndexEntry]]:
    """Every present entry of an ``index.bin`` from ``first`` on, opened read-only (for a
    process that must not write it: the replicator). Nothing if the file does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        yield from _scan_index(fd, first)
    finally:
        os.close(fd)


def _scan_index(fd: int, first: int) -> Iterator[tuple[int, IndexEntry]]:
    block = INDEX_ENTRY_SIZE * 16384
    position = first * INDEX_ENTRY_SIZE
    while True:
        data = os.pread(fd, block, position)
        usable = len(data) - len(data) % INDEX_ENTRY_SIZE
        for offset in range(0, usable, INDEX_ENTRY_SIZE):
            entry = _unpack_entry(data, offset)
            if entry is not None:
                yield (position + offset) // INDEX_ENTRY_SIZE, entry
        if len(data) < block:
            return
        position += block


def read_record(paths: SessionPaths, entry: IndexEntry) -> bytes:
    """The stored record bytes of one index entry (StorageError on I/O failure)."""
    try:
        fd = os.open(paths.segment(entry.segment), os.O_RDONLY)
    except OSError as exc:
        raise storage_error(exc, "opening a segment") from None
    try:
        data = os.pread(fd, entry.record_length, entry.offset)
    except OSError as exc:
        raise storage_error(exc, "reading a record") from None
    finally:
        os.close(fd)
    if len(data) != entry.record_length:
        raise FormatError("record is shorter than its index entry says")
    return data


class LedgerState(msgspec.Struct, frozen=True, kw_only=True):
    """What the aggregator had made durable at its last sync, so a restart reads only tails.

    ``merkle_size`` leaves were synced; ``prefix_bytes`` is the plaintext total of chunks
    below it; ``segments`` maps each segment file to the offset below which every record is
    in the index or lies in a quarantined range.
    """

    merkle_size: int
    prefix_bytes: int
    segments: dict[str, int]
    #: Chunks of the log (or the reorder window) whose record is gone, with their leaf hash:
    #: the record failed authentication, or its segment was cut or removed. Reads of them
    #: are refused as ``damaged``; their leaves stay in the log.
    missing: dict[int, bytes] = {}


LEDGER_STATE_FILE: Final = "ledger.state"
_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(LedgerState)


def write_ledger_state(paths: SessionPaths, state: LedgerState) -> None:
    write_atomically(paths.root / LEDGER_STATE_FILE, _state_encoder.encode(state))


def read_ledger_state(paths: SessionPaths) -> LedgerState | None:
    """The last ledger state, or None when missing or unreadable (then a full scan runs)."""
    try:
        return _state_decoder.decode((paths.root / LEDGER_STATE_FILE).read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None
