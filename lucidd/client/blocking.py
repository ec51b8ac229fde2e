"""The blocking front ends: :class:`DataClient`, :class:`ControlClient` and
:func:`put_until_acked` (layer 4).

Each drives a core (:mod:`lucidd.client.data_core`, :mod:`lucidd.client.control_core`) over
one blocking Unix socket (:class:`~lucidd.client.sync_link.SyncLink`); the connection contract
(what a broken connection means) is in :mod:`lucidd.client`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

from lucidd.client.control_core import ControlCall, ControlCore
from lucidd.client.core import (
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    AckCollector,
    Buffer,
    act_as_uid,
    check_index_arg,
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
from lucidd.client.sender import Sender
from lucidd.client.shared_memory import ClientRegion, close_fds, shared_memory_size
from lucidd.client.sync_link import SyncLink
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

#: Back-off between resend rounds of :func:`put_until_acked` (doubles up to the maximum).
RESEND_BACKOFF_S: Final = 0.05
RESEND_BACKOFF_MAX_S: Final = 2.0

T = TypeVar("T")


class Readable(Protocol):
    """What :meth:`DataClient.put_file` reads from (a binary file, a socket's makefile)."""

    def readinto(self, buffer: memoryview, /) -> int | None:
        """Fill ``buffer``; bytes read (0 at the end), None when nothing is ready."""


class DataClient:
    """Sends chunks on lucidd's data socket over one blocking connection.

    ``path`` (the socket itself) wins over ``runtime_dir`` (its folder, default
    :func:`default_runtime_dir`). ``timeout`` bounds each wait for progress (None: forever).
    Raises :class:`~lucidd.errors.UnavailableError` when the socket cannot be reached.
    Errors the daemon reports are raised as their :class:`~lucidd.errors.LucidError`
    subclass, with ``context["session"]`` and ``context["index"]`` naming the chunk.

    ``act_as`` (a uid; for a gateway running as root or as the daemon's user): the whole
    connection acts as that user, whose sessions and rules apply (``docs/security.md``
    *Delegation*). Asked for and answered before the constructor returns; a refusal is
    raised as its LucidError (``forbidden``, exit 77). Nothing is asked when it is this
    process's own effective uid. ValueError for a uid outside ``0..2**32-2``.

    ``shared_memory`` (True: :data:`~lucidd.client.shared_memory.DEFAULT_SIZE`, a size, or
    False): ask the daemon for a shared-memory region at connect, so payloads are written
    once into memory the workers seal from (docs/protocol.md *Shared memory*). Where the
    daemon refuses, or a payload does not fit, chunks go over the socket; :attr:`transport`
    says which path the connection has.
    """

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        act_as: int | None = None,
        shared_memory: int | bool = True,
    ) -> None:
        uid = act_as_uid(act_as)
        self.path = resolve_socket_path(DATA_SOCKET_NAME, runtime_dir, path)
        self._core = DataCore()
        explicit = named_explicitly(runtime_dir, path)
        self._connect = functools.partial(
            SyncLink, self.path, timeout, explicit=explicit, act_as=uid
        )
        self._link = self._connect(self._core)
        self._region: ClientRegion | None = None
        size = shared_memory_size(shared_memory)
        if size:
            self._region = self._share_memory(size)

    @property
    def transport(self) -> str:
        """``"memfd"``: payloads go through the shared region; ``"socket"``: over the socket."""
        return "memfd" if self._region is not None else "socket"

    def _share_memory(self, size: int) -> ClientRegion | None:
        """Ask for a region; None (the socket path) when the daemon refuses or cannot."""
        fds: list[int] = []
        try:
            self._link.send((self._core.share_memory(size),))
            while self._core.share_pending:
                self._link.receive(fds)
        except BaseException:
            close_fds(fds)
            self._link.close()
            raise
        if self._core.broken:
            # A daemon that does not know ShareMemory closes the connection: start again
            # without it.
            close_fds(fds)
            self._core = DataCore()
            self._link = self._connect(self._core)
            return None
        if self._core.shared_size and len(fds) == 1:
            return ClientRegion(fds[0], self._core.shared_size)
        close_fds(fds)
        return None

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
        most). With shared memory each payload is copied into the region and only headers
        are sent (those of one wait go out in one ``sendmsg``); otherwise each header goes out
        with its payload in one ``sendmsg`` (no copy). ``on_ack`` sees each ack as it arrives.
        Returns the acks in the order of ``chunks``.

        On the first error no further chunk is sent, the chunks in flight are drained, then
        that error is raised (every chunk acked before is durable; ``on_ack`` saw them). If
        anything else escapes while chunks are in flight (a bad argument, an exception from
        ``chunks`` or ``on_ack``, KeyboardInterrupt), the connection is closed.
        """
        check_window(window)

        def send(sender: Sender) -> None:
            for index, payload in chunks:
                if not sender.wait_below(window):
                    break
                if not sender.put(session, index, flat_view(payload)):
                    break

        return self._drive(send, on_ack)

    def _drive(
        self, send: Callable[[Sender], None], on_ack: Callable[[Ack], None] | None
    ) -> list[Ack]:
        """Run ``send`` on a fresh :class:`Sender`, drain what is in flight, return the acks
        in order (or raise the first error); close the connection if anything else escapes
        while chunks are in flight."""
        sender = Sender(self._link, self._core, self._region, AckCollector(on_ack))
        try:
            send(sender)
            sender.drain()
        except BaseException:
            if self._core.pending:
                self._link.close()
            raise
        finally:
            sender.release_all()
        return sender.collector.result(sender.keys)

    def put_file(
        self,
        session: SessionRef,
        source: Readable,
        chunk_size: int,
        *,
        start: int = 0,
        window: int = DEFAULT_WINDOW,
        on_chunk: Callable[[int, int], None] | None = None,
        on_ack: Callable[[Ack], None] | None = None,
    ) -> list[Ack]:
        """Send what ``source`` holds from its position on, in chunks of ``chunk_size`` bytes
        numbered from ``start``, as :meth:`put_many` does.

        With shared memory each chunk is read (``readinto``) straight into the region: the
        payload is copied once, from the page cache to where the worker seals it. (Reading
        into the region rather than mapping the file: a mapped file that someone truncates
        meanwhile kills the reader with SIGBUS.) ``on_chunk(index, length)`` runs as each
        chunk is sent.
        """
        check_window(window)
        check_index_arg("chunk_size", chunk_size)

        def send(sender: Sender) -> None:
            index = start
            while sender.wait_below(window):
                length = sender.put_read(session, index, source.readinto, chunk_size)
                if length is None:
                    break
                if on_chunk is not None:
                    on_chunk(index, length)
                index += 1

        return self._drive(send, on_ack)

    def put_batch(self, session: SessionRef, chunks: Sequence[tuple[int, Buffer]]) -> list[Ack]:
        """Send ``(index, payload)`` chunks in one ``Batch`` frame; acks in the given order.

        Each item is answered on its own; once all are, the first error (if any) is raised.
        The daemon bounds the number of items (``too_large`` beyond its ``batch_size``).
        """
        views = [(index, flat_view(payload)) for index, payload in chunks]
        req, header = self._core.batch(session, [(index, view.nbytes) for index, view in views])
        collector = AckCollector(None)
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
        if self._region is not None:
            self._region.close()
            self._region = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def put_until_acked(
    session: SessionRef,
    chunks: Iterable[tuple[int, Buffer]],
    runtime_dir: str | os.PathLike[str] | None = None,
    *,
    window: int = DEFAULT_WINDOW,
    deadline_s: float = 300.0,
    timeout: float | None = DEFAULT_TIMEOUT,
    on_ack: Callable[[Ack], None] | None = None,
    act_as: int | None = None,
) -> dict[int, Ack]:
    """Send every chunk until each one is acknowledged, whatever crashes in between.

    The idempotent-client loop: connect, send every chunk not yet acknowledged (pipelined),
    and on a retryable failure (the daemon is down or restarting, busy, out of disk, a timeout)
    reconnect after a growing pause and resend what is still unacknowledged. Resending is safe:
    an index the daemon already stored with the same bytes is acknowledged again with the same
    leaf hash, never stored twice. Non-retryable errors (different bytes for a stored index, a
    finalized session, a chunk too large) are raised at once. Returns the acks by index; gives
    up with the last error once ``deadline_s`` has passed. ``act_as``: as for
    :class:`DataClient`, on every connection.
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
            with DataClient(runtime_dir, timeout=timeout, act_as=act_as) as client:
                client.put_many(session, sorted(pending.items()), window, on_ack=record)
        except LucidError as err:
            if not err.retryable or time.monotonic() + backoff > deadline:
                raise
            time.sleep(backoff)
            backoff = min(backoff * 2, RESEND_BACKOFF_MAX_S)
    return acks


