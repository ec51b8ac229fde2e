"""The original REST API over the daemon's sockets (layer 4): ``lucidd http``'s ASGI app.

Each route is one or two calls on the caller's connections to the daemon
(:class:`~lucidd.http.daemon_link.DaemonLink`), so what the sockets promise holds here: a chunk
is answered ``200`` only after its durable ack, and every refusal is the daemon's typed error
as a problem document (:mod:`lucidd.http.problems`). The shapes are docs/openapi.json's; the
proof and finalize replies are lucidctl's JSON files, so ``lucidctl verify`` reads them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import struct
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import msgspec

from lucidd.cli.formats import CheckpointFile, InclusionProofFile
from lucidd.client import AsyncControlClient, AsyncDataClient, parse_session_id
from lucidd.errors import LucidError
from lucidd.http.asgi import (
    JSON,
    Receive,
    Request,
    Scope,
    Send,
    respond,
    respond_json,
    respond_problem,
)
from lucidd.http.auth import Tokens, caller_uid
from lucidd.http.daemon_link import DaemonLink
from lucidd.http.exposition import render
from lucidd.http.problems import HttpError, problem, problem_of
from lucidd.protocol import Ack

log = logging.getLogger("lucidd.http.gateway")

OCTET_STREAM: Final = "application/octet-stream"
#: The binary batch body: repeated (chunk index u64, length u32, big-endian; then the bytes).
BATCH_CONTENT_TYPE: Final = "application/vnd.lucidd.batch"
BATCH_ITEM_HEAD: Final = struct.Struct(">QI")
#: Room for the JSON around base64 data, beyond the 4/3 of the bytes themselves.
JSON_SLACK: Final = 64 * 1024

Handler = Callable[["Call"], Awaitable[None]]


class _ChunkBody(msgspec.Struct):
    session_id: str
    chunk_index: int
    data: str


class _BatchItem(msgspec.Struct):
    chunk_index: int
    data: str


class _BatchBody(msgspec.Struct):
    session_id: str
    chunks: list[_BatchItem]


class _OpenBody(msgspec.Struct, omit_defaults=True):
    session_id: str | None = None
    compression: str | None = None
    label: str | None = None
    chunk_size: int | None = None


@dataclass
class Limits:
    """The daemon's limits the gateway checks bodies against (read from it once)."""

    max_chunk_size: int
    batch_size: int
    batch_bytes: int


@dataclass
class Call:
    """One request being answered: who asked, the route's match, the way back."""

    request: Request
    send: Send
    uid: int
    match: re.Match[str]
    gateway: Gateway

    def session(self) -> bytes:
        return _session_id(self.match["session"])

    async def control(self, call: Callable[[AsyncControlClient], Awaitable[Any]]) -> Any:
        return await self.gateway.link.control(self.uid, call)


