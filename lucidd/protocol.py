"""Wire messages and the sans-IO frame codec of both sockets (layer 1, DESIGN §6).

A frame is ``u32 big-endian length || msgpack body``; the body is one msgspec ``Struct`` of a
tagged union. On the data socket a :class:`Chunk` (or :class:`Batch`) header frame is followed by
exactly ``length`` (or ``sum(lengths)``) raw payload bytes, outside the msgpack, so that the
daemon can receive them straight into a shared-memory slot.

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

import struct
from collections import deque
from typing import Any, Final

import msgspec

from lucidd.errors import BadFrameError, BadRequestError, LucidError, TooLargeError

LENGTH_PREFIX: Final = struct.Struct(">I")
LENGTH_PREFIX_SIZE: Final = LENGTH_PREFIX.size
SESSION_ID_SIZE: Final = 16
HASH_SIZE: Final = 32
MAX_INDEX: Final = 2**63 - 1
#: Bound on a msgpack header frame on the data socket.
MAX_DATA_HEADER_SIZE: Final = 64 * 1024
#: A Batch item's worst case in msgpack: a u64 index (9 bytes) and a u32 length (5 bytes).
BATCH_ITEM_MAX_BYTES: Final = 14
#: The rest of a Batch frame at worst: length prefix, tag, req, session, two array headers.
BATCH_FRAME_OVERHEAD: Final = 128
#: The most items a Batch frame can carry within MAX_DATA_HEADER_SIZE (``batch_size``'s
#: ceiling: a larger batch would be refused as bad_frame, closing the connection).
MAX_BATCH_ITEMS: Final = (MAX_DATA_HEADER_SIZE - BATCH_FRAME_OVERHEAD) // BATCH_ITEM_MAX_BYTES
#: Extra room on the control socket above one chunk (a ReadChunk reply carries the plaintext).
CONTROL_FRAME_OVERHEAD: Final = 64 * 1024


class Message(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of every frame body; ``req`` is chosen by the client and echoed in replies."""

    req: int


# --- data socket: client -> daemon -------------------------------------------------------


class Chunk(Message, tag="chunk", frozen=True):
    """One chunk; ``length`` raw payload bytes follow this frame."""

    session: bytes
    index: int
    length: int


class Batch(Message, tag="batch", frozen=True):
    """Up to ``batch_size`` chunks at once; ``sum(lengths)`` payload bytes follow, in order.

    Each item is acknowledged (or refused) on its own, with this frame's ``req``.
    """

    session: bytes
    indices: list[int]
    lengths: list[int]


# --- data socket: daemon -> client ------------------------------------------------------


class Ack(Message, tag="ack", frozen=True):
    """The chunk's sealed record is durable (fdatasync'd); ``leaf_hash`` is its Merkle leaf."""

    session: bytes
    index: int
    leaf_hash: bytes


class Error(Message, tag="error", frozen=True):
    """A typed failure (``code`` is a :mod:`lucidd.errors` wire code)."""

    code: str
    message: str
    session: bytes | None = None
    index: int | None = None


DataRequest = Chunk | Batch
DataReply = Ack | Error


# --- control socket: requests -----------------------------------------------------------


class Health(Message, tag="health", frozen=True):
    pass


class Metrics(Message, tag="metrics", frozen=True):
    pass


class GetConfig(Message, tag="config", frozen=True):
    pass


class OpenSession(Message, tag="open", frozen=True):
    """Open a session; ``session`` may be chosen by the client (else the daemon picks one)."""

    compression: str | None = None
    session: bytes | None = None
    #: A note people choose (shown by ``sessions``/``info``), at most MAX_LABEL_SIZE bytes.
    label: str | None = None
    #: The chunk size the session is written in (recorded once; resumes must match it).
    chunk_size: int | None = None


class ListSessions(Message, tag="sessions", frozen=True):
    pass


class SessionInfo(Message, tag="info", frozen=True):
    session: bytes


class GetRoot(Message, tag="root", frozen=True):
    session: bytes
    size: int | None = None


class GetInclusionProof(Message, tag="proof", frozen=True):
    session: bytes
    index: int
    size: int | None = None


class GetConsistencyProof(Message, tag="consistency", frozen=True):
    session: bytes
    size1: int
    size2: int | None = None


class Finalize(Message, tag="finalize", frozen=True):
    session: bytes


class ReadChunk(Message, tag="read", frozen=True):
    session: bytes
    index: int


class Shred(Message, tag="shred", frozen=True):
    session: bytes


class Check(Message, tag="check", frozen=True):
    """Scrub a session: read and authenticate every chunk's record, compare its leaf with the
    Merkle log (answered with :class:`CheckReply`)."""

    session: bytes


ControlRequest = (
    Health
    | Metrics
    | GetConfig
    | OpenSession
    | ListSessions
    | SessionInfo
    | GetRoot
    | GetInclusionProof
    | GetConsistencyProof
    | Finalize
    | ReadChunk
    | Shred
    | Check
)


# --- control socket: replies ------------------------------------------------------------


class ProcessStatus(msgspec.Struct, frozen=True):
    role: str
    pid: int
    alive: bool
    rss_bytes: int = 0
    restarts: int = 0


class HealthReply(Message, tag="health_reply", frozen=True):
    """``status`` is ``ok`` only when every process is alive and no session is damaged."""

    status: str
    processes: list[ProcessStatus]
    sessions: int = 0
    #: Why ``status`` is "degraded", one line each ("worker1: cannot start a process (Too many
    #: open files); retrying"); a reply without it (an older daemon) decodes as [].
    reasons: list[str] = []
    #: Sessions that are damaged (SessionSummary.damaged).
    damaged_sessions: int = 0


