"""The client's placement in its shared region (lucidd.client.shared_memory), on a real memfd."""

from __future__ import annotations

import os

import pytest

from lucidd.client.shared_memory import SLOT, ClientRegion, shared_memory_size


def region(slots: int) -> ClientRegion:
    fd = os.memfd_create("test-region")
    os.ftruncate(fd, slots * SLOT)
    return ClientRegion(fd, slots * SLOT)  # takes the fd


def test_payloads_are_placed_first_fit_and_space_is_reused_lowest_first() -> None:
    r = region(8)
    a = r.place(memoryview(b"a" * SLOT))
    b = r.place(memoryview(b"b" * (2 * SLOT + 1)))  # three slots
    c = r.place(memoryview(b"c"))
    assert (a, b, c) == (0, SLOT, 4 * SLOT)
    assert bytes(r.view(SLOT, 3)) == b"bbb"
    assert a is not None and b is not None
    r.free(a)
    assert r.place(memoryview(b"d" * 10)) == 0  # the lowest free slot again
    assert r.place(memoryview(b"e" * (4 * SLOT))) is None  # only 3 free at the end
    r.free(b)
    assert r.place(memoryview(b"e" * (3 * SLOT))) == SLOT
    assert r.in_use == 3
    r.close()


def test_what_can_never_fit_is_told_apart_from_no_room_now() -> None:
    r = region(2)
    assert r.fits(2 * SLOT) and not r.fits(2 * SLOT + 1) and not r.fits(0)
    assert r.reserve(2 * SLOT) == 0
    assert r.reserve(1) is None
    r.free(0)
    assert r.reserve(1) == 0
    r.close()


def test_the_shared_memory_argument() -> None:
    assert shared_memory_size(True) > 0
    assert shared_memory_size(False) == 0
    assert shared_memory_size(4096) == 4096
    with pytest.raises(ValueError):
        shared_memory_size(-1)
