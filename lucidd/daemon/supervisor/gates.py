"""What admission and dispatch share: a session's gate and a chunk in flight (layer 1).

A :class:`SessionGate` is the supervisor's admission view of one session; an :class:`InFlight`
is one admitted chunk from its header to its answer; a :class:`Client` is what both need of the
data connection that sent it. Plain records, no I/O: :mod:`~lucidd.daemon.supervisor.admission`
(the client side) and :mod:`~lucidd.daemon.supervisor.dispatch` (the worker side) both read and
update them, on the supervisor's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.access import Peer
from lucidd.daemon.supervisor.slots import SlotRun
from lucidd.vocabulary import SessionState

#: A gate's state between a new id's first chunk and the aggregator's answer.
SESSION_OPENING: Final = SessionState.OPENING


class ChunkKind(StrEnum):
    """What the supervisor does with an admitted chunk."""

    SEAL = "seal"  # a new index: a worker seals and stores it
    COMPARE = "compare"  # a stored index resent: the aggregator compares it with the record


class Client(Protocol):
    """What admission needs of one data connection."""

    peer: Peer
    #: Sessions this connection holds the writer's lease of (SessionGate.writer).
    leases: set[bytes]
    chunks_in_flight: int
    slots_held: int
    waits_for_own: bool
    #: Its shared-memory region (``ShareMemory``), if it asked for one.
    region: SharedRegion | None

    def send(self, message: p.Message) -> None:
        """Queue a reply to the client."""

    def hold(self, run: SlotRun) -> None:
        """One more admitted chunk of this connection."""

    def unhold(self, run: SlotRun) -> None:
        """That chunk was answered or abandoned."""

    def retry_admission(self) -> bool:
        """Capacity was freed: try the chunk that waited; True if the connection proceeds."""

    def close(self) -> None:
        """Send what is queued, then close (at shutdown)."""


@dataclass(eq=False)
class SharedRegion:
    """One data connection's shared-memory region (regions.RegionTable owns its lifetime).

    The supervisor holds its descriptor but never maps it (a mapping would cost a second
    descriptor: ``mmap`` keeps a dup); a resent index is read from it into the ring.
    """

    id: int
    fd: int
    size: int
    chunks: int = 0  # chunks in it admitted and not yet answered
    connected: bool = True  # its connection is still open
    workers: set[int] = field(default_factory=set)  # worker slots that were handed it


@dataclass(eq=False)
class InFlight:
    """One admitted chunk from ChunkStart to its ack (or error)."""

    conn: Client
    req: int
    session: bytes
    index: int
    length: int
    run: SlotRun
    kind: str
    received: int = 0
    #: CLOCK_MONOTONIC when its payload was all in its slot (0 until then): ack latency.
    received_ns: int = 0
    worker: int = -1  # the worker sealing it; -1 while not dispatched (or being recovered)
    dispatched_ns: int = 0
    attempts: int = 0  # worker timeouts this chunk went through
    #: A chunk sealed from its client's shared region (then ``run`` is empty): where.
    region: SharedRegion | None = None
    region_offset: int = 0


@dataclass(eq=False)
class SessionGate:
    """The supervisor's admission view of one session (DESIGN §2)."""

    session: bytes
    state: str
    compression: str
    owner_uid: int
    plaintext_bytes: int = 0
    prefix: int = 0
    above: set[int] = field(default_factory=set)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    waiting_for_open: list[InFlight] = field(default_factory=list)
    frozen: bool = False
    freeze_tokens: list[int] = field(default_factory=list)
    #: The one connection that may write to the session now (its lease ends when it closes).
    writer: Client | None = None

    def stored(self, index: int) -> bool:
        return index < self.prefix or index in self.above

    def mark_stored(self, index: int) -> None:
        if index == self.prefix:
            self.prefix += 1
            above = self.above
            while self.prefix in above:
                above.remove(self.prefix)
                self.prefix += 1
        elif index > self.prefix:
            self.above.add(index)


def gate_from_view(view: ipc.SessionView) -> SessionGate:
    """A gate for a session the aggregator knows (its view of the session)."""
    return SessionGate(
        view.session,
        view.state,
        view.compression,
        view.owner_uid,
        view.plaintext_bytes,
        view.prefix,
        set(view.above),
    )
