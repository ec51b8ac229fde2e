"""The real daemon's metrics in Prometheus' formats (issue 15): the whole ``metrics_reply`` over
the control socket, rendered by lucidd.http.exposition, linted by ``promtool check metrics``,
and scraped by a real Prometheus (tests/prometheus.py) from a small stdlib HTTP server.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_text

from lucidd import protocol as p
from lucidd.client import AsyncControlClient, ControlClient, DataClient, new_session_id
from lucidd.http.exposition import render
from lucidd.http.metric_catalog import HISTOGRAMS, METRICS
from tests.conftest import Daemon
from tests.prometheus import Prometheus, needs_promtool, promtool_check

#: prometheus_client's OpenMetrics parser (the library leaves it untyped; this is its type).
parse_openmetrics: Callable[[str], Iterator[Metric]] = text_string_to_metric_families

#: The supervisor relays its figures every 0.1 s while they change; this bounds the wait.
RELAY_TIMEOUT_S: Final = 30.0
SESSIONS: Final = 3
CHUNKS_PER_SESSION: Final = 40
#: A full Batch frame (batch_size): a worker batch of more than ~50 chunks reaches the
#: aggregator in several messages (ipc.StageTimes), and must still count once, whole.
BATCH_CHUNKS: Final = 100
#: Chunks sealed: put_many in every session, then one Batch frame; then one resend.
SEALED: Final = SESSIONS * CHUNKS_PER_SESSION + BATCH_CHUNKS
ACKED: Final = SEALED + 1


def put_chunks(daemon: Daemon) -> None:
    """SEALED new chunks, one at a time and in a Batch frame, then a resend of a stored one
    (acknowledged again after a comparison, never sealed twice)."""
    sessions = [new_session_id() for _ in range(SESSIONS)]
    with DataClient(daemon.runtime_dir) as data:
        for session in sessions:
            payloads = ((i, os.urandom(2000 + i)) for i in range(CHUNKS_PER_SESSION))
            data.put_many(session, payloads, window=16)
        batch = [(CHUNKS_PER_SESSION + i, os.urandom(500)) for i in range(BATCH_CHUNKS)]
        data.put_batch(sessions[0], batch)
        data.put(sessions[0], batch[0][0], batch[0][1])


def settled_reply(daemon: Daemon) -> p.MetricsReply:
    """The metrics_reply once the supervisor's relayed figures count every ack."""
    deadline = time.monotonic() + RELAY_TIMEOUT_S
    with ControlClient(daemon.runtime_dir) as control:
        while True:
            reply = control.metrics_reply()
            acked = reply.metrics.get("chunks_acked_total")
            latency = reply.histograms.get("ack_latency_seconds")
            if acked == ACKED and latency is not None and sum(latency.counts) == ACKED:
                return reply
            assert time.monotonic() < deadline, (acked, latency)
            time.sleep(0.1)


def by_name(body: bytes) -> dict[str, Metric]:
    return {family.name: family for family in parse_text(body.decode())}


def value(families: dict[str, Metric], family: str, sample: str | None = None) -> float:
    wanted = sample or family
    (found,) = [s.value for s in families[family].samples if s.name == wanted]
    return found


def buckets(families: dict[str, Metric], name: str) -> list[float]:
    return [s.value for s in families[name].samples if s.name == f"{name}_bucket"]


@pytest.fixture
def busy_daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    daemon = make_daemon()
    put_chunks(daemon)
    return daemon


