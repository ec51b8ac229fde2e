"""lucidd against what a user would otherwise use: per-chunk latency, throughput, scaling, memory.

Starts real daemons (``lucidd serve`` on short temporary folders, readiness by ``NOTIFY_SOCKET``;
compression off) — or measures a running one with ``--runtime-dir`` — and, in the same run, on
the same data (one random blob, the same chunks for every design), with the same durability:

1. per-chunk latency, client send to durable ack (HDR-style histogram): p50/p90/p99/p99.9/max
   per chunk size, with 1 chunk in flight, a pipeline of ``--window`` (32), and ``--clients``
   (16) concurrent clients; with durability ``fsync`` (the default) and ``os`` (no fsync);
2. throughput (MiB/s, chunks/s) per chunk size, and scaling with the number of workers;
3. the stage breakdown from the daemon's own ``stage_*_seconds_total`` metrics;
4. the baselines ``inprocess``, ``threads10``, ``procpool10`` and, when installed, ``restic``
   (see ``bench/_baselines.py``), and the compute and disk limits;
5. peak RSS and PSS of all daemon processes (psutil);

and prints Markdown tables and the issue's goals, met or not. ``docs/bench.md`` documents the
JSON (``--json FILE``) and how to read the plot (``--plot FILE.png``, needs matplotlib: the
``bench`` extra)::

    python bench/bench.py --quick                        # under a minute on 2 cores
    python bench/bench.py --json out.json --plot out.png # the full run: several minutes
    python bench/bench.py --runtime-dir /run/lucidd      # a running daemon (no scaling)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography
import psutil

from bench import _baselines as baselines
from bench import _lucidd as drive
from bench._daemon import (
    REPO_ROOT,
    SETTLE_TIMEOUT_S,
    cpu_roles,
    daemon_processes,
    process_wakeup_us,
    sample_cpu,
    short_tmp,
    started_daemon,
)
from bench._hdr import Histogram
from bench._memory import MemoryWatch
from lucidd.client import ControlClient
from lucidd.units import KiB, MiB, format_size, parse_size

NS_PER_US: Final = 1_000
DEFAULT_SCALING: Final = (1, 2, 4, 8, 10)
MAX_WORKERS: Final = 50
PERCENTILES: Final = (("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p999_us", 99.9))
LUCIDD: Final = "lucidd"
RESTIC: Final = "restic"
#: Unmeasured chunks each of the concurrent clients sends first.
CLIENT_WARMUP: Final = 4
#: Each run first sends at least this many unmeasured chunks per worker.
WARMUP_PER_WORKER: Final = 3
#: Fewest measured chunks each concurrent client sends.
MIN_PER_CLIENT: Final = 8
BASELINES: Final = ("inprocess", "threads10", "procpool10", RESTIC)
DURABILITIES: Final = ("fsync", "os")

# The goals of issue 5 (compression off, default durability).
GOAL_LIMIT_FRACTION: Final = 0.8
GOAL_64K_OVER_THREADS: Final = 1.5
GOAL_ADDED_P50_FSYNC_US: Final = 250.0
GOAL_ADDED_P50_OS_US: Final = 150.0
GOAL_PSS_MB: Final = 150.0
GOAL_PSS_WORKERS: Final = 10
GOAL_SCALING_8_OVER_1: Final = 6.0
GOAL_SCALING_CORES: Final = 8


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


@dataclass(frozen=True)
class LatencyKey:
    """Which latency was measured: the identifying fields of a ``latency`` row."""

    design: str
    chunk_size: int
    in_flight: int
    clients: int
    durability: str


@dataclass
class Results:
    """Everything measured; :meth:`as_json` is the documented JSON shape (docs/bench.md)."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    throughput: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    #: CPU per chunk by process role in each lucidd throughput run.
    cpu: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    #: The latency histograms, for the plot.
    histograms: dict[LatencyKey, Histogram] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "throughput": self.throughput,
            "latency": self.latency,
            "stages": self.stages,
            "limits": self.limits,
            "memory": self.memory,
            "cpu": self.cpu,
            "goals": self.goals,
        }

    def add_throughput(
        self, design: str, size: int, workers: int | None, seconds: float, chunks: int, **extra: Any
    ) -> None:
        self.throughput.append(
            {
                "design": design,
                "chunk_size": size,
                "workers": workers,
                "mib_s": chunks * size / MiB / seconds,
                "chunks_s": chunks / seconds,
                "chunks": chunks,
                "seconds": seconds,
                **extra,
            }
        )

    def add_latency(self, key: LatencyKey, histogram: Histogram, **extra: Any) -> None:
        row: dict[str, Any] = asdict(key)
        for name, q in PERCENTILES:
            row[name] = histogram.percentile(q) / NS_PER_US
        row["max_us"] = histogram.max / NS_PER_US
        row["mean_us"] = histogram.mean / NS_PER_US
        row["count"] = histogram.count
        row.update(extra)
        self.latency.append(row)
        self.histograms[key] = histogram


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the Markdown report)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _filesystem(path: Path) -> str:
    best = ""
    fstype = ""
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
            best, fstype = part.mountpoint, part.fstype
    return f"{fstype} on {best}" if best else "unknown"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": psutil.virtual_memory().total / 1e9,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "filesystem": _filesystem(Path("/tmp")),
        "lucidd_commit": _git_commit(),
        "load_average": list(os.getloadavg()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- phases -------------------------------------------------------------------------------


def measure_limits(settings: Settings, blob: bytes, folder: Path, results: Results) -> None:
    cores = os.cpu_count() or 1
    for size in settings.sizes:
        workload = baselines.Workload(blob, size, settings.throughput_count(size))
        log(f"limits: {format_size(size)}, at least {settings.limit_seconds} s each")
        rate = baselines.compute_limit(workload, cores, settings.limit_seconds)
        results.limits.append(_limit_row("compute", size, rate, processes=cores))
        rate = baselines.disk_limit(workload, folder, settings.batch, settings.limit_seconds)
        results.limits.append(_limit_row("disk", size, rate, batch=settings.batch))


def _limit_row(limit: str, size: int, rate: baselines.Rate, **extra: Any) -> dict[str, Any]:
    return {
        "limit": limit,
        "chunk_size": size,
        "mib_s": rate.chunks * size / MiB / rate.seconds,
        "chunks_s": rate.chunks / rate.seconds,
        "chunks": rate.chunks,
        "seconds": rate.seconds,
        **extra,
    }


def measure_baselines(settings: Settings, blob: bytes, folder: Path, results: Results) -> None:
    designs = [d for d in settings.baselines if d in baselines.DESIGNS]
    for size in settings.sizes:
        workload = baselines.Workload(blob, size, settings.throughput_count(size))
        for design in designs:
            log(f"{design}: throughput {format_size(size)} x {workload.count}")
            seconds = baselines.run_design(
                design, workload, folder, batch=settings.batch, fsync=True, warmup=settings.warmup
            )
            workers = 1 if design == "inprocess" else baselines.POOL_SIZE
            results.add_throughput(
                design, size, workers, seconds, workload.count, batch=settings.batch
            )
        if RESTIC in settings.baselines and baselines.restic_available():
            log(f"restic: backup {format_size(size)} x {workload.count}")
            seconds = baselines.restic_backup(workload, folder)
            results.add_throughput(RESTIC, size, None, seconds, workload.count)
        latency = baselines.Workload(blob, size, settings.latency_count(size))
        for durability in settings.durabilities:
            for design in designs:
                for in_flight in (1, settings.window):
                    log(f"{design}: latency {format_size(size)} {in_flight} in flight {durability}")
                    histogram = Histogram()
                    baselines.run_design(
                        design,
                        latency,
                        folder,
                        batch=in_flight,
                        fsync=durability == "fsync",
                        warmup=min(settings.warmup, in_flight * 4),
                        histogram=histogram,
                    )
                    key = LatencyKey(design, size, in_flight, 1, durability)
                    results.add_latency(key, histogram)


@dataclass(frozen=True)
class Target:
    """A daemon to measure: its runtime folder, worker count and durability."""

    runtime_dir: Path
    workers: int
    durability: str
    ring_size: int
    max_chunk_size: int

    @classmethod
    def of(cls, runtime_dir: Path) -> Target:
        with ControlClient(runtime_dir) as control:
            config = control.config()
        return cls(
            runtime_dir,
            int(config["workers"]),
            str(config["durability"]),
            int(config["ring_size"]),
            int(config["max_chunk_size"]),
        )

    def warmup(self, settings: Settings) -> int:
        """Unmeasured chunks before each run: enough for every worker to open the session."""
        return max(settings.warmup, WARMUP_PER_WORKER * self.workers)


def prime(settings: Settings, blob: bytes, target: Target) -> None:
    size = min(MiB, target.max_chunk_size)
    workload = baselines.Workload(blob, size, target.ring_size // size + 1)
    log(f"lucidd {target.durability} {target.workers}w: priming the ring")
    # All of the ring in flight at once, so that every slot is used at least once.
    drive.prime(target.runtime_dir, workload, workload.count)


def measure_lucidd(
    settings: Settings, blob: bytes, target: Target, results: Results, *, throughput: bool
) -> None:
    """Latency in the three modes and, if ``throughput``, throughput, at every size."""
    where = target.runtime_dir
    warmup = target.warmup(settings)
    settle = settings.settle_s
    prime(settings, blob, target)
    for size in settings.sizes:
        workload = baselines.Workload(blob, size, settings.latency_count(size))
        label = f"lucidd {target.durability} {target.workers}w {format_size(size)}"
        modes: list[tuple[int, int, Callable[[], drive.RunResult]]] = [
            (1, 1, partial(drive.serial, where, workload, warmup, settle_s=settle)),
            (
                settings.window,
                1,
                partial(drive.pipelined, where, workload, warmup, settings.window, settle_s=settle),
            ),
            (
                1,
                settings.clients,
                partial(
                    drive.concurrent_clients,
                    where,
                    replace(workload, count=max(workload.count, MIN_PER_CLIENT * settings.clients)),
                    CLIENT_WARMUP,
                    settings.clients,
                    settle_s=settle,
                ),
            ),
        ]
        for in_flight, clients, run in modes:
            log(f"{label}: latency, {in_flight} in flight, {clients} client(s)")
            result = run()
            assert result.histogram is not None
            key = LatencyKey(LUCIDD, size, in_flight, clients, target.durability)
            results.add_latency(key, result.histogram, workers=target.workers)
            ident = asdict(key)
            del ident["design"]
            results.stages.append(_stage_row("latency", ident, target.workers, result))
        if throughput:
            measure_throughput(settings, blob, target, size, results)


def measure_throughput(
    settings: Settings, blob: bytes, target: Target, size: int, results: Results
) -> None:
    workload = baselines.Workload(blob, size, settings.throughput_count(size))
    window = settings.throughput_window
    log(f"lucidd {target.workers}w: throughput {format_size(size)} x {workload.count}")
    roles = cpu_roles(target.runtime_dir)
    cpu_before = sample_cpu(roles)
    result = drive.throughput(
        target.runtime_dir,
        workload,
        target.warmup(settings),
        settings.throughput_clients,
        window,
        settle_s=settings.settle_s,
    )
    cpu = sample_cpu(roles).minus(cpu_before)
    results.add_throughput(
        LUCIDD,
        size,
        target.workers,
        result.seconds,
        result.chunks,
        clients=settings.throughput_clients,
        window=window,
        durability=target.durability,
    )
    ident = {
        "chunk_size": size,
        "in_flight": window * settings.throughput_clients,
        "clients": settings.throughput_clients,
        "durability": target.durability,
    }
    results.stages.append(_stage_row("throughput", ident, target.workers, result))
    results.cpu.append(_cpu_row(ident, target.workers, result, cpu, target.warmup(settings)))


def _cpu_row(
    ident: dict[str, Any],
    workers: int,
    result: drive.RunResult,
    cpu: dict[str, float],
    warmup: int,
) -> dict[str, Any]:
    """CPU per chunk by role. The samples bracket the whole run, warm-up chunks and metric reads
    included, so the CPU is divided by every chunk sent; utilization is of all cores over the
    measured seconds (slightly high for the same reason)."""
    chunks = result.chunks + warmup * ident["clients"]
    cores = os.cpu_count() or 1
    return {
        **ident,
        "workers": workers,
        "us_per_chunk": {role: seconds * 1e6 / chunks for role, seconds in cpu.items()},
        "utilization": sum(cpu.values()) / (result.seconds * cores) if result.seconds else None,
    }


def _stage_row(
    run: str, ident: dict[str, Any], workers: int, result: drive.RunResult
) -> dict[str, Any]:
    return {
        "design": LUCIDD,
        "run": run,
        **ident,
        "workers": workers,
        "us_per_chunk": result.stages,
    }


@contextlib.contextmanager
def _memory_watch(runtime_dir: Path, workers: int, results: Results) -> Iterator[None]:
    try:
        procs = daemon_processes(runtime_dir)
    except Exception as exc:  # memory is optional for a daemon we did not start
        log(f"memory: cannot list the daemon's processes: {exc}")
        yield
        return
    watch = MemoryWatch(procs).start()
    try:
        yield
    finally:
        results.memory = watch.stop().as_dict(workers)


def run(settings: Settings, runtime_dir: Path | None) -> Results:
    results = Results(machine_info(), _settings_json(settings))
    results.machine["process_wakeup_us"] = process_wakeup_us()
    log(f"data: {format_size(settings.data_bytes)} of random bytes")
    blob = os.urandom(settings.data_bytes)
    folder = short_tmp("lbw-")
    try:
        measure_limits(settings, blob, folder, results)
        measure_baselines(settings, blob, folder, results)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if runtime_dir is not None:
        target = Target.of(runtime_dir)
        with _memory_watch(runtime_dir, target.workers, results):
            measure_lucidd(settings, blob, target, results, throughput=True)
    else:
        for durability in settings.durabilities:
            with started_daemon(settings.workers, durability, dict(settings.daemon)) as daemon:
                target = Target.of(daemon.runtime_dir)
                watch = durability == "fsync"
                with (
                    _memory_watch(daemon.runtime_dir, settings.workers, results)
                    if watch
                    else (contextlib.nullcontext())
                ):
                    measure_lucidd(settings, blob, target, results, throughput=watch)
        measure_scaling(settings, blob, results)
    results.goals = evaluate_goals(results, settings)
    return results


def measure_scaling(settings: Settings, blob: bytes, results: Results) -> None:
    """Throughput at ``scaling_size`` with each worker count (reusing the main daemon's row)."""
    size = settings.scaling_size
    for workers in settings.scaling_workers:
        if _throughput(results, LUCIDD, size, workers) is not None:
            continue
        with started_daemon(workers, "fsync", dict(settings.daemon)) as daemon:
            target = Target.of(daemon.runtime_dir)
            prime(settings, blob, target)
            measure_throughput(settings, blob, target, size, results)


def _settings_json(settings: Settings) -> dict[str, Any]:
    out = asdict(settings)
    out["cores"] = os.cpu_count()
    return out


# --- goals --------------------------------------------------------------------------------


def _throughput(
    results: Results, design: str, size: int, workers: int | None = None
) -> dict[str, Any] | None:
    for row in results.throughput:
        if (
            row["design"] == design
            and row["chunk_size"] == size
            and (workers is None or row["workers"] == workers)
        ):
            return row
    return None


def _mib_s(results: Results, design: str, size: int, workers: int | None = None) -> float | None:
    """MiB/s of a throughput row measured with durability fsync (what the goals compare)."""
    row = _throughput(results, design, size, workers)
    if row is None or row.get("durability", "fsync") != "fsync":
        return None
    return float(row["mib_s"])


def _p50(results: Results, design: str, size: int, durability: str) -> float | None:
    for row in results.latency:
        if (row["design"], row["chunk_size"], row["in_flight"], row["clients"]) == (
            design,
            size,
            1,
            1,
        ) and row["durability"] == durability:
            return float(row["p50_us"])
    return None


def _limit(results: Results, limit: str, size: int) -> float | None:
    for row in results.limits:
        if row["limit"] == limit and row["chunk_size"] == size:
            return float(row["mib_s"])
    return None


def _goal(
    text: str, measured: float | None, target: float | None, unit: str, at_least: bool
) -> dict[str, Any]:
    met: bool | None = None
    if measured is not None and target is not None:
        met = measured >= target if at_least else measured <= target
    return {
        "goal": text,
        "measured": measured,
        "target": target,
        "unit": unit,
        "comparison": ">=" if at_least else "<=",
        "met": met,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _pss_goal(results: Results) -> dict[str, Any]:
    workers = results.memory.get("workers")
    goal = _goal(
        f"peak PSS of all daemon processes, {workers} workers",
        results.memory.get("peak_pss_mb"),
        GOAL_PSS_MB if workers == GOAL_PSS_WORKERS else None,
        "MB",
        False,
    )
    if workers is not None and workers != GOAL_PSS_WORKERS:
        goal["note"] = f"the goal is for {GOAL_PSS_WORKERS} workers"
    return goal


def evaluate_goals(results: Results, settings: Settings) -> list[dict[str, Any]]:
    """Issue 5's goals, each as measured (``met`` is None where a figure is missing)."""
    workers = settings.workers
    lucidd_1m = _mib_s(results, LUCIDD, MiB, workers)
    compute, disk = _limit(results, "compute", MiB), _limit(results, "disk", MiB)
    bound = None if compute is None or disk is None else min(compute, disk)
    goals = [
        _goal(
            "lucidd / min(compute, disk limit) at 1 MiB",
            _ratio(lucidd_1m, bound),
            GOAL_LIMIT_FRACTION,
            "x",
            True,
        ),
        _goal(
            "lucidd / threads10 at 1 MiB",
            _ratio(lucidd_1m, _mib_s(results, "threads10", MiB)),
            1.0,
            "x",
            True,
        ),
        _goal(
            "lucidd / threads10 at 64 KiB",
            _ratio(
                _mib_s(results, LUCIDD, 64 * KiB, workers), _mib_s(results, "threads10", 64 * KiB)
            ),
            GOAL_64K_OVER_THREADS,
            "x",
            True,
        ),
        _goal(
            "p50 at 64 KiB, 1 in flight, fsync: lucidd - inprocess",
            _minus(
                _p50(results, LUCIDD, 64 * KiB, "fsync"),
                _p50(results, "inprocess", 64 * KiB, "fsync"),
            ),
            GOAL_ADDED_P50_FSYNC_US,
            "µs",
            False,
        ),
        _goal(
            "p50 at 64 KiB, 1 in flight, no fsync: lucidd - inprocess",
            _minus(
                _p50(results, LUCIDD, 64 * KiB, "os"), _p50(results, "inprocess", 64 * KiB, "os")
            ),
            GOAL_ADDED_P50_OS_US,
            "µs",
            False,
        ),
        _pss_goal(results),
    ]
    scaling = _ratio(
        _mib_s(results, LUCIDD, settings.scaling_size, 8),
        _mib_s(results, LUCIDD, settings.scaling_size, 1),
    )
    enough_cores = (os.cpu_count() or 1) >= GOAL_SCALING_CORES
    goal = _goal(
        f"throughput 8 workers / 1 worker at {format_size(settings.scaling_size)}",
        scaling,
        GOAL_SCALING_8_OVER_1 if enough_cores else None,
        "x",
        True,
    )
    if not enough_cores:
        goal["note"] = f"needs >= {GOAL_SCALING_CORES} cores; this machine has {os.cpu_count()}"
    goals.append(goal)
    return goals


# --- report -------------------------------------------------------------------------------


def _size(size: int) -> str:
    return format_size(size).replace(" ", "\u00a0")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _throughput_table(results: Results, settings: Settings) -> list[str]:
    sizes = settings.sizes
    lines = [
        "| design | workers | " + " | ".join(_size(s) for s in sizes) + " |",
        "|---|---:|" + "---:|" * len(sizes),
    ]
    designs = [LUCIDD, *[d for d in BASELINES if any(r["design"] == d for r in results.throughput)]]
    for design in designs:
        workers = settings.workers if design == LUCIDD else None
        cells = []
        shown_workers: Any = "-"
        for size in sizes:
            row = _throughput(results, design, size, workers)
            if row is None:
                cells.append("-")
                continue
            shown_workers = row["workers"] if row["workers"] is not None else "-"
            if row.get("durability", "fsync") != "fsync":
                shown_workers = f"{shown_workers}, durability {row['durability']}"
            cells.append(f"{row['mib_s']:,.0f} MiB/s ({row['chunks_s']:,.0f}/s)")
        lines.append(f"| {design} | {shown_workers} | " + " | ".join(cells) + " |")
    for limit, what in (("compute", "processes"), ("disk", "batch")):
        cells = []
        extra: Any = "-"
        for size in sizes:
            row = next(
                (r for r in results.limits if r["limit"] == limit and r["chunk_size"] == size), None
            )
            if row is None:
                cells.append("-")
                continue
            extra = row[what]
            cells.append(f"{row['mib_s']:,.0f} MiB/s ({row['chunks_s']:,.0f}/s)")
        label = f"{limit} limit ({what} {extra})"
        lines.append(f"| {label} | - | " + " | ".join(cells) + " |")
    return lines


def _scaling_table(results: Results, settings: Settings) -> list[str]:
    rows = sorted(
        (
            r
            for r in results.throughput
            if r["design"] == LUCIDD and r["chunk_size"] == settings.scaling_size
        ),
        key=lambda r: int(r["workers"]),
    )
    if not rows:
        return []
    one = next((r["mib_s"] for r in rows if r["workers"] == 1), None)
    lines = [
        f"### Worker scaling ({_size(settings.scaling_size)} chunks, durability fsync)",
        "",
        "| workers | MiB/s | chunks/s | x 1 worker |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['mib_s']:,.0f} | {r['chunks_s']:,.0f} "
            f"| {_fmt(_ratio(r['mib_s'], one), 2)} |"
        )
    return [*lines, ""]


def _latency_table(results: Results) -> list[str]:
    lines = [
        "| design | chunk | in flight | clients | durability | p50 | p90 | p99 | p99.9 | max | n |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {d: i for i, d in enumerate((LUCIDD, *BASELINES))}
    rows = sorted(
        results.latency,
        key=lambda r: (
            r["chunk_size"],
            DURABILITIES.index(r["durability"]) if r["durability"] in DURABILITIES else 9,
            order.get(r["design"], 9),
            r["in_flight"],
            r["clients"],
        ),
    )
    for r in rows:
        lines.append(
            f"| {r['design']} | {_size(r['chunk_size'])} | {r['in_flight']} | {r['clients']} "
            f"| {r['durability']} | {r['p50_us']:,.0f} | {r['p90_us']:,.0f} | {r['p99_us']:,.0f} "
            f"| {r['p999_us']:,.0f} | {r['max_us']:,.0f} | {r['count']} |"
        )
    return lines


def _stages_table(results: Results) -> list[str]:
    names: list[str] = []
    for row in results.stages:
        for name in row["us_per_chunk"]:
            if name not in names:
                names.append(name)
    if not names:
        return ["(the daemon reported no `stage_*_seconds_total` metrics)"]
    lines = [
        "| run | workers | chunk | in flight | clients | durability | "
        + " | ".join(names)
        + " | sum |",
        "|---|---:|---:|---:|---:|---|" + "---:|" * (len(names) + 1),
    ]
    for r in results.stages:
        stages = r["us_per_chunk"]
        cells = [_fmt(stages.get(n), 1) for n in names]
        total = sum(stages.values()) if stages else None
        lines.append(
            f"| {r['run']} | {r['workers']} | {_size(r['chunk_size'])} | {r['in_flight']} "
            f"| {r['clients']} | {r['durability']} | "
            + " | ".join(cells)
            + f" | {_fmt(total, 1)} |"
        )
    return lines


def _settle_note(settings: Settings) -> list[str]:
    if settings.settle_s > 0:
        return []
    return [
        "",
        "Metrics were read without settling (`--settle 0`): stages the supervisor counts "
        "(`ack`) reach the control socket about once a second, so their per-run figures are "
        "shifted in time and only indicative.",
    ]


_CPU_ROLES: Final = ("client", "supervisor", "workers", "aggregator", "other")


def _cpu_lines(results: Results) -> list[str]:
    wakeup = results.machine.get("process_wakeup_us")
    lines = [
        "CPU µs per chunk by process in the throughput runs (user + system; `client` is this "
        "bench process), and how busy all cores were. At 1 in flight a chunk passes through "
        "client, supervisor, worker, supervisor and client in turn: its latency over "
        "`inprocess` is roughly their CPU per chunk outside the worker's seal and write, plus "
        "four process wake-ups of "
        + ("-" if wakeup is None else f"{wakeup:.0f} µs")
        + " each here (median of a 1-byte pipe ping-pong).",
        "",
        "| workers | chunk | " + " | ".join(_CPU_ROLES) + " | total | cores busy |",
        "|---:|---:|" + "---:|" * (len(_CPU_ROLES) + 2),
    ]
    for row in results.cpu:
        us = row["us_per_chunk"]
        cells = [_fmt(us.get(role), 1) for role in _CPU_ROLES]
        busy = row["utilization"]
        lines.append(
            f"| {row['workers']} | {_size(row['chunk_size'])} | "
            + " | ".join(cells)
            + f" | {_fmt(sum(us.values()), 1)} | "
            + ("-" if busy is None else f"{busy * 100:.0f} %")
            + " |"
        )
    return lines


def _memory_lines(results: Results) -> list[str]:
    m = results.memory
    if not m:
        return ["(not measured)"]
    return [
        f"All {m['processes']} daemon processes together, {m['workers']} workers, "
        f"{m['samples']} samples (MB = 10^6 bytes):",
        "",
        "| | RSS MB | PSS MB | PSS of the ring (/dev/shm) MB | PSS without it MB |",
        "|---|---:|---:|---:|---:|",
        f"| idle, after start | {m['idle_rss_mb']:.1f} | {m['idle_pss_mb']:.1f} | | |",
        f"| peak | {m['peak_rss_mb']:.1f} | {m['peak_pss_mb']:.1f} "
        f"| {m['peak_pss_ring_mb']:.1f} | {m['peak_pss_without_ring_mb']:.1f} |",
    ]


def _goals_table(results: Results) -> list[str]:
    lines = ["| goal | measured | target | result |", "|---|---:|---:|---|"]
    for g in results.goals:
        unit = g["unit"]
        measured = "-" if g["measured"] is None else f"{g['measured']:,.2f} {unit}"
        target = "-" if g["target"] is None else f"{g['comparison']} {g['target']:g} {unit}"
        result = {True: "met", False: "**NOT met**", None: "n/a"}[g["met"]]
        if "note" in g:
            result += f" ({g['note']})"
        lines.append(f"| {g['goal']} | {measured} | {target} | {result} |")
    return lines


def markdown(results: Results, settings: Settings) -> str:
    m = results.machine
    head = (
        f"## lucidd bench — {m['cpus']} x {m['cpu_model']}, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['filesystem']}, lucidd {m['lucidd_commit']}, "
        f"load {m['load_average'][0]:.2f} at start, "
        f"{m.get('load_average_end', [0.0])[0]:.2f} at the end"
    )
    lines = [
        head,
        "",
        f"Compression off. Durability `fsync`: acked after fdatasync (baselines: one fdatasync "
        f"per batch of {settings.batch} chunks for throughput, per chunk at 1 in flight); `os`: "
        "no fsync. Throughput drives lucidd with "
        f"{settings.throughput_clients} client(s) x a window of {settings.throughput_window}."
        + (
            " Daemon settings: " + ", ".join(f"`{n}={v}`" for n, v in settings.daemon) + "."
            if settings.daemon
            else ""
        ),
        "",
        "### Throughput (durability fsync)",
        "",
        *_throughput_table(results, settings),
        "",
        *_scaling_table(results, settings),
        "### Latency, client send → durable ack (µs)",
        "",
        *_latency_table(results),
        "",
        "### Stage breakdown (µs per sealed chunk, from the daemon's metrics)",
        "",
        *_stages_table(results),
        *_settle_note(settings),
        "",
        "### What bounds it: CPU per chunk and process wake-ups",
        "",
        *_cpu_lines(results),
        "",
        "### Memory",
        "",
        *_memory_lines(results),
        "",
        "### Goals (issue 5)",
        "",
        *_goals_table(results),
    ]
    return "\n".join(lines)


# --- plot ---------------------------------------------------------------------------------

#: Latency curves drawn per chunk size: (design, in_flight or "window", clients or "clients",
#: durability, line style).
_CDF_CURVES: Final = (
    (LUCIDD, 1, 1, "fsync", "-"),
    (LUCIDD, "window", 1, "fsync", "--"),
    (LUCIDD, 1, "clients", "fsync", "-."),
    (LUCIDD, 1, 1, "os", ":"),
    ("inprocess", 1, 1, "fsync", "-"),
    ("threads10", 1, 1, "fsync", "-"),
    ("procpool10", 1, 1, "fsync", "-"),
    ("inprocess", 1, 1, "os", ":"),
)
#: One colour per design in every panel.
_COLORS: Final = {
    LUCIDD: "tab:blue",
    "inprocess": "tab:orange",
    "threads10": "tab:green",
    "procpool10": "tab:red",
    RESTIC: "tab:purple",
}


def plot(results: Results, settings: Settings, path: Path) -> bool:
    """Latency CDFs per chunk size (top) and throughput vs chunk size and vs workers (bottom).

    matplotlib is optional (the ``bench`` extra); without it this logs and returns False.
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        log("plot: matplotlib is not installed (pip install 'lucidd[bench]'); no plot written")
        return False
    sizes = settings.sizes
    fig = plt.figure(figsize=(5 * max(len(sizes), 2), 9), layout="constrained")
    grid = fig.add_gridspec(2, max(len(sizes), 2))
    for col, size in enumerate(sizes):
        ax = fig.add_subplot(grid[0, col])
        for design, in_flight, clients, durability, style in _CDF_CURVES:
            flight = settings.window if in_flight == "window" else int(in_flight)
            n_clients = settings.clients if clients == "clients" else int(clients)
            histogram = results.histograms.get(
                LatencyKey(design, size, flight, n_clients, durability)
            )
            if histogram is None or histogram.count == 0:
                continue
            points = list(histogram.cdf())
            label = f"{design} {flight} in flight" + (
                f" x{n_clients} clients" if n_clients > 1 else ""
            )
            ax.step(
                [v / NS_PER_US for v, _ in points],
                [f for _, f in points],
                where="post",
                linestyle=style,
                color=_COLORS[design],
                linewidth=2 if design == LUCIDD else 1.2,
                label=f"{label}, {durability}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("latency, send → durable ack (µs)")
        ax.set_ylabel("fraction of chunks")
        ax.set_title(f"latency CDF, {format_size(size)} chunks")
        ax.grid(True, which="both", alpha=0.3)
        if col == 0:
            ax.legend(fontsize="x-small")
    half = max(len(sizes), 2) // 2
    _plot_vs_size(fig.add_subplot(grid[1, :half]), results, settings)
    _plot_vs_workers(fig.add_subplot(grid[1, half:]), results, settings)
    fig.suptitle(
        f"lucidd bench — {results.machine['cpus']} cores, {results.machine['date']}, "
        f"compression off"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_vs_size(ax: Any, results: Results, settings: Settings) -> None:
    for design in (LUCIDD, *BASELINES):
        workers = settings.workers if design == LUCIDD else None
        points = [
            (size, row["mib_s"])
            for size in settings.sizes
            if (row := _throughput(results, design, size, workers)) is not None
        ]
        if points:
            label = f"{design} ({settings.workers} workers)" if design == LUCIDD else design
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                linewidth=2.5 if design == LUCIDD else 1.2,
                color=_COLORS[design],
                label=label,
            )
    for limit in ("compute", "disk"):
        rows = sorted(
            (r for r in results.limits if r["limit"] == limit), key=lambda r: int(r["chunk_size"])
        )
        if rows:
            ax.plot(
                [r["chunk_size"] for r in rows],
                [r["mib_s"] for r in rows],
                linestyle="--",
                color="grey" if limit == "compute" else "black",
                label=f"{limit} limit",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(settings.sizes), [format_size(s) for s in settings.sizes])
    ax.set_xlabel("chunk size")
    ax.set_ylabel("MiB/s (durability fsync)")
    ax.set_title("throughput vs chunk size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _plot_vs_workers(ax: Any, results: Results, settings: Settings) -> None:
    size = settings.scaling_size
    rows = sorted(
        (r for r in results.throughput if r["design"] == LUCIDD and r["chunk_size"] == size),
        key=lambda r: int(r["workers"]),
    )
    if rows:
        ax.plot(
            [r["workers"] for r in rows],
            [r["mib_s"] for r in rows],
            marker="o",
            linewidth=2.5,
            color=_COLORS[LUCIDD],
            label="lucidd",
        )
    for design in BASELINES:
        row = _throughput(results, design, size)
        if row is not None:
            ax.axhline(row["mib_s"], linestyle="-.", color=_COLORS[design], label=design)
    for limit, color in (("compute", "grey"), ("disk", "black")):
        value = _limit(results, limit, size)
        if value is not None:
            ax.axhline(value, linestyle="--", color=color, label=f"{limit} limit")
    ax.set_xlabel("workers")
    ax.set_ylabel("MiB/s (durability fsync)")
    ax.set_title(f"throughput vs workers, {format_size(size)} chunks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


# --- command line -------------------------------------------------------------------------


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_from(args)
    if args.runtime_dir is not None:  # that daemon's workers and durability, no other daemon
        target = Target.of(args.runtime_dir)
        settings = replace(
            settings, workers=target.workers, durabilities=(target.durability,), scaling_workers=()
        )
    started = time.monotonic()
    results = run(settings, args.runtime_dir)
    results.machine["bench_seconds"] = time.monotonic() - started
    results.machine["load_average_end"] = list(os.getloadavg())
    print(markdown(results, settings))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results.as_json(), indent=2) + "\n")
    if args.plot is not None:
        plot(results, settings, args.plot)
    log(f"done in {results.machine['bench_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
