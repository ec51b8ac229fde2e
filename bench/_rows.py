"""The figures of trust_bench and replication_bench: one :class:`Row` each, a Markdown table.

Every figure sits next to a baseline measured in the same run (and its goal, when it has one),
so both benches report the same columns the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def number(value: float) -> str:
    """A figure for the table: thousands separated, three significant digits below 10."""
    if math.isnan(value):  # not enough samples
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(rows: list[Row], skipped: list[str]) -> str:
    """The rows as one Markdown table, then a line for each part that was skipped and why."""
    lines = [
        "| part | figure | value | baseline | baseline value | ratio | goal |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        base = "" if row.baseline_value is None else f"{number(row.baseline_value)} {row.unit}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        goal = row.goal if row.met is None else f"{row.goal}: {'met' if row.met else '**missed**'}"
        lines.append(
            f"| {row.part} | {row.figure} | {number(row.value)} {row.unit} | {row.baseline} "
            f"| {base} | {ratio} | {goal} |"
        )
    lines += [f"\nSkipped: {why}" for why in skipped]
    return "\n".join(lines) + "\n"
