"""The blocking connection the blocking front ends drive their cores over (layer 4).

:class:`SyncLink` connects (after the trust checks of :mod:`lucidd.client.ids`), sends with
:func:`_send_all` and turns every failure into the core's results; with ``act_as`` its first
request is ``ActAs``, answered before it is returned. :mod:`lucidd.client.blocking` holds the
clients built on it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Generic

from lucidd.client.core import RECV_SIZE, Buffer, Core, ResultT, flat_view
from lucidd.client.ids import check_peer, trusted_peer_uids, unavailable_error
from lucidd.client.shared_memory import fds_of
from lucidd.errors import RequestTimeoutError, UnavailableError, UntrustedSocketError

#: Buffers per ``sendmsg`` call (POSIX ``IOV_MAX``; Linux has 1024).
IOV_MAX: Final = 1024


def _send_all(sock: socket.socket, buffers: Sequence[Buffer]) -> None:
    """Write every byte of ``buffers`` with ``sendmsg`` (gathered by the kernel: no join)."""
    views = [view for view in map(flat_view, buffers) if view.nbytes]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first : first + IOV_MAX], (), socket.MSG_NOSIGNAL)
        while sent:
            head = views[first]
            if sent >= head.nbytes:
                sent -= head.nbytes
                first += 1
            else:
                views[first] = head[sent:]
                sent = 0


class SyncLink(Generic[ResultT]):
    """One blocking connection driving a core; every failure comes back as results.

    With ``act_as`` (a uid, see :func:`~lucidd.client.core.act_as_uid`) the connection's
    first request is ``ActAs``, answered before the constructor returns; a refusal is raised
    (the daemon closed the connection).
    """

    def __init__(
        self,
        path: Path,
        timeout: float | None,
        core: Core[ResultT],
        explicit: bool,
        act_as: int | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.core = core
        trusted = trusted_peer_uids(path, explicit)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise unavailable_error(path, exc) from None
        try:
            check_peer(sock, path, trusted)
        except UntrustedSocketError:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        # Replies are read into this one buffer: ``recv(n)`` allocates n bytes per call, an
        # mmap, mremap and munmap at this size (17 µs of a 60-byte ack, docs/bench.md).
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        if act_as is not None:
            self._act_as(act_as)

    def _act_as(self, uid: int) -> None:
        try:
            self.send((self.core.act_as(uid),))
            while self.core.act_as_pending:
                self.receive()
        except BaseException:
            self.close()
            raise
        error = self.core.act_as_error
        if error is not None:
            self.close()
            raise error

    def _closed_results(self) -> list[ResultT]:
        return self.core.connection_lost(f"connection to lucidd at {self.path} is closed")

    def send(self, buffers: Sequence[Buffer]) -> list[ResultT]:
        """Send ``buffers`` whole; return the results of a failure (usually none).

        A write fails when the daemon closed the connection, and the reply saying why (an
        ``Error``) is then usually waiting to be read: on a failed write this reads to the end
        of the stream, so the results carry that error, and the core ends up broken.
        """
        if self._sock is None:
            return self._closed_results()
        try:
            _send_all(self._sock, buffers)
        except TimeoutError:
            return self._give_up(f"lucidd at {self.path} took no data for")
        except OSError:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
            results: list[ResultT] = []
            while not self.core.broken:
                results += self.receive()
            return results
        return []

    def receive(self, fds: list[int] | None = None) -> list[ResultT]:
        """Block until reply bytes (or the end of the stream) arrive; return their results.

        With ``fds``, descriptors that came with the bytes (``SCM_RIGHTS``) are appended to
        it (the caller owns them); without, the kernel drops any.
        """
        if self._sock is None:
            return self._closed_results()
        try:
            if fds is None:
                count = self._sock.recv_into(self._buffer)
            else:
                count, ancillary, _, _ = self._sock.recvmsg_into(
                    [self._buffer], socket.CMSG_SPACE(4 * 4)
                )
                fds += fds_of(ancillary)
        except TimeoutError:
            return self._give_up(f"no reply from lucidd at {self.path} for")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            results = self.core.connection_lost(
                f"connection to lucidd at {self.path} failed: {reason}"
            )
        else:
            if count:
                with self._view[:count] as data:  # the decoder copies what it keeps
                    results = self.core.receive_data(data)
            else:
                results = self.core.connection_lost(f"lucidd at {self.path} closed the connection")
        if self.core.broken:
            self.close()
        return results

    def _give_up(self, what: str) -> list[ResultT]:
        results = self.core.abort(
            RequestTimeoutError, f"{what} {self.timeout} s; the connection is closed"
        )
        self.close()
        return results

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if not self.core.broken:
            self.core.abort(UnavailableError, f"connection to lucidd at {self.path} is closed")
