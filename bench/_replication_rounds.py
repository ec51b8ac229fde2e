"""replication_bench's rounds of 1 MiB chunks: what one round measured, and the paced rounds.

A round of part 1 sends as fast as the daemon acks (``bench._lucidd.throughput``); a *paced*
round (part 1b) sends at a fixed rate below what replication managed in part 1, to show
whether the lag stays bounded when ingest is within what the machine can replicate.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench import _lucidd as drive
from bench._baselines import Workload
from bench._daemon import cpu_roles
from bench._replication_settings import CHUNK_SIZE, CLIENTS, NS_PER_S, ROLES, WINDOW
from bench._replication_watch import CpuWatch, LagSampler, Target, wait_replicated
from lucidd.client import ControlClient, DataClient
from lucidd.units import MiB


@dataclass
class IngestRound:
    """One round on one daemon; times in perf_counter_ns (``replicated_at``: 0 if it does not
    replicate). ``lag``: the lag by the files, ``gauge``: ``replication_lag_bytes``, both as
    (time, bytes)."""

    chunks: int
    started_at: int
    acked_at: int
    replicated_at: int
    cpu_s: dict[str, float]
    lag: list[tuple[int, float]] = field(default_factory=list)
    gauge: list[tuple[int, float]] = field(default_factory=list)

    @property
    def mib(self) -> float:
        return self.chunks * CHUNK_SIZE / MiB

    @property
    def ingest_mib_s(self) -> float:
        return self.mib * NS_PER_S / (self.acked_at - self.started_at)

    @property
    def replication_mib_s(self) -> float:
        return self.mib * NS_PER_S / (self.replicated_at - self.started_at)

    @property
    def catch_up_s(self) -> float:
        return (self.replicated_at - self.acked_at) / NS_PER_S

    def lag_during_puts(self) -> list[tuple[float, float]]:
        """(seconds since the first put, lag in MiB) of the samples taken while chunks were put."""
        return [
            ((t - self.started_at) / NS_PER_S, lag / MiB)
            for t, lag in self.lag
            if self.started_at <= t <= self.acked_at
        ]

    def lag_growth_mib_s(self) -> float | None:
        """The least-squares slope of the lag while chunks were put (None: too few samples)."""
        points = self.lag_during_puts()
        if len(points) < 3:
            return None
        seconds, lags = [t for t, _ in points], [lag for _, lag in points]
        return statistics.linear_regression(seconds, lags).slope

    def lag_max_mib(self) -> float:
        return max((lag for _, lag in self.lag), default=0.0) / MiB

    def gauge_max_mib(self) -> float:
        return max((lag for _, lag in self.gauge), default=0.0) / MiB

    def gauge_at_last_ack_mib(self) -> float:
        before = [lag for t, lag in self.gauge if t <= self.acked_at]
        return before[-1] / MiB if before else 0.0


def _measured_round(
    target: Target, weed_pid: int, send: Callable[[], tuple[int, int]]
) -> IngestRound:
    """Run ``send`` (it returns when the last chunk is acked, with when it started, in
    perf_counter_ns, and how many chunks it measured) under the CPU watch and the lag sampler,
    then wait until everything sent is replicated."""
    daemon = target.daemon
    watch = CpuWatch(cpu_roles(daemon.runtime_dir), weed_pid)
    sampler = LagSampler(daemon) if target.replicating else None
    cpu_before = watch.sample()
    with sampler or contextlib.nullcontext():
        started_at, chunks = send()
        acked_at = time.perf_counter_ns()
        replicated_at = wait_replicated(target) if target.replicating else 0
    cpu_after = watch.sample()
    cpu = {role: cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0) for role in ROLES}
    lag, gauge = (sampler.files, sampler.gauge) if sampler is not None else ([], [])
    return IngestRound(chunks, started_at, acked_at, replicated_at, cpu, lag, gauge)


def ingest_round(target: Target, workload: Workload, warmup: int, weed_pid: int) -> IngestRound:
    """``workload`` as fast as the daemon acks: CLIENTS connections, WINDOW in flight each."""

    def send() -> tuple[int, int]:
        runtime_dir = target.daemon.runtime_dir
        result = drive.throughput(runtime_dir, workload, warmup, CLIENTS, WINDOW, settle_s=0)
        target.sent += CLIENTS * warmup + workload.count
        return time.perf_counter_ns() - round(result.seconds * NS_PER_S), result.chunks

    return _measured_round(target, weed_pid, send)


def paced_round(
    target: Target, blob: bytes, rate_mib_s: float, seconds: float, weed_pid: int
) -> IngestRound:
    """``seconds`` of 1 MiB chunks at ``rate_mib_s``: CLIENTS connections (a fresh session
    each) sending chunk ``k`` no sooner than ``k`` chunk intervals after the start, WINDOW in
    flight each."""
    count = max(1, round(rate_mib_s * seconds * MiB / CHUNK_SIZE))
    workload = Workload(blob, CHUNK_SIZE, count)
    interval_ns = CHUNK_SIZE / MiB / rate_mib_s * NS_PER_S
    runtime_dir = target.daemon.runtime_dir

    def send() -> tuple[int, int]:
        with ControlClient(runtime_dir) as control:
            sessions = [control.open_session(compression=drive.COMPRESSION) for _ in range(CLIENTS)]
        errors: list[BaseException] = []
        started_at = time.perf_counter_ns()

        def chunks(c: int) -> Iterator[tuple[int, memoryview]]:
            for n, k in enumerate(range(c, count, CLIENTS)):
                delay_ns = started_at + k * interval_ns - time.perf_counter_ns()
                if delay_ns > 0:
                    time.sleep(delay_ns / NS_PER_S)
                yield n, workload.chunk(k)

        def client(c: int) -> None:
            try:
                with DataClient(runtime_dir, shared_memory=drive.SHARED_MEMORY) as data:
                    data.put_many(sessions[c], chunks(c), window=WINDOW)
            except Exception as exc:  # raised below, once every client ended
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        target.sent += count
        return started_at, count

    return _measured_round(target, weed_pid, send)
