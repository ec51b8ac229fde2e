"""``lucidd http``: the REST gateway process (layer 4), a client of the daemon's sockets.

It is its own process (its own unit, ``lucidd-http.service``) so a fault in HTTP handling
cannot take the daemon down: it holds no key, no store and no shared memory, only the two
sockets any local client may open, and it acts on them as each request's caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from lucidd.errors import ConfigError
from lucidd.http.auth import Tokens
from lucidd.http.daemon_link import DaemonLink
from lucidd.http.gateway import Gateway
from lucidd.http.server import HttpLimits, bind, bound_address, start, stop
from lucidd.listen import parse_listen

log = logging.getLogger("lucidd.http")


@dataclass(frozen=True)
class GatewaySettings:
    """What ``lucidd http`` needs of the configuration (read by the daemon's config loader)."""

    listen: str
    runtime_dir: Path
    #: The tokens file; None: no bearer tokens (only a Unix ``listen`` is then allowed).
    tokens_file: Path | None
    limits: HttpLimits = field(default_factory=HttpLimits)
    #: Requests of one user in progress at once (beyond it: 429).
    max_requests_per_user: int = 64
    #: Seconds one call on the daemon's sockets may take before it is given up.
    daemon_timeout: float = 60.0


def run_gateway(settings: GatewaySettings, ready: Callable[[str], None]) -> int:
    """Serve until SIGTERM or SIGINT; ``ready(address)`` once listening. Returns 0."""
    address = parse_listen(settings.listen)
    tokens = None
    if settings.tokens_file is not None and settings.tokens_file.exists():
        tokens = Tokens.load(settings.tokens_file)
    if not address.is_unix and tokens is None:
        raise ConfigError(
            f"http_listen = {settings.listen!r} is TCP: it needs bearer tokens "
            f"(http_tokens, looked for at {settings.tokens_file}), or listen on unix:PATH"
        )
    return uvloop.run(_serve(settings, tokens, ready))


async def _serve(
    settings: GatewaySettings, tokens: Tokens | None, ready: Callable[[str], None]
) -> int:
    link = DaemonLink(
        settings.runtime_dir,
        max_requests=settings.max_requests_per_user,
        timeout=settings.daemon_timeout,
    )
    sock = bind(parse_listen(settings.listen))
    server = await start(Gateway(link, tokens), sock, settings.limits)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    where = bound_address(sock)
    log.info("event=http_ready listen=%s tokens=%d pid=%d", where, len(tokens or ()), os.getpid())
    ready(where)
    await stopping.wait()
    log.info("event=http_stopping")
    await stop(server)
    await link.close()
    return 0
