"""Client library of lucidd: a sans-IO core with blocking and asyncio front ends (layer 4).

This module imports only :mod:`lucidd.protocol` and :mod:`lucidd.errors`, so it can ship on
its own (DESIGN §8). The wire protocol it speaks is documented for third-party authors in
``docs/protocol.md``.

Shape (h11 style, STYLE.md):

- :class:`DataCore` and :class:`ControlCore` own no socket. They assign request ids, build
  frames, feed reply bytes to a :class:`~lucidd.protocol.FrameDecoder`, match each reply to the
  request it answers (replies may come out of order) and turn every wire ``Error`` into the
  :class:`~lucidd.errors.LucidError` subclass of its code, with the request's session and index
  as context. They return results; they never raise for what the daemon sends.
- :class:`DataClient` / :class:`ControlClient` drive a core over a blocking Unix socket;
  :class:`AsyncDataClient` / :class:`AsyncControlClient` over asyncio streams, with any number
  of concurrent calls pipelined on one connection.

Connection contract of every front end: a connection that fails (the daemon closed it, a read
or write failed, ``timeout`` seconds passed without progress) is *broken*: every request still
waiting fails (:class:`~lucidd.errors.UnavailableError`, or
:class:`~lucidd.errors.RequestTimeoutError` for the request that timed out) and later calls raise
``UnavailableError``; make a new client. Chunks in flight on a broken connection may or may not
be stored: resend them (a resend of a stored chunk with the same bytes is acknowledged again
and never sealed twice, DESIGN §2). Clients are not thread-safe.

Trust (issue 10, ``docs/security.md``): every front end checks the socket's folder before it
connects and the peer's uid right after (:func:`trusted_peer_uids`, :func:`check_peer`), and
raises :class:`~lucidd.errors.UntrustedSocketError` before sending a byte to a socket another
user may have planted.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import os
import re
import socket
import stat
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeAlias, TypeVar

import msgspec

from lucidd.errors import (
    BadRequestError,
    InternalError,
    LucidError,
    RequestTimeoutError,
    UnavailableError,
    UntrustedSocketError,
    error_from_wire,
)
from lucidd.protocol import (
    MAX_INDEX,
    SESSION_ID_SIZE,
    Ack,
    Batch,
    Check,
    CheckReply,
    Chunk,
    ChunkReply,
    ConfigReply,
    ConsistencyProofReply,
    ControlReply,
    Error,
    Finalize,
    FinalizeReply,
    FrameDecoder,
    FrameMessage,
    GetConfig,
    GetConsistencyProof,
    GetInclusionProof,
    GetRoot,
    Health,
    HealthReply,
    InclusionProofReply,
    ListSessions,
    Message,
    Metrics,
    MetricsReply,
    OpenSession,
    ProcessStatus,
    ReadChunk,
    RootReply,
    SessionInfo,
    SessionInfoReply,
    SessionListReply,
    SessionOpened,
    SessionSummary,
    Shred,
    ShredReply,
    data_reply_decoder,
    encode_frame,
)

__all__ = [
    "CONTROL_SOCKET_NAME",
    "DATA_SOCKET_NAME",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW",
    "RUNTIME_DIR_ENV",
    "Ack",
    "AsyncControlClient",
    "AsyncDataClient",
    "Buffer",
    "CheckReply",
    "ChunkReply",
    "ChunkResult",
    "ConsistencyProofReply",
    "ControlClient",
    "ControlCore",
    "ControlResult",
    "DataClient",
    "DataCore",
    "FinalizeReply",
    "HealthReply",
    "InclusionProofReply",
    "ProcessStatus",
    "RootReply",
    "SessionIdError",
    "SessionSummary",
    "check_peer",
    "default_runtime_dir",
    "format_session_id",
    "new_session_id",
    "parse_session_id",
    "trusted_peer_uids",
]

SessionRef: TypeAlias = bytes | str
"""A session id: its 16 bytes, or the canonical UUID string ``lucidctl`` prints."""
Buffer: TypeAlias = bytes | bytearray | memoryview
"""A payload: anything with the buffer protocol (``collections.abc.Buffer`` is 3.12+)."""

DATA_SOCKET_NAME: Final = "data.sock"
CONTROL_SOCKET_NAME: Final = "control.sock"
#: Overrides the runtime folder for clients and the daemon alike.
RUNTIME_DIR_ENV: Final = "LUCIDD_RUNTIME_DIR"
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
#: Buffers per ``sendmsg`` call (POSIX ``IOV_MAX``; Linux has 1024).
IOV_MAX: Final = 1024
#: Whoever may write a folder could have put a socket of theirs in it.
GROUP_OTHER_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH
ROOT_UID: Final = 0
#: ``struct ucred`` as ``SO_PEERCRED`` returns it: pid, uid, gid.
UCRED: Final = struct.Struct("3i")
#: What every "cannot reach the daemon" message ends with.
START_HINT: Final = "is lucidd running? start it with `lucidd serve`"

_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)

# The reply type each control request is answered with (besides ``Error``).
_REPLY_TYPE: Final[dict[type[Message], type[Message]]] = {
    Health: HealthReply,
    Metrics: MetricsReply,
    GetConfig: ConfigReply,
    OpenSession: SessionOpened,
    ListSessions: SessionListReply,
    SessionInfo: SessionInfoReply,
    GetRoot: RootReply,
    GetInclusionProof: InclusionProofReply,
    GetConsistencyProof: ConsistencyProofReply,
    Finalize: FinalizeReply,
    ReadChunk: ChunkReply,
    Shred: ShredReply,
    Check: CheckReply,
}

R = TypeVar("R", bound=Message)
ResultT = TypeVar("ResultT", bound="ChunkResult | ControlResult")
Key: TypeAlias = tuple[int, int | None]
"""How a result names the request it answers: ``(req, index)``; index is None on control."""


# --- session ids and paths ----------------------------------------------------------------


class SessionIdError(BadRequestError, ValueError):
    """Text that is not a canonical UUID session id (a ``BadRequestError``, exit status 64)."""


def parse_session_id(text: str) -> bytes:
    """The 16 bytes of a session id written as a canonical UUID (``8-4-4-4-12`` hex digits).

    Either case is accepted; surrounding whitespace is ignored. Anything else (braces, a
    ``urn:uuid:`` prefix, missing hyphens) raises :class:`SessionIdError`.
    """
    stripped = text.strip()
    if not _CANONICAL_UUID.fullmatch(stripped):
        shown = stripped if len(stripped) <= 64 else stripped[:61] + "..."
        raise SessionIdError(f"not a session id (a canonical UUID): {shown!r}")
    return uuid.UUID(stripped).bytes


def format_session_id(session: bytes) -> str:
    """The canonical lowercase UUID string of a 16-byte session id (ValueError otherwise)."""
    if len(session) != SESSION_ID_SIZE:
        raise ValueError(f"a session id is {SESSION_ID_SIZE} bytes, got {len(session)}")
    return str(uuid.UUID(bytes=bytes(session)))


def new_session_id() -> bytes:
    """A fresh random session id (UUIDv4); sending to it on the data socket opens it."""
    return uuid.uuid4().bytes


def _absolute_env(name: str) -> str | None:
    value = os.environ.get(name, "")
    return value if value.startswith("/") else None


def default_runtime_dir() -> Path:
    """The daemon's runtime folder when none is given (the same rule as the daemon's).

    ``$LUCIDD_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/lucidd``, else
    ``/tmp/lucidd-<uid>``. Empty or relative values are ignored, as the XDG spec says.
    """
    explicit = _absolute_env(RUNTIME_DIR_ENV)
    if explicit is not None:
        return Path(explicit)
    xdg = _absolute_env("XDG_RUNTIME_DIR")
    if xdg is not None:
        return Path(xdg) / "lucidd"
    return Path(f"/tmp/lucidd-{os.getuid()}")


def _socket_path(name: str, runtime_dir: str | os.PathLike[str] | None, path: object) -> Path:
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError("path must be a str or a path")
        return Path(path)
    return Path(runtime_dir) / name if runtime_dir is not None else default_runtime_dir() / name


def _named_explicitly(runtime_dir: object, path: object) -> bool:
    """Did the caller say where the daemon is (an argument, or ``$LUCIDD_RUNTIME_DIR``)?"""
    return path is not None or runtime_dir is not None or _absolute_env(RUNTIME_DIR_ENV) is not None


def trusted_peer_uids(socket_path: Path, explicit: bool) -> frozenset[int]:
    """Check the socket's folder before connecting; return the uids the daemon may run as.

    The daemon should run as this client's uid or as root; and, when the folder was named
    explicitly (``explicit``: a ``runtime_dir``/``path`` argument or ``$LUCIDD_RUNTIME_DIR``),
    as that folder's owner (a system daemon's ``/run/lucidd``). The folder must be owned by
    one of them and be writable by no one else: otherwise another user may have created it
    (``/tmp/lucidd-<uid>`` before the daemon did) and put a socket of theirs in it, to collect
    what the client sends. Raises :class:`UntrustedSocketError` (exit 77) then, and
    :class:`UnavailableError` when the folder cannot be inspected. Sends nothing.
    """
    folder = socket_path.parent
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise _unavailable(socket_path, exc) from None
    trusted = {os.getuid(), ROOT_UID}
    if explicit:
        trusted.add(st.st_uid)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in trusted or mode & GROUP_OTHER_WRITE:
        why = "is writable by group or others" if st.st_uid in trusted else "is not ours"
        raise UntrustedSocketError(
            f"refusing {socket_path}: its folder {folder} (owner uid {st.st_uid}, mode "
            f"{mode:04o}) {why}; expected a folder of uid {sorted(trusted)} that only its "
            "owner can write: someone else may have created it (remove it, or pass the "
            "daemon's --runtime-dir)",
            path=str(folder),
            uid=st.st_uid,
            mode=mode,
        )
    return frozenset(trusted)


def check_peer(sock: socket.socket, socket_path: Path, trusted: frozenset[int]) -> None:
    """After connecting and before sending: the process behind the socket (``SO_PEERCRED``,
    the uid that listened) must run as one of ``trusted``; else UntrustedSocketError."""
    _pid, uid, _gid = UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    )
    if uid not in trusted:
        raise UntrustedSocketError(
            f"refusing {socket_path}: the process serving it runs as uid {uid}, not as "
            f"uid {sorted(trusted)} the daemon should run as; nothing was sent",
            path=str(socket_path),
            uid=uid,
        )


def _unavailable(path: Path, exc: OSError) -> UnavailableError:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return UnavailableError(
        f"cannot connect to lucidd at {path}: {reason}; {START_HINT}", path=str(path)
    )


def _session_bytes(session: SessionRef) -> bytes:
    """A session id as its 16 bytes, given as those bytes or as the UUID text lucidctl prints."""
    if isinstance(session, str):
        return parse_session_id(session)
    if not isinstance(session, bytes) or len(session) != SESSION_ID_SIZE:
        raise ValueError(
            f"session must be {SESSION_ID_SIZE} bytes or a UUID string (see parse_session_id)"
        )
    return session


def _check_index_arg(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INDEX:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")


def _flat(payload: Buffer) -> memoryview:
    """A 1-D byte view of ``payload`` (TypeError for objects without a contiguous buffer)."""
    view = memoryview(payload)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# --- the sans-IO cores --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """The outcome of one chunk: its :class:`Ack`, or the error the daemon (or the link) gave."""

    req: int
    index: int
    outcome: Ack | LucidError

    @property
    def key(self) -> Key:
        return (self.req, self.index)


@dataclass(frozen=True, slots=True)
class ControlResult:
    """The outcome of one control request: its reply message (never ``Error``), or an error."""

    req: int
    outcome: Message | LucidError

    @property
    def key(self) -> Key:
        return (self.req, None)


class _Core(abc.ABC, Generic[ResultT]):
    """What both cores share: request ids, the decoder loop and the broken state."""

    def __init__(self, decoder: FrameDecoder) -> None:
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
            if not isinstance(event, FrameMessage):
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


def _wire_error(reply: Error, session: bytes | None, index: int | None) -> LucidError:
    context: dict[str, object] = {"req": reply.req}
    session = reply.session if reply.session is not None else session
    index = reply.index if reply.index is not None else index
    if session is not None:
        context["session"] = session
    if index is not None:
        context["index"] = index
    return error_from_wire(reply.code, reply.message, **context)


class DataCore(_Core[ChunkResult]):
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
        super().__init__(data_reply_decoder())
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
        session = _session_bytes(session)
        _check_index_arg("index", index)
        _check_index_arg("length", length)
        req = self._next_req()
        frame = encode_frame(Chunk(req=req, session=session, index=index, length=length))
        self._pending[req] = {index: session}
        self._count += 1
        return req, frame

    def batch(self, session: SessionRef, items: Sequence[tuple[int, int]]) -> tuple[int, bytes]:
        """Register a batch of ``(index, length)`` items; return its req and ``Batch`` frame.

        The payloads follow the frame concatenated in the order of ``items``. ValueError for
        an empty batch or a repeated index (its replies could not be told apart).
        """
        session = _session_bytes(session)
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
        frame = encode_frame(Batch(req=req, session=session, indices=indices, lengths=lengths))
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
        if isinstance(message, Ack):
            if items is None or items.get(message.index) != message.session:
                return self._fail_all(
                    InternalError,
                    f"lucidd acknowledged a chunk not in flight (req {message.req}, "
                    f"index {message.index})",
                )
            self._take(message.req, message.index)
            return [ChunkResult(message.req, message.index, message)]
        assert isinstance(message, Error)  # the decoder's union is Ack | Error
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


class ControlCore(_Core[ControlResult]):
    """The control-socket protocol of one connection, without I/O.

    :meth:`request` takes any control request message (its ``req`` is replaced by a fresh
    one) and returns ``(req, frame)``. Each request gets exactly one :class:`ControlResult`:
    its reply, checked to be the type that request is answered with, or a LucidError. An
    ``Error`` for a request id not pending fails every pending request.
    """

    def __init__(self, *, max_frame: int = MAX_CONTROL_REPLY_FRAME) -> None:
        super().__init__(FrameDecoder(ControlReply, max_frame=max_frame))
        # req -> (expected reply type, session, index) of the requests not yet answered.
        self._pending: dict[int, tuple[type[Message], bytes | None, int | None]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, req: int) -> bool:
        return req in self._pending

    def request(self, message: Message) -> tuple[int, bytes]:
        """Register a control request; return its request id and frame (TypeError if unknown)."""
        reply_type = _REPLY_TYPE.get(type(message))
        if reply_type is None:
            raise TypeError(f"not a control request: {type(message).__name__}")
        req = self._next_req()
        message = msgspec.structs.replace(message, req=req)
        session = getattr(message, "session", None)
        index = getattr(message, "index", None)
        self._pending[req] = (reply_type, session, index)
        return req, encode_frame(message)

    def _on_reply(self, message: Any) -> list[ControlResult]:
        expected = self._pending.pop(message.req, None)
        if isinstance(message, Error):
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


# --- blocking front ends ------------------------------------------------------------------


def _send_all(sock: socket.socket, buffers: Sequence[Buffer]) -> None:
    """Write every byte of ``buffers`` with ``sendmsg`` (gathered by the kernel: no join)."""
    views = [view for view in map(_flat, buffers) if view.nbytes]
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


class _SyncLink(Generic[ResultT]):
    """One blocking connection driving a core; every failure comes back as results."""

    def __init__(
        self, path: Path, timeout: float | None, core: _Core[ResultT], explicit: bool
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
            raise _unavailable(path, exc) from None
        try:
            check_peer(sock, path, trusted)
        except UntrustedSocketError:
            sock.close()
            raise
        self._sock: socket.socket | None = sock

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

    def receive(self) -> list[ResultT]:
        """Block until reply bytes (or the end of the stream) arrive; return their results."""
        if self._sock is None:
            return self._closed_results()
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            return self._give_up(f"no reply from lucidd at {self.path} for")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            results = self.core.connection_lost(
                f"connection to lucidd at {self.path} failed: {reason}"
            )
        else:
            if data:
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


class _AckCollector:
    """Acks by ``(req, index)`` and the first error, as results arrive."""

    def __init__(self, on_ack: Callable[[Ack], None] | None) -> None:
        self.acks: dict[Key, Ack] = {}
        self.error: LucidError | None = None
        self._on_ack = on_ack

    def add(self, results: Iterable[ChunkResult]) -> None:
        for result in results:
            self.record(result.key, result.outcome)

    def record(self, key: Key, outcome: Ack | LucidError) -> None:
        if isinstance(outcome, LucidError):
            if self.error is None:
                self.error = outcome
            return
        self.acks[key] = outcome
        if self._on_ack is not None:
            self._on_ack(outcome)

    def result(self, keys: Iterable[Key]) -> list[Ack]:
        """The acks of ``keys`` in order, or the first error raised."""
        if self.error is not None:
            raise self.error
        return [self.acks[key] for key in keys]


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int of at least 1, got {window!r}")


class DataClient:
    """Sends chunks on lucidd's data socket over one blocking connection.

    ``path`` (the socket itself) wins over ``runtime_dir`` (its folder, default
    :func:`default_runtime_dir`). ``timeout`` bounds each wait for progress (None: forever).
    Raises :class:`~lucidd.errors.UnavailableError` when the socket cannot be reached.
    Errors the daemon reports are raised as their :class:`~lucidd.errors.LucidError`
    subclass, with ``context["session"]`` and ``context["index"]`` naming the chunk.
    """

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = _socket_path(DATA_SOCKET_NAME, runtime_dir, path)
        self._core = DataCore()
        explicit = _named_explicitly(runtime_dir, path)
        self._link = _SyncLink(self.path, timeout, self._core, explicit)

    def put(self, session: SessionRef, index: int, payload: Buffer) -> Ack:
        """Send one chunk and wait for its ack (the record is durable when this returns)."""
        return self.put_many(session, ((index, payload),), window=1)[0]

    def put_many(
        self,
        session: SessionRef,
        chunks: Iterable[tuple[int, Buffer]],
        window: int = DEFAULT_WINDOW,
        *,
        on_ack: Callable[[Ack], None] | None = None,
    ) -> list[Ack]:
        """Send ``(index, payload)`` chunks pipelined, at most ``window`` unanswered at once.

        ``chunks`` is consumed lazily (a generator reading a file holds ``window`` payloads at
        most). Each header goes out with its payload in one ``sendmsg`` (no copy). ``on_ack``
        sees each ack as it arrives. Returns the acks in the order of ``chunks``.

        On the first error no further chunk is sent, the chunks in flight are drained, then
        that error is raised (every chunk acked before is durable; ``on_ack`` saw them). If
        anything else escapes while chunks are in flight (a bad argument, an exception from
        ``chunks`` or ``on_ack``, KeyboardInterrupt), the connection is closed.
        """
        _check_window(window)
        collector = _AckCollector(on_ack)
        keys: list[Key] = []
        try:
            for index, payload in chunks:
                while self._core.pending >= window and collector.error is None:
                    collector.add(self._link.receive())
                if collector.error is not None:
                    break
                view = _flat(payload)
                req, header = self._core.chunk(session, index, view.nbytes)
                keys.append((req, index))
                collector.add(self._link.send((header, view)))
            while self._core.pending:
                collector.add(self._link.receive())
        except BaseException:
            if self._core.pending:
                self._link.close()
            raise
        return collector.result(keys)

    def put_batch(self, session: SessionRef, chunks: Sequence[tuple[int, Buffer]]) -> list[Ack]:
        """Send ``(index, payload)`` chunks in one ``Batch`` frame; acks in the given order.

        Each item is answered on its own; once all are, the first error (if any) is raised.
        The daemon bounds the number of items (``too_large`` beyond its ``batch_size``).
        """
        views = [(index, _flat(payload)) for index, payload in chunks]
        req, header = self._core.batch(session, [(index, view.nbytes) for index, view in views])
        collector = _AckCollector(None)
        try:
            collector.add(self._link.send([header, *(view for _, view in views)]))
            while self._core.pending:
                collector.add(self._link.receive())
        except BaseException:
            if self._core.pending:
                self._link.close()
            raise
        return collector.result((req, index) for index, _ in views)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Back-off between resend rounds of :func:`put_until_acked` (doubles up to the maximum).
RESEND_BACKOFF_S: Final = 0.05
RESEND_BACKOFF_MAX_S: Final = 2.0


def put_until_acked(
    session: SessionRef,
    chunks: Iterable[tuple[int, Buffer]],
    runtime_dir: str | os.PathLike[str] | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    deadline_s: float = 300.0,
    timeout: float | None = DEFAULT_TIMEOUT,
    on_ack: Callable[[Ack], None] | None = None,
) -> dict[int, Ack]:
    """Send every chunk until each one is acknowledged, whatever crashes in between.

    The idempotent-client loop: connect, send every chunk not yet acknowledged (pipelined),
    and on a retryable failure (the daemon is down or restarting, busy, out of disk, a timeout)
    reconnect after a growing pause and resend what is still unacknowledged. Resending is safe:
    an index the daemon already stored with the same bytes is acknowledged again with the same
    leaf hash, never stored twice. Non-retryable errors (different bytes for a stored index, a
    finalized session, a chunk too large) are raised at once. Returns the acks by index; gives
    up with the last error once ``deadline_s`` has passed.
    """
    pending = dict(chunks)
    acks: dict[int, Ack] = {}
    deadline = time.monotonic() + deadline_s
    backoff = RESEND_BACKOFF_S

    def record(ack: Ack) -> None:
        acks[ack.index] = ack
        pending.pop(ack.index, None)
        if on_ack is not None:
            on_ack(ack)

    while pending:
        try:
            with DataClient(runtime_dir, timeout=timeout) as client:
                client.put_many(session, sorted(pending.items()), window, on_ack=record)
        except LucidError as err:
            if not err.retryable or time.monotonic() + backoff > deadline:
                raise
            time.sleep(backoff)
            backoff = min(backoff * 2, RESEND_BACKOFF_MAX_S)
    return acks


def _sid(session: SessionRef) -> bytes:
    return _session_bytes(session)


def _open_request(
    compression: str | None, session: SessionRef | None, label: str | None, chunk_size: int | None
) -> OpenSession:
    return OpenSession(
        req=0,
        compression=compression,
        session=None if session is None else _sid(session),
        label=label,
        chunk_size=chunk_size,
    )


def _expect(outcome: Message | LucidError, reply_type: type[R]) -> R:
    if isinstance(outcome, LucidError):
        raise outcome
    if not isinstance(outcome, reply_type):  # ControlCore checked it; this narrows the type
        raise InternalError(f"lucidd sent an unexpected {type(outcome).__name__}")
    return outcome


class ControlClient:
    """Requests on lucidd's control socket over one blocking connection, one at a time.

    Arguments as for :class:`DataClient`. Every method raises the
    :class:`~lucidd.errors.LucidError` subclass of the daemon's error code (with the session
    and index of the request as context), ``UnavailableError`` if the daemon cannot be reached,
    and ``ValueError`` for a session id that is not 16 bytes.
    """

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = _socket_path(CONTROL_SOCKET_NAME, runtime_dir, path)
        self._core = ControlCore()
        explicit = _named_explicitly(runtime_dir, path)
        self._link = _SyncLink(self.path, timeout, self._core, explicit)

    def _call(self, request: Message, reply_type: type[R]) -> R:
        req, frame = self._core.request(request)
        try:
            results = self._link.send((frame,))
            while True:
                for result in results:
                    if result.req == req:
                        return _expect(result.outcome, reply_type)
                results = self._link.receive()
        except BaseException:
            if self._core.pending:
                self._link.close()
            raise

    def health(self) -> HealthReply:
        """The daemon's status and its processes."""
        return self._call(Health(req=0), HealthReply)

    def metrics(self) -> dict[str, float]:
        """Counters and gauges by name."""
        return self._call(Metrics(req=0), MetricsReply).metrics

    def config(self) -> dict[str, Any]:
        """The daemon's effective configuration (never secrets)."""
        return self._call(GetConfig(req=0), ConfigReply).config

    def open_session(
        self,
        compression: str | None = None,
        session: SessionRef | None = None,
        *,
        label: str | None = None,
        chunk_size: int | None = None,
    ) -> bytes:
        """Open a session and return its id (the daemon picks one unless ``session`` is given).

        ``compression`` is ``auto``, ``zstd``, ``zlib`` or ``off`` (None: the daemon's default).
        ``label`` is a note shown by ``sessions``/``info``; ``chunk_size`` records the size the
        session is written in (for an existing session that has none yet, it is recorded; one
        that differs is ``bad_request``).
        """
        request = _open_request(compression, session, label, chunk_size)
        return self._call(request, SessionOpened).session

    def sessions(self) -> list[SessionSummary]:
        """Every session the daemon holds."""
        return self._call(ListSessions(req=0), SessionListReply).sessions

    def info(self, session: SessionRef) -> SessionSummary:
        """One session's summary (UnknownSessionError if there is none)."""
        return self._call(SessionInfo(req=0, session=_sid(session)), SessionInfoReply).info

    def root(self, session: SessionRef, size: int | None = None) -> RootReply:
        """The Merkle root of the session's first ``size`` leaves (default: all of them)."""
        return self._call(GetRoot(req=0, session=_sid(session), size=size), RootReply)

    def inclusion_proof(
        self, session: SessionRef, index: int, size: int | None = None
    ) -> InclusionProofReply:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        request = GetInclusionProof(req=0, session=_sid(session), index=index, size=size)
        return self._call(request, InclusionProofReply)

    def consistency_proof(
        self, session: SessionRef, size1: int, size2: int | None = None
    ) -> ConsistencyProofReply:
        """The RFC 9162 consistency proof from tree size ``size1`` to ``size2`` (default: all)."""
        request = GetConsistencyProof(req=0, session=_sid(session), size1=size1, size2=size2)
        return self._call(request, ConsistencyProofReply)

    def finalize(self, session: SessionRef) -> FinalizeReply:
        """Write the session's FINAL record; it accepts no chunk afterwards."""
        return self._call(Finalize(req=0, session=_sid(session)), FinalizeReply)

    def read_chunk(self, session: SessionRef, index: int) -> ChunkReply:
        """Decrypt one stored chunk: its plaintext and its sealed record."""
        return self._call(ReadChunk(req=0, session=_sid(session), index=index), ChunkReply)

    def shred(self, session: SessionRef) -> None:
        """Crypto-shred the session: its secret is deleted, its records become unreadable."""
        self._call(Shred(req=0, session=_sid(session)), ShredReply)

    def check(self, session: bytes) -> CheckReply:
        """Scrub the session: every chunk's record is read, authenticated and compared with
        its leaf in the log; ``bad`` lists the chunks that fail (empty: intact)."""
        return self._call(Check(req=0, session=_sid(session)), CheckReply)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- asyncio front ends -------------------------------------------------------------------


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A call cancelled by its caller leaves a future nobody awaits; fetching its exception
    # keeps asyncio from logging "exception was never retrieved" for it.
    if not future.cancelled():
        future.exception()