class Gateway:
    """The REST app: ``await gateway(scope, receive, send)``."""

    def __init__(self, link: DaemonLink, tokens: Tokens | None) -> None:
        self.link = link
        self.tokens = tokens
        self._limits: Limits | None = None
        self._openapi = resources.files("lucidd.http").joinpath("openapi.json").read_bytes()
        session = r"/api/v1/sessions/(?P<session>[^/]+)"
        #: (method, path, handler, whether it needs credentials)
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            ("GET", re.compile(r"/health"), self._health, False),
            ("GET", re.compile(r"/metrics"), self._metrics, False),
            ("GET", re.compile(r"/openapi\.json"), self._openapi_doc, False),
            ("GET", re.compile(r"/api/v1/config"), self._config, True),
            ("POST", re.compile(r"/api/v1/sessions"), self._open, True),
            ("GET", re.compile(session), self._info, True),
            ("POST", re.compile(r"/api/v1/chunks/process"), self._process, True),
            ("POST", re.compile(r"/api/v1/chunks/process-batch"), self._process_batch, True),
            ("GET", re.compile(session + r"/merkle-root"), self._root, True),
            ("GET", re.compile(session + r"/proof/(?P<index>\d+)"), self._proof, True),
            ("POST", re.compile(session + r"/finalize"), self._finalize, True),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            handler, match, authenticated = self._route(request)
            if not authenticated:
                await handler(Call(request, send, -1, match, self))
                return
            uid = caller_uid(request, self.tokens)
            async with self.link.request(uid):
                await handler(Call(request, send, uid, match, self))
        except HttpError as err:
            await respond_problem(send, problem(err.code, err.detail))
        except LucidError as err:
            await respond_problem(send, problem_of(err, session_id=_session_in(request)))
        except Exception:  # a bug: the single failure boundary, so a client sees a problem
            log.exception("event=http_internal_error method=%s", request.method)
            await respond_problem(send, problem("internal", "an internal error (see the log)"))

    def _route(self, request: Request) -> tuple[Handler, re.Match[str], bool]:
        allowed = []
        for method, pattern, handler, authenticated in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method == method or (method == "GET" and request.method == "HEAD"):
                return handler, match, authenticated
            allowed.append(method)
        if allowed:
            raise HttpError("method_not_allowed", f"{request.path} takes {', '.join(allowed)}")
        raise HttpError("no_route", f"no {request.path} here (see /openapi.json)")

    async def limits(self, call: Call) -> Limits:
        if self._limits is None:
            config = await call.control(lambda c: c.config())
            self._limits = Limits(
                int(config["max_chunk_size"]), int(config["batch_size"]), int(config["batch_bytes"])
            )
        return self._limits

    # -- public: health, metrics, the API's own description --

    async def _health(self, call: Call) -> None:
        reply = await self.link.control(_own_uid(), lambda c: c.health())
        status = 200 if reply.status == "ok" else 503
        await respond_json(call.send, status, {"status": reply.status, "reasons": reply.reasons})

    async def _metrics(self, call: Call) -> None:
        reply = await self.link.control(_own_uid(), lambda c: c.metrics_reply())
        body, content_type = render(reply, call.request.header(b"accept"))
        await respond(call.send, 200, body, content_type)

    async def _openapi_doc(self, call: Call) -> None:
        await respond(call.send, 200, self._openapi, JSON)

    # -- the API --

    async def _config(self, call: Call) -> None:
        await respond_json(call.send, 200, await call.control(lambda c: c.config()))

    async def _open(self, call: Call) -> None:
        raw = await call.request.body(JSON_SLACK)
        body = _decode(raw, _OpenBody) if raw.strip() else _OpenBody()
        wanted = _session_id(body.session_id) if body.session_id is not None else None
        session = await call.control(
            lambda c: c.open_session(
                body.compression, wanted, label=body.label, chunk_size=body.chunk_size
            )
        )
        info = await call.control(lambda c: c.info(session))
        name = str(uuid.UUID(bytes=session))
        location = f"/api/v1/sessions/{name}".encode()
        await respond_json(call.send, 201, _summary(info), [(b"location", location)])

    async def _info(self, call: Call) -> None:
        session = call.session()
        await respond_json(call.send, 200, _summary(await call.control(lambda c: c.info(session))))

    async def _process(self, call: Call) -> None:
        limits = await self.limits(call)
        kind = call.request.content_type
        data: bytes | bytearray
        if kind == JSON:
            raw = await call.request.body(_base64_size(limits.max_chunk_size) + JSON_SLACK)
            body = _decode(raw, _ChunkBody)
            session, index, data = _session_id(body.session_id), body.chunk_index, _b64(body.data)
        elif kind in (OCTET_STREAM, ""):
            session = _session_id(_required(call.request, "session_id"))
            index = _index(_required(call.request, "chunk_index"))
            data = await call.request.body(limits.max_chunk_size)
        else:
            raise HttpError("unsupported_media_type", f"send {OCTET_STREAM} or {JSON}")
        ack = await self.link.data(call.uid, lambda c: c.put(session, index, data))
        await respond_json(call.send, 200, _acked(ack, len(data)))

    async def _process_batch(self, call: Call) -> None:
        limits = await self.limits(call)
        kind = call.request.content_type
        items: Sequence[tuple[int, bytes | memoryview]]
        if kind == JSON:
            raw = await call.request.body(_base64_size(limits.batch_bytes) + JSON_SLACK)
            batch = _decode(raw, _BatchBody)
            session = _session_id(batch.session_id)
            items = [(item.chunk_index, _b64(item.data)) for item in batch.chunks]
        elif kind == BATCH_CONTENT_TYPE:
            session = _session_id(_required(call.request, "session_id"))
            items = _binary_batch(await call.request.body(limits.batch_bytes + 4096))
        else:
            raise HttpError("unsupported_media_type", f"send {BATCH_CONTENT_TYPE} or {JSON}")
        if not items or len(items) > limits.batch_size:
            raise HttpError("bad_request", f"a batch holds 1 to {limits.batch_size} chunks")
        if any(len(data) > limits.max_chunk_size for _, data in items):
            raise HttpError("too_large", f"a chunk holds at most {limits.max_chunk_size} bytes")
        outcomes = await self.link.data(call.uid, lambda c: _put_each(c, session, items))
        results = [
            _acked(outcome, len(data)) if isinstance(outcome, Ack) else _failed(outcome, index)
            for (index, data), outcome in zip(items, outcomes, strict=True)
        ]
        acked = sum(isinstance(outcome, Ack) for outcome in outcomes)
        await respond_json(
            call.send,
            200,
            {"session_id": str(uuid.UUID(bytes=session)), "acked": acked,
             "failed": len(items) - acked, "results": results},
        )  # fmt: skip

    async def _root(self, call: Call) -> None:
        session = call.session()
        reply = await call.control(lambda c: c.root(session))
        name = str(uuid.UUID(bytes=session))
        await respond_json(
            call.send, 200, {"session_id": name, "root": reply.root.hex(), "size": reply.size}
        )

    async def _proof(self, call: Call) -> None:
        session, index = call.session(), _index(call.match["index"])
        size_text = call.request.query("size")
        size = _index(size_text) if size_text is not None else None
        reply = await call.control(lambda c: c.inclusion_proof(session, index, size))
        proof = InclusionProofFile(
            session=str(uuid.UUID(bytes=reply.session)),
            index=reply.index,
            size=reply.size,
            leaf_hash=reply.leaf_hash.hex(),
            path=[node.hex() for node in reply.path],
            root=reply.root.hex(),
        )
        await respond_json(call.send, 200, proof)

    async def _finalize(self, call: Call) -> None:
        session = call.session()
        reply = await call.control(lambda c: c.finalize(session))
        checkpoint = CheckpointFile(
            session=str(uuid.UUID(bytes=reply.session)),
            size=reply.size,
            root=reply.root.hex(),
            checkpoint=reply.checkpoint.decode(),
            already_finalized=reply.already_finalized,
        )
        await respond_json(call.send, 200, checkpoint)


