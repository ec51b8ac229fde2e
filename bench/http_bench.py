"""The REST path beside the Unix-socket path (issue 15), in the same run, against one daemon.

``lucidd http`` on 127.0.0.1 (a bearer token, keep-alive, stdlib ``http.client``) and the
daemon's data socket (:class:`lucidd.client.DataClient`), measured in turn so a busy moment of
the machine lands on both:

1. per-chunk latency, one chunk in flight, p50 and p99 at 64 KiB and 1 MiB (goal: HTTP p50 at
   64 KiB at most the socket's + 300 us), and at 10 MiB (goal: the original specification's
   "< 50 ms per chunk");
2. throughput of 16 concurrent clients (threads, one connection and one session each) at
   1 MiB (goal: HTTP at least 0.7x the socket's).

Nothing is asserted; the exit status is 1 when a goal is missed. Figures: docs/bench.md
("HTTP (issue 15)")::

    python bench/http_bench.py --quick      # about a minute on 2 cores
    python bench/http_bench.py --json http.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemon import REPO_ROOT, bench_daemon, checkout_pythonpath, short_tmp
from bench._hdr import Histogram
from bench._rows import Row, markdown
from lucidd.client import ControlClient, DataClient, format_session_id
from lucidd.testing import Daemon, DaemonError, HttpGateway
from lucidd.units import KiB, MiB

TOKEN: Final = "bench-" + "0" * 40
CLIENTS: Final = 16
GOAL_P50_EXTRA_US: Final = 300.0
GOAL_THROUGHPUT_RATIO: Final = 0.7
GOAL_10MIB_MS: Final = 50.0
NS_PER_US: Final = 1_000
NS_PER_MS: Final = 1_000_000


@dataclass(frozen=True)
class Settings:
    chunks_64k: int
    chunks_1m: int
    chunks_10m: int
    throughput_chunks: int  # per client, per round
    rounds: int
    workers: int


QUICK: Final = Settings(300, 60, 10, 8, 2, 2)
FULL: Final = Settings(2000, 300, 40, 24, 3, 2)


class RestClient:
    """One keep-alive HTTP/1.1 connection to the gateway, putting raw chunks."""

    def __init__(self, address: str, session: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.session = session
        self.headers = {
            "authorization": f"Bearer {TOKEN}",
            "content-type": "application/octet-stream",
        }

    def put(self, index: int, data: bytes) -> None:
        url = f"/api/v1/chunks/process?session_id={self.session}&chunk_index={index}"
        self.conn.request("POST", url, body=data, headers=self.headers)
        reply = self.conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {body[:200]!r}")

    def close(self) -> None:
        self.conn.close()


class SocketClient:
    def __init__(self, runtime_dir: Path, session: bytes) -> None:
        self.client = DataClient(runtime_dir)
        self.session = session

    def put(self, index: int, data: bytes) -> None:
        self.client.put(self.session, index, data)

    def close(self) -> None:
        self.client.close()


@contextlib.contextmanager
def daemon_and_gateway(settings: Settings) -> Iterator[tuple[Daemon, HttpGateway]]:
    base = short_tmp("lh-")
    env = {"LUCIDD_COMPRESSION": "off", "LUCIDD_MAX_CHUNK_SIZE": str(16 * MiB)}
    daemon = bench_daemon(base, settings.workers, env)
    gateway: HttpGateway | None = None
    try:
        daemon.start()
        tokens = daemon.state_dir / "keys" / "http-tokens"
        tokens.write_text(f"{os.geteuid()} {TOKEN}\n")
        tokens.chmod(0o600)
        gateway = HttpGateway(daemon, "127.0.0.1:0", {"PYTHONPATH": checkout_pythonpath(), **env})
        gateway.cwd = REPO_ROOT
        gateway.start()
        yield daemon, gateway
    finally:
        for process in (gateway, daemon):
            if process is not None and process.proc is not None:
                with contextlib.suppress(DaemonError):
                    process.stop()
        shutil.rmtree(base, ignore_errors=True)


def new_session(daemon: Daemon) -> bytes:
    with ControlClient(daemon.runtime_dir) as control:
        return control.open_session("off")


def paired_latency(
    daemon: Daemon, gateway: HttpGateway, size: int, count: int
) -> tuple[Histogram, Histogram]:
    """Latency of ``count`` puts on each path, one in flight, alternating (ns histograms)."""
    sock = SocketClient(daemon.runtime_dir, new_session(daemon))
    rest = RestClient(gateway.address, format_session_id(new_session(daemon)))
    data = os.urandom(size)
    histograms = (Histogram(), Histogram())
    clock = time.perf_counter_ns
    clients: tuple[SocketClient | RestClient, ...] = (sock, rest)
    try:
        for index in range(count + 3):  # three warm-up puts on each
            for which, client in enumerate(clients):
                started = clock()
                client.put(index, data)
                if index >= 3:
                    histograms[which].record(clock() - started)
    finally:
        sock.close()
        rest.close()
    return histograms


def stack_round_trip(daemon: Daemon, gateway: HttpGateway, count: int) -> tuple[float, float]:
    """Median us of the HTTP stack alone (``GET /openapi.json``: no daemon call) and of one
    control-socket call (``config``), alternating: what the stack costs by itself."""
    host, port = gateway.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    clock = time.perf_counter_ns
    samples: tuple[Histogram, Histogram] = (Histogram(), Histogram())
    with ControlClient(daemon.runtime_dir) as control:
        for _ in range(count):
            started = clock()
            conn.request("GET", "/openapi.json")
            conn.getresponse().read()
            samples[0].record(clock() - started)
            started = clock()
            control.config()
            samples[1].record(clock() - started)
    conn.close()
    return samples[0].percentile(50) / NS_PER_US, samples[1].percentile(50) / NS_PER_US


def throughput(
    make: Callable[[int], SocketClient | RestClient], per_client: int, size: int
) -> float:
    """MiB/s of CLIENTS threads, each putting ``per_client`` chunks on its own connection."""
    data = os.urandom(size)
    clients = [make(i) for i in range(CLIENTS)]
    start = threading.Barrier(CLIENTS + 1)
    errors: list[BaseException] = []

    def run(client: SocketClient | RestClient) -> None:
        start.wait()
        try:
            for index in range(per_client):
                client.put(index, data)
        except BaseException as exc:  # reported after the round
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return CLIENTS * per_client * size / MiB / elapsed


def measure(settings: Settings) -> list[Row]:
    rows: list[Row] = []
    with daemon_and_gateway(settings) as (daemon, gateway):
        stack_us, control_us = stack_round_trip(daemon, gateway, settings.chunks_64k)
        rows.append(
            Row("HTTP stack", "GET /openapi.json p50 (no daemon call)", stack_us, "us",
                "control socket call", control_us)
        )  # fmt: skip
        for size, count, label in (
            (64 * KiB, settings.chunks_64k, "64 KiB"),
            (1 * MiB, settings.chunks_1m, "1 MiB"),
            (10 * MiB, settings.chunks_10m, "10 MiB"),
        ):
            sock, rest = paired_latency(daemon, gateway, size, count)
            for q in (50, 99):
                base_us = sock.percentile(q) / NS_PER_US
                value_us = rest.percentile(q) / NS_PER_US
                goal, met = "", None
                if size == 64 * KiB and q == 50:
                    goal = f"<= socket + {GOAL_P50_EXTRA_US:.0f} us"
                    met = value_us <= base_us + GOAL_P50_EXTRA_US
                if size == 10 * MiB and q == 50:
                    goal = f"< {GOAL_10MIB_MS:.0f} ms per chunk"
                    met = value_us / 1000 < GOAL_10MIB_MS
                rows.append(
                    Row("latency, 1 in flight", f"HTTP p{q} at {label}", value_us, "us",
                        "socket", base_us, goal=goal, met=met)
                )  # fmt: skip
        sock_rates, rest_rates = [], []
        for _ in range(settings.rounds):
            sock_rates.append(
                throughput(
                    lambda _: SocketClient(daemon.runtime_dir, new_session(daemon)),
                    settings.throughput_chunks,
                    MiB,
                )
            )
            rest_rates.append(
                throughput(
                    lambda _: RestClient(gateway.address, format_session_id(new_session(daemon))),
                    settings.throughput_chunks,
                    MiB,
                )
            )
        best_sock, best_rest = max(sock_rates), max(rest_rates)
        rows.append(
            Row("throughput, 16 clients", "HTTP at 1 MiB", best_rest, "MiB/s", "socket",
                best_sock, goal=f">= {GOAL_THROUGHPUT_RATIO}x socket",
                met=best_rest >= GOAL_THROUGHPUT_RATIO * best_sock)
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer chunks and rounds")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    rows = measure(settings)
    print(f"settings: {settings}, {os.cpu_count()} CPUs")
    print(markdown(rows, []))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
