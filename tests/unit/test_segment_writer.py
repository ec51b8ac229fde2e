"""SegmentWriter: what sync() makes durable, what it drops from the page cache, and how a
failed fdatasync stays failed (store.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lucidd.daemon.segments import SegmentWriter
from lucidd.daemon.store import SessionPaths, parse_segment_name

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) on a fresh mapping)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb") as f:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        pages = (size + PAGE - 1) // PAGE
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
        rc = _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector)
        assert rc == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vector)
    finally:
        del address
        mapping.close()


def make_paths(tmp_path: Path) -> SessionPaths:
    paths = SessionPaths.of(tmp_path, os.urandom(16))
    paths.root.mkdir(parents=True)
    return paths


def segments(paths: SessionPaths) -> list[Path]:
    names = sorted(paths.segments(), key=lambda n: parse_segment_name(n)[1])
    return [paths.segment(name) for name in names]


def test_sync_drops_the_durable_records_from_the_page_cache(tmp_path: Path) -> None:
    paths = make_paths(tmp_path)
    writer = SegmentWriter(paths, 0, 1 << 30, drop_cache=True)
    writer.append(memoryview(os.urandom(256 * 1024)))
    [segment] = segments(paths)
    assert resident_pages(segment) > 0  # written, not yet durable: cached (dirty)
    writer.sync()
    assert resident_pages(segment) > 0  # durable; dropped only when asked (after the acks)
    writer.drop_synced()
    assert resident_pages(segment) == 0
    writer.append(memoryview(os.urandom(64 * 1024)))
    writer.drop_synced()  # nothing synced since: nothing to drop, the new record stays
    assert resident_pages(segment) > 0
    writer.sync()
    writer.drop_synced()
    assert resident_pages(segment) == 0
    writer.close()
    assert segment.stat().st_size == 320 * 1024


def test_without_drop_cache_the_records_stay_cached(tmp_path: Path) -> None:
    paths = make_paths(tmp_path)
    writer = SegmentWriter(paths, 0, 1 << 30)
    writer.append(memoryview(os.urandom(256 * 1024)))
    writer.sync()
    writer.drop_synced()
    [segment] = segments(paths)
    assert resident_pages(segment) == 256 * 1024 // PAGE
    writer.close()


def test_a_full_segment_is_made_durable_before_the_next_one_starts(tmp_path: Path) -> None:
    """Records of one batch can straddle a rollover; sync() must cover both segments.

    The page-cache drop covers only what an fdatasync made durable, so an empty cache proves
    the sync (the full segment's drop comes with the rollover itself).
    """
    paths = make_paths(tmp_path)
    writer = SegmentWriter(paths, 3, 128 * 1024, drop_cache=True)
    for _ in range(3):
        writer.append(memoryview(os.urandom(100 * 1024)))
    writer.sync()
    writer.drop_synced()
    files = segments(paths)
    assert [f.stat().st_size for f in files] == [200 * 1024, 100 * 1024]
    assert [resident_pages(f) for f in files] == [0, 0]
    writer.close()


def test_a_failed_fdatasync_is_never_followed_by_a_false_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After EIO the kernel may mark the pages clean: a retry could succeed with the data gone
    (fsyncgate). The writer keeps failing until it is abandoned for a new segment."""
    paths = make_paths(tmp_path)
    writer = SegmentWriter(paths, 0, 1 << 30)
    writer.append(memoryview(b"x" * 100))
    real_fdatasync = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        writer.sync()
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    with pytest.raises(OSError) as raised:
        writer.sync()
    assert raised.value.errno == errno.EIO
    writer.abandon()
    number, offset = writer.append(memoryview(b"y" * 100))
    writer.sync()  # a new segment: durable again
    assert (number, offset) == (1, 0)
    assert [f.stat().st_size for f in segments(paths)] == [100, 100]
    writer.close()


def test_a_record_streamed_in_pieces_lands_whole_and_a_failed_one_leaves_nothing(
    tmp_path: Path,
) -> None:
    paths = make_paths(tmp_path)
    writer = SegmentWriter(paths, 0, 1 << 30)
    writer.append(memoryview(b"a" * 10))
    pieces = [b"b" * 7, b"c" * 5, b"d" * 3]

    def produce(sink: Callable[[memoryview], None]) -> str:
        for piece in pieces:
            sink(memoryview(piece))
        return "done"

    assert writer.append_streamed(produce) == (0, 10, "done")

    def fail_midway(sink: Callable[[memoryview], None]) -> str:
        sink(memoryview(b"x" * 1000))
        raise ValueError("the sealer gave up")

    with pytest.raises(ValueError):
        writer.append_streamed(fail_midway)
    assert writer.append(memoryview(b"e")) == (0, 25)  # right behind the last whole record
    writer.sync()
    writer.close()
    [segment] = segments(paths)
    assert segment.read_bytes() == b"a" * 10 + b"".join(pieces) + b"e"