def test_the_rendered_metrics_count_every_chunk_and_batch(busy_daemon: Daemon) -> None:
    reply = settled_reply(busy_daemon)
    # Every figure this daemon reports has a name in the catalogue (no made-up one).
    assert sorted(set(reply.metrics) - set(METRICS)) == []
    assert sorted(reply.histograms) == sorted(HISTOGRAMS)
    body, content_type = render(reply, None)
    assert content_type.startswith("text/plain; version=0.0.4")
    found = by_name(body)
    assert value(found, "lucidd_chunks_acked", "lucidd_chunks_acked_total") == ACKED
    assert value(found, "lucidd_chunks_sealed", "lucidd_chunks_sealed_total") == SEALED
    # Every ack is one latency, the resend's included.
    assert value(found, "lucidd_ack_latency_seconds", "lucidd_ack_latency_seconds_count") == ACKED
    # Every group commit is counted once, with all its chunks, in each per-batch histogram.
    batches = value(found, "lucidd_batches", "lucidd_batches_total")
    assert 1 <= batches <= SEALED
    assert value(found, "lucidd_batch_chunks", "lucidd_batch_chunks_sum") == SEALED
    for name in ("batch_chunks", "batch_seal_seconds", "batch_write_seconds"):
        assert value(found, f"lucidd_{name}", f"lucidd_{name}_count") == batches, name
    assert value(found, "lucidd_batch_fsync_seconds", "lucidd_batch_fsync_seconds_count") == (
        batches
    )
    assert value(found, "lucidd_batch_seal_seconds", "lucidd_batch_seal_seconds_sum") == (
        pytest.approx(reply.metrics["stage_seal_seconds_total"])
    )
    for name in ("lucidd_ack_latency_seconds", "lucidd_batch_chunks", "lucidd_batch_fsync_seconds"):
        counts = buckets(found, name)
        assert counts == sorted(counts), name  # cumulative
    # No batch holds more chunks than batch_size (the last bound): +Inf adds nothing.
    chunk_buckets = buckets(found, "lucidd_batch_chunks")
    assert chunk_buckets[-1] == chunk_buckets[-2] == batches
    # The same reply in OpenMetrics.
    body, content_type = render(reply, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    parsed = {family.name: family for family in parse_openmetrics(body.decode())}
    assert parsed["lucidd_chunks_acked"].type == "counter"


@needs_promtool
def test_promtool_finds_nothing_to_lint_in_the_daemon_s_metrics(busy_daemon: Daemon) -> None:
    body, _ = render(settled_reply(busy_daemon), None)
    done = promtool_check(body)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), body.decode()


def test_the_async_client_returns_the_whole_reply(busy_daemon: Daemon) -> None:
    settled = settled_reply(busy_daemon)

    async def ask() -> tuple[p.MetricsReply, dict[str, float]]:
        async with await AsyncControlClient.connect(busy_daemon.runtime_dir) as control:
            return await control.metrics_reply(), await control.metrics()

    reply, metrics = asyncio.run(ask())
    assert isinstance(reply, p.MetricsReply)
    assert reply.metrics["chunks_acked_total"] == settled.metrics["chunks_acked_total"]
    assert sum(reply.histograms["ack_latency_seconds"].counts) == ACKED
    assert metrics["chunks_acked_total"] == ACKED


# -- a real Prometheus scrapes the rendering --------------------------------------------------


class MetricsServer:
    """``GET /metrics``: a fresh metrics_reply of ``daemon``, rendered for the request's
    ``Accept`` (what the HTTP process does, in a few lines of the standard library)."""

    def __init__(self, daemon: Daemon) -> None:
        self.content_types: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                with ControlClient(daemon.runtime_dir) as control:
                    reply = control.metrics_reply()
                body, content_type = render(reply, self.headers.get("Accept"))
                server.content_types.append(content_type)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: pytest shows what a failing test printed."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def target(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{host!s}:{port}"

    def __enter__(self) -> MetricsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def metrics_server(busy_daemon: Daemon) -> Iterator[MetricsServer]:
    with MetricsServer(busy_daemon) as server:
        yield server


def test_prometheus_scrapes_the_rendering(
    make_prometheus: Callable[[str], Prometheus],  # first: it skips without prometheus
    busy_daemon: Daemon,
    metrics_server: MetricsServer,
) -> None:
    settled_reply(busy_daemon)
    prometheus = make_prometheus(metrics_server.target)
    result = prometheus.wait_for("lucidd_chunks_acked_total")
    (series,) = result
    assert series["metric"]["job"] == "lucidd"
    assert float(series["value"][1]) == ACKED
    (chunks,) = prometheus.wait_for("lucidd_batch_chunks_sum")
    assert float(chunks["value"][1]) == SEALED
    (latency,) = prometheus.wait_for('lucidd_ack_latency_seconds_bucket{le="+Inf"}')
    assert float(latency["value"][1]) == ACKED
    # Prometheus asked for OpenMetrics, and got it.
    assert metrics_server.content_types
    assert all(t.startswith("application/openmetrics-text") for t in metrics_server.content_types)
    (target,) = prometheus.targets()
    assert target["health"] == "up", target
