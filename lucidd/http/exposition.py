"""The daemon's ``metrics_reply`` in Prometheus' text format or OpenMetrics (layer 2).

:func:`render` is all the HTTP server needs for ``GET /metrics``: it turns one
:class:`~lucidd.protocol.MetricsReply` into the body and the content type that the request's
``Accept`` header asks for (``prometheus_client``'s own negotiation: OpenMetrics when it is
accepted, the classic text format 0.0.4 otherwise). Names, types and help texts come from
:mod:`lucidd.http.metric_catalog`. Each call builds its own private registry holding one
collector of that reply: nothing is global (the default registry, and its collectors of this
process's own CPU and memory, which are not the daemon's, are never used), so concurrent
requests share no state.

Every figure of the reply is exported, once: a name already taken in this rendering (two keys
that differ only in characters a metric name may not hold, or an unknown key that spells a
catalogue name) keeps its first figure, catalogued ones before unknown ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from lucidd import protocol as p
from lucidd.http.metric_catalog import (
    COUNTER_SUFFIX,
    HISTOGRAMS,
    METRICS,
    Kind,
    MetricInfo,
    describe,
    describe_histogram,
)

#: The samples a histogram family named N writes (N_bucket, N_sum, N_count; N_created in
#: OpenMetrics): another family may not take these names.
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
_COUNTER_SUFFIXES = (COUNTER_SUFFIX, "_created")
#: A bucket bound as its ``le`` label, the way prometheus_client's own histograms write it
#: (the library leaves the function untyped; its signature is this).
_le_label: Final[Callable[[float], str]] = floatToGoString


def render(reply: p.MetricsReply, accept: str | None) -> tuple[bytes, str]:
    """``reply`` as an exposition body, and its ``Content-Type``.

    ``accept`` is the request's ``Accept`` header (None or "": the text format 0.0.4).
    """
    encoder, content_type = choose_encoder(accept or "")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReplyCollector(reply))
    return encoder(registry), content_type


class ReplyCollector(Collector):
    """The families of one ``metrics_reply``: counters and gauges, then histograms, each in
    the catalogue's order, then the keys it does not know, sorted."""

    def __init__(self, reply: p.MetricsReply) -> None:
        self._reply = reply

    def collect(self) -> Iterator[Metric]:
        taken: set[str] = set()
        for info, value in self._figures():
            if _claim(taken, info):
                yield _family(info, value)
        for info, histogram in self._histograms():
            if _claim(taken, info):
                yield _histogram_family(info, histogram)

    def _figures(self) -> Iterator[tuple[MetricInfo, float]]:
        metrics = self._reply.metrics
        known = [key for key in METRICS if key in metrics]
        unknown = sorted(key for key in metrics if key not in METRICS)
        for key in [*known, *unknown]:
            yield describe(key), metrics[key]

    def _histograms(self) -> Iterator[tuple[MetricInfo, p.Histogram]]:
        histograms = self._reply.histograms
        known = [key for key in HISTOGRAMS if key in histograms]
        unknown = sorted(key for key in histograms if key not in HISTOGRAMS)
        for key in [*known, *unknown]:
            yield describe_histogram(key), histograms[key]


def _sample_names(info: MetricInfo) -> set[str]:
    """Every sample name ``info``'s family may write, in either format."""
    if info.kind == Kind.HISTOGRAM:
        return {info.name + suffix for suffix in _HISTOGRAM_SUFFIXES} | {info.name}
    if info.kind == Kind.COUNTER:
        base = info.name.removesuffix(COUNTER_SUFFIX)
        return {base + suffix for suffix in _COUNTER_SUFFIXES} | {base}
    return {info.name}


def _claim(taken: set[str], info: MetricInfo) -> bool:
    """Take ``info``'s names for this rendering; False if one of them is taken already."""
    names = _sample_names(info)
    if names & taken:
        return False
    taken.update(names)
    return True


def _family(info: MetricInfo, value: float) -> Metric:
    if info.kind == Kind.COUNTER:
        return CounterMetricFamily(info.name, info.help, value=value, unit=info.unit)
    return GaugeMetricFamily(info.name, info.help, value=value, unit=info.unit)


def _histogram_family(info: MetricInfo, histogram: p.Histogram) -> Metric:
    """Prometheus' buckets are cumulative and end with ``+Inf``; the wire's are not."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        cumulative += count
        buckets.append((_le_label(bound), float(cumulative)))
    cumulative += sum(histogram.counts[len(histogram.bounds) :])
    buckets.append(("+Inf", float(cumulative)))
    return HistogramMetricFamily(
        info.name, info.help, buckets=buckets, sum_value=histogram.sum, unit=info.unit
    )
