"""bench.py's figure (``--plot FILE.png``): latency CDFs and throughput, with matplotlib."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Final

from bench._results import LatencyKey, Results, limit_mib_s, log, throughput_row
from bench._settings import BASELINES, LUCIDD, NS_PER_US, RESTIC, Settings
from lucidd.units import format_size

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
            if (row := throughput_row(results, design, size, workers)) is not None
            and row["mib_s"] is not None  # a failed baseline has no figure to draw
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
        row = throughput_row(results, design, size)
        if row is not None and row["mib_s"] is not None:
            ax.axhline(row["mib_s"], linestyle="-.", color=_COLORS[design], label=design)
    for limit, color in (("compute", "grey"), ("disk", "black")):
        value = limit_mib_s(results, limit, size)
        if value is not None:
            ax.axhline(value, linestyle="--", color=color, label=f"{limit} limit")
    ax.set_xlabel("workers")
    ax.set_ylabel("MiB/s (durability fsync)")
    ax.set_title(f"throughput vs workers, {format_size(size)} chunks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
