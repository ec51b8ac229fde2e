"""Non-blocking pipe endpoints for the asyncio processes (layer 2).

Frames match ``multiprocessing.Connection``: a 4-byte big-endian signed length, then the body.
The blocking worker uses ``Connection.send_bytes``/``recv_bytes`` on its ends; the supervisor and
the aggregator must never block their event loop on a pipe, so their ends are switched to
``O_NONBLOCK`` and driven by ``loop.add_reader``/``add_writer`` here. A writer queues what the
pipe cannot take yet (its peer is slow); the queue is bounded by the callers' own limits
(in-flight cap, one status message at a time).
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final

import msgspec

_LENGTH: Final = struct.Struct(">i")
#: Bytes read from a pipe at once, into a buffer allocated once per reader. (``os.read(fd, n)``
#: allocates n bytes per call: at 1 MiB that was an mmap, an mremap and a munmap for every
#: 60-byte message, traced on the supervisor's hot path.)
_READ_SIZE: Final = 64 * 1024


def _frame_at(buffer: bytearray, pos: int) -> tuple[int, int] | None:
    """(start, end) of the body of the complete frame at ``pos``, or None if it is partial."""
    available = len(buffer) - pos
    if available < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer, pos)
    start = pos + _LENGTH.size
    if available - _LENGTH.size < length:
        return None
    return start, start + length


def take_fd(conn: Connection) -> int:
    """Own a Connection's fd outright (the Connection object would close it when collected)."""
    fd = os.dup(conn.fileno())
    conn.close()
    return fd


