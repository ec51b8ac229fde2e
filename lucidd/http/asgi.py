"""The little of ASGI the HTTP apps need (layer 2): a request, bounded bodies, responses.

No framework: both apps have a handful of fixed routes, and the per-request cost of a router
and request objects is what the REST path's latency goal is about (docs/bench.md, HTTP).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qs

import msgspec

from lucidd.http.problems import (
    PROBLEM_CONTENT_TYPE,
    RETRY_AFTER_S,
    HttpError,
    Problem,
    retryable,
)
from lucidd.http.server import PEER_UID

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON: Final = "application/json"
_encoder: Final = msgspec.json.Encoder()


class Request:
    """One HTTP request's head, and its body read on demand within a bound."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self._receive = receive
        self._query = scope.get("query_string", b"")
        self._parsed_query: dict[str, list[str]] | None = None
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        extensions = scope.get("extensions") or {}
        #: The uid of a Unix-socket peer (from the kernel); None on TCP.
        self.peer_uid: int | None = extensions.get(PEER_UID)

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    @property
    def content_type(self) -> str:
        value = self.header(b"content-type") or ""
        return value.split(";", 1)[0].strip().lower()

    def query(self, name: str) -> str | None:
        if self._parsed_query is None:
            self._parsed_query = parse_qs(self._query.decode("latin-1"))
        values = self._parsed_query.get(name)
        return values[0] if values else None

    async def body(self, limit: int) -> bytes | bytearray:
        """The whole body; ``too_large`` (413) past ``limit`` bytes, told before reading when
        Content-Length says so. One piece is returned as it came, several joined once."""
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HttpError("too_large", f"the body is {length} bytes; at most {limit}")
        first: bytes | None = None
        parts: bytearray | None = None
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise HttpError("bad_request", "the client went away before its body ended")
            piece: bytes = message.get("body", b"")
            if first is None:
                first = piece
            else:
                if parts is None:
                    parts = bytearray(first)
                parts += piece
            if len(parts if parts is not None else first) > limit:
                raise HttpError("too_large", f"the body is over {limit} bytes")
            if not message.get("more_body", False):
                return parts if parts is not None else first


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    head = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def respond_json(
    send: Send, status: int, value: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await respond(send, status, _encoder.encode(value), JSON, headers)


async def respond_problem(send: Send, problem: Problem) -> None:
    headers = [(b"retry-after", str(RETRY_AFTER_S).encode())] if retryable(problem.code) else []
    if problem.code == "unauthorized":
        headers.append((b"www-authenticate", b'Bearer realm="lucidd"'))
    await respond(send, problem.status, _encoder.encode(problem), PROBLEM_CONTENT_TYPE, headers)
