"""The asyncio connection the asyncio front ends drive their cores over (layer 4).

:meth:`AsyncLink.open` connects (after the trust checks of :mod:`lucidd.client.ids`), asks
for ``ActAs`` first when told to, and starts the reader task that hands each result to the
future of the call it answers. :mod:`lucidd.client.aio` holds the clients built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, cast

from lucidd.client.core import RECV_SIZE, Buffer, Core, Key, ResultT
from lucidd.client.ids import START_HINT, check_peer, trusted_peer_uids, unavailable_error
from lucidd.client.shared_memory import fds_of
from lucidd.errors import LucidError, RequestTimeoutError, UnavailableError, UntrustedSocketError


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A call cancelled by its caller leaves a future nobody awaits; fetching its exception
    # keeps asyncio from logging "exception was never retrieved" for it.
    if not future.cancelled():
        future.exception()


async def open_unix(
    path: Path, timeout: float | None, explicit: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect as the blocking link does: folder checked first, the peer before any send."""
    trusted = trusted_peer_uids(path, explicit)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
    except TimeoutError:
        raise UnavailableError(
            f"cannot connect to lucidd at {path}: timed out; {START_HINT}", path=str(path)
        ) from None
    except OSError as exc:
        raise unavailable_error(path, exc) from None
    try:
        check_peer(writer.get_extra_info("socket"), path, trusted)
    except UntrustedSocketError:
        writer.close()
        raise
    return reader, writer


async def _act_as(
    core: Core[ResultT],
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    uid: int,
    path: Path,
    timeout: float | None,
) -> None:
    """Send the connection's ActAs and read until it is answered; raise a refusal (the
    caller closes the stream). Runs before the reader task starts, so nothing else is sent or
    read meanwhile."""
    reader, writer = streams
    writer.write(core.act_as(uid))
    try:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(OSError):  # a refusal closes it: read the reply
                await writer.drain()
            while core.act_as_pending:
                data = await reader.read(RECV_SIZE)
                if data:
                    core.receive_data(data)
                else:
                    core.connection_lost(f"lucidd at {path} closed the connection")
    except TimeoutError:
        core.abort(
            RequestTimeoutError, f"no answer to act_as from lucidd at {path} for {timeout} s"
        )
    except OSError as exc:
        core.connection_lost(f"connection to lucidd at {path} failed: {exc.strerror or exc}")
    error = core.act_as_error
    if error is not None:
        raise error


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _recvmsg(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One ``recvmsg`` of a non-blocking socket, awaiting readability; bytes and fds."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(4 * 4))
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
            continue
        return data, fds_of(ancillary)


async def exchange_with_fds(
    core: Core[ResultT],
    streams: Streams,
    frame: bytes,
    answered: Callable[[], bool],
    *,
    path: Path,
    timeout: float | None,
) -> list[int]:
    """Send ``frame`` and read until ``answered()``, keeping the descriptors the replies
    carried (``SCM_RIGHTS``, which a stream's reads would drop); returns them (the caller
    owns them). Runs before the reader task starts, with the transport's reading paused, so
    nothing else reads the socket meanwhile; failures end up in the core."""
    _, writer = streams
    transport = cast(asyncio.Transport, writer.transport)  # a Unix stream's: reads too
    raw = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    raw.setblocking(False)
    fds: list[int] = []
    transport.pause_reading()
    try:
        writer.write(frame)
        async with asyncio.timeout(timeout):
            await writer.drain()
            while not answered() and not core.broken:
                data, got = await _recvmsg(raw)
                fds += got
                if data:
                    core.receive_data(data)
                else:
                    core.connection_lost(f"lucidd at {path} closed the connection")
    except TimeoutError:
        core.abort(RequestTimeoutError, f"no answer from lucidd at {path} for {timeout} s")
    except OSError as exc:
        core.connection_lost(f"connection to lucidd at {path} failed: {exc.strerror or exc}")
    finally:
        raw.close()
        if not transport.is_closing():
            transport.resume_reading()
    return fds


class AsyncLink(Generic[ResultT]):
    """One asyncio connection driving a core; a reader task resolves futures by key."""

    def __init__(
        self,
        path: Path,
        timeout: float | None,
        core: Core[ResultT],
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.core = core
        self._reader, self._writer = streams
        self._futures: dict[Key, asyncio.Future[Any]] = {}
        #: Sees every result first, whether or not its caller still waits for it.
        self.on_result: Callable[[ResultT], None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        path: Path,
        timeout: float | None,
        core: Core[ResultT],
        explicit: bool,
        act_as: int | None,
        *,
        setup: Callable[[Streams], Awaitable[None]] | None = None,
    ) -> AsyncLink[ResultT]:
        """Connect to ``path``; with ``act_as`` (a uid, see
        :func:`~lucidd.client.core.act_as_uid`), have it answered first (a refusal is raised);
        then ``setup`` runs on the streams before the reader task starts."""
        streams = await open_unix(path, timeout, explicit)
        try:
            if act_as is not None:
                await _act_as(core, streams, act_as, path, timeout)
            if setup is not None:
                await setup(streams)
        except BaseException:
            streams[1].close()
            raise
        return cls(path, timeout, core, streams)

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
            if self.on_result is not None:
                self.on_result(result)
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
