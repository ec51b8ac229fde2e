"""The asyncio front ends: :class:`AsyncDataClient` and :class:`AsyncControlClient` (layer 4).

Each drives a core (:mod:`lucidd.client.data_core`, :mod:`lucidd.client.control_core`) over
asyncio streams (:class:`~lucidd.client.async_link.AsyncLink`); any number of concurrent calls
are pipelined on one connection, and a reader task hands each reply to the call it answers.
The connection contract (what a broken connection means) is in :mod:`lucidd.client`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from lucidd.client.async_link import AsyncLink, Streams, exchange_with_fds
from lucidd.client.control_core import ControlCall, ControlCore
from lucidd.client.core import (
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    AckCollector,
    Buffer,
    ChunkResult,
    ControlResult,
    Key,
    act_as_uid,
    check_window,
    flat_view,
)
from lucidd.client.data_core import DataCore
from lucidd.client.ids import (
    CONTROL_SOCKET_NAME,
    DATA_SOCKET_NAME,
    SessionRef,
    named_explicitly,
    resolve_socket_path,
)
from lucidd.client.shared_memory import ClientRegion, close_fds, shared_memory_size
from lucidd.errors import LucidError
from lucidd.protocol import (
    Ack,
    AnchorReply,
    CheckpointReply,
    CheckReply,
    ChunkReply,
    ConsistencyProofReply,
    FinalizeReply,
    HealthReply,
    InclusionProofReply,
    KeysChanged,
    KeysReply,
    MetricsReply,
    ReceiptReply,
    RemoteHost,
    RootReply,
    SessionSummary,
    SigningKeyReply,
)

T = TypeVar("T")


class AsyncDataClient:
    """The asyncio counterpart of :class:`DataClient`; create it with :meth:`connect`.

    Any number of coroutines may ``await put(...)`` on one client at once: their chunks are
    pipelined on the one connection and each reply resolves its own call. ``timeout`` bounds
    each wait for a reply (or for room to send); when it passes the connection breaks.
    """

    def __init__(
        self, link: AsyncLink[ChunkResult], core: DataCore, region: ClientRegion | None = None
    ) -> None:
        """Internal: use :meth:`connect`."""
        self._link = link
        self._core = core
        self.path = link.path
        self._region = region
        self._offsets: dict[Key, int] = {}  # chunks in the region, not yet answered
        link.on_result = self._free_space

    @property
    def transport(self) -> str:
        """As :attr:`DataClient.transport`."""
        return "memfd" if self._region is not None else "socket"

    def _free_space(self, result: ChunkResult) -> None:
        # On the daemon's answer, not on the caller's future: a cancelled put's chunk may
        # still be read by a worker, so its space is not reused before the answer.
        offset = self._offsets.pop(result.key, None)
        if offset is not None and self._region is not None:
            self._region.free(offset)

    @classmethod
    async def connect(
        cls,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        act_as: int | None = None,
        shared_memory: int | bool = True,
    ) -> AsyncDataClient:
        """Connect to the data socket (UnavailableError if it cannot be reached); ``act_as``
        and ``shared_memory`` as for :class:`DataClient` (answered before this returns; an
        ``act_as`` refusal is raised)."""
        uid = act_as_uid(act_as)
        size = shared_memory_size(shared_memory)
        socket_path = resolve_socket_path(DATA_SOCKET_NAME, runtime_dir, path)
        core = DataCore()
        explicit = named_explicitly(runtime_dir, path)
        regions: list[ClientRegion] = []

        async def share_memory(streams: Streams) -> None:
            fds = await exchange_with_fds(
                core,
                streams,
                core.share_memory(size),
                lambda: not core.share_pending,
                path=socket_path,
                timeout=timeout,
            )
            if core.shared_size and len(fds) == 1 and not core.broken:
                regions.append(ClientRegion(fds[0], core.shared_size))
            else:
                close_fds(fds)

        link = await AsyncLink.open(
            socket_path, timeout, core, explicit, uid, setup=share_memory if size else None
        )
        if core.broken:  # a daemon that does not know ShareMemory closed it: again without
            await link.close()
            core = DataCore()
            link = await AsyncLink.open(socket_path, timeout, core, explicit, uid)
            regions.clear()
        return cls(link, core, regions[0] if regions else None)

    async def _start(
        self, session: SessionRef, index: int, payload: Buffer
    ) -> tuple[Key, asyncio.Future[Any]]:
        view = flat_view(payload)
        region = self._region
        # No room in the region now (concurrent puts fill it): this one takes the socket.
        offset = region.place(view) if region is not None and region.fits(view.nbytes) else None
        if offset is None:
            req, header = self._core.chunk(session, index, view.nbytes)
            buffers: tuple[Buffer, ...] = (header, view)
        else:
            req, header = self._core.shared_chunk(session, index, offset, view.nbytes)
            self._offsets[(req, index)] = offset
            buffers = (header,)
        (future,) = self._link.expect([(req, index)])
        await self._link.send(buffers)
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
        check_window(window)
        collector = AckCollector(on_ack)
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
        self, inflight: dict[asyncio.Future[Any], Key], collector: AckCollector
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
        views = [(index, flat_view(payload)) for index, payload in chunks]
        req, header = self._core.batch(session, [(index, view.nbytes) for index, view in views])
        keys: list[Key] = [(req, index) for index, _ in views]
        futures = self._link.expect(keys)
        await self._link.send([header, *(view for _, view in views)])
        collector = AckCollector(None)
        for key, future in zip(keys, futures, strict=True):
            try:
                collector.record(key, await self._link.wait(future))
            except LucidError as exc:
                collector.record(key, exc)
        return collector.result(keys)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with UnavailableError."""
        await self._link.close()
        if self._region is not None:
            self._region.close()
            self._region = None

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

    def __init__(self, link: AsyncLink[ControlResult], core: ControlCore) -> None:
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
        act_as: int | None = None,
    ) -> AsyncControlClient:
        """Connect to the control socket (UnavailableError if it cannot be reached); ``act_as``
        as for :class:`ControlClient` (answered before this returns; a refusal is raised)."""
        uid = act_as_uid(act_as)
        socket_path = resolve_socket_path(CONTROL_SOCKET_NAME, runtime_dir, path)
        core = ControlCore()
        explicit = named_explicitly(runtime_dir, path)
        return cls(await AsyncLink.open(socket_path, timeout, core, explicit, uid), core)

    async def _call(self, call: ControlCall[T]) -> T:
        """Send the request the core registered and wait for its reply."""
        (future,) = self._link.expect([(call.req, None)])
        await self._link.send((call.frame,))
        try:
            outcome = await self._link.wait(future)
        except LucidError as exc:
            outcome = exc
        return call.result(outcome)

    async def health(self) -> HealthReply:
        """The daemon's status and its processes."""
        return await self._call(self._core.health())

    async def metrics(self) -> dict[str, float]:
        """Counters and gauges by name."""
        return await self._call(self._core.metrics())

    async def metrics_reply(self) -> MetricsReply:
        """The whole ``metrics_reply``: counters and gauges (``metrics``) and histograms
        (``histograms``: :class:`~lucidd.protocol.Histogram` by name), taken at once."""
        return await self._call(self._core.metrics_reply())

    async def config(self) -> dict[str, Any]:
        """The daemon's effective configuration (never secrets)."""
        return await self._call(self._core.config())

    async def open_session(
        self,
        compression: str | None = None,
        session: SessionRef | None = None,
        *,
        label: str | None = None,
        chunk_size: int | None = None,
    ) -> bytes:
        """As :meth:`ControlClient.open_session`."""
        call = self._core.open_session(compression, session, label=label, chunk_size=chunk_size)
        return await self._call(call)

    async def sessions(self) -> list[SessionSummary]:
        """Every session the daemon holds."""
        return await self._call(self._core.sessions())

    async def info(self, session: SessionRef) -> SessionSummary:
        """One session's summary (UnknownSessionError if there is none)."""
        return await self._call(self._core.info(session))

    async def root(self, session: SessionRef, size: int | None = None) -> RootReply:
        """As :meth:`ControlClient.root`."""
        return await self._call(self._core.root(session, size))

    async def inclusion_proof(
        self, session: SessionRef, index: int, size: int | None = None
    ) -> InclusionProofReply:
        """As :meth:`ControlClient.inclusion_proof`."""
        return await self._call(self._core.inclusion_proof(session, index, size))

    async def consistency_proof(
        self, session: SessionRef, size1: int, size2: int | None = None
    ) -> ConsistencyProofReply:
        """As :meth:`ControlClient.consistency_proof`."""
        return await self._call(self._core.consistency_proof(session, size1, size2))

    async def finalize(self, session: SessionRef) -> FinalizeReply:
        """As :meth:`ControlClient.finalize`."""
        return await self._call(self._core.finalize(session))

    async def signing_key(self) -> SigningKeyReply:
        """As :meth:`ControlClient.signing_key`."""
        return await self._call(self._core.signing_key())

    async def checkpoint(self, session: SessionRef, size: int | None = None) -> CheckpointReply:
        """As :meth:`ControlClient.checkpoint`."""
        return await self._call(self._core.checkpoint(session, size))

    async def anchor(self) -> AnchorReply:
        """As :meth:`ControlClient.anchor`."""
        return await self._call(self._core.anchor())

    async def receipt(self, session: SessionRef, index: int) -> ReceiptReply:
        """As :meth:`ControlClient.receipt`."""
        return await self._call(self._core.receipt(session, index))

    async def remote_sessions(self) -> list[RemoteHost]:
        """As :meth:`ControlClient.remote_sessions`."""
        return await self._call(self._core.remote_sessions())

    async def list_keys(self) -> KeysReply:
        """As :meth:`ControlClient.list_keys`."""
        return await self._call(self._core.list_keys())

    async def rotate_keys(self, *, new: bool = False) -> KeysChanged:
        """As :meth:`ControlClient.rotate_keys`."""
        return await self._call(self._core.rotate_keys(new=new))

    async def rewrap_keys(self) -> KeysChanged:
        """As :meth:`ControlClient.rewrap_keys`."""
        return await self._call(self._core.rewrap_keys())

    async def retire_key(self, key_id: int) -> KeysChanged:
        """As :meth:`ControlClient.retire_key`."""
        return await self._call(self._core.retire_key(key_id))

    async def read_chunk(self, session: SessionRef, index: int) -> ChunkReply:
        """As :meth:`ControlClient.read_chunk`."""
        return await self._call(self._core.read_chunk(session, index))

    async def shred(self, session: SessionRef) -> None:
        """As :meth:`ControlClient.shred`."""
        await self._call(self._core.shred(session))

    async def check(self, session: SessionRef) -> CheckReply:
        """As :meth:`ControlClient.check`."""
        return await self._call(self._core.check(session))

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
