"""The daemon's memory: RSS and PSS summed over its processes, sampled until stopped.

One sampler for every bench. PSS counts each shared page once, split among the processes that
map it, so the sum over the daemon is what it costs the machine; the ring (a ``/dev/shm``
mapping every worker shares) is reported apart from the rest.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final, Self

import psutil

#: The default time between two samples.
MEMORY_SAMPLE_INTERVAL_S: Final = 0.5
#: Where POSIX shared memory (the daemon's ring) lives.
SHM_PREFIX: Final = "/dev/shm/"
MB: Final = 1_000_000


def _pss_ring(pid: int) -> int:
    """Bytes of the process's PSS in mappings of ``/dev/shm`` files (the ring), from smaps."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0
    total = 0
    in_shm = False
    for line in text.splitlines():
        if line.startswith("Pss:"):
            if in_shm:
                total += int(line.split()[1]) * 1024
        elif not line[:1].isupper():  # a mapping's header line: "start-end perms ... path"
            fields = line.split(maxsplit=5)
            in_shm = len(fields) == 6 and fields[5].startswith(SHM_PREFIX)
    return total


@dataclass
class MemorySample:
    """Sums over the daemon's processes at one moment, in bytes."""

    rss: int = 0
    pss: int = 0
    pss_ring: int = 0
    processes: int = 0


def sample_memory(procs: list[psutil.Process]) -> MemorySample:
    sample = MemorySample()
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        sample.rss += info.rss
        sample.pss += info.pss
        sample.pss_ring += _pss_ring(proc.pid)
        sample.processes += 1
    return sample


@dataclass
class MemoryPeaks:
    """What a memory watch saw: the first sample and the samples with the most RSS and PSS."""

    idle: MemorySample = field(default_factory=MemorySample)
    peak_rss: MemorySample = field(default_factory=MemorySample)
    peak_pss: MemorySample = field(default_factory=MemorySample)
    samples: int = 0

    def take(self, sample: MemorySample) -> None:
        if self.samples == 0:
            self.idle = sample
        self.samples += 1
        if sample.rss > self.peak_rss.rss:
            self.peak_rss = sample
        if sample.pss > self.peak_pss.pss:
            self.peak_pss = sample

    def as_dict(self, workers: int) -> dict[str, float | int]:
        """The ``memory`` object of the bench's JSON (sizes in MB = 10**6 bytes)."""
        return {
            "workers": workers,
            "processes": self.peak_pss.processes,
            "samples": self.samples,
            "idle_rss_mb": self.idle.rss / MB,
            "idle_pss_mb": self.idle.pss / MB,
            "peak_rss_mb": self.peak_rss.rss / MB,
            "peak_pss_mb": self.peak_pss.pss / MB,
            "peak_pss_ring_mb": self.peak_pss.pss_ring / MB,
            "peak_pss_without_ring_mb": (self.peak_pss.pss - self.peak_pss.pss_ring) / MB,
        }


def _watch(pids: list[int], interval_s: float, conn: Connection) -> None:
    procs = [psutil.Process(pid) for pid in pids]
    peaks = MemoryPeaks()
    peaks.take(sample_memory(procs))
    while not conn.poll(interval_s):
        peaks.take(sample_memory(procs))
    peaks.take(sample_memory(procs))
    conn.send(peaks)


class MemoryWatch:
    """Samples the processes' memory every ``interval_s`` seconds until :meth:`stop`.

    The sampler is a forked process, not a thread: reading the smaps of a dozen processes is
    enough Python to hold the GIL against the bench's client threads and show up in their
    latencies (docs/bench.md, "Figures behind design choices"). Start it before any other
    thread.
    """

    def __init__(
        self, procs: list[psutil.Process], interval_s: float = MEMORY_SAMPLE_INTERVAL_S
    ) -> None:
        self._pids = [proc.pid for proc in procs]
        self._interval_s = interval_s
        self._conn: Connection | None = None
        self._process: BaseProcess | None = None
        self.peaks = MemoryPeaks()

    def start(self) -> Self:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_watch, args=(self._pids, self._interval_s, child), daemon=True
        )
        self._process.start()
        child.close()
        return self

    def stop(self) -> MemoryPeaks:
        if self._conn is not None and self._process is not None:
            self._conn.send(None)
            self.peaks = self._conn.recv()
            self._process.join()
            self._conn.close()
            self._conn = self._process = None
        return self.peaks

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
