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
import itertools
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from lucidd.crypto import HEADER_SIZE, MAGIC, RecordType, parse_header
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
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
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
        block = INDEX_ENTRY_SIZE * 16384
        position = first * INDEX_ENTRY_SIZE
        while True:
            data = os.pread(self._fd, block, position)
            usable = len(data) - len(data) % INDEX_ENTRY_SIZE
            for offset in range(0, usable, INDEX_ENTRY_SIZE):
                entry = _unpack_entry(data, offset)
                if entry is not None:
                    yield (position + offset) // INDEX_ENTRY_SIZE, entry
            if len(data) < block:
                return
            position += block

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


class SegmentWriter:
    """One worker's append-only segment file in one session folder.

    Each worker process starts a fresh segment (the next number for its worker id), so it
    never appends behind a torn tail left by a predecessor that crashed mid-write.

    With ``drop_cache``, :meth:`drop_synced` drops the records :meth:`sync` made durable from
    the page cache (``POSIX_FADV_DONTNEED``). Sealed records are written once and read rarely
    (reads, resends, recovery), so caching them only crowds out other data; and new page-cache
    pages are expensive where the host takes back free guest memory (a VM with free page
    reporting: ``python bench/probes.py pagecache`` appends 1 MiB records with an fdatasync
    every 8 at 330-560 MiB/s without the drop and 1170-1650 MiB/s with it here, because
    dropped pages are reused hot).
    """

    def __init__(
        self, paths: SessionPaths, worker: int, max_size: int, *, drop_cache: bool = False
    ) -> None:
        self._paths = paths
        self._worker = worker
        self._max_size = max_size
        self._drop_cache = drop_cache
        self._fd = -1
        self._synced = 0  # bytes of the current segment made durable by sync()
        self._dropped = 0  # bytes of it dropped from the page cache by drop_synced()
        self._sync_failed = False  # an fdatasync failed: later ones prove nothing (fsyncgate)
        self.number = -1
        self.size = 0
        self.dirty = False

    def _open_next(self) -> None:
        if self._fd >= 0:
            # Records already appended to the full segment are in this batch too: they must
            # be durable before the batch is reported, and sync() only sees the new segment.
            self.sync()
            with contextlib.suppress(OSError):  # only a page-cache hint
                self.drop_synced()
            os.close(self._fd)
            self._fd = -1
        numbers = [
            number
            for name in self._paths.segments()
            for worker, number in [parse_segment_name(name)]
            if worker == self._worker
        ]
        self.number = max(numbers, default=self.number) + 1
        path = self._paths.segment(segment_name(self._worker, self.number))
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fsync_dir(self._paths.root)
        self.size = 0
        self._synced = 0
        self._dropped = 0
        self._sync_failed = False

    def append(self, record: memoryview) -> tuple[int, int]:
        """Write one record; returns (segment number, offset). Durable only after sync()."""
        number, offset, _ = self.append_streamed(lambda sink: sink(record))
        return number, offset

    def append_streamed(
        self, produce: Callable[[Callable[[memoryview], None]], _T]
    ) -> tuple[int, int, _T]:
        """Write one record that ``produce(sink)`` hands out in pieces, in order; returns
        (segment number, offset, what ``produce`` returned). Durable only after sync().

        If a write or ``produce`` itself fails, the partial record is cut off again so the
        segment stays appendable (disk full is common and passes); if even that fails, this
        segment is given up.
        """
        if self._fd < 0 or self.size >= self._max_size:
            self._open_next()
        offset = self.size
        written = 0

        def sink(piece: memoryview) -> None:
            nonlocal written
            view = piece
            while view:
                count = os.write(self._fd, view)
                view = view[count:]
            written += len(piece)

        try:
            result = produce(sink)
        except BaseException:
            try:
                os.ftruncate(self._fd, offset)
            except OSError:
                self.abandon()
            raise
        self.size += written
        self.dirty = True
        return self.number, offset, result

    def sync(self) -> None:
        if self.dirty:
            if self._sync_failed:
                raise OSError(errno.EIO, "an earlier fdatasync of this segment failed")
            try:
                os.fdatasync(self._fd)
            except OSError:
                self._sync_failed = True
                raise
            self.dirty = False
            self._synced = self.size

    def drop_synced(self) -> None:
        """With ``drop_cache``: drop what :meth:`sync` made durable from the page cache.

        Separate from :meth:`sync` so a worker can send its acks first: the drop is work the
        ack need not wait for.
        """
        if self._drop_cache and self._fd >= 0 and self._synced > self._dropped:
            os.posix_fadvise(
                self._fd, self._dropped, self._synced - self._dropped, os.POSIX_FADV_DONTNEED
            )
            self._dropped = self._synced

    def abandon(self) -> None:
        """After a failed write: never append behind a possibly torn tail; the next append
        starts a new segment (a writer that failed once is replaced, not retried blindly)."""
        self.close()
        self.dirty = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- recovery -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    """A complete, well-framed record found in a segment (not yet authenticated)."""

    offset: int
    index: int
    record: bytes


