"""Admission on its own (issue 12): no socket, no event loop reading, plain client objects.

Each test drives :class:`~lucidd.daemon.supervisor.admission.Ingest` the way the data socket
does (``admit``, ``complete``, outcomes, ``end_leases``) and checks what a client would be told.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import AccessPolicy, Peer
from lucidd.daemon.channels import PipeWriter
from lucidd.daemon.config import Config
from lucidd.daemon.histograms import ACK_LATENCY
from lucidd.daemon.supervisor.admission import Ingest, Wait
from lucidd.daemon.supervisor.dispatch import WorkerLink
from lucidd.daemon.supervisor.gates import InFlight, SharedRegion
from lucidd.daemon.supervisor.slots import SlotRun
from lucidd.errors import (
    BusyError,
    DuplicateIndexError,
    ForbiddenError,
    SessionBusyError,
    SessionFinalizedError,
)
from lucidd.units import KiB, MiB

ALICE, BOB = 2001, 2002


@dataclass(eq=False)
class FakeClient:
    """A data connection as admission sees it (the Client protocol)."""

    peer: Peer
    leases: set[bytes] = field(default_factory=set)
    chunks_in_flight: int = 0
    slots_held: int = 0
    waits_for_own: bool = False
    region: SharedRegion | None = None
    sent: list[p.Message] = field(default_factory=list)

    def send(self, message: p.Message) -> None:
        self.sent.append(message)

    def hold(self, run: SlotRun) -> None:
        self.chunks_in_flight += 1
        self.slots_held += run.count

    def unhold(self, run: SlotRun) -> None:
        self.chunks_in_flight -= 1
        self.slots_held -= run.count

    def retry_admission(self) -> bool:
        return True

    def close(self) -> None:
        pass


def client(uid: int) -> FakeClient:
    return FakeClient(Peer(pid=uid, uid=uid, gid=uid))


@pytest.fixture
def ingest() -> Iterator[tuple[Ingest, list[Any]]]:
    loop = asyncio.new_event_loop()
    read_end, write_end = os.pipe()
    to_aggregator: list[Any] = []
    config = Config(ring_size=2 * MiB, slot_size=64 * KiB, max_chunk_size=MiB)
    ring = memoryview(bytearray(config.ring_size))
    admission = Ingest(config, ring, [], to_aggregator.append, AccessPolicy(daemon_uid=0))
    admission.dispatcher.workers.append(WorkerLink(PipeWriter(loop, write_end)))
    yield admission, to_aggregator
    loop.close()
    os.close(read_end)


def start(session: bytes, index: int, length: int = 1000, req: int = 1) -> p.ChunkStart:
    return p.ChunkStart(req=req, session=session, index=index, length=length)


def opened(ingest: Ingest, session: bytes, owner: int, state: str = "open") -> None:
    view = ipc.SessionView(session, state, "off", 0, 0, [], owner)
    ingest.on_session_changed(ipc.SessionChanged(view))


def test_the_first_chunk_of_a_new_id_opens_it_for_its_sender(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    admission, to_aggregator = ingest
    session = os.urandom(16)
    alice = client(ALICE)
    admission.admit(alice, start(session, 0))
    (request,) = [m for m in to_aggregator if isinstance(m, ipc.OpenRequest)]
    assert (request.session, request.owner_uid) == (session, ALICE)
    assert admission.gates[session].owner_uid == ALICE
    assert alice.chunks_in_flight == 1


def test_another_users_chunk_is_forbidden_before_it_takes_a_slot(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    admission, _ = ingest
    session = os.urandom(16)
    opened(admission, session, ALICE)
    with pytest.raises(ForbiddenError):
        admission.admit(client(BOB), start(session, 0))
    assert admission.slots.used == 0 and admission.in_flight == 0


def test_one_writer_per_session_until_its_connection_ends(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    admission, _ = ingest
    session = os.urandom(16)
    opened(admission, session, ALICE)
    first, second = client(ALICE), client(ALICE)
    admission.admit(first, start(session, 0))
    with pytest.raises(SessionBusyError):
        admission.admit(second, start(session, 1))
    admission.end_leases(first)
    chunk = admission.admit(second, start(session, 1))
    assert isinstance(chunk, InFlight) and chunk.conn is second


def test_refusals_are_typed(ingest: tuple[Ingest, list[Any]]) -> None:
    admission, _ = ingest
    done, growing = os.urandom(16), os.urandom(16)
    opened(admission, done, ALICE, state="finalized")
    opened(admission, growing, ALICE)
    alice = client(ALICE)
    with pytest.raises(SessionFinalizedError):
        admission.admit(alice, start(done, 0))
    admission.admit(alice, start(growing, 0))
    with pytest.raises(DuplicateIndexError):
        admission.admit(alice, start(growing, 0))
    window = admission.config.reorder_window
    with pytest.raises(BusyError):
        admission.admit(alice, start(growing, window + 5))


def test_a_full_ring_makes_the_chunk_wait_and_never_drops_it(
    ingest: tuple[Ingest, list[Any]],
) -> None:
    admission, _ = ingest
    session = os.urandom(16)
    opened(admission, session, ALICE)
    alice = client(ALICE)
    for index in range(2):  # two maximal chunks take the whole 2 MiB ring
        admission.admit(alice, start(session, index, length=MiB))
    with pytest.raises(Wait):
        admission.admit(alice, start(session, 2, length=MiB))
    assert admission.in_flight == 2


def _sealed(session: bytes, index: int) -> ipc.Sealed:
    return ipc.Sealed(session, index, b"\x01" * 32, "w0-0.seg", 0, 100, 1000)


def test_every_ack_and_no_refusal_is_an_ack_latency(ingest: tuple[Ingest, list[Any]]) -> None:
    admission, _ = ingest
    session = os.urandom(16)
    opened(admission, session, ALICE)
    alice = client(ALICE)
    chunks = [admission.admit(alice, start(session, i, req=i + 1)) for i in range(3)]
    for chunk in chunks:
        admission.complete(chunk)
    failed = ipc.Failed(session, 2, "storage", "disk full")
    sealed = [_sealed(session, 0), _sealed(session, 1)]
    admission.dispatcher.on_sealed_batch(ipc.SealedBatch(0, sealed, [failed], ipc.StageTimes()))
    assert [type(m) for m in alice.sent] == [p.Ack, p.Ack, p.Error]
    latency = admission.histograms[ACK_LATENCY].snapshot()
    assert sum(latency.counts) == 2
    assert latency.sum >= 0.0
