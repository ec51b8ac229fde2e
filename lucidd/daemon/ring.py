"""The shared-memory ring segment (layer 2, DESIGN §3).

A POSIX shared-memory object (``/dev/shm/lucidd-<pid>-ring``, what ``shm_open(3)`` makes on
Linux), created and alone unlinked by the supervisor, mapped *read-only* by the workers and the
aggregator, so no child can corrupt another chunk's payload.

Departure from DESIGN §3: not ``multiprocessing.shared_memory``. On Python 3.11 that module
registers every segment with the resource tracker, a separate process (docs/bench.md) that may
unlink a segment when an attaching process exits (``track=False`` only exists from 3.13). A
segment left by a crash is removed at the next start (:func:`remove_stale_rings`) instead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from pathlib import Path
from typing import Final

SHM_DIR: Final = Path("/dev/shm")
_RING_NAME = re.compile(r"^lucidd-(\d+)-ring$")


def ring_name(pid: int) -> str:
    return f"lucidd-{pid}-ring"


class Ring:
    """The owner's handle: a writable view of the whole segment."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._path = SHM_DIR / name
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(self._path, flags, 0o600)
        except FileExistsError:  # our pid, reused after a crash: that segment is stale
            self._path.unlink()
            fd = os.open(self._path, flags, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    def close_and_unlink(self) -> None:
        """Release the mapping and remove the segment. Every view of ``buf`` must be released."""
        try:
            self.buf.release()
            self._map.close()
        finally:
            self.unlink()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


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


def _pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 probes without sending anything).

    (psutil.pid_exists does the same; not importing psutil keeps the supervisor smaller:
    docs/bench.md.)"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_rings() -> list[str]:
    """Unlink ring segments left by lucidd processes that no longer exist (crashed runs)."""
    removed: list[str] = []
    if not SHM_DIR.is_dir():
        return removed
    for entry in SHM_DIR.iterdir():
        match = _RING_NAME.match(entry.name)
        if match is None or _pid_exists(int(match.group(1))):
            continue
        # Another user's segment (a different service account) is not ours to remove.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            entry.unlink()
            removed.append(entry.name)
    return removed
