"""The client's sans-IO protocol: :class:`DataCore` and :class:`ControlCore` (layer 4).

The cores own no socket (h11 style, STYLE.md). They assign request ids, build frames, feed
reply bytes to a :class:`~lucidd.protocol.FrameDecoder`, match each reply to the request it
answers (replies may come out of order) and turn every wire ``Error`` into the
:class:`~lucidd.errors.LucidError` subclass of its code, with the request's session and index
as context. They return results; they never raise for what the daemon sends. The blocking and
asyncio front ends (:mod:`lucidd.client.blocking`, :mod:`lucidd.client.aio`) only move bytes;
what they share besides a core is here too (:class:`AckCollector`, the payload views).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeVar

import msgspec

from lucidd import protocol as p
from lucidd.client.ids import SessionRef, session_bytes
from lucidd.errors import InternalError, LucidError, UnavailableError, error_from_wire

Buffer: TypeAlias = bytes | bytearray | memoryview
"""A payload: anything with the buffer protocol (``collections.abc.Buffer`` is 3.12+)."""

#: Seconds a client waits for progress (a reply, or room to send) before the connection breaks.
DEFAULT_TIMEOUT: Final = 30.0
#: Chunks :meth:`DataClient.put_many` keeps in flight on one connection.
DEFAULT_WINDOW: Final = 32
#: Bytes asked of the socket per read.
RECV_SIZE: Final = 256 * 1024
#: Bound on one control reply frame (a ``ChunkReply`` carries a plaintext and its record).
MAX_CONTROL_REPLY_FRAME: Final = 1 << 30
#: Request ids start here; ``0`` is what the daemon echoes when it could not read the id.
FIRST_REQ: Final = 1

ResultT = TypeVar("ResultT", bound="ChunkResult | ControlResult")
Key: TypeAlias = tuple[int, int | None]
"""How a result names the request it answers: ``(req, index)``; index is None on control."""


def flat_view(payload: Buffer) -> memoryview:
    """A 1-D byte view of ``payload`` (TypeError for objects without a contiguous buffer)."""
    view = memoryview(payload)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_index_arg(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= p.MAX_INDEX:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """The outcome of one chunk: its :class:`Ack`, or the error the daemon (or the link) gave."""

    req: int
    index: int
    outcome: p.Ack | LucidError

    @property
    def key(self) -> Key:
        return (self.req, self.index)


@dataclass(frozen=True, slots=True)
class ControlResult:
    """The outcome of one control request: its reply message (never ``Error``), or an error."""

    req: int
    outcome: p.Message | LucidError

    @property
    def key(self) -> Key:
        return (self.req, None)


class Core(abc.ABC, Generic[ResultT]):
    """What both cores share: request ids, the decoder loop and the broken state."""

    def __init__(self, decoder: p.FrameDecoder) -> None:
        self._decoder = decoder
        self._req_ids = itertools.count(FIRST_REQ)
        self._broken: str | None = None

    @property
    def broken(self) -> bool:
        """True once the stream failed or was closed; nothing more can be sent."""
        return self._broken is not None

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """Requests (chunks, on the data socket) sent or about to be, not yet answered."""

    def _next_req(self) -> int:
        if self._broken is not None:
            raise UnavailableError(self._broken)
        return next(self._req_ids)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ResultT]:
        """Feed bytes read from the socket; return the requests they complete.

        Bytes that do not parse, or a reply that answers no pending request, break the core:
        every pending request fails and the returned list says so. Never raises.
        """
        if self._broken is not None:
            return []
        self._decoder.receive_data(data)
        results: list[ResultT] = []
        while self._broken is None:
            try:
                event = self._decoder.next_event()
            except LucidError as exc:
                results += self._fail_all(InternalError, f"lucidd sent a malformed reply: {exc}")
                break
            if event is None:
                break
            if not isinstance(event, p.FrameMessage):
                results += self._fail_all(InternalError, "lucidd sent payload bytes in a reply")
                break
            results += self._on_reply(event.message)
        return results

    def connection_lost(self, message: str) -> list[ResultT]:
        """The stream ended or failed: every pending request fails with UnavailableError."""
        return self._fail_all(UnavailableError, message)

    def abort(self, error_type: type[LucidError], message: str) -> list[ResultT]:
        """Give up on the connection (a timeout, a close): fail every pending request."""
        return self._fail_all(error_type, message)

    def _fail_all(self, error_type: type[LucidError], message: str) -> list[ResultT]:
        if self._broken is None:
            self._broken = message
        return self._drop_pending(error_type, message)

    @abc.abstractmethod
    def _drop_pending(self, error_type: type[LucidError], message: str) -> list[ResultT]:
        """Fail and forget every pending request."""

    @abc.abstractmethod
    def _on_reply(self, message: Any) -> list[ResultT]:
        """Match one decoded reply to what it answers."""


def _wire_error(reply: p.Error, session: bytes | None, index: int | None) -> LucidError:
    context: dict[str, object] = {"req": reply.req}
    session = reply.session if reply.session is not None else session
    index = reply.index if reply.index is not None else index
    if session is not None:
        context["session"] = session
    if index is not None:
        context["index"] = index
    return error_from_wire(reply.code, reply.message, **context)


class DataCore(Core[ChunkResult]):
    """The data-socket protocol of one connection, without I/O.

    :meth:`chunk` / :meth:`batch` return ``(req, header)``: send the header, then the payload
    bytes, exactly as many as announced. Each chunk gets exactly one :class:`ChunkResult`, from
    :meth:`receive_data`, :meth:`connection_lost` or :meth:`abort`. An ``Error`` reply names
    its chunk by ``(req, index)``; one without an index (or with an index the request does not
    hold) fails every chunk of that request; one for a request id not pending (``0``: the
    daemon could not read the frame) fails every pending chunk, because the daemon closes the
    connection after it.
    """

    def __init__(self) -> None:
        super().__init__(p.data_reply_decoder())
        # req -> {index: session} of the chunks not yet answered.
        self._pending: dict[int, dict[int, bytes]] = {}
        self._count = 0

    @property
    def pending(self) -> int:
        return self._count

    def is_pending(self, req: int) -> bool:
        return req in self._pending

    def chunk(self, session: SessionRef, index: int, length: int) -> tuple[int, bytes]:
        """Register one chunk; return its request id and the ``Chunk`` frame to send.

        ValueError for a session that is not 16 bytes or an index or length out of range;
        UnavailableError once the core is broken.
        """
        session = session_bytes(session)
        _check_index_arg("index", index)
        _check_index_arg("length", length)
        req = self._next_req()
        frame = p.encode_frame(p.Chunk(req=req, session=session, index=index, length=length))
        self._pending[req] = {index: session}
        self._count += 1
        return req, frame

    def batch(self, session: SessionRef, items: Sequence[tuple[int, int]]) -> tuple[int, bytes]:
        """Register a batch of ``(index, length)`` items; return its req and ``Batch`` frame.

        The payloads follow the frame concatenated in the order of ``items``. ValueError for
        an empty batch or a repeated index (its replies could not be told apart).
        """
        session = session_bytes(session)
        if not items:
            raise ValueError("a batch needs at least one chunk")
        indices = [index for index, _ in items]
        lengths = [length for _, length in items]
        for index, length in items:
            _check_index_arg("index", index)
            _check_index_arg("length", length)
        if len(set(indices)) != len(indices):
            raise ValueError("a batch must not repeat an index")
        req = self._next_req()
        frame = p.encode_frame(p.Batch(req=req, session=session, indices=indices, lengths=lengths))
        self._pending[req] = dict.fromkeys(indices, session)
        self._count += len(indices)
        return req, frame

    def _take(self, req: int, index: int) -> bytes:
        items = self._pending[req]
        session = items.pop(index)
        if not items:
            del self._pending[req]
        self._count -= 1
        return session

    def _on_reply(self, message: Any) -> list[ChunkResult]:
        items = self._pending.get(message.req)
        if isinstance(message, p.Ack):
            if items is None or items.get(message.index) != message.session:
                return self._fail_all(
                    InternalError,
                    f"lucidd acknowledged a chunk not in flight (req {message.req}, "
                    f"index {message.index})",
                )
            self._take(message.req, message.index)
            return [ChunkResult(message.req, message.index, message)]
        assert isinstance(message, p.Error)  # the decoder's union is Ack | Error
        if items is None:
            # Not tied to a request we know: the daemon closes the connection after it.
            failed = [
                ChunkResult(req, index, _wire_error(message, session, index))
                for req, index, session in self._items()
            ]
            self._pending.clear()
            self._count = 0
            self._broken = f"lucidd closed the connection: {message.code}: {message.message}"
            return failed
        indices = [message.index] if message.index in items else list(items)
        return [
            ChunkResult(
                message.req, index, _wire_error(message, self._take(message.req, index), index)
            )
            for index in indices
        ]

    def _items(self) -> Iterator[tuple[int, int, bytes]]:
        for req, items in self._pending.items():
            for index, session in items.items():
                yield req, index, session

    def _drop_pending(self, error_type: type[LucidError], message: str) -> list[ChunkResult]:
        failed = [
            ChunkResult(req, index, error_type(message, session=session, index=index))
            for req, index, session in self._items()
        ]
        self._pending.clear()
        self._count = 0
        return failed


# --- the control socket -------------------------------------------------------------------

T = TypeVar("T")
RequestT = TypeVar("RequestT", bound=p.Message)
ReplyT = TypeVar("ReplyT", bound=p.Message)


@dataclass(frozen=True, slots=True)
class _Exchange(Generic[RequestT, ReplyT]):
    """A control request type and the one reply type that answers it (besides ``Error``)."""

    request: type[RequestT]
    reply: type[ReplyT]


# Each control request with its reply: the one place the two are paired. The typed methods of
# ControlCore name these; ControlCore.request() and the reply check read _REPLY_TYPE.
_HEALTH: Final = _Exchange(p.Health, p.HealthReply)
_METRICS: Final = _Exchange(p.Metrics, p.MetricsReply)
_CONFIG: Final = _Exchange(p.GetConfig, p.ConfigReply)
_OPEN_SESSION: Final = _Exchange(p.OpenSession, p.SessionOpened)
_SESSIONS: Final = _Exchange(p.ListSessions, p.SessionListReply)
_INFO: Final = _Exchange(p.SessionInfo, p.SessionInfoReply)
_ROOT: Final = _Exchange(p.GetRoot, p.RootReply)
_INCLUSION_PROOF: Final = _Exchange(p.GetInclusionProof, p.InclusionProofReply)
_CONSISTENCY_PROOF: Final = _Exchange(p.GetConsistencyProof, p.ConsistencyProofReply)
_FINALIZE: Final = _Exchange(p.Finalize, p.FinalizeReply)
_READ_CHUNK: Final = _Exchange(p.ReadChunk, p.ChunkReply)
_SHRED: Final = _Exchange(p.Shred, p.ShredReply)
_CHECK: Final = _Exchange(p.Check, p.CheckReply)
_SIGNING_KEY: Final = _Exchange(p.GetSigningKey, p.SigningKeyReply)
_CHECKPOINT: Final = _Exchange(p.GetCheckpoint, p.CheckpointReply)
_ANCHOR: Final = _Exchange(p.Anchor, p.AnchorReply)
_RECEIPT: Final = _Exchange(p.GetReceipt, p.ReceiptReply)
_EXCHANGES: Final[tuple[_Exchange[Any, Any], ...]] = (
    _HEALTH, _METRICS, _CONFIG, _OPEN_SESSION, _SESSIONS, _INFO, _ROOT, _INCLUSION_PROOF,
    _CONSISTENCY_PROOF, _FINALIZE, _READ_CHUNK, _SHRED, _CHECK, _SIGNING_KEY, _CHECKPOINT,
    _ANCHOR, _RECEIPT,
)  # fmt: skip
_REPLY_TYPE: Final[dict[type[p.Message], type[p.Message]]] = {
    exchange.request: exchange.reply for exchange in _EXCHANGES
}


def _itself(reply: ReplyT) -> ReplyT:
    return reply


@dataclass(frozen=True, slots=True)
class ControlCall(Generic[T]):
    """One registered control request: send ``frame``; the :class:`ControlResult` whose ``req``
    is this one's becomes the caller's value through :meth:`result`."""

    req: int
    frame: bytes
    _read: Callable[[p.Message], T]

    def result(self, outcome: p.Message | LucidError) -> T:
        """The caller's value for this request's outcome; a LucidError outcome is raised."""
        if isinstance(outcome, LucidError):
            raise outcome
        return self._read(outcome)


class ControlCore(Core[ControlResult]):
    """The control-socket protocol of one connection, without I/O.

    One method per control request (:meth:`info`, :meth:`root`, ...) registers it and returns a
    :class:`ControlCall`: its request id, its frame and how its reply reads (both front ends
    are one line per request over these). :meth:`request` takes any control request message
    instead (its ``req`` is replaced by a fresh one) and returns ``(req, frame)``. Each request
    gets exactly one :class:`ControlResult`: its reply, checked to be the type that request is
    answered with, or a LucidError. An ``Error`` for a request id not pending fails every
    pending request.
    """

    def __init__(self, *, max_frame: int = MAX_CONTROL_REPLY_FRAME) -> None:
        super().__init__(p.FrameDecoder(p.ControlReply, max_frame=max_frame))
        # req -> (expected reply type, session, index) of the requests not yet answered.
        self._pending: dict[int, tuple[type[p.Message], bytes | None, int | None]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, req: int) -> bool:
        return req in self._pending

    def request(self, message: p.Message) -> tuple[int, bytes]:
        """Register a control request; return its request id and frame (TypeError if unknown)."""
        reply_type = _REPLY_TYPE.get(type(message))
        if reply_type is None:
            raise TypeError(f"not a control request: {type(message).__name__}")
        req = self._next_req()
        message = msgspec.structs.replace(message, req=req)
        session = getattr(message, "session", None)
        index = getattr(message, "index", None)
        self._pending[req] = (reply_type, session, index)
        return req, p.encode_frame(message)

    def _start(
        self,
        exchange: _Exchange[RequestT, ReplyT],
        message: RequestT,
        read: Callable[[ReplyT], T],
    ) -> ControlCall[T]:
        req, frame = self.request(message)

        def read_reply(reply: p.Message) -> T:
            if not isinstance(reply, exchange.reply):  # checked on receipt; this narrows it
                raise InternalError(f"lucidd sent an unexpected {type(reply).__name__}")
            return read(reply)

        return ControlCall(req, frame, read_reply)

    # The typed requests (arguments and results are documented on ControlClient).

    def health(self) -> ControlCall[p.HealthReply]:
        return self._start(_HEALTH, p.Health(req=0), _itself)

    def metrics(self) -> ControlCall[dict[str, float]]:
        return self._start(_METRICS, p.Metrics(req=0), lambda reply: reply.metrics)

    def config(self) -> ControlCall[dict[str, Any]]:
        return self._start(_CONFIG, p.GetConfig(req=0), lambda reply: reply.config)

    def open_session(
        self,
        compression: str | None = None,
        session: SessionRef | None = None,
        *,
        label: str | None = None,
        chunk_size: int | None = None,
    ) -> ControlCall[bytes]:
        request = p.OpenSession(
            req=0,
            compression=compression,
            session=None if session is None else session_bytes(session),
            label=label,
            chunk_size=chunk_size,
        )
        return self._start(_OPEN_SESSION, request, lambda reply: reply.session)

    def sessions(self) -> ControlCall[list[p.SessionSummary]]:
        return self._start(_SESSIONS, p.ListSessions(req=0), lambda reply: reply.sessions)

    def info(self, session: SessionRef) -> ControlCall[p.SessionSummary]:
        request = p.SessionInfo(req=0, session=session_bytes(session))
        return self._start(_INFO, request, lambda reply: reply.info)

    def root(self, session: SessionRef, size: int | None = None) -> ControlCall[p.RootReply]:
        request = p.GetRoot(req=0, session=session_bytes(session), size=size)
        return self._start(_ROOT, request, _itself)

    def inclusion_proof(
        self, session: SessionRef, index: int, size: int | None = None
    ) -> ControlCall[p.InclusionProofReply]:
        request = p.GetInclusionProof(req=0, session=session_bytes(session), index=index, size=size)
        return self._start(_INCLUSION_PROOF, request, _itself)

    def consistency_proof(
        self, session: SessionRef, size1: int, size2: int | None = None
    ) -> ControlCall[p.ConsistencyProofReply]:
        sid = session_bytes(session)
        request = p.GetConsistencyProof(req=0, session=sid, size1=size1, size2=size2)
        return self._start(_CONSISTENCY_PROOF, request, _itself)

    def finalize(self, session: SessionRef) -> ControlCall[p.FinalizeReply]:
        request = p.Finalize(req=0, session=session_bytes(session))
        return self._start(_FINALIZE, request, _itself)

    def read_chunk(self, session: SessionRef, index: int) -> ControlCall[p.ChunkReply]:
        request = p.ReadChunk(req=0, session=session_bytes(session), index=index)
        return self._start(_READ_CHUNK, request, _itself)

    def shred(self, session: SessionRef) -> ControlCall[None]:
        request = p.Shred(req=0, session=session_bytes(session))
        return self._start(_SHRED, request, lambda _reply: None)

    def check(self, session: SessionRef) -> ControlCall[p.CheckReply]:
        request = p.Check(req=0, session=session_bytes(session))
        return self._start(_CHECK, request, _itself)

    def signing_key(self) -> ControlCall[p.SigningKeyReply]:
        return self._start(_SIGNING_KEY, p.GetSigningKey(req=0), _itself)

    def checkpoint(
        self, session: SessionRef, size: int | None = None
    ) -> ControlCall[p.CheckpointReply]:
        request = p.GetCheckpoint(req=0, session=session_bytes(session), size=size)
        return self._start(_CHECKPOINT, request, _itself)

    def anchor(self) -> ControlCall[p.AnchorReply]:
        return self._start(_ANCHOR, p.Anchor(req=0), _itself)

    def receipt(self, session: SessionRef, index: int) -> ControlCall[p.ReceiptReply]:
        request = p.GetReceipt(req=0, session=session_bytes(session), index=index)
        return self._start(_RECEIPT, request, _itself)

    def _on_reply(self, message: Any) -> list[ControlResult]:
        expected = self._pending.pop(message.req, None)
        if isinstance(message, p.Error):
            if expected is None:
                self._broken = f"lucidd closed the connection: {message.code}: {message.message}"
                failed = [
                    ControlResult(req, _wire_error(message, session, index))
                    for req, (_, session, index) in self._pending.items()
                ]
                self._pending.clear()
                return failed
            _, session, index = expected
            return [ControlResult(message.req, _wire_error(message, session, index))]
        if expected is None or not isinstance(message, expected[0]):
            if expected is not None:
                self._pending[message.req] = expected
            return self._fail_all(
                InternalError,
                f"lucidd sent an unexpected {type(message).__name__} (req {message.req})",
            )
        return [ControlResult(message.req, message)]

    def _drop_pending(self, error_type: type[LucidError], message: str) -> list[ControlResult]:
        failed = [
            ControlResult(req, error_type(message, session=session, index=index))
            if session is not None
            else ControlResult(req, error_type(message))
            for req, (_, session, index) in self._pending.items()
        ]
        self._pending.clear()
        return failed


# --- what both front ends share -----------------------------------------------------------


class AckCollector:
    """Acks by ``(req, index)`` and the first error, as results arrive."""

    def __init__(self, on_ack: Callable[[p.Ack], None] | None) -> None:
        self.acks: dict[Key, p.Ack] = {}
        self.error: LucidError | None = None
        self._on_ack = on_ack

    def add(self, results: Iterable[ChunkResult]) -> None:
        for result in results:
            self.record(result.key, result.outcome)

    def record(self, key: Key, outcome: p.Ack | LucidError) -> None:
        if isinstance(outcome, LucidError):
            if self.error is None:
                self.error = outcome
            return
        self.acks[key] = outcome
        if self._on_ack is not None:
            self._on_ack(outcome)

    def result(self, keys: Iterable[Key]) -> list[p.Ack]:
        """The acks of ``keys`` in order, or the first error raised."""
        if self.error is not None:
            raise self.error
        return [self.acks[key] for key in keys]


def check_window(window: int) -> None:
    """ValueError unless ``window`` (chunks in flight at once) is an int of at least 1."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int of at least 1, got {window!r}")
