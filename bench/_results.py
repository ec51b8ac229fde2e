"""What one bench.py run measured (the JSON of docs/bench.md), looked up by the goals and the
report, and the run's progress log."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench._hdr import Histogram
from bench._settings import NS_PER_US, PERCENTILES
from lucidd.units import MiB


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
    #: One file stored by each command (``lucidctl put``, ``restic backup``): bench._end_to_end.
    end_to_end: list[dict[str, Any]] = field(default_factory=list)
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
            "end_to_end": self.end_to_end,
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

    def add_throughput_error(
        self, design: str, size: int, workers: int | None, error: str, **extra: Any
    ) -> None:
        """A throughput run that failed (a baseline's tool): no figures, the failure as
        ``error``, so the rest of the bench still reports."""
        self.throughput.append(
            {
                "design": design,
                "chunk_size": size,
                "workers": workers,
                "mib_s": None,
                "chunks_s": None,
                "chunks": None,
                "seconds": None,
                "error": error,
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


# --- look-ups -----------------------------------------------------------------------------


def throughput_row(
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


def mib_s(results: Results, design: str, size: int, workers: int | None = None) -> float | None:
    """MiB/s of a throughput row measured with durability fsync (what the goals compare)."""
    row = throughput_row(results, design, size, workers)
    if row is None or row["mib_s"] is None or row.get("durability", "fsync") != "fsync":
        return None
    return float(row["mib_s"])


def end_to_end_mib_s(results: Results, design: str, run: str) -> float | None:
    """MiB/s of ``design``'s end-to-end row of ``run`` (None if it is missing or failed)."""
    for row in results.end_to_end:
        if row["design"] == design and row.get("run") == run and row["mib_s"] is not None:
            return float(row["mib_s"])
    return None


def latency_p50(results: Results, design: str, size: int, durability: str) -> float | None:
    for row in results.latency:
        if (row["design"], row["chunk_size"], row["in_flight"], row["clients"]) == (
            design,
            size,
            1,
            1,
        ) and row["durability"] == durability:
            return float(row["p50_us"])
    return None


def limit_mib_s(results: Results, limit: str, size: int) -> float | None:
    for row in results.limits:
        if row["limit"] == limit and row["chunk_size"] == size:
            return float(row["mib_s"])
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
