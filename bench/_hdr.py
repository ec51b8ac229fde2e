"""An HDR-style latency histogram: log-linear buckets, constant memory, bounded relative error.

The shape is HdrHistogram's (Gil Tene): values below ``2 * SUB_BUCKETS`` have a bucket each;
above that, every power-of-two range ``[2**e, 2**(e+1))`` is cut into ``SUB_BUCKETS`` equal
buckets. A bucket is therefore never wider than ``1 / SUB_BUCKETS`` of the values it holds
(0.78 % with 128 sub-buckets: better than two significant digits), whatever the magnitude, and
the whole histogram is a fixed array of counters (about 4 500 for values up to ``2**41`` ns,
36 minutes), however many samples it records.

Values are non-negative integers in any unit; lucidd's benches record nanoseconds. Recording is
O(1); a percentile is one pass over the counters. Percentiles use the nearest-rank definition
(the smallest recorded value with at least ``q`` % of the samples at or below it) and report
the *highest value equivalent* to the bucket found (HdrHistogram's convention: never below the
true value, at most one bucket width above it), clamped to the exact maximum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Final

#: log2 of the sub-buckets per power of two: the precision.
SUB_BUCKET_BITS: Final = 7
SUB_BUCKETS: Final = 1 << SUB_BUCKET_BITS
#: Values below this have a bucket of width 1.
EXACT_LIMIT: Final = 2 * SUB_BUCKETS
#: Default largest trackable value: 2**41 ns is about 36 minutes.
DEFAULT_HIGHEST: Final = 1 << 41
PERCENT: Final = 100.0


def bucket_index(value: int) -> int:
    """The bucket holding ``value`` (a non-negative int)."""
    if value < EXACT_LIMIT:
        return value
    shift = value.bit_length() - (SUB_BUCKET_BITS + 1)
    return shift * SUB_BUCKETS + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value (both inclusive) that land in bucket ``index``."""
    if index < EXACT_LIMIT:
        return index, index
    shift = index // SUB_BUCKETS - 1
    mantissa = index - shift * SUB_BUCKETS
    low = mantissa << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of values in log-linear buckets, plus the exact count, sum, min and max.

    Values above ``highest`` are counted in the top bucket (the exact maximum is still kept).
    Not thread-safe: give each thread its own and :meth:`merge` them afterwards.
    """

    __slots__ = ("_counts", "_highest", "count", "max", "min", "total")

    def __init__(self, highest: int = DEFAULT_HIGHEST) -> None:
        if highest < EXACT_LIMIT:
            raise ValueError(f"highest must be at least {EXACT_LIMIT}")
        self._highest = highest
        self._counts = [0] * (bucket_index(highest) + 1)
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        """Count one value (ValueError if negative)."""
        if value < 0:
            raise ValueError("a histogram records non-negative values")
        self._counts[bucket_index(min(value, self._highest))] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        self.max = max(self.max, value)
        self.count += 1
        self.total += value

    def record_all(self, values: Iterable[int]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s samples to this histogram (same ``highest`` required)."""
        if other._highest != self._highest:
            raise ValueError("only histograms with the same highest value merge")
        if other.count == 0:
            return
        for index, n in enumerate(other._counts):
            if n:
                self._counts[index] += n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> int:
        """The ``q``-th percentile (0 < q <= 100) by nearest rank; 0 when empty.

        Exact for values below :data:`EXACT_LIMIT`; otherwise at or above the true value by at
        most one bucket width (``value / SUB_BUCKETS``), and never above the maximum.
        """
        if not 0 < q <= PERCENT:
            raise ValueError("q must be in (0, 100]")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(q / PERCENT * self.count))
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max)
        return self.max  # unreachable: the counts add up to self.count

    def cdf(self) -> Iterator[tuple[int, float]]:
        """``(value, fraction of samples <= value)`` at the top of every non-empty bucket."""
        seen = 0
        for index, n in enumerate(self._counts):
            if n:
                seen += n
                yield min(bucket_bounds(index)[1], self.max), seen / self.count
