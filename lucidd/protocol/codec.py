"""The sans-IO frame codec of both sockets (layer 1): bytes in, events out; messages in, bytes out.

:class:`FrameDecoder` owns no socket (h11 style): feed bytes with :meth:`FrameDecoder.receive_data`
and take events from :meth:`FrameDecoder.next_event`. A ``Batch`` is expanded into one
``ChunkStart``/``PayloadData``/``ChunkEnd`` sequence per item, so consumers handle a single shape.
A consumer that can place payload bytes itself (the supervisor's ``BufferedProtocol``) asks
:attr:`FrameDecoder.direct_payload_size` how many bytes it may read straight into its own buffer
and reports them with :meth:`FrameDecoder.payload_received_directly`.

Every error raised while decoding is a :class:`~lucidd.errors.LucidError` (``BadFrameError`` or
``TooLargeError``) and means the stream can no longer be parsed: reply, then close.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from lucidd.errors import BadFrameError, LucidError, TooLargeError
from lucidd.protocol.control_messages import ControlReply, ControlRequest
from lucidd.protocol.messages import (
    CONTROL_FRAME_OVERHEAD,
    LENGTH_PREFIX,
    LENGTH_PREFIX_SIZE,
    MAX_DATA_HEADER_SIZE,
    MAX_INDEX,
    SESSION_ID_SIZE,
    Batch,
    Chunk,
    DataReply,
    DataRequest,
    Message,
    SharedChunk,
)

# --- encoding ---------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def encode_frame(message: Message) -> bytes:
    """Encode one frame: length prefix and msgpack body (payload bytes are not included)."""
    buf = bytearray(LENGTH_PREFIX_SIZE)
    _encoder.encode_into(message, buf, LENGTH_PREFIX_SIZE)
    LENGTH_PREFIX.pack_into(buf, 0, len(buf) - LENGTH_PREFIX_SIZE)
    return bytes(buf)


# --- decoding ---------------------------------------------------------------------------


class FrameMessage(msgspec.Struct, frozen=True):
    """Event: a complete frame without payload."""

    message: Message


class ChunkStart(msgspec.Struct, frozen=True):
    """Event: a chunk (from a ``Chunk`` or one ``Batch`` item) whose payload comes next, or a
    ``SharedChunk`` (``offset`` >= 0), whose payload is in the connection's shared region:
    no PayloadData or ChunkEnd follows that one."""

    req: int
    session: bytes
    index: int
    length: int
    offset: int = -1

    @property
    def shared(self) -> bool:
        return self.offset >= 0


class PayloadData(msgspec.Struct, frozen=True):
    """Event: the next payload bytes of the current chunk (a view, valid until next call)."""

    data: memoryview


class ChunkEnd(msgspec.Struct, frozen=True):
    """Event: the current chunk's payload is complete."""

    req: int
    session: bytes
    index: int


Event = FrameMessage | ChunkStart | PayloadData | ChunkEnd


def _check_session(session: bytes, req: int) -> None:
    if len(session) != SESSION_ID_SIZE:
        raise BadFrameError("session id must be 16 bytes", req=req)


def _check_index(index: int, req: int) -> None:
    if not 0 <= index <= MAX_INDEX:
        raise BadFrameError("chunk index out of range", req=req)


