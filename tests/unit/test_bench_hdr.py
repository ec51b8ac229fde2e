"""The bench's HDR-style histogram against the truth of a sorted list of the same samples."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench._hdr import EXACT_LIMIT, SUB_BUCKETS, Histogram, bucket_bounds, bucket_index

QUANTILES = (1.0, 50.0, 90.0, 99.0, 99.9, 100.0)


def nearest_rank(ordered: list[int], q: float) -> int:
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def assert_within_bucket(reported: int, truth: int) -> None:
    """Never below the true value; above it by at most one bucket width."""
    assert truth <= reported <= truth + max(0, truth // SUB_BUCKETS), (reported, truth)


def test_values_below_the_exact_limit_are_exact() -> None:
    histogram = Histogram()
    histogram.record_all(range(EXACT_LIMIT))
    for q in QUANTILES:
        assert histogram.percentile(q) == nearest_rank(list(range(EXACT_LIMIT)), q)


def test_buckets_tile_the_values_without_gaps() -> None:
    previous_high = -1
    for index in range(bucket_index(1 << 30) + 1):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        assert bucket_index(low) == index == bucket_index(high)
        assert high - low + 1 <= max(1, low // SUB_BUCKETS)
        previous_high = high


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_of_latency_like_samples_match_the_sorted_truth(seed: int) -> None:
    rng = random.Random(seed)
    # Log-normal around 300 µs with a heavy tail, in nanoseconds, as latencies look.
    samples = [int(rng.lognormvariate(math.log(300_000), 0.8)) for _ in range(20_000)]
    samples += [rng.randrange(10**9, 5 * 10**9) for _ in range(7)]
    histogram = Histogram()
    histogram.record_all(samples)
    ordered = sorted(samples)
    for q in QUANTILES:
        assert_within_bucket(histogram.percentile(q), nearest_rank(ordered, q))
    assert histogram.percentile(100) == histogram.max == ordered[-1]
    assert histogram.min == ordered[0]
    assert histogram.count == len(samples)
    assert histogram.mean == pytest.approx(sum(samples) / len(samples))


@given(
    st.lists(st.integers(min_value=0, max_value=1 << 40), min_size=1, max_size=300),
    st.floats(min_value=0.001, max_value=100.0),
)
def test_any_percentile_is_within_one_bucket_of_the_truth(samples: list[int], q: float) -> None:
    histogram = Histogram()
    histogram.record_all(samples)
    assert_within_bucket(histogram.percentile(q), nearest_rank(sorted(samples), q))


def test_merged_histograms_equal_one_histogram_of_all_samples() -> None:
    rng = random.Random(7)
    parts = [[rng.randrange(1, 10**8) for _ in range(500)] for _ in range(16)]
    whole = Histogram()
    merged = Histogram()
    for part in parts:
        whole.record_all(part)
        one = Histogram()
        one.record_all(part)
        merged.merge(one)
    assert [merged.percentile(q) for q in QUANTILES] == [whole.percentile(q) for q in QUANTILES]
    assert (merged.count, merged.min, merged.max, merged.total) == (
        whole.count,
        whole.min,
        whole.max,
        whole.total,
    )
    assert list(merged.cdf()) == list(whole.cdf())


def test_values_above_highest_are_counted_and_the_max_stays_exact() -> None:
    histogram = Histogram(highest=1 << 20)
    histogram.record_all([10, 1 << 30])
    assert histogram.count == 2
    assert histogram.max == 1 << 30
    assert histogram.percentile(100) <= histogram.max
    assert histogram.percentile(50) == 10


def test_empty_histogram_reports_zero_and_negative_values_are_refused() -> None:
    histogram = Histogram()
    assert histogram.percentile(99) == 0
    assert list(histogram.cdf()) == []
    with pytest.raises(ValueError):
        histogram.record(-1)
    with pytest.raises(ValueError):
        histogram.percentile(0)


def test_cdf_ends_at_one_with_the_maximum() -> None:
    histogram = Histogram()
    histogram.record_all([5, 1000, 123_456, 123_457])
    points = list(histogram.cdf())
    assert points[-1] == (123_457, 1.0)
    assert [f for _, f in points] == sorted(f for _, f in points)
