"""The per-session reorder window releases leaves exactly in index order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucidd.daemon.aggregator.reorder import ReorderWindow


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(40))), st.integers(0, 5))
def test_any_arrival_order_releases_in_index_order(order: list[int], start: int) -> None:
    window = ReorderWindow(start)
    released: list[bytes] = []
    for index in order:
        released.extend(window.add(index + start, f"leaf{index + start}".encode()))
        assert window.next_index == start + len(released)
        assert all(i >= window.next_index for i in window.held_indices())
    assert released == [f"leaf{i + start}".encode() for i in range(40)]
    assert len(window) == 0


def test_an_index_is_accepted_once() -> None:
    window = ReorderWindow()
    assert window.add(1, b"b") == []
    assert 1 in window
    with pytest.raises(ValueError):
        window.add(1, b"b")
    assert window.add(0, b"a") == [b"a", b"b"]
    with pytest.raises(ValueError):
        window.add(0, b"a")