class FrameDecoder:
    """Incremental decoder of one byte stream (one connection, one direction).

    ``message_type`` is the union this stream carries. ``max_frame`` bounds a msgpack frame;
    ``max_payload`` bounds one chunk's payload and ``max_batch`` a batch's item count (both
    only matter for streams carrying :class:`Chunk`/:class:`Batch`). Limits are checked as
    soon as the frame header is decoded, before any payload buffer is taken.
    """

    def __init__(
        self,
        message_type: Any,
        *,
        max_frame: int = MAX_DATA_HEADER_SIZE,
        max_payload: int = 0,
        max_batch: int = 0,
    ) -> None:
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(message_type)
        self._max_frame = max_frame
        self._max_payload = max_payload
        self._max_batch = max_batch
        self._buffer = bytearray()
        self._pos = 0
        # The chunks of the current frame still to deliver: (req, session, index, length).
        self._pending: deque[tuple[int, bytes, int, int]] = deque()
        self._current: tuple[int, bytes, int] | None = None
        self._payload_remaining = 0
        self._broken: LucidError | None = None
        # The last PayloadData view handed out; released before the buffer is mutated.
        self._view: memoryview | None = None

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the stream (invalidates the last PayloadData view)."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._pos:
            # Drop what was consumed so the buffer never grows past one frame plus a read.
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def receive_frame_bytes(self, data: memoryview) -> int:
        """Take bytes from ``data`` only up to the end of the next frame; returns how many.

        A consumer that owns the payload's destination (the supervisor's ring slot) feeds
        headers this way, handles the events, then copies payload bytes straight from its read
        buffer with :meth:`payload_received_directly`, so no payload byte passes through this
        decoder's buffer. Takes nothing while a payload is expected or chunks are queued.
        """
        if self._current is not None or self._pending or self._broken is not None:
            return 0
        taken = 0
        while taken < len(data):
            have = self.buffered
            if have < LENGTH_PREFIX_SIZE:
                need = LENGTH_PREFIX_SIZE - have
            else:
                (length,) = LENGTH_PREFIX.unpack_from(self._buffer, self._pos)
                if length > self._max_frame:
                    break  # next_event raises BadFrameError
                need = LENGTH_PREFIX_SIZE + length - have
                if need == 0:
                    break
            step = min(need, len(data) - taken)
            self.receive_data(data[taken : taken + step])
            taken += step
        return taken

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buffer) - self._pos

    @property
    def direct_payload_size(self) -> int:
        """How many payload bytes the caller may place itself right now (0 if none).

        Non-zero only inside a chunk's payload with nothing buffered, so the next bytes on the
        stream are payload. After reading ``n`` of them into its own buffer the caller must call
        :meth:`payload_received_directly`.
        """
        if self._current is None or self.buffered:
            return 0
        return self._payload_remaining

    def payload_received_directly(self, nbytes: int) -> ChunkEnd | None:
        """Account for payload bytes the caller wrote itself; returns ChunkEnd when complete."""
        if not 0 < nbytes <= self.direct_payload_size:
            raise ValueError("nbytes exceeds the direct payload window")
        self._payload_remaining -= nbytes
        return self._finish_chunk_if_done()

    # -- output --------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed. Raises on a broken stream."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next_event()
        except LucidError as exc:
            self._broken = exc
            raise

    def _next_event(self) -> Event | None:
        if self._current is not None:
            return self._next_payload_event()
        if self._pending:
            return self._start_chunk()
        frame = self._take_frame()
        if frame is None:
            return None
        message = self._decode(frame)
        if isinstance(message, Chunk):
            self._queue_chunk(message.req, message.session, message.index, message.length)
            return self._start_chunk()
        if isinstance(message, Batch):
            self._queue_batch(message)
            return self._start_chunk()
        if isinstance(message, SharedChunk):
            return self._shared_chunk(message)
        return FrameMessage(message)

    def _next_payload_event(self) -> Event | None:
        end = self._finish_chunk_if_done()
        if end is not None:
            return end
        available = self.buffered
        if not available:
            return None
        take = min(available, self._payload_remaining)
        if self._view is not None:
            self._view.release()
        view = memoryview(self._buffer)[self._pos : self._pos + take]
        self._view = view
        self._pos += take
        self._payload_remaining -= take
        return PayloadData(view)

    def _finish_chunk_if_done(self) -> ChunkEnd | None:
        if self._current is None or self._payload_remaining:
            return None
        req, session, index = self._current
        self._current = None
        return ChunkEnd(req, session, index)

    def _start_chunk(self) -> ChunkStart:
        req, session, index, length = self._pending.popleft()
        self._current = (req, session, index)
        self._payload_remaining = length
        return ChunkStart(req, session, index, length)

    def _take_frame(self) -> memoryview | None:
        if self.buffered < LENGTH_PREFIX_SIZE:
            return None
        (length,) = LENGTH_PREFIX.unpack_from(self._buffer, self._pos)
        if length > self._max_frame:
            raise BadFrameError(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
        if self.buffered < LENGTH_PREFIX_SIZE + length:
            return None
        start = self._pos + LENGTH_PREFIX_SIZE
        self._pos = start + length
        return memoryview(self._buffer)[start : start + length]

    def _decode(self, frame: memoryview) -> Any:
        try:
            return self._decoder.decode(frame)
        except msgspec.DecodeError as exc:
            raise BadFrameError(f"malformed frame: {exc}") from None
        except RecursionError:
            # msgpack nested past the interpreter's depth limit (possible in ``Any`` fields).
            raise BadFrameError("malformed frame: nested too deeply") from None
        finally:
            frame.release()

    def _queue_chunk(self, req: int, session: bytes, index: int, length: int) -> None:
        self._check_chunk(req, session, index, length)
        self._pending.append((req, session, index, length))

    def _check_chunk(self, req: int, session: bytes, index: int, length: int) -> None:
        _check_session(session, req)
        _check_index(index, req)
        if length < 0:
            raise BadFrameError("negative chunk length", req=req)
        if length > self._max_payload:
            raise TooLargeError(
                f"chunk of {length} bytes exceeds the limit of {self._max_payload}",
                req=req,
                session=session,
                index=index,
                limit=self._max_payload,
            )

    def _shared_chunk(self, chunk: SharedChunk) -> ChunkStart:
        """A chunk in shared memory: checked like any other; where it lies is the region
        owner's to check (this decoder does not know the region)."""
        self._check_chunk(chunk.req, chunk.session, chunk.index, chunk.length)
        if chunk.offset < 0:
            raise BadFrameError("negative shared-memory offset", req=chunk.req)
        return ChunkStart(chunk.req, chunk.session, chunk.index, chunk.length, chunk.offset)

    def _queue_batch(self, batch: Batch) -> None:
        if not batch.indices:
            # Nothing to acknowledge; also keeps ``_start_chunk`` from popping an empty queue.
            raise BadFrameError("empty batch", req=batch.req)
        if len(batch.indices) != len(batch.lengths):
            raise BadFrameError("batch indices and lengths differ in count", req=batch.req)
        if len(batch.indices) > self._max_batch:
            raise TooLargeError(
                f"batch of {len(batch.indices)} chunks exceeds the limit of {self._max_batch}",
                req=batch.req,
                limit=self._max_batch,
            )
        for index, length in zip(batch.indices, batch.lengths, strict=True):
            self._queue_chunk(batch.req, batch.session, index, length)


def data_request_decoder(max_payload: int, max_batch: int) -> FrameDecoder:
    """Decoder for what clients send on the data socket."""
    return FrameDecoder(DataRequest, max_payload=max_payload, max_batch=max_batch)


def data_reply_decoder() -> FrameDecoder:
    """Decoder for what the daemon sends on the data socket."""
    return FrameDecoder(DataReply)


def control_request_decoder() -> FrameDecoder:
    return FrameDecoder(ControlRequest)


def control_reply_decoder(max_chunk: int) -> FrameDecoder:
    """Replies may carry a chunk's plaintext and its sealed record (about twice a chunk)."""
    return FrameDecoder(ControlReply, max_frame=2 * max_chunk + CONTROL_FRAME_OVERHEAD)
