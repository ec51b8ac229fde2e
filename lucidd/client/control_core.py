"""The control socket's sans-IO core: :class:`ControlCore` and its :class:`ControlCall` (layer 4).

Each control request is paired here, once, with the reply type that answers it; one typed
method per request registers it and says how its reply reads, so the two front ends are one
line per request. The loop it shares with the data core is :class:`~lucidd.client.core.Core`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import msgspec

from lucidd import protocol as p
from lucidd.client.core import MAX_CONTROL_REPLY_FRAME, ControlResult, Core, wire_error
from lucidd.client.ids import SessionRef, session_bytes
from lucidd.errors import InternalError, LucidError

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
_REMOTE_SESSIONS: Final = _Exchange(p.ListRemoteSessions, p.RemoteSessionsReply)
_LIST_KEYS: Final = _Exchange(p.ListKeys, p.KeysReply)
_ROTATE_KEYS: Final = _Exchange(p.RotateKeys, p.KeysChanged)
_REWRAP_KEYS: Final = _Exchange(p.RewrapKeys, p.KeysChanged)
_RETIRE_KEY: Final = _Exchange(p.RetireKey, p.KeysChanged)
_EXCHANGES: Final[tuple[_Exchange[Any, Any], ...]] = (
    _HEALTH, _METRICS, _CONFIG, _OPEN_SESSION, _SESSIONS, _INFO, _ROOT, _INCLUSION_PROOF,
    _CONSISTENCY_PROOF, _FINALIZE, _READ_CHUNK, _SHRED, _CHECK, _SIGNING_KEY, _CHECKPOINT,
    _ANCHOR, _RECEIPT, _REMOTE_SESSIONS, _LIST_KEYS, _ROTATE_KEYS, _REWRAP_KEYS, _RETIRE_KEY,
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

    def metrics_reply(self) -> ControlCall[p.MetricsReply]:
        return self._start(_METRICS, p.Metrics(req=0), _itself)

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

    def remote_sessions(self) -> ControlCall[list[p.RemoteHost]]:
        request = p.ListRemoteSessions(req=0)
        return self._start(_REMOTE_SESSIONS, request, lambda reply: reply.hosts)

    def list_keys(self) -> ControlCall[p.KeysReply]:
        return self._start(_LIST_KEYS, p.ListKeys(req=0), _itself)

    def rotate_keys(self, *, new: bool = False) -> ControlCall[p.KeysChanged]:
        return self._start(_ROTATE_KEYS, p.RotateKeys(req=0, new=new), _itself)

    def rewrap_keys(self) -> ControlCall[p.KeysChanged]:
        return self._start(_REWRAP_KEYS, p.RewrapKeys(req=0), _itself)

    def retire_key(self, key_id: int) -> ControlCall[p.KeysChanged]:
        return self._start(_RETIRE_KEY, p.RetireKey(req=0, key_id=key_id), _itself)

    def _on_reply(self, message: Any) -> list[ControlResult]:
        expected = self._pending.pop(message.req, None)
        if isinstance(message, p.Error):
            if expected is None:
                self._broken = f"lucidd closed the connection: {message.code}: {message.message}"
                failed = [
                    ControlResult(req, wire_error(message, session, index))
                    for req, (_, session, index) in self._pending.items()
                ]
                self._pending.clear()
                return failed
            _, session, index = expected
            return [ControlResult(message.req, wire_error(message, session, index))]
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
