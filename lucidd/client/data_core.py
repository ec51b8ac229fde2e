"""The data socket's sans-IO core: :class:`DataCore` (layer 4).

It registers chunks and batches (request id, header frame), matches each ``Ack`` or ``Error``
to the chunk it answers and returns one :class:`~lucidd.client.core.ChunkResult` per chunk; the
front ends send the frames and the payloads. The loop it shares with the control core is
:class:`~lucidd.client.core.Core`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from lucidd import protocol as p
from lucidd.client.core import ChunkResult, Core, check_index_arg, wire_error
from lucidd.client.ids import SessionRef, session_bytes
from lucidd.errors import InternalError, LucidError


class DataCore(Core[ChunkResult]):
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
        super().__init__(p.data_reply_decoder())
        # req -> {index: session} of the chunks not yet answered.
        self._pending: dict[int, dict[int, bytes]] = {}
        self._count = 0
        self._share: int | None = None  # req of the unanswered ShareMemory
        #: The region's size once the daemon answered ShareMemory (0: none, or refused).
        self.shared_size = 0
        #: Why the daemon refused ShareMemory (the connection then stays on the socket).
        self.share_error: LucidError | None = None

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
        session = session_bytes(session)
        check_index_arg("index", index)
        check_index_arg("length", length)
        req = self._next_req()
        frame = p.encode_frame(p.Chunk(req=req, session=session, index=index, length=length))
        self._pending[req] = {index: session}
        self._count += 1
        return req, frame

    def share_memory(self, size: int) -> bytes:
        """Register ``ShareMemory(size)``, the first request after any ActAs; its frame.

        Feed replies until :attr:`share_pending` is False; then :attr:`shared_size` (the
        region's fd came with the reply, in ancillary data the link reads) or
        :attr:`share_error` says how it went.
        """
        check_index_arg("size", size)
        if self._count:
            raise ValueError("share_memory must come before the first chunk")
        req = self._next_req()
        self._share = req
        return p.encode_frame(p.ShareMemory(req=req, size=size))

    @property
    def share_pending(self) -> bool:
        return self._share is not None

    def shared_chunk(
        self, session: SessionRef, index: int, offset: int, length: int
    ) -> tuple[int, bytes]:
        """Register a chunk whose payload is at ``offset`` of the region; its req and frame
        (nothing follows it)."""
        session = session_bytes(session)
        check_index_arg("index", index)
        check_index_arg("length", length)
        req = self._next_req()
        frame = p.encode_frame(
            p.SharedChunk(req=req, session=session, index=index, offset=offset, length=length)
        )
        self._pending[req] = {index: session}
        self._count += 1
        return req, frame

    def batch(self, session: SessionRef, items: Sequence[tuple[int, int]]) -> tuple[int, bytes]:
        """Register a batch of ``(index, length)`` items; return its req and ``Batch`` frame.

        The payloads follow the frame concatenated in the order of ``items``. ValueError for
        an empty batch or a repeated index (its replies could not be told apart).
        """
        session = session_bytes(session)
        if not items:
            raise ValueError("a batch needs at least one chunk")
        indices = [index for index, _ in items]
        lengths = [length for _, length in items]
        for index, length in items:
            check_index_arg("index", index)
            check_index_arg("length", length)
        if len(set(indices)) != len(indices):
            raise ValueError("a batch must not repeat an index")
        req = self._next_req()
        frame = p.encode_frame(p.Batch(req=req, session=session, indices=indices, lengths=lengths))
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
        if self._share is not None and message.req == self._share:
            self._share = None
            if isinstance(message, p.MemoryShared):
                self.shared_size = message.size
            elif isinstance(message, p.Error):
                self.share_error = wire_error(message, None, None)
            else:
                return self._fail_all(InternalError, f"lucidd answered share_memory with {message}")
            return []
        if isinstance(message, p.MemoryShared):
            return self._fail_all(InternalError, "lucidd sent an unexpected MemoryShared")
        items = self._pending.get(message.req)
        if isinstance(message, p.Ack):
            if items is None or items.get(message.index) != message.session:
                return self._fail_all(
                    InternalError,
                    f"lucidd acknowledged a chunk not in flight (req {message.req}, "
                    f"index {message.index})",
                )
            self._take(message.req, message.index)
            return [ChunkResult(message.req, message.index, message)]
        assert isinstance(message, p.Error)  # the decoder's union is Ack | Error
        if items is None:
            # Not tied to a request we know: the daemon closes the connection after it.
            failed = [
                ChunkResult(req, index, wire_error(message, session, index))
                for req, index, session in self._items()
            ]
            self._pending.clear()
            self._count = 0
            self._broken = f"lucidd closed the connection: {message.code}: {message.message}"
            return failed
        indices = [message.index] if message.index in items else list(items)
        return [
            ChunkResult(
                message.req, index, wire_error(message, self._take(message.req, index), index)
            )
            for index in indices
        ]

    def _items(self) -> Iterator[tuple[int, int, bytes]]:
        for req, items in self._pending.items():
            for index, session in items.items():
                yield req, index, session

    def _drop_pending(self, error_type: type[LucidError], message: str) -> list[ChunkResult]:
        if self._share is not None:
            self._share = None
            self.share_error = error_type(message)
        failed = [
            ChunkResult(req, index, error_type(message, session=session, index=index))
            for req, index, session in self._items()
        ]
        self._pending.clear()
        self._count = 0
        return failed