class PipeReader:
    """Reads frames from a pipe fd and hands each decoded message to ``on_message``.

    ``on_eof`` runs once when the writer side is gone (its process died or closed it).
    With ``watch=False`` the loop is not told about the fd: the owner reads it when it
    chooses (:meth:`read_available`), and a writer's message wakes nobody.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        decoder: msgspec.msgpack.Decoder[Any],
        on_message: Callable[[Any], None],
        on_eof: Callable[[], None],
        *,
        watch: bool = True,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._decoder = decoder
        self._on_message = on_message
        self._on_eof = on_eof
        self._buffer = bytearray()
        self._chunk = bytearray(_READ_SIZE)
        self._closed = False
        self._delivering = False
        self._watched = watch
        os.set_blocking(fd, False)
        if watch:
            loop.add_reader(fd, self._on_readable)

    def read_available(self) -> None:
        """Deliver every message the pipe holds now, without waiting for the loop to say so.

        Does nothing when called from inside this reader's own ``on_message``.
        """
        while not self._closed and not self._delivering and self._on_readable():
            pass

    def _on_readable(self) -> bool:
        """Read once and deliver; False when the pipe held nothing (or reached EOF)."""
        try:
            count = os.readv(self._fd, [self._chunk])
        except BlockingIOError:
            return False
        except OSError:
            count = 0
        if not count:
            self.close()
            self._on_eof()
            return False
        self._buffer += memoryview(self._chunk)[:count]
        self._delivering = True
        try:
            self._deliver()
        finally:
            self._delivering = False
        return True

    def _deliver(self) -> None:
        buffer = self._buffer
        pos = 0
        while (span := _frame_at(buffer, pos)) is not None:
            start, pos = span
            with memoryview(buffer) as view:
                message = self._decoder.decode(view[start:pos])
            self._on_message(message)
            if self._closed:
                return
        if pos:
            del buffer[:pos]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._watched:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)


class InboxReader:
    """The blocking end of a pipe for a worker: whole messages, many per ``read``.

    ``multiprocessing.Connection.recv_bytes`` costs two reads per message and a worker needs a
    ``poll`` per message to know whether more wait; this reads whatever the pipe holds into a
    buffer allocated once and decodes every complete frame in place.
    """

    def __init__(self, fd: int, decoder: msgspec.msgpack.Decoder[Any]) -> None:
        self._fd = fd
        self._decoder = decoder
        self._buffer = bytearray()
        self._chunk = bytearray(_READ_SIZE)
        self._pos = 0  # start of the first frame not yet handed out

    def _fill(self) -> bool:
        """One read (blocking); False at EOF."""
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        count = os.readv(self._fd, [self._chunk])
        if not count:
            return False
        self._buffer += memoryview(self._chunk)[:count]
        return True

    def next_message(self, block: bool) -> Any:
        """The next message. Blocking: waits for one (None at EOF). Not blocking: None unless
        one is buffered or the pipe has bytes now (and at EOF)."""
        while True:
            span = _frame_at(self._buffer, self._pos)
            if span is not None:
                start, self._pos = span
                with memoryview(self._buffer) as view:
                    return self._decoder.decode(view[start : self._pos])
            if not block and not select.select([self._fd], [], [], 0)[0]:
                return None
            if not self._fill():
                return None

    def close(self) -> None:
        os.close(self._fd)


class PipeWriter:
    """Writes frames to a pipe fd without blocking; queues what the pipe cannot take yet.

    With ``coalesce``, the messages sent during one pass of the event loop go out in one
    ``write`` at the end of it (``call_soon``): one syscall, and one wake-up of the reader, for
    every chunk the supervisor dispatched to a worker from one socket read. Without it each
    message is written at once, so it is ordered with what the sender writes to other
    channels afterwards (the aggregator's thaw must reach the supervisor before the control
    reply that follows it reaches the client).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, *, coalesce: bool = False) -> None:
        self._loop = loop
        self._fd = fd
        self._encoder = msgspec.msgpack.Encoder()
        self._pending = bytearray()
        self._waiting = False  # the pipe was full: add_writer is registered
        self._scheduled = False  # a flush is queued with call_soon
        self._coalesce = coalesce
        self._closed = False
        self.broken = False
        os.set_blocking(fd, False)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def send(self, message: Any) -> None:
        """Queue one message: written now, or at the end of this loop pass with ``coalesce``
        (either way later if the pipe is full). Dropped if the peer is gone."""
        if self._closed or self.broken:
            return
        pending = self._pending
        start = len(pending)
        self._encoder.encode_into(message, pending, start + _LENGTH.size)
        _LENGTH.pack_into(pending, start, len(pending) - start - _LENGTH.size)
        if self._waiting or self._scheduled:
            return
        if self._coalesce:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        else:
            self._write()

    def _flush(self) -> None:
        self._scheduled = False
        if not self._closed and not self._waiting and self._pending:
            self._write()

    def _write(self) -> None:
        pending = self._pending
        try:
            written = os.write(self._fd, pending)
        except BlockingIOError:
            written = 0
        except OSError:  # EPIPE: the reader died; supervision notices and replaces it
            self.broken = True
            pending.clear()
            return
        del pending[:written]
        if pending:
            self._waiting = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._fd)
        self._waiting = False
        self._write()

    def close(self) -> None:
        """Write what is queued if the pipe takes it now, then close."""
        if not self._closed:
            if self._pending and not self._waiting and not self.broken:
                self._write()
            if self._waiting:
                self._loop.remove_writer(self._fd)
            self._closed = True
            os.close(self._fd)


def peer_hung_up(fd: int) -> bool:
    """Whether the peer of the stream socket ``fd`` has closed it (POLLHUP: both ways shut).

    For a connection whose reading is paused: its transport reads nothing, so it never sees
    EOF, and would hold what it holds until it is resumed.

    A peer that only shut its writing side (and waits for its replies) gives POLLRDHUP alone,
    which is not asked for here: that connection is kept.
    """
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(mask & (select.POLLHUP | select.POLLERR) for _, mask in poller.poll(0))


class ReadPauses:
    """Why a socket connection is not being read from, by reason; reading resumes only once no
    reason is left (its reply buffer drained *and* its next chunk admitted, say)."""

    def __init__(self) -> None:
        self._reasons: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def __contains__(self, reason: str) -> bool:
        return reason in self._reasons

    def describe(self) -> str:
        return ",".join(sorted(self._reasons))

    def pause(self, transport: asyncio.ReadTransport | None, reason: str) -> None:
        if not self._reasons and transport is not None:
            transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, transport: asyncio.Transport | None, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and transport is not None and not transport.is_closing():
            transport.resume_reading()
