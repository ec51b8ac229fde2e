"""``metrics_listen``: the aggregator serves ``GET /metrics`` over HTTP (layer 3).

The aggregator holds every process's figures (the supervisor relays its own; the workers'
arrive with their batches), so a scrape is one render in this process and no socket round
trip. The server is uvicorn under :mod:`lucidd.http.server`'s guards, with few connections:
a scrape is anonymous, like the control socket's ``metrics``, and costs one render.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from lucidd.http.metrics_endpoint import metrics_app
from lucidd.http.server import HttpLimits, bind, bound_address, start, stop
from lucidd.listen import parse_listen
from lucidd.protocol import MetricsReply

log = logging.getLogger("lucidd.daemon.aggregator.metrics_http")

#: Scrapers at once (Prometheus keeps one connection per target).
METRICS_CONNECTIONS: Final = 16


async def serve_metrics(listen: str, metrics: Callable[[], MetricsReply]) -> None:
    """Serve ``metrics()`` at ``listen`` until cancelled. A socket that cannot be bound is
    logged and retried every few seconds (the port may be held by a process going away)."""
    address = parse_listen(listen)
    while True:
        try:
            sock = bind(address)
            break
        except OSError as exc:
            log.error("event=metrics_listen_failed listen=%s error=%s", listen, exc)
            await asyncio.sleep(5.0)
    running = await start(
        metrics_app(metrics), sock, HttpLimits(max_connections=METRICS_CONNECTIONS)
    )
    log.info("event=metrics_listening listen=%s", bound_address(sock))
    try:
        await asyncio.Event().wait()
    finally:
        await stop(running)
