"""A worker process: seal, hash and durably append chunks (DESIGN §2).

Blocks on its pipe from the supervisor. Each batch is what the pipe holds (up to
``batch_size`` descriptors or ``batch_bytes`` of payload): every chunk is sealed and appended to
this worker's segment of its session, then one ``fdatasync`` per touched segment (group commit),
then the whole batch's outcome goes to the aggregator and, right after, to the supervisor, which
acknowledges it (see :class:`lucidd.daemon.ipc.SealedBatch`). Exits when its pipe reaches EOF.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from lucidd.crypto import (
    STREAM_PIECE,
    ChunkSealer,
    Keyring,
    sealer_buffer_size,
    unwrap_secret,
)
from lucidd.daemon import ipc
from lucidd.daemon.channels import InboxReader, take_fd
from lucidd.daemon.config import LOCALLY_SYNCED
from lucidd.daemon.keyfile import load_keyring
from lucidd.daemon.procutil import (
    die_with_parent,
    keep_keys_out_of_dumps,
    leave_shutdown_to_the_supervisor,
)
from lucidd.daemon.ring import RingReader
from lucidd.daemon.segments import SegmentWriter
from lucidd.daemon.shared_regions import RegionView, receive_region
from lucidd.daemon.store import SessionPaths, read_meta, segment_name, storage_error
from lucidd.errors import InternalError, LucidError, UnknownSessionError
from lucidd.vocabulary import Compression

#: Chunks larger than this are sealed in pieces straight into the segment file
#: (``ChunkSealer.seal_streamed``), so no worker ever holds a record-sized buffer: ten workers
#: sealing 1 MiB chunks kept 10 MiB resident, and 100 MB at 10 MiB chunks. Smaller ones are
#: sealed whole into the sealer's buffer and written with one ``write``.
STREAM_ABOVE: Final = STREAM_PIECE
#: Open segment files a worker keeps (one per recently used session; the rest are closed).
MAX_OPEN_SEGMENTS: Final = 32
#: Unwrapped session secrets a worker keeps (32 bytes each, plus the dict's overhead).
MAX_CACHED_SECRETS: Final = 4096


#: What arrives on a worker's inbox.
_Inbound = ipc.Seal | ipc.Forget | ipc.ForgetRegion | ipc.UseKeyring

_A = TypeVar("_A")
_R = TypeVar("_R")


@dataclass
class _Batch:
    sealed: list[ipc.Sealed] = field(default_factory=list)
    failed: list[ipc.Failed] = field(default_factory=list)
    queue_wait_ns: int = 0
    seal_ns: int = 0
    write_ns: int = 0
    plaintext_bytes: int = 0


class Worker:
    """The sealing loop of one worker process (one instance per process)."""

    def __init__(
        self,
        spec: ipc.WorkerSpec,
        inbox: Connection,
        results: Connection,
        acks: Connection,
        regions: Connection,
    ) -> None:
        self._spec = spec
        self._config = spec.config
        self._state_dir = Path(spec.config.state_dir)
        self._inbox = InboxReader(take_fd(inbox), ipc.decoder(ipc.SupervisorToWorker))
        self._results = results
        self._acks = acks
        self._keyring: Keyring = ipc.spec_keyring(spec, load_keyring)
        self._ring = RingReader(spec.ring_name, spec.ring_size)
        #: Client regions handed over on the region socket (shared_regions), by id.
        self._region_sock = socket.socket(fileno=take_fd(regions))
        self._regions: dict[int, RegionView] = {}
        # Anonymous mmap rather than a bytearray: pages are touched only as far as the largest
        # record sealed whole (a bytearray is zero-filled, so resident from the start).
        size = sealer_buffer_size(STREAM_ABOVE)
        self._sealer_memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._sealer = ChunkSealer(STREAM_ABOVE, memoryview(self._sealer_memory))
        # Both are caches, least recently used first: a worker's open files stay bounded
        # however many sessions the host sees in its lifetime.
        self._secrets: OrderedDict[bytes, bytes] = OrderedDict()
        self._writers: OrderedDict[bytes, SegmentWriter] = OrderedDict()
        self._encoder = ipc.encoder()

    def run(self) -> None:
        while True:
            first = self._inbox.next_message(block=True)
            if first is None:  # EOF: the supervisor closed this inbox
                break
            self._process(self._drain(first))
        self._close()

    def _drain(self, first: _Inbound) -> list[_Inbound]:
        """The first descriptor plus whatever the pipe holds now, within the batch bounds."""
        messages = [first]
        payload = _payload_of(first)
        while len(messages) < self._config.batch_size and payload < self._config.batch_bytes:
            message = self._inbox.next_message(block=False)
            if message is None:
                break
            messages.append(message)
            payload += _payload_of(message)
        return messages

    def _process(self, messages: list[_Inbound]) -> None:
        batch = _Batch()
        for message in messages:
            if isinstance(message, ipc.Seal):
                self._seal_one(message, batch)
            elif isinstance(message, ipc.Forget):
                self._forget(message.session)
            elif isinstance(message, ipc.UseKeyring):
                self._use_keyring(message)
            else:
                region = self._regions.pop(message.region, None)
                if region is not None:
                    region.close()
        fsync_ns = self._commit(batch)
        if batch.sealed or batch.failed:
            chunks = len(batch.sealed) + len(batch.failed)
            times = ipc.StageTimes(
                batch.queue_wait_ns, batch.seal_ns, batch.write_ns, fsync_ns, chunks
            )
            self._send(batch.sealed, batch.failed, times, batch.plaintext_bytes)
        for writer in self._writers.values():  # after the acks: they need not wait for it
            with contextlib.suppress(OSError):  # only a page-cache hint
                writer.drop_synced()
        self._evict()

    def _evict(self) -> None:
        """Close the least recently used segments beyond the cache's bound (after the commit,
        so each is synced; a session that comes back gets a new segment file)."""
        while len(self._writers) > MAX_OPEN_SEGMENTS:
            _, writer = self._writers.popitem(last=False)
            writer.close()
        while len(self._secrets) > MAX_CACHED_SECRETS:
            self._secrets.popitem(last=False)

    def _send(
        self,
        sealed: list[ipc.Sealed],
        failed: list[ipc.Failed],
        times: ipc.StageTimes,
        plaintext_bytes: int,
    ) -> None:
        """Report a group commit in messages of at most PIPE_BUF bytes (atomic writes).

        Aggregator first, supervisor second: the ack must never overtake the index entry
        (read-your-writes, :class:`lucidd.daemon.ipc.SealedBatch`).
        """
        spec = self._spec
        message = ipc.SealedBatch(
            spec.worker_id,
            sealed,
            failed,
            times,
            plaintext_bytes,
            time.monotonic_ns(),
            spec.incarnation,
        )
        data = self._encoder.encode(message)
        if len(data) + 4 <= ipc.MAX_ATOMIC_MESSAGE or len(sealed) + len(failed) <= 1:
            self._results.send_bytes(data)
            self._acks.send_bytes(data)
            return
        half_sealed, half_failed = len(sealed) // 2, len(failed) // 2
        self._send(sealed[:half_sealed], failed[:half_failed], times, plaintext_bytes)
        self._send(sealed[half_sealed:], failed[half_failed:], ipc.StageTimes(), 0)

    def _seal_one(self, seal: ipc.Seal, batch: _Batch) -> None:
        t0 = time.monotonic_ns()
        if seal.dispatched_ns:
            batch.queue_wait_ns += max(0, t0 - seal.dispatched_ns)
        try:
            secret = self._secret_for(seal.session)
            writer = self._writer_for(seal.session)
            payload = self._payload(seal)
            try:
                if seal.length <= STREAM_ABOVE:
                    record, leaf = self._sealer.seal(
                        secret,
                        seal.session,
                        seal.index,
                        payload,
                        seal.compression,  # type: ignore[arg-type]
                    )
                    record_length = len(record)
                    t1 = time.monotonic_ns()
                    number, offset = _storage(writer.append, record)
                    write_ns = time.monotonic_ns() - t1
                else:
                    number, offset, record_length, leaf, write_ns = self._seal_streamed(
                        writer, secret, seal, payload
                    )
            finally:
                payload.release()
            t2 = time.monotonic_ns()
        except LucidError as err:
            batch.failed.append(ipc.Failed(seal.session, seal.index, err.code, err.message))
            return
        batch.seal_ns += t2 - t0 - write_ns
        batch.write_ns += write_ns
        batch.plaintext_bytes += seal.length
        batch.sealed.append(
            ipc.Sealed(
                seal.session,
                seal.index,
                leaf,
                segment_name(self._spec.worker_id, number),
                offset,
                record_length,
                seal.length,
            )
        )

    def _payload(self, seal: ipc.Seal) -> memoryview:
        """The chunk's bytes: in the ring, or in its client's region.

        A client can still write to its region while the chunk is sealed. Encryption reads
        each byte once and the tag covers the ciphertext this worker wrote, so a raw record
        always opens (whatever bytes were read); a compressor reads its input more than once
        and could emit a stream that does not decode, so with compression on the chunk is
        sealed from a private copy.
        """
        if not seal.region:
            return self._ring.payload(seal.offset, seal.length)
        region = self._region(seal.region)
        if seal.offset + seal.length > region.size:  # admission checked it: a bug
            raise InternalError("shared chunk outside its region", session=seal.session)
        view = region.payload(seal.offset, seal.length)
        if seal.compression == Compression.OFF:
            return view
        with view:
            return memoryview(bytes(view))

    def _region(self, region_id: int) -> RegionView:
        """The region's mapping; its descriptor was sent before the Seal naming it."""
        region = self._regions.get(region_id)
        while region is None:
            received = receive_region(self._region_sock)
            if received is None:
                raise InternalError("the supervisor's region socket is closed")
            got, size, fd = received
            try:
                self._regions[got] = RegionView(fd, size)
            finally:
                os.close(fd)
            region = self._regions.get(region_id)
        return region

    def _seal_streamed(
        self, writer: SegmentWriter, secret: bytes, seal: ipc.Seal, payload: memoryview
    ) -> tuple[int, int, int, bytes, int]:
        """Seal a large chunk piece by piece into its segment; returns (segment number,
        offset, record length, leaf hash, nanoseconds spent writing)."""
        write_ns = 0

        def produce(sink: Callable[[memoryview], None]) -> tuple[int, bytes]:
            def timed_sink(piece: memoryview) -> None:
                nonlocal write_ns
                t = time.monotonic_ns()
                sink(piece)
                write_ns += time.monotonic_ns() - t

            return self._sealer.seal_streamed(
                secret,
                seal.session,
                seal.index,
                payload,
                seal.compression,  # type: ignore[arg-type]
                sink=timed_sink,
            )

        number, offset, (record_length, leaf) = _storage(writer.append_streamed, produce)
        return number, offset, record_length, leaf, write_ns

    def _commit(self, batch: _Batch) -> int:
        """Group commit: one fdatasync per touched segment; unsynced records become failures."""
        if self._config.durability not in LOCALLY_SYNCED:
            for writer in self._writers.values():
                writer.dirty = False
            return 0
        t0 = time.monotonic_ns()
        broken: dict[bytes, str] = {}
        for session, writer in self._writers.items():
            try:
                writer.sync()
            except OSError as exc:
                writer.abandon()
                broken[session] = storage_error(exc, "fdatasync of a segment").message
        if broken:
            lost = [s for s in batch.sealed if s.session in broken]
            batch.sealed = [s for s in batch.sealed if s.session not in broken]
            batch.failed.extend(
                ipc.Failed(s.session, s.index, "storage", broken[s.session]) for s in lost
            )
        return time.monotonic_ns() - t0

    def _secret_for(self, session: bytes) -> bytes:
        secret = self._secrets.get(session)
        if secret is not None:
            self._secrets.move_to_end(session)
        else:
            paths = SessionPaths.of(self._state_dir, session)
            try:
                meta = read_meta(paths)
            except FileNotFoundError:
                raise UnknownSessionError("session does not exist", session=session) from None
            secret = unwrap_secret(self._keyring, session, meta.wrapped_secret)
            self._secrets[session] = secret
        return secret

    def _writer_for(self, session: bytes) -> SegmentWriter:
        writer = self._writers.get(session)
        if writer is not None:
            self._writers.move_to_end(session)
        else:
            paths = SessionPaths.of(self._state_dir, session)
            writer = SegmentWriter(
                paths,
                self._spec.worker_id,
                self._config.segment_size,
                # Only records made durable can be dropped (dirty pages stay cached anyway).
                drop_cache=self._config.durability in LOCALLY_SYNCED,
            )
            self._writers[session] = writer
        return writer

    def _use_keyring(self, message: ipc.UseKeyring) -> None:
        """Take the distributed keyring (online rotation, reload) and say so: the supervisor
        waits for every worker before any session's metadata names a new key. Cached secrets
        stay valid: a re-wrap changes the wrap, not the secret."""
        self._keyring = Keyring.parse(message.keyring)
        confirm = ipc.KeyringInUse(self._spec.worker_id, self._spec.incarnation, message.token)
        self._acks.send_bytes(self._encoder.encode(confirm))

    def _forget(self, session: bytes) -> None:
        self._secrets.pop(session, None)
        writer = self._writers.pop(session, None)
        if writer is not None:
            writer.close()

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._ring.close()
        for region in self._regions.values():
            region.close()
        self._region_sock.close()
        self._inbox.close()


def _storage(append: Callable[[_A], _R], argument: _A) -> _R:
    """Run a segment append; an OSError becomes the typed ``storage`` error."""
    try:
        return append(argument)
    except OSError as exc:
        raise storage_error(exc, "appending a record") from None


def _payload_of(message: _Inbound) -> int:
    return message.length if isinstance(message, ipc.Seal) else 0


def worker_main(
    spec: ipc.WorkerSpec,
    inbox: Connection,
    results: Connection,
    acks: Connection,
    regions: Connection,
) -> None:
    """Entry point in the child process (started by the forkserver)."""
    keep_keys_out_of_dumps()  # it loads the keyring
    die_with_parent()
    leave_shutdown_to_the_supervisor()
    try:
        Worker(spec, inbox, results, acks, regions).run()
    except (BrokenPipeError, msgspec.DecodeError):
        os._exit(1)