#: Why a byte range of a segment is not an authentic record (QuarantinedRange.reason).
DAMAGE_UNFRAMEABLE: Final = "unframeable"  # no parsable DATA header there (garbage, bit rot)
DAMAGE_UNAUTHENTIC: Final = "unauthentic"  # frames as a record but fails authentication
DAMAGE_TORN: Final = "torn"  # a record cut short by the end of the file
#: Bytes read at a time while searching for the next record after damage.
_RESYNC_BLOCK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class DamagedRange:
    """Bytes of a segment that hold no authentic record."""

    offset: int
    length: int
    reason: str
    #: No authentic record follows in the segment: most likely the torn tail of a crash.
    tail: bool


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """What :func:`scan_segment` found: authentic records (with their plaintext length, as
    the authenticator returned it) and the damaged ranges between and after them."""

    records: list[tuple[ScannedRecord, int]]
    damaged: list[DamagedRange]
    size: int


def scan_segment(
    path: Path, start: int, authenticate: Callable[[ScannedRecord], int | None]
) -> SegmentScan:
    """Every authentic record of a segment from ``start`` on, resynchronizing after damage.

    ``authenticate`` returns a record's plaintext length, or None when it fails
    authentication. Where the bytes stop making sense (no parsable header, a record that does
    not authenticate, one cut off by the end of the file), the scan searches forward for the
    next header magic whose record parses and authenticates, so one damaged record never
    hides the authentic ones behind it; the bytes skipped are reported as a
    :class:`DamagedRange`. Reads only: nothing here ever cuts or rewrites a segment.
    """
    records: list[tuple[ScannedRecord, int]] = []
    damaged: list[DamagedRange] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        position = start
        bad_from: int | None = None
        reason = ""
        while position < size:
            framed = _frame_at(fd, position, size)
            plaintext_length = authenticate(framed) if isinstance(framed, ScannedRecord) else None
            if isinstance(framed, ScannedRecord) and plaintext_length is not None:
                if bad_from is not None:
                    damaged.append(DamagedRange(bad_from, position - bad_from, reason, False))
                    bad_from = None
                records.append((framed, plaintext_length))
                position += len(framed.record)
                continue
            if bad_from is None:
                bad_from = position
                reason = framed if isinstance(framed, str) else DAMAGE_UNAUTHENTIC
            position = _next_magic(fd, position + 1, size)
        if bad_from is not None:
            damaged.append(DamagedRange(bad_from, size - bad_from, reason, True))
    finally:
        os.close(fd)
    return SegmentScan(records, damaged, size)


def _frame_at(fd: int, position: int, size: int) -> ScannedRecord | str:
    """The well-framed DATA record at ``position``, or why there is none (a DAMAGE_ reason)."""
    if position + HEADER_SIZE > size:
        return DAMAGE_TORN
    try:
        header = parse_header(os.pread(fd, HEADER_SIZE, position))
    except FormatError:
        return DAMAGE_UNFRAMEABLE
    if header.record_type != RecordType.DATA:
        return DAMAGE_UNFRAMEABLE
    if position + header.record_length > size:
        return DAMAGE_TORN
    record = os.pread(fd, header.record_length, position)
    if len(record) != header.record_length:
        return DAMAGE_TORN
    return ScannedRecord(position, header.index, record)


