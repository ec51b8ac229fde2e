"""The bench's restic baseline: its flags follow ``restic version``, and a restic that fails
becomes the row's error (the report and the goals still come out), never a crash."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from bench._baselines import Restic, Workload, parse_restic_version
from bench._end_to_end import error_row, row
from bench._goals import GOAL_PUT_OVER_RESTIC, evaluate_goals
from bench._measure import measure_restic
from bench._report import markdown
from bench._results import Results, mib_s
from bench._settings import QUICK
from lucidd.units import MiB

DEBIAN_014 = "restic 0.14.0 compiled with go1.19.8 on linux/amd64\n"
SIZE = 4096

MACHINE = {
    "cpus": 2,
    "cpu_model": "test",
    "kernel": "6.1",
    "python": "3.11",
    "filesystem": "ext4 on /",
    "lucidd_commit": "abc1234",
    "load_average": [0.0, 0.0, 0.0],
}


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (DEBIAN_014, (0, 14, 0)),
        ("restic 0.15.2 compiled with go1.20.3 on linux/amd64", (0, 15, 2)),
        ("restic 0.16.0-dev (compiled manually) compiled with go1.21 on linux/amd64", (0, 16, 0)),
        ("restic 1.2.10 compiled with go1.23 on darwin/arm64", (1, 2, 10)),
        ("", None),
        ("rustic 0.15.0", None),
        ("restic version unknown", None),
    ],
)
def test_parse_restic_version_reads_the_release(text: str, version: tuple[int, ...]) -> None:
    assert parse_restic_version(text) == version


@pytest.mark.parametrize(
    ("version", "backup", "global_"),
    [
        ((0, 13, 1), [], []),
        ((0, 14, 0), [], ["--compression", "off"]),
        ((0, 15, 0), ["--no-scan"], ["--compression", "off"]),
        ((0, 17, 3), ["--no-scan"], ["--compression", "off"]),
        (None, [], []),
    ],
)
def test_no_scan_is_passed_only_from_0_15(
    version: tuple[int, int, int] | None, backup: list[str], global_: list[str]
) -> None:
    restic = Restic(version)
    assert restic.backup_flags() == backup
    assert restic.global_flags() == global_


def fake_restic(folder: Path, backup_exit: int) -> None:
    """A ``restic`` on PATH that says it is 0.14.0 and fails ``backup`` with ``backup_exit``
    (a flag it does not know, as Debian's 0.14 did with ``--no-scan``)."""
    script = folder / "restic"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *version*) printf "{DEBIAN_014}"; exit 0;; esac\n'
        f'case "$*" in *backup*) echo "unknown flag: --bogus" >&2; exit {backup_exit};; esac\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_installed_reads_the_version_of_the_restic_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_restic(tmp_path, 0)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert Restic.installed().version == (0, 14, 0)


def test_a_failing_restic_is_a_row_error_and_the_report_still_comes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    fake_restic(bin_dir, 1)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    results = Results(dict(MACHINE), {})
    measure_restic(Workload(os.urandom(2 * SIZE), SIZE, 3), work, results)

    (row,) = results.throughput
    assert row["design"] == "restic"
    assert row["mib_s"] is None
    assert "exit 1" in row["error"]
    assert "unknown flag: --bogus" in row["error"]
    assert mib_s(results, "restic", SIZE) is None
    assert list(work.iterdir()) == []  # its files and repository are removed
    settings = replace(QUICK, sizes=(SIZE,))
    results.goals = evaluate_goals(results, settings)
    assert "error: restic 0.14.0" in markdown(results, settings)


def test_the_end_to_end_goal_is_the_ratio_of_the_two_file_rows() -> None:
    results = Results(dict(MACHINE), {})
    results.end_to_end += [
        {"design": "lucidd", "run": "one chunk", "command": "lucidctl put", "mib_s": 4.0},
        {"design": "lucidd", "run": "file", "command": "lucidctl put", "mib_s": 600.0},
        {"design": "restic", "run": "one chunk", "command": "restic backup", "mib_s": 8.0},
        {"design": "restic", "run": "file", "command": "restic backup", "mib_s": 100.0},
    ]
    (goal,) = [g for g in evaluate_goals(results, QUICK) if g["goal"].startswith("lucidctl put")]
    assert goal["measured"] == pytest.approx(6.0)
    assert goal["target"] == GOAL_PUT_OVER_RESTIC
    assert goal["met"] is True


def test_a_failed_restic_leaves_the_end_to_end_goal_unjudged_and_is_reported() -> None:
    results = Results(dict(MACHINE), {})
    results.end_to_end += [
        row(
            "lucidd",
            "lucidctl put",
            256 * MiB,
            0.5,
            run="file",
            chunk_size=MiB,
            workers=2,
            durability="fsync",
            transport="socket",
        ),
        error_row("restic", "restic backup", 256 * MiB, "restic 0.14.0: exit 1", run="file"),
    ]
    results.goals = evaluate_goals(results, QUICK)
    (goal,) = [g for g in results.goals if g["goal"].startswith("lucidctl put")]
    assert goal["measured"] is None
    assert goal["met"] is None
    report = markdown(results, QUICK)
    assert "| 0.50 | 512 |" in report
    assert "error: restic 0.14.0: exit 1" in report
