"""Segment files (layer 2): appending sealed records, scanning them back, and the quarantine.

A worker appends to its own segment with :class:`SegmentWriter` (group commit, sticky
fdatasync failure); recovery reads segments with :func:`scan_segment`, which resynchronizes
past damage and never cuts or rewrites a file; damaged ranges are copied, create-only, to the
session's quarantine. Paths, metadata, the index and the ledger state are :mod:`store`'s.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from lucidd.crypto import HEADER_SIZE, MAGIC, RecordType, parse_header
from lucidd.daemon.store import (
    SessionPaths,
    fsync_dir,
    parse_segment_name,
    segment_name,
    write_all,
    write_atomically,
)
from lucidd.errors import FormatError

_T = TypeVar("_T")


class SegmentWriter:
    """One worker's append-only segment file in one session folder.

    Each worker process starts a fresh segment (the next number for its worker id), so it
    never appends behind a torn tail left by a predecessor that crashed mid-write.

    With ``drop_cache``, :meth:`drop_synced` drops the records :meth:`sync` made durable from
    the page cache (``POSIX_FADV_DONTNEED``). Sealed records are written once and read rarely
    (reads, resends, recovery), so caching them only crowds out other data; and new page-cache
    pages are expensive where the host takes back free guest memory (a VM with free page
    reporting, dropped pages are reused hot: ``python bench/probes.py pagecache``, figures in
    docs/bench.md).
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
                write_all(dst, block)
                done += len(block)
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
