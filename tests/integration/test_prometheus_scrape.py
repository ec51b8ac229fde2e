"""A real Prometheus scrapes lucidd's own HTTP endpoints (issue 15): the daemon's
``metrics_listen`` (served by the aggregator) and ``lucidd http``'s ``/metrics``; then its
query API is asked for ``lucidd_chunks_acked_total`` and the histograms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from lucidd.client import DataClient, new_session_id
from lucidd.testing import Daemon, HttpGateway
from tests.prometheus import Prometheus, free_port, promtool_check

MakeDaemon = Callable[..., Daemon]
CHUNKS = 12


def put_chunks(daemon: Daemon, count: int = CHUNKS) -> None:
    session = new_session_id()
    with DataClient(daemon.runtime_dir) as client:
        client.put_many(session, ((i, b"m" * 4096) for i in range(count)))


def acked(result: list[dict[str, object]]) -> bool:
    return bool(result) and float(result[0]["value"][1]) >= CHUNKS  # type: ignore[index]


def test_prometheus_scrapes_the_daemons_metrics_listen(
    make_daemon: MakeDaemon, make_prometheus: Callable[[str], Prometheus]
) -> None:
    port = free_port()
    daemon = make_daemon(metrics_listen=f"127.0.0.1:{port}")
    put_chunks(daemon)
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    check = promtool_check(scraped.content)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "# TYPE lucidd_ack_latency_seconds histogram" in scraped.text
    openmetrics = httpx.get(
        f"http://127.0.0.1:{port}/metrics",
        headers={"accept": "application/openmetrics-text; version=1.0.0"},
        timeout=10,
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=10).status_code == 404
    prometheus = make_prometheus(f"127.0.0.1:{port}")
    prometheus.wait_for("lucidd_chunks_acked_total", until=acked)
    latency = prometheus.wait_for('lucidd_ack_latency_seconds_bucket{le="+Inf"}', until=acked)
    assert latency


def test_prometheus_scrapes_the_gateways_metrics(
    make_daemon: MakeDaemon, make_prometheus: Callable[[str], Prometheus], short_tmp: Path
) -> None:
    daemon = make_daemon()
    put_chunks(daemon)
    tokens = daemon.state_dir / "keys" / "http-tokens"
    tokens.write_text(f"0 {'t' * 40}\n")
    tokens.chmod(0o600)
    gateway = HttpGateway(daemon, f"127.0.0.1:{free_port()}").start()
    try:
        prometheus = make_prometheus(gateway.address)
        prometheus.wait_for("lucidd_chunks_acked_total", until=acked)
        prometheus.wait_for("lucidd_batch_fsync_seconds_count")
    finally:
        assert gateway.stop() == 0, gateway.log()
