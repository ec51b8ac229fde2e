"""The HTTP server under lucidd's two HTTP endpoints (layer 2): uvicorn, guarded.

uvicorn (with httptools' C parser, on our uvloop loop) speaks HTTP/1.1 and bounds connections
(``limit_concurrency``: beyond it, ``503``) and idle keep-alive. It has no deadline for a
request being sent, so a client trickling one byte at a time (slowloris) would hold a
connection forever, and no bound on header bytes; :class:`GuardedProtocol` adds both:

- from the connection's first byte (or its accept) to the request's last header:
  ``header_timeout`` s, and at most ``max_header_bytes`` of request line and headers (``431``);
- while a body arrives, a gap of ``body_timeout`` s closes the connection, unless the gap is
  ours (reading paused because the application has not taken what came).

The server runs uvicorn's own lifecycle (``Server._serve``: startup, main loop, graceful
shutdown) on sockets we bind; ``Server.serve`` would also take over the process's signal
handlers, which belong to the process that embeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lucidd.listen import ListenAddress

log = logging.getLogger("lucidd.http.server")

#: The ASGI scope key (in ``scope["extensions"]``) holding the Unix peer's uid, if any.
PEER_UID: Final = "lucidd.peer_uid"
_UCRED: Final = struct.Struct("3i")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive: int = 5
    max_header_bytes: int = 64 * 1024


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request deadlines, a header bound and peer uids."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._peer_uid = _peer_uid(transport)
        self._header_bytes = 0
        self._refused = False
        self._head_done = False
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.limits.header_timeout, "request_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        extensions: dict[str, Any] = {PEER_UID: self._peer_uid}
        self.scope["extensions"] = extensions
        self._arm(self.limits.header_timeout, "request_timeout")

    def data_received(self, data: bytes) -> None:
        # Bytes that arrive while a head is incomplete count against max_header_bytes (the
        # parser reports a header only once it ends, so a header that never ends must be
        # caught here); the read that completes a head may carry body bytes too.
        if self._refused:
            return
        in_head = not self._head_done
        if in_head:
            self._header_bytes += len(data)
        super().data_received(data)
        if in_head and not self._head_done and self._header_bytes > self.limits.max_header_bytes:
            self._refused = True
            self._close_with(431, "Request Header Fields Too Large", "header_too_large")

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._arm(self.limits.body_timeout, "body_timeout")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout, "body_timeout")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._head_done = False  # the next request's head starts
        self._header_bytes = 0
        super().on_message_complete()

    def _arm(self, seconds: float, event: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, seconds, event)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float, event: str) -> None:
        self._deadline = None
        if self.flow is not None and self.flow.read_paused:
            self._arm(seconds, event)  # we are the slow side: the app has not read the body
            return
        if self.transport.is_closing():
            return
        log.info("event=http_%s peer=%s", event, self.client or self._peer_uid)
        if self.cycle is None or self.cycle.response_complete:
            self._close_with(408, "Request Timeout", event)
        else:
            self.transport.close()  # the app answers a body it will not get; nothing to add

    def _close_with(self, status: int, reason: str, code: str) -> None:
        body = (
            f'{{"type":"about:blank","title":"{reason}","status":{status},"code":"{code}"}}'
        ).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.transport.close()


class _CoalescingTransport:
    """A transport whose writes of one loop iteration leave in one send: uvicorn writes a
    response's head and body apart, and two segments wake the client twice (measured: tens
    of microseconds a request, docs/bench.md)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _peer_uid(transport: asyncio.Transport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def bind(address: ListenAddress, *, unix_mode: int = 0o666) -> socket.socket:
    """A listening socket at ``address`` (OSError if it cannot be had). A Unix socket left by
    an earlier run is replaced, anything else at its path is refused; its mode lets every
    local user connect (they are told apart by their credentials)."""
    if address.is_unix:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(address.path).st_mode):
                raise FileExistsError(f"{address.path} exists and is not a socket")
            os.unlink(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address.path)
            os.chmod(address.path, unix_mode)
        except OSError:
            sock.close()
            raise
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError:
            sock.close()
            raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bound_address(sock: socket.socket) -> str:
    """How to reach ``sock`` (the port the kernel chose for port 0)."""
    name: Any = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    server: uvicorn.Server
    task: asyncio.Task[None]


async def start(app: Any, sock: socket.socket, limits: HttpLimits) -> RunningServer:
    """Serve the ASGI ``app`` on ``sock`` until :func:`stop`."""
    protocol = type("Guarded", (GuardedProtocol,), {"limits": limits})
    config = uvicorn.Config(
        app,
        http=protocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive,
        timeout_graceful_shutdown=5,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server._serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # it failed to start: raise why
    return RunningServer(server, task)


async def stop(running: RunningServer) -> None:
    """Stop accepting, let requests in progress finish (a few seconds at most)."""
    running.server.should_exit = True
    await running.task
