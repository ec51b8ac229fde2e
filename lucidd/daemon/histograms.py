"""Fixed-bucket histograms of the daemon's figures (layer 1: pure, no I/O).

A process counts its observations in a :class:`HistogramAccumulator` and sends snapshots
(:class:`lucidd.protocol.Histogram`, the wire form of ``metrics_reply``); histograms of the
same name from several processes are added with :func:`merge_histograms`. The buckets of each
figure are fixed for the life of the process (:func:`batch_chunk_bounds` reads ``batch_size``
once), so successive snapshots of one figure always have the same bounds and a scraper sees
cumulative counts, as Prometheus expects.

Which process records what (the names are the keys of ``MetricsReply.histograms``):

- ``ack_latency_seconds`` (supervisor): from a chunk's payload being fully received to its
  durable ack being sent, for every ack (a resend compared with its record too).
- ``seal_seconds``, ``write_seconds``, ``fsync_seconds`` (aggregator, from every worker's
  group commit): the time one batch spent in that stage.
- ``batch_chunks`` (aggregator): chunks per group commit, failed ones included.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Final

from lucidd import protocol as p

ACK_LATENCY: Final = "ack_latency_seconds"
SEAL: Final = "seal_seconds"
WRITE: Final = "write_seconds"
FSYNC: Final = "fsync_seconds"
BATCH_CHUNKS: Final = "batch_chunks"

#: Upper bounds (seconds) for every time: 50 µs to 10 s in 1-2.5-5 steps per decade, as
#: Prometheus' default buckets (a fast fsync is ~100 µs; a stalled disk shows as > 10 s).
TIME_BOUNDS_S: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def batch_chunk_bounds(batch_size: int) -> tuple[float, ...]:
    """Upper bounds for chunks per batch: powers of two below ``batch_size``, then
    ``batch_size`` itself (a batch holds at most that many: the last bucket stays empty)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bounds: list[float] = []
    power = 1
    while power < batch_size:
        bounds.append(float(power))
        power *= 2
    bounds.append(float(batch_size))
    return tuple(bounds)


def _check_bounds(bounds: Sequence[float]) -> None:
    if not bounds:
        raise ValueError("a histogram needs at least one bucket bound")
    if not all(math.isfinite(b) for b in bounds):
        raise ValueError(f"bucket bounds must be finite, got {list(bounds)}")
    if any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"bucket bounds must be strictly ascending, got {list(bounds)}")


class HistogramAccumulator:
    """Observations of one figure in fixed buckets (one process; not thread-safe).

    ``observe`` costs a binary search over the bounds: cheap enough for every ack.
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float]) -> None:
        _check_bounds(bounds)
        self.bounds: tuple[float, ...] = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    @property
    def count(self) -> int:
        """How many observations were made."""
        return sum(self._counts)

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is at least ``value``."""
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        self._counts[bisect_left(self.bounds, value)] += 1
        self._sum += value

    def merge(self, other: p.Histogram) -> None:
        """Add another histogram of the same bounds (a snapshot of another process)."""
        if list(other.bounds) != list(self.bounds) or len(other.counts) != len(self._counts):
            raise ValueError(
                f"cannot merge a histogram of bounds {other.bounds} into one of {self.bounds}"
            )
        for i, n in enumerate(other.counts):
            self._counts[i] += n
        self._sum += other.sum

    def snapshot(self) -> p.Histogram:
        """The observations so far, as the wire carries them (a copy)."""
        return p.Histogram(list(self.bounds), list(self._counts), self._sum)

    @classmethod
    def of(cls, histogram: p.Histogram) -> HistogramAccumulator:
        """An accumulator that starts from ``histogram``'s observations."""
        accumulator = cls(histogram.bounds)
        accumulator.merge(histogram)
        return accumulator


def merge_histograms(*sources: Mapping[str, p.Histogram]) -> dict[str, p.Histogram]:
    """Histograms of several processes, those of one name added up (same bounds required)."""
    merged: dict[str, HistogramAccumulator] = {}
    for source in sources:
        for name, histogram in source.items():
            accumulator = merged.get(name)
            if accumulator is None:
                merged[name] = HistogramAccumulator.of(histogram)
            else:
                accumulator.merge(histogram)
    return {name: accumulator.snapshot() for name, accumulator in merged.items()}


def snapshots(accumulators: Mapping[str, HistogramAccumulator]) -> dict[str, p.Histogram]:
    """A snapshot of each accumulator, by name."""
    return {name: accumulator.snapshot() for name, accumulator in accumulators.items()}


def time_histograms(names: Iterable[str]) -> dict[str, HistogramAccumulator]:
    """One empty accumulator with :data:`TIME_BOUNDS_S` per name."""
    return {name: HistogramAccumulator(TIME_BOUNDS_S) for name in names}
