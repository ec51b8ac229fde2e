"""One ``put_many``/``put_file`` of the blocking data client (layer 4): it places payloads in
the shared region (or sends them over the socket), batches the headers of one wait into one
``sendmsg``, collects the answers and frees the region's space as they arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from lucidd.client.core import AckCollector, ChunkResult, Key
from lucidd.client.data_core import DataCore
from lucidd.client.ids import SessionRef
from lucidd.client.shared_memory import ClientRegion
from lucidd.client.sync_link import SyncLink

#: SharedChunk headers written at most in one ``sendmsg`` (more go out as they are made).
HEADERS_PER_SEND: Final = 16


class Sender:
    """One ``put_many``: places payloads, batches headers, frees space as acks arrive."""

    def __init__(
        self,
        link: SyncLink[ChunkResult],
        core: DataCore,
        region: ClientRegion | None,
        collector: AckCollector,
    ) -> None:
        self._link = link
        self._core = core
        self._region = region
        self.collector = collector
        self.keys: list[Key] = []
        self._offsets: dict[Key, int] = {}  # chunks in the region, not yet answered
        self._headers: list[bytes] = []  # SharedChunk frames not yet written

    def wait_below(self, window: int) -> bool:
        """Wait until fewer than ``window`` chunks are unanswered; False after an error."""
        while self._core.pending >= window and self.collector.error is None:
            self._receive()
        return self.collector.error is None

    def put(self, session: SessionRef, index: int, view: memoryview) -> bool:
        """Send one chunk (through the region when it fits); False after an error."""
        offset = self._place(view)
        if self.collector.error is not None:
            return False
        if offset is None:
            self._flush()
            req, header = self._core.chunk(session, index, view.nbytes)
            self.keys.append((req, index))
            self._collect(self._link.send((header, view)))
            return True
        req, header = self._core.shared_chunk(session, index, offset, view.nbytes)
        self._queue(req, index, offset, header)
        return True

    def put_read(
        self,
        session: SessionRef,
        index: int,
        read_into: Callable[[memoryview], int | None],
        chunk_size: int,
    ) -> int | None:
        """Read up to ``chunk_size`` bytes with ``read_into`` and send them as chunk
        ``index``; their length, or None at the end of the input (or after an error)."""
        offset = self._reserve(chunk_size)
        if self.collector.error is not None:
            return None
        if offset is None:
            piece = bytearray(chunk_size)
            length = _read_full(read_into, memoryview(piece))
            if not length:
                return None
            self.put(session, index, memoryview(piece)[:length])
            return length
        assert self._region is not None
        with self._region.view(offset, chunk_size) as space:
            length = _read_full(read_into, space)
        if not length:
            self._region.free(offset)
            return None
        req, header = self._core.shared_chunk(session, index, offset, length)
        self._queue(req, index, offset, header)
        return length

    def _queue(self, req: int, index: int, offset: int, header: bytes) -> None:
        self.keys.append((req, index))
        self._offsets[(req, index)] = offset
        self._headers.append(header)
        if len(self._headers) >= HEADERS_PER_SEND:
            self._flush()

    def _place(self, view: memoryview) -> int | None:
        offset = self._reserve(view.nbytes)
        if offset is not None:
            assert self._region is not None
            with self._region.view(offset, view.nbytes) as space:
                space[:] = view
        return offset

    def _reserve(self, length: int) -> int | None:
        """Space in the region for ``length`` bytes, waiting for answers to free some; None
        when it cannot fit (or after an error): the chunk goes over the socket."""
        region = self._region
        if region is None or not region.fits(length):
            return None
        while (offset := region.reserve(length)) is None and self._core.pending:
            if self.collector.error is not None:
                return None
            self._receive()  # no room until some chunk is answered
        return offset

    def drain(self) -> None:
        while self._core.pending:
            self._receive()

    def _receive(self) -> None:
        self._flush()
        self._collect(self._link.receive())

    def _flush(self) -> None:
        if self._headers:
            headers, self._headers = self._headers, []
            self._collect(self._link.send(headers))

    def _collect(self, results: list[ChunkResult]) -> None:
        region = self._region
        if region is not None and self._offsets:
            for result in results:
                offset = self._offsets.pop(result.key, None)
                if offset is not None:
                    region.free(offset)
        self.collector.add(results)

    def release_all(self) -> None:
        """Whatever is still placed is abandoned with the connection: free its space."""
        region = self._region
        if region is not None:
            for offset in self._offsets.values():
                region.free(offset)
        self._offsets.clear()


def _read_full(read_into: Callable[[memoryview], int | None], space: memoryview) -> int:
    """Fill ``space`` but at the end of the input (a pipe gives short reads): chunk
    boundaries must not depend on how the bytes arrived, or a resume would not match."""
    filled = 0
    while filled < space.nbytes:
        with space[filled:] as rest:
            count = read_into(rest)
        if not count:
            break
        filled += count
    return filled
