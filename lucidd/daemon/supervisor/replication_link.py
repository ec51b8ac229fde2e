"""The supervisor's side of replication (layer 1, pure): feed the replicator, hold acks for it.

Every worker batch is forwarded to the replicator (:class:`ipc.Replicate`) as it is acked.
With ``durability = "replicated"`` the acks wait instead: a chunk is answered only once the
replicator says its pack is in the object store (:class:`ipc.Replicated`), or with a typed
``unavailable`` after ``replication_timeout`` (the chunk stays stored locally and is uploaded
later: never a false ack). Held chunks keep their ring slots, so the ring still bounds what
waits. A replicator that dies is replaced, and the chunks still held are sent again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lucidd.daemon import ipc
from lucidd.errors import LucidError, UnavailableError

#: (the chunk as admission knows it, an error or None, its leaf hash) -> None
Finish = Callable[[Any, LucidError | None, bytes], None]


@dataclass
class HeldAck:
    chunk: Any
    sealed: ipc.Sealed
    deadline: float


class ReplicationLink:
    """Between dispatch's acks and the replicator child."""

    def __init__(
        self,
        send: Callable[[Any], None],
        finish: Finish,
        *,
        wait: bool,
        timeout: float,
    ) -> None:
        self._send = send
        self._finish = finish
        self.wait = wait
        self.timeout = timeout
        self.held: dict[tuple[bytes, int], HeldAck] = {}
        self.status: ipc.ReplicatorStatus | None = None
        self.counters: dict[str, float] = {"replication_timeouts_total": 0.0}

    def forward(self, sealed: list[ipc.Sealed]) -> None:
        """Records just made durable (their acks already sent, unless ``wait``)."""
        if sealed:
            self._send(ipc.Replicate(sealed, wait=self.wait))

    def hold(self, chunk: Any, sealed: ipc.Sealed) -> None:
        """Keep ``chunk``'s ack until its record is replicated (``wait`` mode)."""
        deadline = time.monotonic() + self.timeout
        self.held[(sealed.session, sealed.index)] = HeldAck(chunk, sealed, deadline)

    def on_message(self, message: Any) -> None:
        if isinstance(message, ipc.Replicated):
            for done in message.chunks:
                held = self.held.pop((done.session, done.index), None)
                if held is not None:
                    self._finish(held.chunk, None, held.sealed.leaf_hash)
        elif isinstance(message, ipc.ReplicatorStatus):
            self.status = message

    def expire(self, now: float) -> None:
        """Answer ``unavailable`` for every held chunk past its deadline."""
        late = [key for key, held in self.held.items() if held.deadline <= now]
        for key in late:
            held = self.held.pop(key)
            self.counters["replication_timeouts_total"] += 1
            session, index = key
            self._finish(
                held.chunk,
                UnavailableError(
                    f"chunk {index} is stored locally but was not replicated within "
                    f"{self.timeout:g} s (durability = replicated); resend it later",
                    session=session,
                    index=index,
                ),
                b"",
            )

    def replaced(self) -> None:
        """A new replicator runs: give it every chunk still waiting."""
        if self.held:
            self._send(ipc.Replicate([h.sealed for h in self.held.values()], wait=True))

    def metrics(self) -> dict[str, float]:
        figures = dict(self.counters)
        figures["replication_acks_held"] = float(len(self.held))
        status = self.status
        if status is not None:
            figures.update(status.counters)
            figures["replication_lag_chunks"] = float(status.pending_chunks)
            figures["replication_lag_bytes"] = float(status.pending_bytes)
            figures["replication_lag_seconds"] = status.oldest_pending_s
        return figures

    def reason(self) -> str | None:
        """Why health is degraded by replication, or None."""
        status = self.status
        if status is None:
            return "replicator: no status yet"
        if status.problem:
            return (
                f"replicator: {status.problem}; {status.pending_chunks} chunk(s) "
                f"({status.pending_bytes} bytes) waiting, oldest {status.oldest_pending_s:.0f} s"
            )
        return None