class ControlClient:
    """Requests on lucidd's control socket over one blocking connection, one at a time.

    Arguments as for :class:`DataClient` (``act_as`` included: sessions opened are then that
    user's, and only what that user may see is shown). Every method raises the
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
        act_as: int | None = None,
    ) -> None:
        uid = act_as_uid(act_as)
        self.path = resolve_socket_path(CONTROL_SOCKET_NAME, runtime_dir, path)
        self._core = ControlCore()
        explicit = named_explicitly(runtime_dir, path)
        self._link = SyncLink(self.path, timeout, self._core, explicit, uid)

    def _call(self, call: ControlCall[T]) -> T:
        """Send the request the core registered and read until its reply comes."""
        try:
            results = self._link.send((call.frame,))
            while True:
                for result in results:
                    if result.req == call.req:
                        return call.result(result.outcome)
                results = self._link.receive()
        except BaseException:
            if self._core.pending:
                self._link.close()
            raise

    def health(self) -> HealthReply:
        """The daemon's status and its processes."""
        return self._call(self._core.health())

    def metrics(self) -> dict[str, float]:
        """Counters and gauges by name."""
        return self._call(self._core.metrics())

    def metrics_reply(self) -> MetricsReply:
        """The whole ``metrics_reply``: counters and gauges (``metrics``) and histograms
        (``histograms``: :class:`~lucidd.protocol.Histogram` by name), taken at once."""
        return self._call(self._core.metrics_reply())

    def config(self) -> dict[str, Any]:
        """The daemon's effective configuration (never secrets)."""
        return self._call(self._core.config())

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
        call = self._core.open_session(compression, session, label=label, chunk_size=chunk_size)
        return self._call(call)

    def sessions(self) -> list[SessionSummary]:
        """Every session the daemon holds."""
        return self._call(self._core.sessions())

    def info(self, session: SessionRef) -> SessionSummary:
        """One session's summary (UnknownSessionError if there is none)."""
        return self._call(self._core.info(session))

    def root(self, session: SessionRef, size: int | None = None) -> RootReply:
        """The Merkle root of the session's first ``size`` leaves (default: all of them)."""
        return self._call(self._core.root(session, size))

    def inclusion_proof(
        self, session: SessionRef, index: int, size: int | None = None
    ) -> InclusionProofReply:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        return self._call(self._core.inclusion_proof(session, index, size))

    def consistency_proof(
        self, session: SessionRef, size1: int, size2: int | None = None
    ) -> ConsistencyProofReply:
        """The RFC 9162 consistency proof from tree size ``size1`` to ``size2`` (default: all)."""
        return self._call(self._core.consistency_proof(session, size1, size2))

    def finalize(self, session: SessionRef) -> FinalizeReply:
        """Write the session's FINAL record; it accepts no chunk afterwards."""
        return self._call(self._core.finalize(session))

    def signing_key(self) -> SigningKeyReply:
        """The host key that signs checkpoints: its name, key id and note ``vkey``."""
        return self._call(self._core.signing_key())

    def checkpoint(self, session: SessionRef, size: int | None = None) -> CheckpointReply:
        """A signed checkpoint (C2SP signed note) of the session, at its size by default."""
        return self._call(self._core.checkpoint(session, size))

    def anchor(self) -> AnchorReply:
        """Sign the anchor log's checkpoint now and start anchoring it (privileged)."""
        return self._call(self._core.anchor())

    def receipt(self, session: SessionRef, index: int) -> ReceiptReply:
        """What proves chunk ``index`` offline: proofs, signed checkpoints, attestations."""
        return self._call(self._core.receipt(session, index))

    def remote_sessions(self) -> list[RemoteHost]:
        """The object store's sessions by host (privileged; ``replication_url`` set)."""
        return self._call(self._core.remote_sessions())

    def list_keys(self) -> KeysReply:
        """The master keys' ids, the current one, how many sessions each wraps (privileged:
        root, lucidd's uid, the admin group; docs/keys.md)."""
        return self._call(self._core.list_keys())

    def rotate_keys(self, *, new: bool = False) -> KeysChanged:
        """Add a master key and re-wrap every session under it, with the daemon running
        (privileged); ``new``: add one even to finish an interrupted rotation."""
        return self._call(self._core.rotate_keys(new=new))

    def rewrap_keys(self) -> KeysChanged:
        """Re-wrap every session not under the current master key (privileged)."""
        return self._call(self._core.rewrap_keys())

    def retire_key(self, key_id: int) -> KeysChanged:
        """Remove master key ``key_id`` once no session needs it (privileged)."""
        return self._call(self._core.retire_key(key_id))

    def read_chunk(self, session: SessionRef, index: int) -> ChunkReply:
        """Decrypt one stored chunk: its plaintext and its sealed record."""
        return self._call(self._core.read_chunk(session, index))

    def shred(self, session: SessionRef) -> None:
        """Crypto-shred the session: its secret is deleted, its records become unreadable."""
        self._call(self._core.shred(session))

    def check(self, session: SessionRef) -> CheckReply:
        """Scrub the session: every chunk's record is read, authenticated and compared with
        its leaf in the log; ``bad`` lists the chunks that fail (empty: intact)."""
        return self._call(self._core.check(session))

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