class MetricsReply(Message, tag="metrics_reply", frozen=True):
    metrics: dict[str, float]


class ConfigReply(Message, tag="config_reply", frozen=True):
    config: dict[str, Any]


class SessionSummary(msgspec.Struct, frozen=True):
    session: bytes
    state: str
    size: int
    chunks: int
    plaintext_bytes: int
    compression: str
    owner_uid: int = -1
    #: When it was opened (Unix time, nanoseconds), its label and recorded chunk size (0: none).
    created_ns: int = 0
    label: str = ""
    chunk_size: int = 0
    #: Bytes of its segment files on disk (sealed records: compressed, plus headers and tags).
    stored_bytes: int = 0
    #: Chunks of the log whose record is gone, damage inside a segment, or (state
    #: ``damaged``) metadata or a secret that cannot be read.
    damaged: bool = False
    #: The chunks whose record is gone (reading them is refused as ``damaged``).
    missing: list[int] = []
    #: Segment ranges copied to the quarantine (torn tails included).
    quarantined: int = 0
    #: What is wrong, in words ("" when nothing is).
    problem: str = ""


class SessionOpened(Message, tag="opened", frozen=True):
    session: bytes


class SessionListReply(Message, tag="sessions_reply", frozen=True):
    sessions: list[SessionSummary]


class SessionInfoReply(Message, tag="info_reply", frozen=True):
    info: SessionSummary


class RootReply(Message, tag="root_reply", frozen=True):
    session: bytes
    size: int
    root: bytes


class InclusionProofReply(Message, tag="proof_reply", frozen=True):
    session: bytes
    index: int
    size: int
    leaf_hash: bytes
    path: list[bytes]
    root: bytes


class ConsistencyProofReply(Message, tag="consistency_reply", frozen=True):
    session: bytes
    size1: int
    size2: int
    path: list[bytes]
    root1: bytes
    root2: bytes


class FinalizeReply(Message, tag="finalize_reply", frozen=True):
    session: bytes
    size: int
    root: bytes
    checkpoint: bytes
    #: True when the session had been finalized before this request (the same checkpoint).
    already_finalized: bool = False


class ChunkReply(Message, tag="chunk_reply", frozen=True):
    session: bytes
    index: int
    data: bytes
    record: bytes = b""


class ShredReply(Message, tag="shred_reply", frozen=True):
    session: bytes


class CheckReply(Message, tag="check_reply", frozen=True):
    """``checked`` chunks were read (the ``size`` of the log and those stored past it);
    ``bad`` lists, in order, those whose record is gone, fails authentication or does not
    hash to its leaf in the log. The session is intact when ``bad`` is empty."""

    session: bytes
    size: int
    checked: int
    bad: list[int] = []


ControlReply = (
    HealthReply
    | MetricsReply
    | ConfigReply
    | SessionOpened
    | SessionListReply
    | SessionInfoReply
    | RootReply
    | InclusionProofReply
    | ConsistencyProofReply
    | FinalizeReply
    | ChunkReply
    | ShredReply
    | CheckReply
    | Error
)


# --- encoding ---------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def encode_frame(message: Message) -> bytes:
    """Encode one frame: length prefix and msgpack body (payload bytes are not included)."""
    buf = bytearray(LENGTH_PREFIX_SIZE)
    _encoder.encode_into(message, buf, LENGTH_PREFIX_SIZE)
    LENGTH_PREFIX.pack_into(buf, 0, len(buf) - LENGTH_PREFIX_SIZE)
    return bytes(buf)


def error_reply(req: int, err: LucidError) -> Error:
    """The wire ``Error`` for an exception (its message is already secret-free)."""
    session = err.context.get("session")
    index = err.context.get("index")
    return Error(
        req=req,
        code=err.code,
        message=err.message,
        session=session if isinstance(session, bytes) else None,
        index=index if isinstance(index, int) else None,
    )


#: Fields of control requests that hold a chunk index or a tree size.
_INDEX_FIELDS: Final = ("index", "size", "size1", "size2")
#: Bound on a session's label (UTF-8 bytes).
MAX_LABEL_SIZE: Final = 256


def check_control_request(request: Message) -> None:
    """Refuse arguments no session could satisfy, before any handler looks them up.

    A well-framed request with a session id of the wrong length or an index or size outside
    ``0..MAX_INDEX`` is a :class:`~lucidd.errors.BadRequestError` (the connection stays open).
    """
    session = getattr(request, "session", None)
    if isinstance(session, bytes) and len(session) != SESSION_ID_SIZE:
        raise BadRequestError(
            f"session id must be {SESSION_ID_SIZE} bytes, got {len(session)}", req=request.req
        )
    for name in _INDEX_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, int) and not 0 <= value <= MAX_INDEX:
            raise BadRequestError(f"{name} {value} is out of range 0..{MAX_INDEX}", req=request.req)
    if isinstance(request, OpenSession):
        if request.label is not None and len(request.label.encode()) > MAX_LABEL_SIZE:
            raise BadRequestError(f"label is longer than {MAX_LABEL_SIZE} bytes", req=request.req)
        if request.chunk_size is not None and not 1 <= request.chunk_size <= MAX_INDEX:
            raise BadRequestError(f"chunk_size {request.chunk_size} is out of range")


# --- decoding ---------------------------------------------------------------------------


class FrameMessage(msgspec.Struct, frozen=True):
    """Event: a complete frame without payload."""

    message: Message


class ChunkStart(msgspec.Struct, frozen=True):
    """Event: a chunk (from a ``Chunk`` or one ``Batch`` item) whose payload comes next."""

    req: int
    session: bytes
    index: int
    length: int


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
        self._pending.append((req, session, index, length))

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
