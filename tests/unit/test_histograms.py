"""Fixed-bucket histograms (lucidd.daemon.histograms) and how they travel: the wire's
``Histogram`` in ``metrics_reply``, the supervisor's status, a worker batch's chunk count."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lucidd import protocol as p
from lucidd.daemon import ipc
from lucidd.daemon.histograms import (
    ACK_LATENCY,
    TIME_BOUNDS_S,
    HistogramAccumulator,
    batch_chunk_bounds,
    merge_histograms,
    snapshots,
    time_histograms,
)


def reference_bucket(bounds: tuple[float, ...], value: float) -> int:
    """The bucket of ``value`` as the wire defines it: (bounds[i-1], bounds[i]], then above."""
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def test_a_value_on_a_bound_is_counted_in_that_bound_s_bucket() -> None:
    h = HistogramAccumulator([1.0, 2.0, 4.0])
    for value in (0.0, 1.0, 1.5, 2.0, 4.0, 4.5, 100.0):
        h.observe(value)
    snap = h.snapshot()
    assert snap.bounds == [1.0, 2.0, 4.0]
    assert snap.counts == [2, 2, 1, 2]  # (-inf, 1], (1, 2], (2, 4], above 4
    assert snap.sum == pytest.approx(113.0)
    assert h.count == 7


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_every_observation_is_counted_once_in_its_bucket(values: list[float]) -> None:
    h = HistogramAccumulator(TIME_BOUNDS_S)
    expected = [0] * (len(TIME_BOUNDS_S) + 1)
    for value in values:
        h.observe(value)
        expected[reference_bucket(TIME_BOUNDS_S, value)] += 1
    snap = h.snapshot()
    assert snap.counts == expected
    assert sum(snap.counts) == len(values)
    assert snap.sum == pytest.approx(math.fsum(values))


def test_a_snapshot_is_a_copy() -> None:
    h = HistogramAccumulator([1.0])
    before = h.snapshot()
    h.observe(0.5)
    assert before.counts == [0, 0] and before.sum == 0.0
    assert h.snapshot().counts == [1, 0]


def test_merging_adds_counts_and_sums_of_the_same_bounds() -> None:
    a, b = HistogramAccumulator([1.0, 2.0]), HistogramAccumulator([1.0, 2.0])
    a.observe(0.5)
    b.observe(1.5)
    b.observe(3.0)
    a.merge(b.snapshot())
    assert a.snapshot() == p.Histogram([1.0, 2.0], [1, 1, 1], 5.0)


def test_merging_other_bounds_is_refused() -> None:
    h = HistogramAccumulator([1.0, 2.0])
    with pytest.raises(ValueError, match="cannot merge"):
        h.merge(p.Histogram([1.0, 3.0], [0, 0, 0], 0.0))
    with pytest.raises(ValueError, match="cannot merge"):
        h.merge(p.Histogram([1.0, 2.0], [0, 0], 0.0))


def test_merge_histograms_adds_those_of_one_name_and_keeps_the_others() -> None:
    one = p.Histogram([1.0], [1, 0], 0.5)
    two = p.Histogram([1.0], [0, 2], 7.0)
    other = p.Histogram([10.0], [3, 0], 6.0)
    merged = merge_histograms({"a": one, "b": other}, {"a": two})
    assert merged == {"a": p.Histogram([1.0], [1, 2], 7.5), "b": other}
    assert one.counts == [1, 0]  # the inputs are left alone


@pytest.mark.parametrize(
    "bounds", [[], [2.0, 1.0], [1.0, 1.0], [1.0, math.inf], [math.nan]], ids=str
)
def test_bounds_must_be_finite_and_strictly_ascending(bounds: list[float]) -> None:
    with pytest.raises(ValueError, match="bound"):
        HistogramAccumulator(bounds)


def test_nan_is_refused() -> None:
    h = HistogramAccumulator([1.0])
    with pytest.raises(ValueError, match="NaN"):
        h.observe(math.nan)
    assert h.count == 0


@pytest.mark.parametrize(
    ("batch_size", "bounds"),
    [
        (1, (1.0,)),
        (2, (1.0, 2.0)),
        (64, (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)),
        (100, (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0)),
    ],
)
def test_batch_chunk_bounds_are_powers_of_two_up_to_the_batch_size(
    batch_size: int, bounds: tuple[float, ...]
) -> None:
    assert batch_chunk_bounds(batch_size) == bounds


def test_time_bounds_span_50_microseconds_to_10_seconds() -> None:
    assert TIME_BOUNDS_S[0] == 50e-6 and TIME_BOUNDS_S[-1] == 10.0
    assert list(TIME_BOUNDS_S) == sorted(set(TIME_BOUNDS_S))
    assert set(snapshots(time_histograms(["a", "b"]))) == {"a", "b"}


# -- on the wire ----------------------------------------------------------------------------


def test_metrics_reply_carries_histograms_and_an_older_reply_has_none() -> None:
    reply = p.MetricsReply(
        req=3, metrics={"x_total": 1.0}, histograms={"h": p.Histogram([1.0], [2, 1], 3.5)}
    )
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(reply), type=p.ControlReply)
    assert decoded == reply
    older = msgspec.msgpack.encode({"type": "metrics_reply", "req": 3, "metrics": {}})
    assert msgspec.msgpack.decode(older, type=p.ControlReply) == p.MetricsReply(3, {})


def test_supervisor_status_carries_histograms() -> None:
    status = ipc.SupervisorStatus([], {"a": 1.0}, [], {ACK_LATENCY: p.Histogram([1.0], [0, 1], 2)})
    decoded = ipc.decoder(ipc.SupervisorToAggregator).decode(ipc.encoder().encode(status))
    assert decoded == status


def test_stage_times_of_an_older_worker_count_no_chunks() -> None:
    older = msgspec.msgpack.encode([1, 2, 3, 4])  # queue_wait, seal, write, fsync
    assert msgspec.msgpack.decode(older, type=ipc.StageTimes) == ipc.StageTimes(1, 2, 3, 4, 0)
