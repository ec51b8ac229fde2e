"""The ring share of one data connection (issue 10), through the real ``Ingest`` and
``DataProtocol`` on a real event loop.

Only the transport is a stand-in (asyncio's part, not ours): it records what the daemon writes and
whether reading is paused. Which chunks are admitted when depends on when the workers finish, so
an integration test could not pin it down; here the test is the worker and acks when it wants.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import AccessPolicy
from lucidd.daemon.channels import PipeWriter
from lucidd.daemon.config import Config
from lucidd.daemon.supervisor.admission import Ingest
from lucidd.daemon.supervisor.dispatch import WorkerLink
from lucidd.daemon.supervisor.ingest import DataProtocol
from lucidd.units import KiB, MiB

SLOT = 64 * KiB


class RecordingTransport:
    """The parts of an asyncio transport that DataProtocol uses."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = False
        # A real connected pair, for the peer credentials the protocol reads (SO_PEERCRED).
        self._ours, self._theirs = socket.socketpair()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._ours if name == "socket" else default


def feed(conn: DataProtocol, data: bytes) -> None:
    """Deliver ``data`` the way the loop does: into get_buffer, then buffer_updated."""
    view = memoryview(data)
    while view:
        buffer = conn.get_buffer(-1)
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        conn.buffer_updated(n)
        view = view[n:]


def chunk(req: int, session: bytes, index: int, slots: int) -> bytes:
    length = slots * SLOT
    return p.encode_frame(p.Chunk(req=req, session=session, index=index, length=length)) + (
        b"\0" * length
    )


def sealed(session: bytes, index: int) -> ipc.SealedBatch:
    record = ipc.Sealed(session, index, b"\1" * 32, "w0-0.seg", 0, 0, 0)
    return ipc.SealedBatch(worker=0, sealed=[record], failed=[], times=ipc.StageTimes())


async def _over_its_share_a_connection_waits_while_another_waits_for_room() -> None:
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    # 32 slots; a connection's share is 16 while another waits.
    config = Config(
        ring_size=2 * MiB, slot_size=SLOT, max_chunk_size=MiB, connection_ring_share=0.5
    )
    ring = memoryview(bytearray(config.ring_size))
    ingest = Ingest(config, ring, [], lambda message: None, AccessPolicy(daemon_uid=os.geteuid()))
    ingest.dispatcher.workers.append(WorkerLink(PipeWriter(loop, write_end)))
    sessions = [os.urandom(16), os.urandom(16)]
    for session in sessions:
        view = ipc.SessionView(session, "open", "off", 0, 0, [])
        ingest.on_session_changed(ipc.SessionChanged(view))
    a, b = DataProtocol(ingest), DataProtocol(ingest)
    ta, tb = RecordingTransport(), RecordingTransport()
    a.connection_made(ta)  # type: ignore[arg-type]
    b.connection_made(tb)  # type: ignore[arg-type]

    # Alone, a connection may use more than its share: three chunks of 8 slots.
    for i in range(3):
        feed(a, chunk(i + 1, sessions[0], i, 8))
    assert (a.slots_held, ingest.slots.used) == (24, 24)
    # b needs 16 slots, 8 are free: it waits.
    feed(b, chunk(1, sessions[1], 0, 16))
    assert b.slots_held == 0 and not tb.reading
    # a's next chunk would fit in the 8 free slots, but a is over its share while b waits.
    feed(a, chunk(4, sessions[0], 3, 8))
    assert (a.slots_held, ingest.slots.used) == (24, 24) and not ta.reading
    # a's last chunk is acked (its slots are next to the free ones): b, the one that waited,
    # gets the room, not a.
    ingest.dispatcher.on_sealed_batch(sealed(sessions[0], 2))
    assert b.slots_held == 16 and tb.reading
    assert a.slots_held == 16 and not ta.reading  # the ring is full now
    # Nobody waits for room any more once b is in: a's chunk goes in as soon as it fits.
    ingest.dispatcher.on_sealed_batch(sealed(sessions[0], 0))
    assert a.slots_held == 16 and ta.reading and a.chunks_in_flight == 2
    ingest.dispatcher.workers[0].writer.close()
    os.close(read_end)
    for conn in (a, b):
        conn.connection_lost(None)


def test_over_its_share_a_connection_waits_while_another_waits_for_room() -> None:
    asyncio.run(_over_its_share_a_connection_waits_while_another_waits_for_room())
