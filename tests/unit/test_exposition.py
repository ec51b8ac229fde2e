"""The Prometheus exposition of a metrics_reply (lucidd.http.exposition, metric_catalog).

Parsed back with prometheus_client's parsers (text format and OpenMetrics) and, where it is
installed, checked with ``promtool check metrics`` (Prometheus' own linter).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, cast

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_text

from lucidd import protocol as p
from lucidd.daemon.aggregator.main import AGGREGATOR_COUNTERS
from lucidd.daemon.replication.objects import ObjectStore
from lucidd.daemon.replication.replicator import Replicator
from lucidd.daemon.supervisor.replication_link import ReplicationLink
from lucidd.http.exposition import render
from lucidd.http.metric_catalog import (
    HISTOGRAMS,
    METRICS,
    PREFIX,
    Kind,
    MetricInfo,
    describe,
    describe_histogram,
)
from tests.prometheus import needs_promtool, promtool_check

#: prometheus_client's OpenMetrics parser (the library leaves it untyped; this is its type).
parse_openmetrics: Callable[[str], Iterator[Metric]] = text_string_to_metric_families

OPENMETRICS: Final = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
#: What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT: Final = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def families(body: bytes) -> dict[str, Metric]:
    return {f.name: f for f in parse_text(body.decode())}


def sample_values(family: Metric) -> dict[str, float]:
    """Sample name (with its ``le`` for buckets) -> value."""
    values: dict[str, float] = {}
    for sample in family.samples:
        le = sample.labels.get("le")
        values[f"{sample.name}{{le={le}}}" if le else sample.name] = sample.value
    return values


def full_reply() -> p.MetricsReply:
    """A reply with every catalogued figure and histogram, each with a distinct value."""
    metrics = {key: float(i + 1) for i, key in enumerate(METRICS)}
    histograms = {
        key: p.Histogram([0.001, 0.01, 1.0], [1, 2, 3, 4], 12.5 + i)
        for i, key in enumerate(HISTOGRAMS)
    }
    return p.MetricsReply(req=1, metrics=metrics, histograms=histograms)


# -- the catalogue ----------------------------------------------------------------------------


def test_catalogue_names_follow_prometheus_conventions() -> None:
    entries = [*METRICS.values(), *HISTOGRAMS.values()]
    names = [info.name for info in entries]
    assert len(names) == len(set(names))
    for info in entries:
        assert re.fullmatch(r"lucidd_[a-z0-9_]+", info.name), info.name
        assert info.help and info.help.endswith("."), info.name
        assert info.name.endswith("_total") == (info.kind == Kind.COUNTER), info.name
        if info.unit:
            assert info.unit in ("seconds", "bytes")
            assert info.name.removesuffix("_total").endswith(f"_{info.unit}"), info.name
        elif re.search(r"_(seconds|bytes)(_total)?$", info.name):
            pytest.fail(f"{info.name} ends with a unit but declares none")
    assert all(info.kind == Kind.HISTOGRAM for info in HISTOGRAMS.values())


def test_a_catalogue_entry_must_agree_with_its_name() -> None:
    with pytest.raises(ValueError, match="counter"):
        MetricInfo("lucidd_x", Kind.COUNTER, "x.")
    with pytest.raises(ValueError, match="counter"):
        MetricInfo("lucidd_x_total", Kind.GAUGE, "x.")
    with pytest.raises(ValueError, match="unit"):
        MetricInfo("lucidd_x_total", Kind.COUNTER, "x.", "seconds")


def test_every_figure_the_daemon_counts_is_catalogued(tmp_path: Path) -> None:
    # The keys a real daemon reports are checked by tests/integration/test_metrics_exposition;
    # these are the ones only some daemons report (replication).
    link = ReplicationLink(lambda _: None, lambda *_: None, wait=True, timeout=1.0)
    replicator = Replicator(tmp_path, cast(ObjectStore, None), "prefix", "host")
    keys = {*AGGREGATOR_COUNTERS, *link.metrics(), *replicator.counters}
    keys |= {"replication_lag_chunks", "replication_lag_bytes", "replication_lag_seconds"}
    keys.add("replicator_restarts_total")
    assert sorted(keys - set(METRICS)) == []


def test_ring_slots_total_is_a_gauge_without_the_counter_suffix() -> None:
    info = describe("ring_slots_total")
    assert (info.name, info.kind) == ("lucidd_ring_slots", Kind.GAUGE)
    assert describe("bytes_received_total").name == "lucidd_received_payload_bytes_total"


@pytest.mark.parametrize(
    ("key", "name", "kind"),
    [
        ("new_things_total", "lucidd_new_things_total", Kind.COUNTER),
        ("new_level", "lucidd_new_level", Kind.GAUGE),
        ("odd-key.é", "lucidd_odd_key__", Kind.GAUGE),
        ("queue_count", "lucidd_queue_count_value", Kind.GAUGE),
        ("latency_sum", "lucidd_latency_sum_value", Kind.GAUGE),
        ("foo_bucket", "lucidd_foo_bucket_value", Kind.GAUGE),
    ],
)
def test_an_unknown_key_is_still_exported_under_a_valid_name(
    key: str, name: str, kind: Kind
) -> None:
    info = describe(key)
    assert (info.name, info.kind) == (name, kind)
    assert key in info.help
    body, _ = render(p.MetricsReply(req=1, metrics={key: 7.0}), None)
    (family,) = parse_text(body.decode())
    assert family.type == kind.value
    assert [s.value for s in family.samples] == [7.0]
    assert describe_histogram("new_histogram").name == "lucidd_new_histogram"


# -- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "", "*/*", "text/plain", "application/json"])
def test_the_text_format_is_the_default(accept: str | None) -> None:
    body, content_type = render(full_reply(), accept)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert not body.endswith(b"# EOF\n")


def test_every_family_has_help_and_type_and_its_catalogued_value() -> None:
    reply = full_reply()
    body, _ = render(reply, None)
    text = body.decode()
    found = families(body)
    for key, value in reply.metrics.items():
        info = METRICS[key]
        base = info.name.removesuffix("_total") if info.kind == Kind.COUNTER else info.name
        assert f"# HELP {info.name} " in text
        assert f"# TYPE {info.name} {info.kind.value}\n" in text
        assert found[base].type == info.kind.value
        assert sample_values(found[base])[info.name] == value
    for key in reply.histograms:
        assert f"# TYPE {HISTOGRAMS[key].name} histogram\n" in text
    assert all(name.startswith(PREFIX) for name in found)
    # A private registry: nothing of the renderer's own process (process_*, python_gc_*, ...).
    assert len(found) == len(METRICS) + len(HISTOGRAMS)


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    histogram = p.Histogram([0.001, 0.01, 1.0], [1, 2, 3, 4], 12.5)
    reply = p.MetricsReply(req=1, metrics={}, histograms={"ack_latency_seconds": histogram})
    body, _ = render(reply, None)
    values = sample_values(families(body)["lucidd_ack_latency_seconds"])
    assert values == {
        "lucidd_ack_latency_seconds_bucket{le=0.001}": 1.0,
        "lucidd_ack_latency_seconds_bucket{le=0.01}": 3.0,
        "lucidd_ack_latency_seconds_bucket{le=1.0}": 6.0,
        "lucidd_ack_latency_seconds_bucket{le=+Inf}": 10.0,
        "lucidd_ack_latency_seconds_count": 10.0,
        "lucidd_ack_latency_seconds_sum": 12.5,
    }


@pytest.mark.parametrize("accept", [OPENMETRICS, PROMETHEUS_ACCEPT])
def test_openmetrics_when_the_client_accepts_it(accept: str) -> None:
    reply = full_reply()
    body, content_type = render(reply, accept)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(body.decode())}
    acked = parsed["lucidd_chunks_acked"]
    assert acked.type == "counter"
    assert sample_values(acked)["lucidd_chunks_acked_total"] == reply.metrics["chunks_acked_total"]
    assert parsed["lucidd_ack_latency_seconds"].unit == "seconds"
    assert parsed["lucidd_received_payload_bytes"].unit == "bytes"
    assert len(parsed) == len(METRICS) + len(HISTOGRAMS)


def test_a_name_already_taken_keeps_its_first_figure() -> None:
    # "ring_slots" (unknown) would be lucidd_ring_slots, the catalogue's name of
    # ring_slots_total; "a.b" and "a-b" both become lucidd_a_b.
    metrics = {"ring_slots": 1.0, "ring_slots_total": 512.0, "a.b": 2.0, "a-b": 3.0}
    body, _ = render(p.MetricsReply(req=1, metrics=metrics), None)
    found = families(body)
    assert sample_values(found["lucidd_ring_slots"]) == {"lucidd_ring_slots": 512.0}
    assert sample_values(found["lucidd_a_b"]) == {"lucidd_a_b": 3.0}  # sorted: "a-b" < "a.b"
    body, _ = render(p.MetricsReply(req=1, metrics=metrics), OPENMETRICS)
    list(parse_openmetrics(body.decode()))  # no duplicate family


def test_an_empty_reply_renders_an_empty_exposition() -> None:
    assert render(p.MetricsReply(req=1, metrics={}), None)[0] == b""
    assert render(p.MetricsReply(req=1, metrics={}), OPENMETRICS)[0] == b"# EOF\n"


@needs_promtool
def test_promtool_finds_nothing_to_lint_in_a_full_reply() -> None:
    body, _ = render(full_reply(), None)
    done = promtool_check(body)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


@needs_promtool
def test_promtool_accepts_unknown_keys_as_exported() -> None:
    metrics = {"new_things_total": 1.0, "queue_count": 2.0, "odd-key.é": 3.0, "level": 4.0}
    histograms = {"new_spread": p.Histogram([1.0], [1, 0], 0.5)}  # ("histogram" would lint)
    body, _ = render(p.MetricsReply(req=1, metrics=metrics, histograms=histograms), None)
    done = promtool_check(body)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
