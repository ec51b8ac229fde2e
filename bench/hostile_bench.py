"""A good client's service while a hostile local client attacks the daemon (issue 10).

Starts one real daemon (``bench/_daemon.py``; compression off, default bounds) and, in the same
run, measures a good client — ``put_many`` of ``--chunk-size`` chunks with ``--window`` in
flight on a connection it opened beforehand (``bench/_lucidd.pipelined``) — first alone, then
while each attack runs in a process of its own:

- ``stalled``: 43 connections send a chunk header (3 x 10 MiB + 40 x 64 KiB announced, more
  than the whole ring) and 40 payload bytes, then nothing; every connection the daemon drops is
  opened again at once (a persistent attacker);
- ``flood``: one connection pipelines one-byte chunks far past the reorder window (each is
  refused with ``busy``) as fast as it can, and reads its replies;
- ``never_read_data``: the same flood, but the attacker never reads its replies;
- ``never_read_control``: one control connection pipelines 120 ``read`` requests of a 10 MiB
  chunk and never reads;
- ``exhaustion``: 930 data connections opened and held idle (those past ``max_connections``
  get ``busy`` and are closed).

For each: the good client's throughput and p99 latency as ratios of its figures alone, and the
daemon's peak RSS (summed over its processes, sampled every 0.5 s) against its bound: the peak
without attack plus what the configured limits allow the attack (see :func:`allowance`).
Goals (issue 10): throughput >= 50 %, p99 <= 10x, peak RSS <= bound + 20 %::

    python bench/hostile_bench.py --quick      # about a minute on 2 cores
    python bench/hostile_bench.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._baselines import Workload
from bench._daemon import daemon_processes, read_metrics, started_daemon
from bench._lucidd import RunResult, pipelined
from bench._memory import MB, MemoryWatch
from bench._results import log
from lucidd import protocol as p
from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.daemon.config import Config
from lucidd.daemon.supervisor.ingest import SCRATCH_SIZE
from lucidd.daemon.supervisor.main import METRICS_RELAY_S
from lucidd.units import KiB, MiB, parse_size

ATTACKS: Final = ("stalled", "flood", "never_read_data", "never_read_control", "exhaustion")
STALLED_LENGTHS: Final = (10 * MiB,) * 3 + (64 * KiB,) * 40
STALLED_SENT: Final = 40
BIG_CHUNK: Final = 10 * MiB
PIPELINED_READS: Final = 120
EXHAUSTION_CONNECTIONS: Final = 930
FLOOD_BURST: Final = 10_000
READY_TIMEOUT_S: Final = 60.0
#: The daemon's own per-connection cost beyond the scratch buffer (objects, decoder, timer).
CONNECTION_OVERHEAD: Final = 16 * KiB
GOAL_THROUGHPUT: Final = 0.5
GOAL_P99: Final = 10.0
GOAL_MEMORY: Final = 1.2
NS_PER_US: Final = 1000
#: The daemon's counters that show each attack being defeated (their change per phase).
DEFENCE_COUNTERS: Final = (
    "payload_timeouts_total",
    "connections_refused_total",
    "peer_hangups_total",
    "backpressure_pauses_total",
)
QUICK_COUNT: Final = 5000


@dataclass(frozen=True)
class Settings:
    workers: int = 2
    chunk_size: int = 64 * KiB
    window: int = 8
    count: int = 20_000
    attacks: tuple[str, ...] = ATTACKS


# --- attackers (each runs in a forked process until it is terminated) -----------------------


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def _stalled_one(data_sock: Path, length: int) -> socket.socket:
    sock = _connect(data_sock)
    header = p.Chunk(req=1, session=new_session_id(), index=0, length=length)
    sock.sendall(p.encode_frame(header) + b"x" * STALLED_SENT)
    return sock


def attack_stalled(runtime_dir: Path, ready: Event) -> None:
    path = runtime_dir / "data.sock"
    held = {_stalled_one(path, length): length for length in STALLED_LENGTHS}
    ready.set()
    while True:  # a dropped connection is opened again, as a persistent attacker would
        readable, _, _ = select.select(list(held), [], [])
        for sock in readable:
            if sock.recv(65536):
                continue  # its payload_timeout error; the close follows
            length = held.pop(sock)
            sock.close()
            held[_stalled_one(path, length)] = length


def _refused_chunks(count: int) -> bytes:
    session = new_session_id()
    return b"".join(
        p.encode_frame(p.Chunk(req=i + 1, session=session, index=10**6 + i, length=1)) + b"x"
        for i in range(count)
    )


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(1 << 20):
            pass


def _flood(runtime_dir: Path, ready: Event, *, read: bool) -> None:
    sock = _connect(runtime_dir / "data.sock")
    if read:
        threading.Thread(target=_drain, args=(sock,), daemon=True).start()
    burst = _refused_chunks(FLOOD_BURST)
    sock.sendall(burst)
    ready.set()
    while True:
        sock.sendall(burst)  # blocks for good once the daemon stops reading (never_read)


def attack_flood(runtime_dir: Path, ready: Event) -> None:
    _flood(runtime_dir, ready, read=True)


def attack_never_read_data(runtime_dir: Path, ready: Event) -> None:
    _flood(runtime_dir, ready, read=False)


def attack_never_read_control(runtime_dir: Path, session: bytes, ready: Event) -> None:
    sock = _connect(runtime_dir / "control.sock")
    sock.sendall(
        b"".join(
            p.encode_frame(p.ReadChunk(req=i + 1, session=session, index=0))
            for i in range(PIPELINED_READS)
        )
    )
    ready.set()
    threading.Event().wait()  # hold it, read nothing


def attack_exhaustion(runtime_dir: Path, ready: Event) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = []
    for _ in range(EXHAUSTION_CONNECTIONS):
        with contextlib.suppress(OSError):
            held.append(_connect(runtime_dir / "data.sock"))
    ready.set()
    threading.Event().wait()


@contextlib.contextmanager
def attacking(target: Callable[..., None], *args: Any) -> Iterator[None]:
    """Run ``target(*args, ready)`` in a forked process while the block runs."""
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    process = ctx.Process(target=target, args=(*args, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(READY_TIMEOUT_S):
            raise RuntimeError(f"{target.__name__} did not get going")
        yield
    finally:
        process.kill()
        process.join()


# --- measuring -------------------------------------------------------------------------------


def allowance(attack: str, config: Config) -> int:
    """Bytes the configured limits let ``attack`` add to the daemon's memory (see module doc)."""
    per_connection = SCRATCH_SIZE + CONNECTION_OVERHEAD
    return {
        "none": 0,
        "stalled": len(STALLED_LENGTHS) * per_connection,
        "flood": per_connection + config.max_reply_buffer,
        "never_read_data": per_connection + config.max_reply_buffer,
        # The buffer, plus the one reply being made: plaintext, record and encoded frame.
        "never_read_control": config.max_reply_buffer + 3 * BIG_CHUNK,
        "exhaustion": config.max_connections * per_connection,
    }[attack]


