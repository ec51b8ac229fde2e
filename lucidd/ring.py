"""The shared-memory ring segment (layer 2, DESIGN §3).

The supervisor creates and alone unlinks the segment (``multiprocessing.shared_memory``).
Workers and the aggregator map it *read-only* straight from ``/dev/shm`` with ``mmap`` instead
of ``SharedMemory(name=...)``: on Python 3.11 attaching registers the segment with the resource
tracker, which may unlink it when that process exits (``track=False`` only exists from 3.13),
and a read-only mapping also means no child can corrupt another chunk's payload.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from multiprocessing import shared_memory
from pathlib import Path
from typing import Final

import psutil

SHM_DIR: Final = Path("/dev/shm")
_RING_NAME = re.compile(r"^lucidd-(\d+)-ring$")


def ring_name(pid: int) -> str:
    return f"lucidd-{pid}-ring"


class Ring:
    """The owner's handle: a writable view of the whole segment."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        buf = self._shm.buf
        assert buf is not None  # None only after close()
        self.buf: memoryview = buf

    def close_and_unlink(self) -> None:
        """Release the mapping and remove the segment. Every view of ``buf`` must be released."""
        try:
            self.buf.release()
            self._shm.close()
        finally:
            self.unlink()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


class RingReader:
    """A read-only mapping of an existing ring, for workers and the aggregator."""

    def __init__(self, name: str, size: int) -> None:
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.view = memoryview(self._map)

    def payload(self, offset: int, length: int) -> memoryview:
        return self.view[offset : offset + length]

    def close(self) -> None:
        self.view.release()
        self._map.close()


def remove_stale_rings() -> list[str]:
    """Unlink ring segments left by lucidd processes that no longer exist (crashed runs)."""
    removed: list[str] = []
    if not SHM_DIR.is_dir():
        return removed
    for entry in SHM_DIR.iterdir():
        match = _RING_NAME.match(entry.name)
        if match is None or psutil.pid_exists(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry.name)
    return removed
