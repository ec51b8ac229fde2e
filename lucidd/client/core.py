"""What the client's two sans-IO cores and its two front ends share (layer 4).

The cores (:class:`~lucidd.client.data_core.DataCore` for the data socket,
:class:`~lucidd.client.control_core.ControlCore` for the control socket) own no socket (h11
style, STYLE.md). They assign request ids, build frames, feed reply bytes to a
:class:`~lucidd.protocol.FrameDecoder`, match each reply to the request it answers (replies may
come out of order) and turn every wire ``Error`` into the :class:`~lucidd.errors.LucidError`
subclass of its code, with the request's session and index as context. They return results;
they never raise for what the daemon sends. This module holds their base (:class:`Core`: request
ids, the decoder loop, the broken state), the results they return, and what the blocking and
asyncio front ends (:mod:`lucidd.client.blocking`, :mod:`lucidd.client.aio`) share besides a
core (:class:`AckCollector`, the payload views, the client's defaults).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeAlias, TypeVar

from lucidd import protocol as p
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


def check_index_arg(name: str, value: int) -> None:
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


def wire_error(reply: p.Error, session: bytes | None, index: int | None) -> LucidError:
    """The LucidError of a wire ``Error``, with the request's session and index as context
    where the reply names none."""
    context: dict[str, object] = {"req": reply.req}
    session = reply.session if reply.session is not None else session
    index = reply.index if reply.index is not None else index
    if session is not None:
        context["session"] = session
    if index is not None:
        context["index"] = index
    return error_from_wire(reply.code, reply.message, **context)


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