async def _open_unix(
    path: Path, timeout: float | None, explicit: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect as :class:`_SyncLink` does: folder checked first, the peer before any send."""
    trusted = trusted_peer_uids(path, explicit)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
    except TimeoutError:
        raise UnavailableError(
            f"cannot connect to lucidd at {path}: timed out; {START_HINT}", path=str(path)
        ) from None
    except OSError as exc:
        raise _unavailable(path, exc) from None
    try:
        check_peer(writer.get_extra_info("socket"), path, trusted)
    except UntrustedSocketError:
        writer.close()
        raise
    return reader, writer


class _AsyncLink(Generic[ResultT]):
    """One asyncio connection driving a core; a reader task resolves futures by key."""

    def __init__(
        self,
        path: Path,
        timeout: float | None,
        core: _Core[ResultT],
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.core = core
        self._reader, self._writer = streams
        self._futures: dict[Key, asyncio.Future[Any]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    def expect(self, keys: Iterable[Key]) -> list[asyncio.Future[Any]]:
        """Futures for results the core will produce (register them before writing)."""
        loop = asyncio.get_running_loop()
        futures = []
        for key in keys:
            future: asyncio.Future[Any] = loop.create_future()
            future.add_done_callback(_consume_exception)
            self._futures[key] = future
            futures.append(future)
        return futures

    async def send(self, buffers: Sequence[Buffer]) -> None:
        """Queue ``buffers`` and wait for room; failures reach the futures, not the caller.

        No await between the writes, so concurrent callers never interleave frames.
        """
        for buffer in buffers:
            self._writer.write(buffer)
        try:
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            self.give_up()
        except OSError:
            pass  # the reader task sees the end of the stream and fails what is pending

    def give_up(self) -> str:
        """No progress within the timeout: fail what is pending (RequestTimeoutError), close."""
        message = (
            f"no progress with lucidd at {self.path} for {self.timeout} s; the connection is closed"
        )
        self._dispatch(self.core.abort(RequestTimeoutError, message))
        self._writer.close()
        return message

    async def wait(self, future: asyncio.Future[Any]) -> Any:
        """The future's result; after ``timeout`` without it, the connection gives up."""
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise RequestTimeoutError(self.give_up()) from None

    async def _read_loop(self) -> None:
        try:
            while not self.core.broken:
                data = await self._reader.read(RECV_SIZE)
                if data:
                    self._dispatch(self.core.receive_data(data))
                else:
                    message = f"lucidd at {self.path} closed the connection"
                    self._dispatch(self.core.connection_lost(message))
        except OSError as exc:
            message = f"connection to lucidd at {self.path} failed: {exc.strerror or exc}"
            self._dispatch(self.core.connection_lost(message))
        finally:
            self._writer.close()

    def _dispatch(self, results: Iterable[ResultT]) -> None:
        for result in results:
            future = self._futures.pop(result.key, None)
            if future is None or future.done():
                continue  # its caller was cancelled
            if isinstance(result.outcome, LucidError):
                future.set_exception(result.outcome)
            else:
                future.set_result(result.outcome)

    async def close(self) -> None:
        """Close the stream; whatever is still pending fails with UnavailableError."""
        message = f"connection to lucidd at {self.path} is closed"
        self._dispatch(self.core.abort(UnavailableError, message))
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        await self._task


class AsyncDataClient:
    """The asyncio counterpart of :class:`DataClient`; create it with :meth:`connect`.

    Any number of coroutines may ``await put(...)`` on one client at once: their chunks are
    pipelined on the one connection and each reply resolves its own call. ``timeout`` bounds
    each wait for a reply (or for room to send); when it passes the connection breaks.
    """

    def __init__(self, link: _AsyncLink[ChunkResult], core: DataCore) -> None:
        """Internal: use :meth:`connect`."""
        self._link = link
        self._core = core
        self.path = link.path

    @classmethod
    async def connect(
        cls,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncDataClient:
        """Connect to the data socket (UnavailableError if it cannot be reached)."""
        socket_path = _socket_path(DATA_SOCKET_NAME, runtime_dir, path)
        streams = await _open_unix(socket_path, timeout, _named_explicitly(runtime_dir, path))
        core = DataCore()
        return cls(_AsyncLink(socket_path, timeout, core, streams), core)

    async def _start(
        self, session: SessionRef, index: int, payload: Buffer
    ) -> tuple[Key, asyncio.Future[Any]]:
        view = _flat(payload)
        req, header = self._core.chunk(session, index, view.nbytes)
        (future,) = self._link.expect([(req, index)])
        await self._link.send((header, view))
        return (req, index), future

    async def put(self, session: SessionRef, index: int, payload: Buffer) -> Ack:
        """Send one chunk and wait for its ack (the record is durable when this returns)."""
        _, future = await self._start(session, index, payload)
        ack: Ack = await self._link.wait(future)
        return ack

    async def put_many(
        self,
        session: SessionRef,
        chunks: Iterable[tuple[int, Buffer]],
        window: int = DEFAULT_WINDOW,
        *,
        on_ack: Callable[[Ack], None] | None = None,
    ) -> list[Ack]:
        """As :meth:`DataClient.put_many`: pipelined, acks in the order of ``chunks``."""
        _check_window(window)
        collector = _AckCollector(on_ack)
        keys: list[Key] = []
        inflight: dict[asyncio.Future[Any], Key] = {}
        for index, payload in chunks:
            while len(inflight) >= window and collector.error is None:
                await self._settle_some(inflight, collector)
            if collector.error is not None:
                break
            key, future = await self._start(session, index, payload)
            keys.append(key)
            inflight[future] = key
        while inflight:
            await self._settle_some(inflight, collector)
        return collector.result(keys)

    async def _settle_some(
        self, inflight: dict[asyncio.Future[Any], Key], collector: _AckCollector
    ) -> None:
        done, _ = await asyncio.wait(
            inflight, timeout=self._link.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            self._link.give_up()  # every pending future now holds a RequestTimeoutError
            done = {future for future in inflight if future.done()}
        for future in done:
            key = inflight.pop(future)
            exc = future.exception()
            if exc is not None and not isinstance(exc, LucidError):
                raise exc
            collector.record(key, exc if isinstance(exc, LucidError) else future.result())

    async def put_batch(
        self, session: SessionRef, chunks: Sequence[tuple[int, Buffer]]
    ) -> list[Ack]:
        """As :meth:`DataClient.put_batch`: one ``Batch`` frame, acks in the given order."""
        views = [(index, _flat(payload)) for index, payload in chunks]
        req, header = self._core.batch(session, [(index, view.nbytes) for index, view in views])
        keys: list[Key] = [(req, index) for index, _ in views]
        futures = self._link.expect(keys)
        await self._link.send([header, *(view for _, view in views)])
        collector = _AckCollector(None)
        for key, future in zip(keys, futures, strict=True):
            try:
                collector.record(key, await self._link.wait(future))
            except LucidError as exc:
                collector.record(key, exc)
        return collector.result(keys)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with UnavailableError."""
        await self._link.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncControlClient:
    """The asyncio counterpart of :class:`ControlClient`; create it with :meth:`connect`.

    Concurrent calls are pipelined on one connection; errors as for :class:`ControlClient`.
    """

    def __init__(self, link: _AsyncLink[ControlResult], core: ControlCore) -> None:
        """Internal: use :meth:`connect`."""
        self._link = link
        self._core = core
        self.path = link.path

    @classmethod
    async def connect(
        cls,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncControlClient:
        """Connect to the control socket (UnavailableError if it cannot be reached)."""
        socket_path = _socket_path(CONTROL_SOCKET_NAME, runtime_dir, path)
        streams = await _open_unix(socket_path, timeout, _named_explicitly(runtime_dir, path))
        core = ControlCore()
        return cls(_AsyncLink(socket_path, timeout, core, streams), core)

    async def _call(self, request: Message, reply_type: type[R]) -> R:
        req, frame = self._core.request(request)
        (future,) = self._link.expect([(req, None)])
        await self._link.send((frame,))
        try:
            reply = await self._link.wait(future)
        except LucidError as exc:
            reply = exc
        return _expect(reply, reply_type)

    async def health(self) -> HealthReply:
        """The daemon's status and its processes."""
        return await self._call(Health(req=0), HealthReply)

    async def metrics(self) -> dict[str, float]:
        """Counters and gauges by name."""
        return (await self._call(Metrics(req=0), MetricsReply)).metrics

    async def config(self) -> dict[str, Any]:
        """The daemon's effective configuration (never secrets)."""
        return (await self._call(GetConfig(req=0), ConfigReply)).config

    async def open_session(
        self,
        compression: str | None = None,
        session: SessionRef | None = None,
        *,
        label: str | None = None,
        chunk_size: int | None = None,
    ) -> bytes:
        """As :meth:`ControlClient.open_session`."""
        request = _open_request(compression, session, label, chunk_size)
        return (await self._call(request, SessionOpened)).session

    async def sessions(self) -> list[SessionSummary]:
        """Every session the daemon holds."""
        return (await self._call(ListSessions(req=0), SessionListReply)).sessions

    async def info(self, session: SessionRef) -> SessionSummary:
        """One session's summary (UnknownSessionError if there is none)."""
        request = SessionInfo(req=0, session=_sid(session))
        return (await self._call(request, SessionInfoReply)).info

    async def root(self, session: SessionRef, size: int | None = None) -> RootReply:
        """As :meth:`ControlClient.root`."""
        return await self._call(GetRoot(req=0, session=_sid(session), size=size), RootReply)

    async def inclusion_proof(
        self, session: SessionRef, index: int, size: int | None = None
    ) -> InclusionProofReply:
        """As :meth:`ControlClient.inclusion_proof`."""
        request = GetInclusionProof(req=0, session=_sid(session), index=index, size=size)
        return await self._call(request, InclusionProofReply)

    async def consistency_proof(
        self, session: SessionRef, size1: int, size2: int | None = None
    ) -> ConsistencyProofReply:
        """As :meth:`ControlClient.consistency_proof`."""
        request = GetConsistencyProof(req=0, session=_sid(session), size1=size1, size2=size2)
        return await self._call(request, ConsistencyProofReply)

    async def finalize(self, session: SessionRef) -> FinalizeReply:
        """As :meth:`ControlClient.finalize`."""
        return await self._call(Finalize(req=0, session=_sid(session)), FinalizeReply)

    async def read_chunk(self, session: SessionRef, index: int) -> ChunkReply:
        """As :meth:`ControlClient.read_chunk`."""
        request = ReadChunk(req=0, session=_sid(session), index=index)
        return await self._call(request, ChunkReply)

    async def shred(self, session: SessionRef) -> None:
        """As :meth:`ControlClient.shred`."""
        await self._call(Shred(req=0, session=_sid(session)), ShredReply)

    async def check(self, session: bytes) -> CheckReply:
        """As :meth:`ControlClient.check`."""
        return await self._call(Check(req=0, session=_sid(session)), CheckReply)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with UnavailableError."""
        await self._link.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