@dataclass
class Row:
    attack: str
    seconds: float
    chunks_per_s: float
    p99_us: float
    peak_rss_mb: float
    bound_mb: float = 0.0
    throughput_ratio: float = 1.0
    p99_ratio: float = 1.0
    defences: dict[str, float] = field(default_factory=dict)

    def goals_met(self) -> bool:
        return (
            self.throughput_ratio >= GOAL_THROUGHPUT
            and self.p99_ratio <= GOAL_P99
            and self.peak_rss_mb <= self.bound_mb * GOAL_MEMORY
        )


def measure(
    runtime_dir: Path, settings: Settings, workload: Workload, attack: str, run: Callable[[], Any]
) -> tuple[RunResult, float, dict[str, float]]:
    """The good client's run (its connection opened before the attack), the peak RSS, and how
    much each of :data:`DEFENCE_COUNTERS` grew."""
    with ControlClient(runtime_dir) as control:
        before = read_metrics(control, 0)
    watch = MemoryWatch(daemon_processes(runtime_dir)).start()
    try:
        with DataClient(runtime_dir, timeout=120) as data, run():
            log(f"{attack}: good client sending {workload.count} chunks")
            result = pipelined(
                runtime_dir, workload, 2 * settings.window, settings.window, settle_s=0, data=data
            )
    finally:
        peaks = watch.stop()
    time.sleep(METRICS_RELAY_S * 2)  # the supervisor's counters reach metrics once a second
    with ControlClient(runtime_dir) as control:
        after = read_metrics(control, 0)
    defences = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in DEFENCE_COUNTERS}
    return result, peaks.peak_rss.rss / MB, defences


