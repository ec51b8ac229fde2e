"""What replicating to an S3 store costs (issue 14): ingest with it on and off, how far the
replication lags, and ``durability = "replicated"`` against ``fsync``.

One SeaweedFS ``weed mini`` (``tests/seaweed.py``; it waits while another holds the ports) and
three daemons side by side: no replication, replicating with ``fsync`` acks, and replicating
with ``replicated`` acks. Every figure is a ratio against a baseline of the same run; what is
measured, and the figures of one run, are in docs/bench.md ("Replication (issue 14)"). The
server and the probes are in ``bench/_replication_watch.py``, part 4 (the store alone) in
``bench/_replication_store.py``, the settings in ``bench/_replication_settings.py``. Nothing
is asserted; the exit status is 1 when a goal is missed, 75 when no SeaweedFS could start::

    python bench/replication_bench.py --quick                   # under 2 minutes on 2 cores
    python bench/replication_bench.py --json replication.json   # more data and rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import _lucidd as drive
from bench._baselines import Workload
from bench._daemon import short_tmp, started_daemon
from bench._hdr import Histogram
from bench._replication_rounds import IngestRound, ingest_round, paced_round
from bench._replication_settings import (
    CHUNK_SIZE,
    CLIENTS,
    DAEMONS,
    DATA_BYTES,
    GOAL_CATCH_UP_S,
    GOAL_LAG_GROWTH,
    GOAL_REPLICATED_RATIO,
    LAG_GAUGE,
    LATENCY_CHUNK_SIZE,
    LATENCY_WARMUP,
    MS_PER_S,
    NS_PER_MS,
    NS_PER_S,
    PACED_FRACTIONS,
    QUICK,
    REPLICATION_ROLES,
    ROLES,
    WARMUP,
    WINDOW,
    WORKERS,
    Settings,
)
from bench._replication_store import measure_store, store_rows
from bench._replication_watch import (
    Target,
    replication_settings,
    seaweed_server,
    wait_replicated,
)
from bench._results import log
from bench._rows import Row, markdown
from lucidd.client import ControlClient
from lucidd.errors import EX_TEMPFAIL
from lucidd.testing import Daemon
from lucidd.units import MiB

if TYPE_CHECKING:
    from tests.seaweed import Seaweed

# --- 1 and 2: rounds of 1 MiB chunks ---------------------------------------------------------


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
            rounds[name].append(ingest_round(targets[name], workload, WARMUP, weed_pid))
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
    lag_max = max(r.lag_max_mib() for r in on_rounds)
    gauge_max = max(r.gauge_max_mib() for r in on_rounds)
    gauge_end = max(r.gauge_at_last_ack_mib() for r in on_rounds)
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
        Row(
            "1 ingest", "lag by the files, max", lag_max, "MiB", "a round's data", on_rounds[0].mib
        ),
        Row(
            "1 ingest", f"`{LAG_GAUGE}`, max", gauge_max, "MiB", "a round's data", on_rounds[0].mib
        ),
        Row(
            "1 ingest",
            f"`{LAG_GAUGE}` at the last ack (worst round)",
            gauge_end,
            "MiB",
            "a round's data",
            on_rounds[0].mib,
        ),
    ]
    return rows + cpu_rows(rounds)


# --- 1b: paced ingest, below what replication managed in part 1 --------------------------------


def paced_rows(
    settings: Settings,
    target: Target,
    rounds: dict[str, list[IngestRound]],
    blob: bytes,
    weed_pid: int,
) -> list[Row]:
    """Rounds on the ``fsync`` daemon at fractions of part 1's replication rate: does the lag
    stay bounded, and replication end soon after the last ack, when ingest is within reach?"""
    replication = statistics.median(r.replication_mib_s for r in rounds["fsync"])
    rows = []
    for fraction in PACED_FRACTIONS:
        rate = fraction * replication
        log(f"paced: fsync daemon, {rate:.0f} MiB/s for {settings.paced_s:g} s")
        paced = paced_round(target, blob, rate, settings.paced_s, weed_pid)
        growth = paced.lag_growth_mib_s()
        growth = float("nan") if growth is None else growth
        name = f"paced at {fraction:g} x part 1's replication"
        rows += [
            Row(
                "1b paced",
                f"{name}: ingest",
                paced.ingest_mib_s,
                "MiB/s",
                "replication (part 1)",
                replication,
            ),
            Row(
                "1b paced",
                f"{name}: lag growth while putting (slope)",
                growth,
                "MiB/s",
                "its ingest",
                paced.ingest_mib_s,
                goal=f"ratio <= {GOAL_LAG_GROWTH:g}",
                met=growth / paced.ingest_mib_s <= GOAL_LAG_GROWTH,
            ),
            Row(
                "1b paced",
                f"{name}: lag by the files, max",
                paced.lag_max_mib(),
                "MiB",
                "its data",
                paced.mib,
            ),
            Row(
                "1b paced",
                f"{name}: catch-up after the last ack",
                paced.catch_up_s,
                "s",
                "the goal",
                GOAL_CATCH_UP_S,
                goal=f"<= {GOAL_CATCH_UP_S:g} s",
                met=paced.catch_up_s <= GOAL_CATCH_UP_S,
            ),
        ]
    return rows


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
        rows += paced_rows(settings, targets["fsync"], rounds, blob, seaweed.pid)
        rows += latency_rows(settings, targets, blob)
        rows += replicated_throughput_rows(rounds)
    rows += store_rows(limits, rows)
    rows.sort(key=lambda row: row.part)
    return rows


def _config(daemon: Daemon) -> dict[str, Any]:
    with ControlClient(daemon.runtime_dir) as control:
        return control.config()


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
