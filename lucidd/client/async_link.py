"""The asyncio connection the asyncio front ends drive their cores over (layer 4).

:meth:`AsyncLink.open` connects (after the trust checks of :mod:`lucidd.client.ids`), asks
for ``ActAs`` first when told to, and starts the reader task that hands each result to the
future of the call it answers. :mod:`lucidd.client.aio` holds the clients built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Generic

from lucidd.client.core import RECV_SIZE, Buffer, Core, Key, ResultT
from lucidd.client.ids import START_HINT, check_peer, trusted_peer_uids, unavailable_error
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
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        path: Path,
        timeout: float | None,
        core: Core[ResultT],
        explicit: bool,
        act_as: int | None,
    ) -> AsyncLink[ResultT]:
        """Connect to ``path``; with ``act_as`` (a uid, see
        :func:`~lucidd.client.core.act_as_uid`), have it answered first (a refusal is raised)."""
        streams = await open_unix(path, timeout, explicit)
        if act_as is not None:
            try:
                await _act_as(core, streams, act_as, path, timeout)
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
