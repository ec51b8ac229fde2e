"""The ring's slot allocator, as a state machine against a simple model (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from lucidd.daemon.supervisor.slots import SlotAllocator, SlotRun

SLOTS = 32
SLOT_SIZE = 100


class AllocatorMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.allocator = SlotAllocator(SLOTS, SLOT_SIZE)
        self.owned: dict[int, SlotRun] = {}  # start -> run, the model of what is taken

    def _free_slots(self) -> set[int]:
        taken = {s for run in self.owned.values() for s in range(run.start, run.start + run.count)}
        return set(range(SLOTS)) - taken

    def _has_free_run(self, need: int) -> bool:
        free = self._free_slots()
        return any(all(s + i in free for i in range(need)) for s in range(SLOTS - need + 1))

    @rule(target=runs, length=st.integers(0, SLOTS * SLOT_SIZE + 50))
    def allocate(self, length: int) -> SlotRun | None:
        need = max(1, -(-length // SLOT_SIZE))
        run = self.allocator.allocate(length)
        if run is None:
            assert need > SLOTS or not self._has_free_run(need)
            return None
        assert run.count == need
        assert run.offset == run.start * SLOT_SIZE
        assert set(range(run.start, run.start + run.count)) <= self._free_slots()
        self.owned[run.start] = run
        return run

    @rule(run=runs)
    def free(self, run: SlotRun | None) -> None:
        if run is None or self.owned.get(run.start) is not run:
            return
        del self.owned[run.start]
        self.allocator.free(run)

    @invariant()
    def used_matches_model(self) -> None:
        assert self.allocator.used == sum(r.count for r in self.owned.values())


TestAllocator = AllocatorMachine.TestCase
TestAllocator.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_double_free_is_refused() -> None:
    allocator = SlotAllocator(4, 10)
    run = allocator.allocate(15)
    assert run is not None
    allocator.free(run)
    with pytest.raises(ValueError, match="double free"):
        allocator.free(run)


def test_empty_chunk_still_owns_one_slot() -> None:
    allocator = SlotAllocator(2, 10)
    assert allocator.allocate(0) == SlotRun(0, 1, 0)
    assert allocator.used == 1
    assert allocator.fits_ever(20) and not allocator.fits_ever(21)