async def _put_each(
    client: AsyncDataClient, session: bytes, items: Sequence[tuple[int, bytes | memoryview]]
) -> list[Ack | LucidError]:
    """Every chunk pipelined on one connection, each with its own outcome (a batch reply
    says which were stored, so a client resends just the others)."""
    puts = [client.put(session, index, data) for index, data in items]
    results = await asyncio.gather(*puts, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, LucidError):
            raise result
    return [r for r in results if isinstance(r, Ack | LucidError)]


def _acked(ack: Ack, size: int) -> dict[str, Any]:
    return {
        "session_id": str(uuid.UUID(bytes=ack.session)),
        "chunk_index": ack.index,
        "leaf_hash": ack.leaf_hash.hex(),
        "size": size,
        "durable": True,
    }


def _failed(err: LucidError, index: int) -> dict[str, Any]:
    return {"chunk_index": index, "error": msgspec.to_builtins(problem_of(err))}


def _summary(info: Any) -> dict[str, Any]:
    return {
        "session_id": str(uuid.UUID(bytes=info.session)),
        "state": info.state,
        "size": info.size,
        "chunks": info.chunks,
        "plaintext_bytes": info.plaintext_bytes,
        "compression": info.compression,
        "owner_uid": info.owner_uid,
        "label": info.label,
        "chunk_size": info.chunk_size,
    }


def _binary_batch(body: bytes | bytearray) -> list[tuple[int, memoryview]]:
    items: list[tuple[int, memoryview]] = []
    view, offset = memoryview(body), 0
    while offset < len(body):
        if len(body) - offset < BATCH_ITEM_HEAD.size:
            raise HttpError("bad_request", f"the batch body is cut at byte {offset}")
        index, length = BATCH_ITEM_HEAD.unpack_from(body, offset)
        offset += BATCH_ITEM_HEAD.size
        if len(body) - offset < length:
            raise HttpError("bad_request", f"chunk {index} of the batch is cut short")
        items.append((index, view[offset : offset + length]))
        offset += length
    return items


def _decode(raw: bytes | bytearray, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as err:
        raise HttpError("bad_request", f"the JSON body is not as documented: {err}") from None
    except msgspec.DecodeError:
        raise HttpError("bad_request", "the body is not JSON") from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError("bad_request", "data is not base64") from None


def _base64_size(nbytes: int) -> int:
    return (nbytes + 2) // 3 * 4


def _required(request: Request, name: str) -> str:
    value = request.query(name)
    if value is None:
        raise HttpError("bad_request", f"the query needs {name}=")
    return value


def _index(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise HttpError("bad_request", f"{text[:40]!r} is not a chunk index (0 or more)")
    return int(text)


def _session_id(text: str) -> bytes:
    try:
        return parse_session_id(text)
    except ValueError:
        raise HttpError("bad_request", f"{text[:64]!r} is not a session id (a UUID)") from None


def _session_in(request: Request) -> str | None:
    found = re.search(r"/sessions/([0-9a-fA-F-]{36})", request.path)
    return found[1].lower() if found else request.query("session_id")


def _own_uid() -> int:
    return os.geteuid()
