"""End to end: one file stored by the real command line, ``lucidctl put`` against ``restic backup``.

Two runs of each: ``file``, the ``--end-to-end`` file (256 MiB), which the goal compares, and
``one chunk``, a file of one 1 MiB chunk: the command's fixed cost (start-up, opening the
session or repository, the root or snapshot), which the large file pays too.

Both get the same file of random (incompressible) bytes, written once before either is timed,
fsynced (so neither pays for its writeback) and read once (so both read it from the page
cache: the machine's cache is used the same way for both). The file, restic's repository and
the daemon's state share one folder's filesystem (the daemon's base folder, on disk, not tmpfs).

- ``lucidctl put FILE --chunk-size 1MiB --compression off``: this checkout's CLI as a
  subprocess (``python -m lucidd.cli``), timed as a user would (the whole command, Python's
  start-up included), against a daemon the bench started (durability ``fsync``).
- ``restic backup FILE`` into a fresh repository; ``restic init`` is not timed (the flags by
  version: :class:`bench._baselines.Restic`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench._baselines import BaselineError, Restic, restic_available
from bench._daemon import REPO_ROOT, checkout_pythonpath
from bench._lucidd import DEFAULT_TRANSPORT
from bench._results import Results, log
from bench._settings import (
    END_TO_END_FILE_RUN,
    END_TO_END_ONE_CHUNK_RUN,
    LUCIDD,
    RESTIC,
    Settings,
)
from lucidd.testing import Daemon
from lucidd.units import MiB, format_size

PUT_CHUNK_SIZE: Final = MiB
WRITE_BLOCK: Final = 64 * MiB
NS_PER_S: Final = 1_000_000_000


def write_input(path: Path, nbytes: int) -> None:
    """``nbytes`` of random bytes at ``path``, fsynced, then read once into the page cache."""
    with path.open("wb") as f:
        left = nbytes
        while left:
            block = os.urandom(min(WRITE_BLOCK, left))
            f.write(block)
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    with path.open("rb") as f:
        while f.read(WRITE_BLOCK):
            pass


@dataclass(frozen=True)
class PutResult:
    """What one ``lucidctl put`` took and reported."""

    seconds: float
    nbytes: int
    transport: str


def lucidctl_put(runtime_dir: Path, path: Path) -> PutResult:
    """Time ``lucidctl --json put`` of ``path``; the transport from its JSON (``socket`` when
    it names none). A failed put raises: it is lucidd's own failure, not a baseline's."""
    command = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(runtime_dir), "--json"]
    command += ["put", str(path), "--chunk-size", str(PUT_CHUNK_SIZE), "--compression", "off"]
    env = dict(os.environ, PYTHONPATH=checkout_pythonpath())
    start = time.perf_counter_ns()
    done = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    seconds = (time.perf_counter_ns() - start) / NS_PER_S
    if done.returncode != 0:
        raise RuntimeError(f"lucidctl put failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return PutResult(seconds, int(result["bytes"]), str(result.get("transport", DEFAULT_TRANSPORT)))


def restic_backup_file(path: Path, folder: Path) -> tuple[Restic, float]:
    """The restic found and the seconds of ``restic backup`` of ``path`` into a fresh
    repository under ``folder``; :class:`BaselineError` if restic fails."""
    restic = Restic.installed()
    return restic, restic.backup(path, folder / "restic-repo", folder / "restic-cache")


def row(design: str, command: str, nbytes: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """An ``end_to_end`` row of the JSON (docs/bench.md)."""
    return {
        "design": design,
        "command": command,
        "bytes": nbytes,
        "seconds": seconds,
        "mib_s": nbytes / MiB / seconds,
        **extra,
    }


def error_row(design: str, command: str, nbytes: int, error: str, **extra: Any) -> dict[str, Any]:
    """The row of a run that failed: no figures, the failure as ``error``."""
    return {
        "design": design,
        "command": command,
        "bytes": nbytes,
        "seconds": None,
        "mib_s": None,
        "error": error,
        **extra,
    }


def measure(settings: Settings, daemon: Daemon, workers: int, results: Results) -> None:
    """Both runs (``file``, ``one chunk``): ``lucidctl put`` against ``daemon``, then, when
    installed and asked for, ``restic backup`` of the same file into a fresh repository. The
    files and repositories live in ``daemon.base``, beside the daemon's state."""
    folder = daemon.base / "end-to-end"
    folder.mkdir()
    try:
        for run, nbytes in (
            (END_TO_END_FILE_RUN, settings.end_to_end_bytes),
            (END_TO_END_ONE_CHUNK_RUN, PUT_CHUNK_SIZE),
        ):
            where = folder / run.replace(" ", "-")
            where.mkdir()
            source = where / "input.bin"
            log(f"end to end ({run}): writing {format_size(nbytes)} of random bytes")
            write_input(source, nbytes)
            log(f"end to end ({run}): lucidctl put {format_size(nbytes)}")
            put = lucidctl_put(daemon.runtime_dir, source)
            results.end_to_end.append(
                row(
                    LUCIDD,
                    "lucidctl put",
                    put.nbytes,
                    put.seconds,
                    run=run,
                    chunk_size=PUT_CHUNK_SIZE,
                    workers=workers,
                    durability="fsync",
                    transport=put.transport,
                )
            )
            if RESTIC in settings.baselines and restic_available():
                log(f"end to end ({run}): restic backup {format_size(nbytes)}")
                results.end_to_end.append(_restic_row(source, where, nbytes, run))
            source.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restic_row(source: Path, folder: Path, nbytes: int, run: str) -> dict[str, Any]:
    try:
        restic, seconds = restic_backup_file(source, folder)
    except BaselineError as exc:
        log(f"restic: failed: {exc}")
        return error_row(RESTIC, "restic backup", nbytes, str(exc), run=run)
    flags = restic.global_flags() + restic.backup_flags()
    return row(
        RESTIC,
        "restic backup",
        nbytes,
        seconds,
        run=run,
        restic_version=restic.version_text,
        flags=flags,
    )
