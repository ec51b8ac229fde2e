"""``GET /metrics`` as an ASGI app (layer 2): what the daemon's ``metrics_listen`` serves.

It runs inside the aggregator, which holds every process's figures (the supervisor relays its
own, the workers' come with their batches), so a scrape costs one render and no socket round
trip. Anything else is ``404``; a scrape is anonymous, like the control socket's ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

from lucidd.http.asgi import Receive, Request, Scope, Send, respond, respond_problem
from lucidd.http.exposition import render
from lucidd.http.problems import problem
from lucidd.protocol import MetricsReply


def metrics_app(
    metrics: Callable[[], MetricsReply],
) -> Callable[[Scope, Receive, Send], object]:
    """The ASGI app serving ``metrics()`` in the Prometheus text format (or OpenMetrics)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        if request.path != "/metrics":
            await respond_problem(send, problem("no_route", f"no {request.path} here"))
        elif request.method not in ("GET", "HEAD"):
            await respond_problem(send, problem("method_not_allowed", "GET /metrics"))
        else:
            body, content_type = render(metrics(), request.header(b"accept"))
            await respond(send, 200, body, content_type)

    return app
