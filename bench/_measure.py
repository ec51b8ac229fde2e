"""The measuring phases of bench.py: the machine, the limits, the baselines and lucidd.

Every phase appends rows to one :class:`~bench._results.Results`; :func:`run` runs them all,
starting daemons (or measuring the one at ``--runtime-dir``), then evaluates the goals.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import cryptography
import psutil

from bench import _baselines as baselines
from bench import _end_to_end as end_to_end
from bench import _lucidd as drive
from bench._daemon import (
    REPO_ROOT,
    cpu_roles,
    daemon_processes,
    process_wakeup_us,
    sample_cpu,
    short_tmp,
    started_daemon,
)
from bench._goals import evaluate_goals
from bench._hdr import Histogram
from bench._memory import MemoryWatch
from bench._results import LatencyKey, Results, log, throughput_row
from bench._settings import (
    CLIENT_WARMUP,
    LUCIDD,
    LUCIDD_SOCKET,
    MIN_PER_CLIENT,
    RESTIC,
    WARMUP_PER_WORKER,
    Settings,
    settings_json,
)
from lucidd.client import ControlClient
from lucidd.units import MiB, format_size

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
            measure_restic(workload, folder, results)
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


def measure_restic(workload: baselines.Workload, folder: Path, results: Results) -> None:
    """restic's throughput row; a failure of restic is the row's ``error``, and the bench goes
    on."""
    size = workload.chunk_size
    log(f"restic: backup {format_size(size)} x {workload.count}")
    try:
        restic = baselines.Restic.installed()
        seconds = baselines.restic_backup(workload, folder, restic)
    except baselines.BaselineError as exc:
        log(f"restic: failed: {exc}")
        results.add_throughput_error(RESTIC, size, None, str(exc))
        return
    results.add_throughput(
        RESTIC, size, None, seconds, workload.count, restic_version=restic.version_text
    )


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
            results.add_latency(
                key, result.histogram, workers=target.workers, transport=result.transport
            )
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
        transport=result.transport,
    )
    ident = {
        "chunk_size": size,
        "in_flight": window * settings.throughput_clients,
        "clients": settings.throughput_clients,
        "durability": target.durability,
    }
    results.stages.append(_stage_row("throughput", ident, target.workers, result))
    results.cpu.append(_cpu_row(ident, target.workers, result, cpu, target.warmup(settings)))
    if settings.transport == "both":
        # The same run over the socket, right after: what the shared-memory path buys, as a
        # ratio of one run (the figures of separate runs move by more than the difference).
        drive.SHARED_MEMORY = False
        try:
            log(f"lucidd {target.workers}w over the socket: throughput {format_size(size)}")
            over_socket = drive.throughput(
                target.runtime_dir,
                workload,
                target.warmup(settings),
                settings.throughput_clients,
                window,
                settle_s=0,
            )
        finally:
            drive.SHARED_MEMORY = True
        results.add_throughput(
            LUCIDD_SOCKET,
            size,
            target.workers,
            over_socket.seconds,
            over_socket.chunks,
            clients=settings.throughput_clients,
            window=window,
            durability=target.durability,
            transport=over_socket.transport,
        )


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
    drive.SHARED_MEMORY = settings.transport != "socket"
    results = Results(machine_info(), settings_json(settings))
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
                if watch and settings.end_to_end_bytes:  # after the memory watch: its own peak
                    end_to_end.measure(settings, daemon, settings.workers, results)
        measure_scaling(settings, blob, results)
    results.goals = evaluate_goals(results, settings)
    return results


def measure_scaling(settings: Settings, blob: bytes, results: Results) -> None:
    """Throughput at ``scaling_size`` with each worker count (reusing the main daemon's row)."""
    size = settings.scaling_size
    for workers in settings.scaling_workers:
        if throughput_row(results, LUCIDD, size, workers) is not None:
            continue
        with started_daemon(workers, "fsync", dict(settings.daemon)) as daemon:
            target = Target.of(daemon.runtime_dir)
            prime(settings, blob, target)
            measure_throughput(settings, blob, target, size, results)
