"""What the client's two sans-IO cores and its two front ends share (layer 4).

The cores (:class:`~lucidd.client.data_core.DataCore` for the data socket,
:class:`~lucidd.client.control_core.ControlCore` for the control socket) own no socket (h11
style, STYLE.md). They assign request ids, build frames, feed reply bytes to a
:class:`~lucidd.protocol.FrameDecoder`, match each reply to the request it answers (replies may
come out of order) and turn every wire ``Error`` into the :class:`~lucidd.errors.LucidError`
subclass of its code, with the request's session and index as context. They return results;
they never raise for what the daemon sends. This module holds their base (:class:`Core`: request
ids, the decoder loop, the broken state, the ``ActAs`` exchange both sockets share), the results
they return, and what the blocking and asyncio front ends (:mod:`lucidd.client.blocking`,
:mod:`lucidd.client.aio`) share besides a core (:class:`AckCollector`, the payload views, the
client's defaults).
"""

from __future__ import annotations

import abc
import itertools
import os
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


def check_uid_arg(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= p.MAX_UID:
        raise ValueError(f"{name} must be a uid, an int in [0, {p.MAX_UID}], got {value!r}")


def act_as_uid(act_as: int | None) -> int | None:
    """The uid a front end sends ``ActAs`` for, from its ``act_as`` argument.

    None when there is nothing to ask: no ``act_as``, or this process's own effective uid
    (the daemon reads that one from ``SO_PEERCRED`` anyway). ValueError for anything but an
    int in ``0..MAX_UID``; front ends check it before connecting.
    """
    if act_as is None:
        return None
    check_uid_arg("act_as", act_as)
    return None if act_as == os.geteuid() else act_as


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
        self._started = False  # a request was registered (an ActAs must be the first)
        self._act_as: tuple[int, int] | None = None  # (req, uid) of the unanswered ActAs
        self._act_as_error: LucidError | None = None
        #: The uid the daemon confirmed this connection acts as (None: its own).
        self.acting_as: int | None = None

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
        self._started = True
        return next(self._req_ids)

    def act_as(self, uid: int) -> bytes:
        """Register ``ActAs(uid)``, which must be the connection's first request; its frame.

        Send it, then feed replies until :attr:`act_as_pending` is False:
        :attr:`act_as_error` then says whether the daemon refused (the daemon closes the
        connection after a refusal, so the core is broken by then). ValueError for a uid
        outside ``0..MAX_UID`` or when a request was registered already.
        """
        check_uid_arg("uid", uid)
        if self._started:
            raise ValueError("act_as must be the first request on a connection")
        req = self._next_req()
        self._act_as = (req, uid)
        return p.encode_frame(p.ActAs(req=req, uid=uid))

    @property
    def act_as_pending(self) -> bool:
        """An ActAs was sent and is not answered yet."""
        return self._act_as is not None

    @property
    def act_as_error(self) -> LucidError | None:
        """Why the ActAs failed (the daemon's refusal, or the connection's end), else None."""
        return self._act_as_error

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
            results += self._route(event.message)
        return results

    def _route(self, message: Any) -> list[ResultT]:
        asked = self._act_as
        # An Error of req 0 before the ActAs is answered (busy: too many connections) is the
        # connection's end, and so the ActAs's answer too.
        if asked is not None and (
            message.req == asked[0] or (isinstance(message, p.Error) and message.req == 0)
        ):
            return self._on_act_as_reply(message, asked[1])
        if isinstance(message, p.ActingAs):
            return self._fail_all(
                InternalError, f"lucidd sent an unexpected ActingAs (req {message.req})"
            )
        return self._on_reply(message)

    def _on_act_as_reply(self, message: Any, uid: int) -> list[ResultT]:
        self._act_as = None
        if isinstance(message, p.ActingAs) and message.uid == uid:
            self.acting_as = uid
            return []
        if isinstance(message, p.Error):
            self._act_as_error = wire_error(message, None, None)
            # The daemon closes the connection after a refusal.
            reason = f"lucidd closed the connection: {message.code}: {message.message}"
            return self._fail_all(UnavailableError, reason)
        self._act_as_error = InternalError(f"lucidd answered act_as with {message!r}")
        return self._fail_all(InternalError, f"lucidd answered act_as uid {uid} with {message!r}")

    def connection_lost(self, message: str) -> list[ResultT]:
        """The stream ended or failed: every pending request fails with UnavailableError."""
        return self._fail_all(UnavailableError, message)

    def abort(self, error_type: type[LucidError], message: str) -> list[ResultT]:
        """Give up on the connection (a timeout, a close): fail every pending request."""
        return self._fail_all(error_type, message)

    def _fail_all(self, error_type: type[LucidError], message: str) -> list[ResultT]:
        if self._broken is None:
            self._broken = message
        if self._act_as is not None:
            self._act_as = None
            self._act_as_error = error_type(message)
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
