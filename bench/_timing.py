"""Timing helpers of the in-process parts: medians of many short calls, in nanoseconds."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench._hdr import Histogram


def median_ns(samples_ns: list[int]) -> int:
    histogram = Histogram()
    histogram.record_all(samples_ns)
    return histogram.percentile(50)


def per_call_ns(call: Callable[[], object], count: int) -> int:
    """The median wall time of ``count`` calls of ``call``, in ns."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return median_ns(samples)


def paired_ns(
    call: Callable[[], object], baseline: Callable[[], object], count: int
) -> tuple[int, int]:
    """Median ns of ``call`` and of ``baseline``, called in turn ``count`` times each (so that
    a busy moment of the machine lands on both)."""
    clock = time.perf_counter_ns
    samples: tuple[list[int], list[int]] = ([], [])
    for _ in range(count):
        for which, function in enumerate((call, baseline)):
            t0 = clock()
            function()
            samples[which].append(clock() - t0)
    return median_ns(samples[0]), median_ns(samples[1])
