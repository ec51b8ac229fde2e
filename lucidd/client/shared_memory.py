"""The client's end of a shared-memory region (layer 4, docs/protocol.md *Shared memory*).

A data connection asks for a region at connect (``ShareMemory``); the daemon answers with a
sealed memfd. :class:`ClientRegion` maps it writable and places each payload in it (one copy,
the only one a payload goes through before the worker seals it); the chunk's header names
where. The space of a chunk is free again once the chunk is answered.

Placement is first fit from the start of the region in :data:`SLOT` units (one ``find`` over
a byte map, as the daemon's ring does): the lowest free addresses are reused, so a client
touches about its window of payloads, not the whole region, and those pages stay in cache.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
from typing import Final

#: Placement unit in a region (payloads start at a multiple of it).
SLOT: Final = 16 * 1024
#: What a client asks for: the daemon's default ``shared_memory_max`` (64 payloads of 1 MiB in
#: flight). Pages become resident only as far as payloads are placed (first fit from the
#: start), so a client with fewer bytes in flight touches fewer.
DEFAULT_SIZE: Final = 64 * 1024 * 1024


def shared_memory_size(shared_memory: int | bool) -> int:
    """A client's ``shared_memory`` argument as the size to ask for (0: the socket only).

    ValueError for a negative size.
    """
    if shared_memory is True:
        return DEFAULT_SIZE
    if shared_memory is False:
        return 0
    if not isinstance(shared_memory, int) or shared_memory < 0:
        raise ValueError(f"shared_memory must be a bool or a size >= 0, got {shared_memory!r}")
    return shared_memory


def fds_of(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an ``SCM_RIGHTS`` message carried (``recvmsg``'s ancillary data)."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class ClientRegion:
    """A writable mapping of the connection's region and the allocator of its space."""

    def __init__(self, fd: int, size: int) -> None:
        """Map ``size`` bytes of ``fd`` (the daemon's memfd); ``fd`` is closed here."""
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.size = size
        self._buf = memoryview(self._map)
        self._slots = bytearray(size // SLOT)
        self._taken: dict[int, int] = {}  # offset -> slots

    def fits(self, length: int) -> bool:
        """Whether a payload of ``length`` bytes fits in an empty region."""
        return length > 0 and -(-length // SLOT) <= len(self._slots)

    def reserve(self, length: int) -> int | None:
        """Take free space for ``length`` bytes; its offset, or None when none is free now."""
        need = -(-length // SLOT)
        start = self._slots.find(bytes(need))
        if start < 0 or need == 0:
            return None
        self._slots[start : start + need] = b"\x01" * need
        offset = start * SLOT
        self._taken[offset] = need
        return offset

    def place(self, payload: memoryview) -> int | None:
        """Copy ``payload`` into free space; its offset, or None when no room is free now."""
        offset = self.reserve(payload.nbytes)
        if offset is not None:
            self._buf[offset : offset + payload.nbytes] = payload
        return offset

    def view(self, offset: int, length: int) -> memoryview:
        """A writable view of reserved space (release it before :meth:`close`)."""
        return self._buf[offset : offset + length]

    def free(self, offset: int) -> None:
        """The chunk at ``offset`` was answered: its space may be reused."""
        need = self._taken.pop(offset, 0)
        start = offset // SLOT
        self._slots[start : start + need] = bytes(need)

    @property
    def in_use(self) -> int:
        return len(self._taken)

    def close(self) -> None:
        self._buf.release()
        self._map.close()
