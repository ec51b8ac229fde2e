"""What bench.py measures and how much: the settings, the full and quick sets, the command line.

Sizes are bytes; ``--quick`` starts from :data:`QUICK`, a run without it from :data:`FULL`, and
each option overrides one field (docs/bench.md lists them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from bench._daemon import SETTLE_TIMEOUT_S
from lucidd.units import KiB, MiB, parse_size

NS_PER_US: Final = 1_000
DEFAULT_SCALING: Final = (1, 2, 4, 8, 10)
MAX_WORKERS: Final = 50
PERCENTILES: Final = (("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p999_us", 99.9))
LUCIDD: Final = "lucidd"
#: The same daemon, its clients sending over the socket (no shared memory): a throughput row.
LUCIDD_SOCKET: Final = "lucidd (socket)"
RESTIC: Final = "restic"
#: The end-to-end runs (bench._end_to_end): the file the goal compares, and one chunk's file.
END_TO_END_FILE_RUN: Final = "file"
END_TO_END_ONE_CHUNK_RUN: Final = "one chunk"
#: Unmeasured chunks each of the concurrent clients sends first.
CLIENT_WARMUP: Final = 4
#: Each run first sends at least this many unmeasured chunks per worker.
WARMUP_PER_WORKER: Final = 3
#: Fewest measured chunks each concurrent client sends.
MIN_PER_CLIENT: Final = 8
BASELINES: Final = ("inprocess", "threads10", "procpool10", RESTIC)
DURABILITIES: Final = ("fsync", "os")


@dataclass(frozen=True)
class Settings:
    """What to measure and how much. Chunk counts are ``bytes // size`` clamped to [min, max]."""

    sizes: tuple[int, ...]
    latency_bytes: int
    latency_min: int
    latency_max: int
    throughput_bytes: int
    throughput_min: int
    throughput_max: int
    window: int = 32
    #: Chunks in flight per connection in the throughput runs. Deeper than ``window``: with 32
    #: chunks of 64 KiB (2 MiB) in flight, one worker's group commit holds all of them and
    #: nothing is sealed while it fsyncs; 128 keeps several workers' commits overlapping.
    throughput_window: int = 128
    clients: int = 16
    #: Chunks per baseline group commit in the throughput runs (the pipeline's window).
    batch: int = 32
    throughput_clients: int = 1
    workers: int = 10
    scaling_workers: tuple[int, ...] = DEFAULT_SCALING
    scaling_size: int = MiB
    durabilities: tuple[str, ...] = DURABILITIES
    baselines: tuple[str, ...] = BASELINES
    warmup: int = 64
    data_bytes: int = 64 * MiB
    #: Each limit runs at least this long.
    limit_seconds: float = 1.0
    #: How long to wait for the daemon's supervisor-side metrics to catch up around each run
    #: (they are relayed about once a second); 0 reads them as they are.
    settle_s: float = SETTLE_TIMEOUT_S
    #: More settings of the daemons the bench starts, as (name, value) pairs.
    daemon: tuple[tuple[str, str], ...] = ()
    #: The file ``lucidctl put`` and ``restic backup`` each store end to end (0: not run).
    end_to_end_bytes: int = 256 * MiB
    #: How the bench's own clients send payloads: ``memfd`` (shared memory, the clients'
    #: default), ``socket`` (``shared_memory=False``), or ``both``: memfd, and each throughput
    #: run repeated over the socket right after (what shared memory buys, in one run's
    #: ratio; it fills the ring too, so the peak PSS is no longer the memfd path's alone).
    transport: str = "memfd"

    def latency_count(self, size: int) -> int:
        return max(self.latency_min, min(self.latency_max, self.latency_bytes // size))

    def throughput_count(self, size: int) -> int:
        return max(self.throughput_min, min(self.throughput_max, self.throughput_bytes // size))


def _scaling_default() -> tuple[int, ...]:
    """1, 2, 4, 8, 10 workers, and more (powers of two, the core count) on bigger machines."""
    cores = os.cpu_count() or 1
    extra = {n for n in (16, 32) if n <= cores} | (
        {cores} if cores > max(DEFAULT_SCALING) else set()
    )
    return DEFAULT_SCALING + tuple(sorted(n for n in extra if n <= MAX_WORKERS))


FULL: Final = Settings(
    sizes=(4 * KiB, 64 * KiB, MiB, 10 * MiB),
    latency_bytes=256 * MiB,
    latency_min=64,
    latency_max=5000,
    throughput_bytes=256 * MiB,
    throughput_min=64,
    throughput_max=20000,
    scaling_workers=_scaling_default(),
)
QUICK: Final = Settings(
    sizes=(4 * KiB, 64 * KiB, MiB),
    latency_bytes=32 * MiB,
    latency_min=64,
    latency_max=600,
    throughput_bytes=192 * MiB,
    throughput_min=128,
    throughput_max=4000,
    scaling_workers=(1, 2, 10),
    warmup=16,
    data_bytes=32 * MiB,
    limit_seconds=0.3,
    settle_s=0.0,
)


def settings_json(settings: Settings) -> dict[str, Any]:
    out = asdict(settings)
    out["cores"] = os.cpu_count()
    return out


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name.strip().lower() in ("durability", "compression", "workers"):
        raise argparse.ArgumentTypeError(f"{name} is set by the bench itself")
    return name.strip().lower(), value.strip()


def _names(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {choices}")
        return names

    return parse


def parser(description: str) -> argparse.ArgumentParser:
    """The bench's command line (documented in docs/bench.md)."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a reduced set (< 60 s on 2 cores)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure here")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the figures")
    parser.add_argument(
        "--runtime-dir", type=Path, help="measure the daemon running here instead of starting one"
    )
    parser.add_argument("--sizes", type=_sizes, help="chunk sizes, e.g. 4KiB,64KiB,1MiB,10MiB")
    parser.add_argument("--workers", type=int, help="workers of the main daemons")
    parser.add_argument("--scaling", type=_ints, help="worker counts to scale over ('' skips)")
    parser.add_argument("--scaling-size", type=parse_size, help="chunk size of the scaling runs")
    parser.add_argument("--durability", type=_names(DURABILITIES), help="fsync,os")
    parser.add_argument("--baselines", type=_names(BASELINES), help="which baselines ('' none)")
    parser.add_argument("--latency-bytes", type=parse_size, help="payload per latency run")
    parser.add_argument("--latency-min", type=int, help="fewest chunks per latency run")
    parser.add_argument("--latency-max", type=int, help="most chunks per latency run")
    parser.add_argument("--throughput-bytes", type=parse_size, help="payload per throughput run")
    parser.add_argument("--throughput-min", type=int, help="fewest chunks per throughput run")
    parser.add_argument("--throughput-max", type=int, help="most chunks per throughput run")
    parser.add_argument("--window", type=int, help="chunks in flight when pipelined")
    parser.add_argument(
        "--throughput-window", type=int, help="chunks in flight per connection for throughput"
    )
    parser.add_argument("--clients", type=int, help="concurrent clients (1 in flight each)")
    parser.add_argument("--batch", type=int, help="chunks per baseline group commit")
    parser.add_argument(
        "--throughput-clients", type=int, help="connections driving the throughput runs"
    )
    parser.add_argument("--warmup", type=int, help="unmeasured chunks before each run")
    parser.add_argument("--data-bytes", type=parse_size, help="size of the random data blob")
    parser.add_argument(
        "--transport",
        choices=("memfd", "socket", "both"),
        help="how the bench's clients send payloads (default memfd; both: throughput over the "
        "socket too; lucidctl put: its own)",
    )
    parser.add_argument(
        "--end-to-end",
        type=parse_size,
        metavar="BYTES",
        help="size of the file lucidctl put and restic backup each store (0 skips)",
    )
    parser.add_argument(
        "--set",
        dest="daemon",
        type=_setting,
        action="append",
        metavar="NAME=VALUE",
        help="a setting of the daemons the bench starts (LUCIDD_<NAME>), e.g. ring_size=32MiB; "
        "repeatable",
    )
    parser.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="wait at most this long around each run for the daemon's relayed metrics "
        f"(default {SETTLE_TIMEOUT_S}; 0 with --quick)",
    )
    return parser


_OVERRIDES: Final = {
    "sizes": "sizes",
    "workers": "workers",
    "scaling": "scaling_workers",
    "scaling_size": "scaling_size",
    "durability": "durabilities",
    "baselines": "baselines",
    "latency_bytes": "latency_bytes",
    "latency_min": "latency_min",
    "latency_max": "latency_max",
    "throughput_bytes": "throughput_bytes",
    "throughput_min": "throughput_min",
    "throughput_max": "throughput_max",
    "window": "window",
    "throughput_window": "throughput_window",
    "clients": "clients",
    "batch": "batch",
    "throughput_clients": "throughput_clients",
    "warmup": "warmup",
    "data_bytes": "data_bytes",
    "settle": "settle_s",
    "daemon": "daemon",
    "end_to_end": "end_to_end_bytes",
    "transport": "transport",
}


def settings_from(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else FULL
    changes = {
        field_name: getattr(args, arg)
        for arg, field_name in _OVERRIDES.items()
        if getattr(args, arg) is not None
    }
    if "daemon" in changes:
        changes["daemon"] = tuple(changes["daemon"])
    settings = replace(settings, **changes)
    largest = max((*settings.sizes, settings.scaling_size), default=MiB)
    if settings.data_bytes < 2 * largest:
        settings = replace(settings, data_bytes=2 * largest)
    return settings
