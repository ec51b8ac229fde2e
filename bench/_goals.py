"""The goals of issues 5 and 17 (compression off, default durability), each as measured."""

from __future__ import annotations

import os
from typing import Any, Final

from bench._results import (
    Results,
    end_to_end_mib_s,
    latency_p50,
    limit_mib_s,
    mib_s,
    minus,
    ratio,
)
from bench._settings import END_TO_END_FILE_RUN, LUCIDD, RESTIC, Settings
from lucidd.units import KiB, MiB, format_size

GOAL_LIMIT_FRACTION: Final = 0.8
GOAL_64K_OVER_THREADS: Final = 1.5
GOAL_ADDED_P50_FSYNC_US: Final = 250.0
GOAL_ADDED_P50_OS_US: Final = 150.0
GOAL_PSS_MB: Final = 150.0
GOAL_PSS_WORKERS: Final = 10
GOAL_SCALING_8_OVER_1: Final = 6.0
GOAL_SCALING_CORES: Final = 8
#: Issue 17: ``lucidctl put`` of the end-to-end file against ``restic backup`` of it.
GOAL_PUT_OVER_RESTIC: Final = 5.0


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
    """Issues 5 and 17's goals, each as measured (``met`` is None where a figure is missing)."""
    workers = settings.workers
    lucidd_1m = mib_s(results, LUCIDD, MiB, workers)
    compute, disk = limit_mib_s(results, "compute", MiB), limit_mib_s(results, "disk", MiB)
    bound = None if compute is None or disk is None else min(compute, disk)
    goals = [
        _goal(
            "lucidd / min(compute, disk limit) at 1 MiB",
            ratio(lucidd_1m, bound),
            GOAL_LIMIT_FRACTION,
            "x",
            True,
        ),
        _goal(
            "lucidd / threads10 at 1 MiB",
            ratio(lucidd_1m, mib_s(results, "threads10", MiB)),
            1.0,
            "x",
            True,
        ),
        _goal(
            "lucidd / threads10 at 64 KiB",
            ratio(mib_s(results, LUCIDD, 64 * KiB, workers), mib_s(results, "threads10", 64 * KiB)),
            GOAL_64K_OVER_THREADS,
            "x",
            True,
        ),
        _goal(
            "p50 at 64 KiB, 1 in flight, fsync: lucidd - inprocess",
            minus(
                latency_p50(results, LUCIDD, 64 * KiB, "fsync"),
                latency_p50(results, "inprocess", 64 * KiB, "fsync"),
            ),
            GOAL_ADDED_P50_FSYNC_US,
            "µs",
            False,
        ),
        _goal(
            "p50 at 64 KiB, 1 in flight, no fsync: lucidd - inprocess",
            minus(
                latency_p50(results, LUCIDD, 64 * KiB, "os"),
                latency_p50(results, "inprocess", 64 * KiB, "os"),
            ),
            GOAL_ADDED_P50_OS_US,
            "µs",
            False,
        ),
        _pss_goal(results),
    ]
    scaling = ratio(
        mib_s(results, LUCIDD, settings.scaling_size, 8),
        mib_s(results, LUCIDD, settings.scaling_size, 1),
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
    goals.append(
        _goal(
            f"lucidctl put / restic backup of {format_size(settings.end_to_end_bytes)}",
            ratio(
                end_to_end_mib_s(results, LUCIDD, END_TO_END_FILE_RUN),
                end_to_end_mib_s(results, RESTIC, END_TO_END_FILE_RUN),
            ),
            GOAL_PUT_OVER_RESTIC,
            "x",
            True,
        )
    )
    return goals