def run(settings: Settings) -> list[Row]:
    blob = os.urandom(max(4 * settings.chunk_size, MiB))
    workload = Workload(blob, settings.chunk_size, settings.count)
    config = Config()
    rows: list[Row] = []
    with started_daemon(settings.workers, "fsync") as daemon:
        runtime_dir = daemon.runtime_dir
        with ControlClient(runtime_dir) as control, DataClient(runtime_dir) as data:
            big_session = control.open_session(compression="off")
            data.put(big_session, 0, os.urandom(BIG_CHUNK))
        attacks: dict[str, Callable[[], Any]] = {
            "none": contextlib.nullcontext,
            "stalled": lambda: attacking(attack_stalled, runtime_dir),
            "flood": lambda: attacking(attack_flood, runtime_dir),
            "never_read_data": lambda: attacking(attack_never_read_data, runtime_dir),
            "never_read_control": lambda: attacking(
                attack_never_read_control, runtime_dir, big_session
            ),
            "exhaustion": lambda: attacking(attack_exhaustion, runtime_dir),
        }
        base: Row | None = None
        for attack in ("none", *settings.attacks):
            result, peak_mb, defences = measure(
                runtime_dir, settings, workload, attack, attacks[attack]
            )
            assert result.histogram is not None
            row = Row(
                attack,
                result.seconds,
                result.chunks / result.seconds,
                result.histogram.percentile(99) / NS_PER_US,
                peak_mb,
                defences=defences,
            )
            if base is None:
                base = row
            row.bound_mb = base.peak_rss_mb + allowance(attack, config) / MB
            row.throughput_ratio = row.chunks_per_s / base.chunks_per_s
            row.p99_ratio = row.p99_us / base.p99_us
            log(
                f"{attack}: {row.chunks_per_s:.0f} chunks/s ({row.throughput_ratio:.0%}), "
                f"p99 {row.p99_us:.0f} us ({row.p99_ratio:.1f}x), peak RSS "
                f"{row.peak_rss_mb:.0f} MB (bound {row.bound_mb:.0f} MB); "
                + ", ".join(f"{k} +{v:.0f}" for k, v in defences.items() if v)
            )
            rows.append(row)
    return rows


def markdown(rows: list[Row], settings: Settings) -> str:
    lines = [
        f"Good client: `put_many` of {settings.count} x {settings.chunk_size // KiB} KiB chunks, "
        f"window {settings.window}; daemon with {settings.workers} workers, default bounds.",
        "",
        "| attack | good chunks/s | vs alone | p99 µs | vs alone | peak RSS MB | bound MB "
        "| goals | defences seen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "—" if row.attack == "none" else ("met" if row.goals_met() else "**missed**")
        lines.append(
            f"| {row.attack} | {row.chunks_per_s:.0f} | {row.throughput_ratio:.0%} "
            f"| {row.p99_us:.0f} | {row.p99_ratio:.1f}x | {row.peak_rss_mb:.0f} "
            f"| {row.bound_mb:.0f} | {met} "
            f"| {', '.join(f'{k} +{v:.0f}' for k, v in row.defences.items() if v) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer chunks (about a minute)")
    parser.add_argument("--workers", type=int, default=Settings.workers)
    parser.add_argument("--chunk-size", type=parse_size, default=Settings.chunk_size)
    parser.add_argument("--window", type=int, default=Settings.window)
    parser.add_argument("--count", type=int, default=None, help="good chunks per phase")
    parser.add_argument(
        "--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    attacks = tuple(a for a in args.attacks.split(",") if a)
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise SystemExit(f"unknown attacks: {', '.join(sorted(unknown))}")
    count = (
        args.count if args.count is not None else (QUICK_COUNT if args.quick else Settings.count)
    )
    settings = Settings(args.workers, args.chunk_size, args.window, count, attacks)
    rows = run(settings)
    print(markdown(rows, settings), end="")
    if args.json is not None:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2) + "\n")
    return 0 if all(row.goals_met() for row in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
