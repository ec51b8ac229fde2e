"""Slot bookkeeping of the shared-memory ring (layer 1, DESIGN §3).

The ring is cut into ``count`` fixed slots of ``slot_size`` bytes; a chunk takes
``ceil(length / slot_size)`` contiguous slots (at least one, so even an empty chunk has an
owner). Only the supervisor allocates and frees — a single writer, so no cross-process locks.
Workers only read the byte range named in their descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass

_FREE = 0
_USED = 1


@dataclass(frozen=True, slots=True)
class SlotRun:
    """A run of contiguous slots: ``start`` and ``count`` in slots, ``offset`` in bytes."""

    start: int
    count: int
    offset: int


class SlotAllocator:
    """First-fit allocator of contiguous slot runs.

    Cost: ``allocate`` is one ``bytearray.find`` (C speed) over the slot map, plus a rescan from
    the start when the search from the roving hint fails; ``free`` is one slice assignment.
    """

    def __init__(self, count: int, slot_size: int) -> None:
        if count < 1 or slot_size < 1:
            raise ValueError("a ring needs at least one slot of at least one byte")
        self.count = count
        self.slot_size = slot_size
        self._map = bytearray(count)  # one byte per slot: _FREE or _USED
        self._hint = 0
        self.used = 0

    def slots_for(self, length: int) -> int:
        """How many slots a payload of ``length`` bytes takes."""
        return max(1, -(-length // self.slot_size))

    def fits_ever(self, length: int) -> bool:
        """Whether a payload of this length can be placed in an empty ring."""
        return self.slots_for(length) <= self.count

    def allocate(self, length: int) -> SlotRun | None:
        """Reserve slots for ``length`` bytes, or None when no contiguous run is free now."""
        need = self.slots_for(length)
        if need > self.count - self.used:
            return None
        pattern = bytes(need)  # need * _FREE
        start = self._map.find(pattern, self._hint)
        if start < 0 or start + need > self.count:
            start = self._map.find(pattern, 0)
            if start < 0:
                return None
        self._map[start : start + need] = b"\x01" * need
        self.used += need
        self._hint = start + need if start + need < self.count else 0
        return SlotRun(start, need, start * self.slot_size)

    def free(self, run: SlotRun) -> None:
        """Release a run returned by :meth:`allocate` (exactly once)."""
        segment = self._map[run.start : run.start + run.count]
        if segment.count(_USED) != run.count:
            raise ValueError(f"double free of slots {run.start}..{run.start + run.count - 1}")
        self._map[run.start : run.start + run.count] = bytes(run.count)
        self.used -= run.count
