"""The gateway's connections to the daemon (layer 4): one pair per user, reused.

Every HTTP request of a user goes over that user's one data and one control connection
(pipelined: the clients resolve each reply to its own call), opened with ``act_as`` so the
daemon applies its per-user rules to the user, not to the gateway. A user's connections are
opened on first use, closed when they break (the next request opens new ones) and when the
most recently used :data:`MAX_USERS` users no longer include them. A user with
``max_requests`` requests in progress is told ``too_many_requests`` (429) for the next one,
so no user can take every connection slot of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final, TypeVar

from lucidd.client import AsyncControlClient, AsyncDataClient
from lucidd.errors import BadFrameError, RequestTimeoutError, UnavailableError
from lucidd.http.problems import HttpError

T = TypeVar("T")
C = TypeVar("C", AsyncControlClient, AsyncDataClient)

MAX_USERS: Final = 64


class _UserLinks:
    def __init__(self) -> None:
        self.control: AsyncControlClient | None = None
        self.data: AsyncDataClient | None = None
        self.lock = asyncio.Lock()
        self.in_progress = 0

    async def close(self) -> None:
        for client in (self.control, self.data):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        self.control = self.data = None


class DaemonLink:
    """Connections to the daemon at ``runtime_dir``, by uid."""

    def __init__(self, runtime_dir: Path, *, max_requests: int, timeout: float) -> None:
        self.runtime_dir = runtime_dir
        self.max_requests = max_requests
        self.timeout = timeout
        self._users: OrderedDict[int, _UserLinks] = OrderedDict()

    @contextlib.asynccontextmanager
    async def request(self, uid: int) -> AsyncIterator[None]:
        """Count one request of ``uid`` in progress (429 beyond ``max_requests``)."""
        links = await self._links(uid)
        if links.in_progress >= self.max_requests:
            raise HttpError(
                "too_many_requests",
                f"{self.max_requests} requests of this user are in progress already",
            )
        links.in_progress += 1
        try:
            yield
        finally:
            links.in_progress -= 1

    async def control(self, uid: int, call: Callable[[AsyncControlClient], Awaitable[T]]) -> T:
        """Run ``call`` on ``uid``'s control connection (reopened once if it had broken)."""
        return await self._with(uid, "control", call)

    async def data(self, uid: int, call: Callable[[AsyncDataClient], Awaitable[T]]) -> T:
        """Run ``call`` on ``uid``'s data connection (reopened once if it had broken)."""
        return await self._with(uid, "data", call)

    async def close(self) -> None:
        for links in self._users.values():
            await links.close()
        self._users.clear()

    async def _links(self, uid: int) -> _UserLinks:
        links = self._users.get(uid)
        if links is None:
            links = self._users[uid] = _UserLinks()
            while len(self._users) > MAX_USERS:
                _, oldest = next(iter(self._users.items()))
                if oldest.in_progress:
                    break  # busy users stay; the table shrinks once they are done
                self._users.popitem(last=False)
                await oldest.close()
        self._users.move_to_end(uid)
        return links

    async def _with(self, uid: int, kind: str, call: Callable[[C], Awaitable[T]]) -> T:
        links = await self._links(uid)
        for attempt in (1, 2):
            client: C = await self._client(links, uid, kind)
            try:
                return await call(client)
            except (RequestTimeoutError, BadFrameError):
                await self._drop(links, kind, client)  # the client broke the connection
                raise
            except UnavailableError:
                # The connection broke (a daemon restart, an idle timeout): drop it; try a
                # fresh one once. What was sent may have been stored: puts of the same bytes
                # are acknowledged again, and the other calls are reads or idempotent.
                await self._drop(links, kind, client)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _client(self, links: _UserLinks, uid: int, kind: str) -> C:
        async with links.lock:
            if kind == "control":
                if links.control is None:
                    links.control = await AsyncControlClient.connect(
                        self.runtime_dir, timeout=self.timeout, act_as=uid
                    )
                return links.control  # type: ignore[return-value]
            if links.data is None:
                links.data = await AsyncDataClient.connect(
                    self.runtime_dir, timeout=self.timeout, act_as=uid
                )
            return links.data  # type: ignore[return-value]

    async def _drop(self, links: _UserLinks, kind: str, client: object) -> None:
        async with links.lock:
            if kind == "control" and links.control is client:
                links.control = None
            elif kind == "data" and links.data is client:
                links.data = None
        with contextlib.suppress(Exception):
            await client.close()  # type: ignore[attr-defined]
