"""replication_bench's part 4: the object store alone, as the replicator's client sees it.

:func:`measure_store` puts objects with ``ObjectStore.put_once`` from this process, with nothing
else running; :func:`store_rows` sets those limits beside what the replicator got in the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench._hdr import Histogram
from bench._replication_settings import (
    CLIENTS,
    LATENCY_CHUNK_SIZE,
    LATENCY_WARMUP,
    MS_PER_S,
    NS_PER_MS,
    NS_PER_S,
    Settings,
)
from bench._replication_watch import CpuWatch
from bench._results import log
from bench._rows import Row
from lucidd.daemon.replication.objects import ObjectStore, ReplicationTarget, S3Credentials
from lucidd.daemon.replication.replicator import PACK_BYTES
from lucidd.units import MiB

if TYPE_CHECKING:
    from tests.seaweed import Seaweed


@dataclass(frozen=True)
class StoreLimits:
    """What the replicator's client gets from the server with nothing else to do."""

    put_ns: Histogram
    pack_mib_s: float
    weed_ms_per_mib: float


def measure_store(settings: Settings, seaweed: Seaweed, blob: bytes) -> StoreLimits:
    """``ObjectStore.put_once`` (the replicator's client) from this process: 64 KiB objects one
    at a time, then PACK_BYTES objects CLIENTS at a time (one upload per session, as the
    replicator does), and the server's CPU per MiB for the latter."""
    target = ReplicationTarget.parse(
        f"s3://{seaweed.bucket}/limit", seaweed.endpoint, seaweed.region
    )
    store = ObjectStore(target, S3Credentials(seaweed.access_key_id, seaweed.secret_access_key))
    small = blob[:LATENCY_CHUNK_SIZE]
    packs = [blob[: PACK_BYTES - 1] + bytes([n % 256]) for n in range(settings.store_packs)]
    watch = CpuWatch({}, seaweed.pid)
    log(f"store: {settings.latency_puts} x 64 KiB, then {len(packs)} x 8 MiB, {CLIENTS} in flight")

    async def puts() -> tuple[Histogram, float, float]:
        histogram = Histogram()
        clock = time.perf_counter_ns
        for n in range(LATENCY_WARMUP + settings.latency_puts):
            t0 = clock()
            await store.put_once(f"{target.prefix}/small/{n}", small)
            if n >= LATENCY_WARMUP:
                histogram.record(clock() - t0)
        slots = asyncio.Semaphore(CLIENTS)

        async def put_pack(n: int) -> None:
            async with slots:
                await store.put_once(f"{target.prefix}/packs/{n}", packs[n])

        cpu_before = watch.sample()["weed"]
        t0 = clock()
        await asyncio.gather(*(put_pack(n) for n in range(len(packs))))
        seconds = (clock() - t0) / NS_PER_S
        weed_s = watch.sample()["weed"] - cpu_before
        mib = len(packs) * PACK_BYTES / MiB
        return histogram, mib / seconds, weed_s * MS_PER_S / mib

    return StoreLimits(*asyncio.run(puts()))


def store_rows(limits: StoreLimits, rows: list[Row]) -> list[Row]:
    """The store's limits against what the replicator got in the same run."""

    def figure(starts: str) -> float:
        return next(row.value for row in rows if row.figure.startswith(starts))

    return [
        Row(
            "4 store",
            "`ObjectStore.put_once` 64 KiB, 1 in flight, p50",
            limits.put_ns.percentile(50) / NS_PER_MS,
            "ms",
            "`replicated` `put` 64 KiB, p50",
            figure("`put` 64 KiB, 1 in flight, p50"),
        ),
        Row(
            "4 store",
            f"`ObjectStore.put_once` 8 MiB objects, {CLIENTS} in flight",
            limits.pack_mib_s,
            "MiB/s",
            "replication (part 1)",
            figure("replication: first put"),
        ),
        Row(
            "4 store",
            "`replicated` throughput (part 2), against the store alone",
            figure("throughput, 1 MiB chunks"),
            "MiB/s",
            f"`put_once` 8 MiB, {CLIENTS} in flight",
            limits.pack_mib_s,
        ),
        Row(
            "4 store",
            "weed CPU per MiB stored (those puts)",
            limits.weed_ms_per_mib,
            "ms",
        ),
    ]
