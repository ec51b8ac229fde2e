"""bench.py's Markdown report: the tables, in the order docs/bench.md explains them."""

from __future__ import annotations

from typing import Any, Final

from bench._results import Results, ratio, throughput_row
from bench._settings import BASELINES, DURABILITIES, LUCIDD, LUCIDD_SOCKET, Settings
from lucidd.units import format_size


def _size(size: int) -> str:
    return format_size(size).replace(" ", "\u00a0")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _throughput_table(results: Results, settings: Settings) -> list[str]:
    sizes = settings.sizes
    lines = [
        "| design | workers | transport | " + " | ".join(_size(s) for s in sizes) + " |",
        "|---|---:|---|" + "---:|" * len(sizes),
    ]
    measured = {r["design"] for r in results.throughput}
    designs = [LUCIDD, *[d for d in (LUCIDD_SOCKET, *BASELINES) if d in measured]]
    for design in designs:
        workers = settings.workers if design in (LUCIDD, LUCIDD_SOCKET) else None
        cells = []
        shown_workers: Any = "-"
        transport = "-"
        for size in sizes:
            row = throughput_row(results, design, size, workers)
            if row is None:
                cells.append("-")
                continue
            shown_workers = row["workers"] if row["workers"] is not None else "-"
            if row.get("durability", "fsync") != "fsync":
                shown_workers = f"{shown_workers}, durability {row['durability']}"
            transport = row.get("transport", transport)
            cells.append(_throughput_cell(row))
        lines.append(f"| {design} | {shown_workers} | {transport} | " + " | ".join(cells) + " |")
    gains = []
    for size in sizes:
        shared = throughput_row(results, LUCIDD, size, settings.workers)
        socket = throughput_row(results, LUCIDD_SOCKET, size, settings.workers)
        if shared and socket and shared.get("mib_s") and socket.get("mib_s"):
            gains.append(f"{_size(size)} {shared['mib_s'] / socket['mib_s']:.2f} x")
    if gains:  # printed under the table (a row of it would read as a design's MiB/s)
        lines.append(f"| shared memory / socket (same run) | | | {' | '.join(gains)} |")
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
        lines.append(f"| {label} | - | - | " + " | ".join(cells) + " |")
    return lines


def _error(text: str) -> str:
    """A row's error for a table cell: one line, no pipes."""
    return "error: " + " ".join(text.split()).replace("|", "/")


def _throughput_cell(row: dict[str, Any]) -> str:
    if row.get("error") is not None:
        return _error(row["error"])
    return f"{row['mib_s']:,.0f} MiB/s ({row['chunks_s']:,.0f}/s)"


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
            f"| {_fmt(ratio(r['mib_s'], one), 2)} |"
        )
    return [*lines, ""]


def _latency_table(results: Results) -> list[str]:
    lines = [
        "| design | transport | chunk | in flight | clients | durability "
        "| p50 | p90 | p99 | p99.9 | max | n |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
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
            f"| {r['design']} | {r.get('transport', '-')} | {_size(r['chunk_size'])} "
            f"| {r['in_flight']} | {r['clients']} "
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


def _end_to_end_lines(results: Results) -> list[str]:
    if not results.end_to_end:
        return ["(not measured: `--end-to-end 0`, `--runtime-dir`, or no `fsync` daemon)"]
    lines = [
        "The same file of random bytes for both, written and fsynced first and read once "
        "(both read it from the page cache); the daemon's state, the file and restic's "
        "repository on one filesystem; `restic init` not timed. Each command is timed whole: "
        "the `one chunk` run is its fixed cost (start-up, session or repository, root or "
        "snapshot), which the `file` run pays too.",
        "",
        "| run | command | transport | how | seconds | MiB/s |",
        "|---|---|---|---|---:|---:|",
    ]
    for r in results.end_to_end:
        if r["design"] == LUCIDD:
            how = (
                f"{_size(r['chunk_size'])} chunks, {r['workers']} workers, "
                f"durability {r['durability']}, compression off"
            )
        else:
            flags = " ".join(r.get("flags", []))
            how = f"restic {r.get('restic_version', '?')}" + (f", `{flags}`" if flags else "")
        head = (
            f"| {r.get('run', '-')} | `{r['command']}` {_size(r['bytes'])} "
            f"| {r.get('transport', '-')} | {how}"
        )
        if r.get("error") is not None:
            lines.append(f"{head} | - | {_error(r['error'])} |")
        else:
            lines.append(f"{head} | {r['seconds']:.2f} | {r['mib_s']:,.0f} |")
    return lines


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
        "### End to end: one file",
        "",
        *_end_to_end_lines(results),
        "",
        "### Goals (issues 5 and 17)",
        "",
        *_goals_table(results),
    ]
    return "\n".join(lines)