def _next_magic(fd: int, position: int, size: int) -> int:
    """The offset of the next header magic at or after ``position`` (``size`` if none)."""
    overlap = len(MAGIC) - 1
    while position < size:
        block = os.pread(fd, _RESYNC_BLOCK, position)
        if not block:
            break
        found = block.find(MAGIC)
        if found >= 0:
            return position + found
        if len(block) <= overlap:
            break
        position += len(block) - overlap
    return size


def sync_file(path: Path) -> None:
    """fdatasync a file someone else wrote (a dead worker's segment) before trusting it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


# --- quarantine -----------------------------------------------------------------------------

QUARANTINE_DIR: Final = "quarantine"
QUARANTINE_LIST_FILE: Final = "list"
_COPY_BLOCK: Final = 1 << 20


class QuarantinedRange(msgspec.Struct, frozen=True, kw_only=True):
    """A byte range of a segment that holds no authentic record, copied aside.

    ``file`` is the copy's name in ``<session>/quarantine/``. The segment itself keeps the
    bytes too: recovery never cuts a segment.
    """

    segment: str
    offset: int
    length: int
    reason: str
    tail: bool = False
    file: str


class QuarantineList(msgspec.Struct, frozen=True, kw_only=True):
    """``<session>/quarantine/list``: every range quarantined so far (atomically replaced)."""

    version: int = 1
    ranges: list[QuarantinedRange] = []


_quarantine_encoder = msgspec.msgpack.Encoder()
_quarantine_decoder = msgspec.msgpack.Decoder(QuarantineList)


def read_quarantine(paths: SessionPaths) -> list[QuarantinedRange]:
    """The quarantined ranges ([] when none; an unreadable list is rebuilt by the next scan,
    which finds the copies already there)."""
    try:
        data = (paths.root / QUARANTINE_DIR / QUARANTINE_LIST_FILE).read_bytes()
        return list(_quarantine_decoder.decode(data).ranges)
    except (FileNotFoundError, NotADirectoryError, msgspec.DecodeError):
        return []


def write_quarantine(paths: SessionPaths, ranges: list[QuarantinedRange]) -> None:
    """Replace the quarantine list; durable when it returns."""
    data = _quarantine_encoder.encode(QuarantineList(ranges=ranges))
    write_atomically(paths.root / QUARANTINE_DIR / QUARANTINE_LIST_FILE, data)


def quarantine_range(paths: SessionPaths, segment: str, damaged: DamagedRange) -> QuarantinedRange:
    """Copy a damaged range of ``segment`` to ``quarantine/<segment>-<offset>``, create-only.

    The copy is written under a temporary name, fsynced, then linked to its final name (a
    link never replaces a file) and the folder fsynced: durable when it returns. A copy left
    by an earlier attempt with the same bytes is reused; one with other bytes is kept and this
    copy gets the next free ``.<n>`` suffix. The caller records the range in the list.
    """
    folder = paths.root / QUARANTINE_DIR
    if not folder.is_dir():
        folder.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(paths.root)
    base = f"{segment}-{damaged.offset}"
    tmp = folder / f".{base}.tmp"
    _copy_range(paths.segment(segment), damaged.offset, damaged.length, tmp)
    try:
        for attempt in itertools.count():
            name = base if attempt == 0 else f"{base}.{attempt}"
            try:
                os.link(tmp, folder / name)
                break
            except FileExistsError:
                if _same_bytes(folder / name, tmp):
                    break
        fsync_dir(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return QuarantinedRange(
        segment=segment,
        offset=damaged.offset,
        length=damaged.length,
        reason=damaged.reason,
        tail=damaged.tail,
        file=name,
    )


def _copy_range(source: Path, offset: int, length: int, target: Path) -> None:
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            done = 0
            while done < length:
                block = os.pread(src, min(_COPY_BLOCK, length - done), offset + done)
                if not block:
                    raise OSError(errno.EIO, "segment shrank while being quarantined")
                _write_all(dst, block)
                done += len(block)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


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
