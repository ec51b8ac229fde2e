"""Client shared-memory regions: the memfd, its seals, its trip to a worker (layer 2).

A data connection may ask for a region (``ShareMemory``, docs/protocol.md *Shared memory*):
the supervisor creates a memfd, sizes it and seals it against shrinking and growing (and
against changing its seals), so neither the client nor anyone else can make a mapping of it
fault (SIGBUS) in a worker; then it hands the descriptor to that client alone. The client
writes payloads into it and sends only headers; a worker seals straight from its read-only
mapping. The daemon creates the region rather than taking one from the client because the
supervisor's uvloop transports cannot receive ``SCM_RIGHTS`` (a read discards them); the
pages are still charged to whoever writes them first, the client.

Workers get a region's descriptor on their *region socket* (a ``SOCK_SEQPACKET`` pair per
worker, one message per region: ``u64 region id, u64 size`` plus the descriptor), always
before the first ``Seal`` naming it, and unmap it on ``ForgetRegion``.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import struct
from typing import Final

#: One region message on a worker's region socket: id and size (the fd travels beside it).
_REGION: Final = struct.Struct(">QQ")
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def round_to_pages(size: int) -> int:
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def create_region(size: int) -> int:
    """A sealed memfd of ``size`` bytes (a multiple of the page size); returns its fd.

    Raises OSError (EMFILE, ENOMEM) with nothing left open.
    """
    fd = os.memfd_create("lucidd-client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError:
        os.close(fd)
        raise
    return fd


def send_with_fd(sock_fd: int, data: bytes, fd: int) -> int:
    """``sendmsg`` of ``data`` with ``fd`` beside it on the stream socket ``sock_fd`` (a
    client's connection, whose transport cannot send ancillary data), without blocking;
    bytes sent (the descriptor travels with the first). OSError if none could be."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    with socket.socket(fileno=os.dup(sock_fd)) as sock:
        return sock.sendmsg([data], ancillary, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)


def region_socket_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor's end, worker's end) of a worker's region socket."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_region(sock: socket.socket, region: int, size: int, fd: int) -> None:
    """Hand region ``region`` to a worker (OSError if its socket cannot take it now)."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sock.sendmsg([_REGION.pack(region, size)], ancillary, socket.MSG_DONTWAIT)


def receive_region(sock: socket.socket) -> tuple[int, int, int] | None:
    """The next region on a worker's region socket: (id, size, fd); None at EOF. Blocks."""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(_REGION.size, socket.CMSG_SPACE(fds.itemsize))
    if not data:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if len(data) != _REGION.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise OSError("malformed region message from the supervisor")
    region, size = _REGION.unpack(data)
    return region, size, fds[0]


class RegionView:
    """A read-only mapping of a region (the fd may be closed once this exists)."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        self.view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def payload(self, offset: int, length: int) -> memoryview:
        return self.view[offset : offset + length]

    def close(self) -> None:
        self.view.release()
        if self._map is not None:
            self._map.close()
