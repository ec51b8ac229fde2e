"""A real ``lucidd serve`` for the bench, its processes' memory, and its metrics.

The daemon is started by the harness the tests use (:mod:`lucidd.testing`: readiness through
a bench-owned ``NOTIFY_SOCKET``, as systemd waits for it). Folders are short paths under
``/tmp`` because a Unix socket path must stay under 108 bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil

from bench._hdr import Histogram
from lucidd.client import ControlClient
from lucidd.testing import STOP_TIMEOUT_S, Daemon, DaemonError

LOG_TAIL_CHARS: Final = 3000
STAGE_PREFIX: Final = "stage_"
STAGE_SUFFIX: Final = "_seconds_total"
SEALED_COUNTER: Final = "chunks_sealed_total"
ACKED_COUNTER: Final = "chunks_acked_total"
SETTLE_TIMEOUT_S: Final = 1.5
SETTLE_POLL_S: Final = 0.02
US_PER_S: Final = 1e6
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


def short_tmp(prefix: str) -> Path:
    """A fresh folder under /tmp with a short name (socket paths stay far below 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def checkout_pythonpath() -> str:
    """``PYTHONPATH`` with this checkout first, so a child runs the code the bench imports."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def bench_daemon(base: Path, workers: int, env: Mapping[str, str]) -> Daemon:
    """A :class:`lucidd.testing.Daemon` that runs this checkout's ``lucidd``.

    The checkout is put first on the child's ``PYTHONPATH`` and is its working folder (``-m
    lucidd`` imports from the current folder first), so the daemon runs the code the bench
    imports. The notify socket is closed once ``READY=1`` came: nobody reads it afterwards.
    """
    return Daemon(
        base,
        workers,
        {**env, "PYTHONPATH": checkout_pythonpath()},
        cwd=REPO_ROOT,
        listen=False,
        state_dir_name="s",
        runtime_dir_name="r",
    )


@contextlib.contextmanager
def started_daemon(
    workers: int, durability: str, settings: Mapping[str, str] | None = None
) -> Iterator[Daemon]:
    """A fresh daemon (compression off) in a fresh folder, removed with everything after.

    ``settings`` are more daemon settings by field name (``{"ring_size": "32MiB"}``), passed
    as ``LUCIDD_<NAME>`` variables.
    """
    base = short_tmp("lb-")
    env = {f"LUCIDD_{name.upper()}": value for name, value in (settings or {}).items()}
    env.update({"LUCIDD_DURABILITY": durability, "LUCIDD_COMPRESSION": "off"})
    daemon = bench_daemon(base, workers, env)
    try:
        yield daemon.start()
    except BaseException:
        if daemon.log_path.exists():
            print(f"--- lucidd log (tail) ---\n{daemon.log(LOG_TAIL_CHARS)}", file=sys.stderr)
        raise
    finally:
        if daemon.proc is not None:
            # A daemon that does not stop is killed; the bench's figures are already taken.
            with contextlib.suppress(DaemonError):
                daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- processes and memory -------------------------------------------------------------------


def daemon_processes(runtime_dir: Path) -> list[psutil.Process]:
    """Every process of the daemon at ``runtime_dir``: those ``health`` lists, and their children
    (the forkserver). Empty if they cannot be inspected from here."""
    with ControlClient(runtime_dir) as control:
        pids = {status.pid for status in control.health().processes if status.alive}
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            found[pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
    return list(found.values())


# --- CPU per process role ---------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds (user + system) so far, per role: ``supervisor``, ``workers`` (all of
    them), ``aggregator``, ``other`` (the forkserver) and ``client`` (this bench process)."""

    seconds: dict[str, float]

    def minus(self, earlier: CpuSample) -> dict[str, float]:
        return {role: t - earlier.seconds.get(role, 0.0) for role, t in self.seconds.items()}


def cpu_roles(runtime_dir: Path) -> dict[int, str]:
    """pid -> role of every daemon process (``other`` for those health does not list)."""
    with ControlClient(runtime_dir) as control:
        listed = {status.pid: status.role for status in control.health().processes}
    roles: dict[int, str] = {}
    for proc in daemon_processes(runtime_dir):
        role = listed.get(proc.pid, "other")
        roles[proc.pid] = "workers" if role.startswith("worker") else role
    return roles


def sample_cpu(roles: dict[int, str]) -> CpuSample:
    seconds = dict.fromkeys(("supervisor", "workers", "aggregator", "other"), 0.0)
    for pid, role in roles.items():
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            seconds[role] = seconds.get(role, 0.0) + times.user + times.system
    own = os.times()
    seconds["client"] = own.user + own.system
    return CpuSample(seconds)


def process_wakeup_us(rounds: int = 2000) -> float:
    """Median one-way latency of a 1-byte pipe message to a process blocked in read(2).

    The floor of every process hop on this machine: the receiver must be woken and scheduled
    (on a VM, often an idle vCPU woken through the hypervisor). Half the median round trip.
    """
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    echo = (
        "import os,sys\n"
        f"r,w={ping_r},{pong_w}\n"
        "while True:\n"
        "    b=os.read(r,1)\n"
        "    if not b: break\n"
        "    os.write(w,b)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", echo], pass_fds=(ping_r, pong_w), close_fds=True
    )
    os.close(ping_r)
    os.close(pong_w)
    trips = Histogram()
    try:
        for _ in range(rounds):
            start = time.perf_counter_ns()
            os.write(ping_w, b"x")
            os.read(pong_r, 1)
            trips.record(time.perf_counter_ns() - start)
            time.sleep(0.0002)  # let both sides go idle, as between chunks sent one at a time
    finally:
        os.close(ping_w)
        os.close(pong_r)
        child.wait(STOP_TIMEOUT_S)
    return trips.percentile(50) / 2 / 1000


# --- metrics ------------------------------------------------------------------------------


def read_metrics(control: ControlClient, settle_s: float = SETTLE_TIMEOUT_S) -> dict[str, float]:
    """The daemon's metrics once they account for every chunk acknowledged so far.

    The aggregator answers ``metrics``; its own counters (``chunks_sealed_total``, the worker
    stages) are current, but the supervisor's (``chunks_acked_total``, ``stage_ack_...``) reach it
    in a status message every second or so. So this polls until the supervisor's acked count has
    caught up with the sealed count (the bench reads metrics only while none of its chunks is in
    flight), for at most ``settle_s`` seconds (a daemon with other clients may never settle;
    0 takes the first answer).
    """
    deadline = time.monotonic() + settle_s
    while True:
        metrics = dict(control.metrics())
        acked, sealed = metrics.get(ACKED_COUNTER), metrics.get(SEALED_COUNTER)
        if acked is None or sealed is None or acked >= sealed or time.monotonic() > deadline:
            return metrics
        time.sleep(SETTLE_POLL_S)


def stage_breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Microseconds per sealed chunk spent in each stage between two metrics snapshots.

    Every ``stage_<name>_seconds_total`` counter the daemon exposes is picked up, whatever its
    name; the result is keyed by ``<name>``. Empty if no chunk was sealed in between.
    """
    chunks = after.get(SEALED_COUNTER, 0.0) - before.get(SEALED_COUNTER, 0.0)
    if chunks <= 0:
        return {}
    return {
        key[len(STAGE_PREFIX) : -len(STAGE_SUFFIX)]: (value - before.get(key, 0.0))
        * US_PER_S
        / chunks
        for key, value in sorted(after.items())
        if key.startswith(STAGE_PREFIX) and key.endswith(STAGE_SUFFIX)
    }
