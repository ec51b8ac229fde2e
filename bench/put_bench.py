"""End-to-end figures of the daemon issue: ``lucidctl put`` of a large file, per-chunk latency.

Starts a real daemon (10 workers, default durability), then in one run:

1. ``lucidctl put FILE --chunk-size 1MiB`` of a ``--size`` file of random bytes (1 GiB by
   default), timed as a user would (the whole command), with the peak RSS and PSS of all
   daemon processes together sampled every 50 ms;
2. per-chunk latency (client send to durable ack) of 64 KiB chunks, one in flight;
3. the in-process floor for the same work: seal + hash (``ChunkSealer``, compression off) of
   the same chunk sizes in this process, no I/O.

    python bench/put_bench.py [--size 1GiB] [--latency-chunks 2000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemon import started_daemon
from lucidd.client import DataClient, new_session_id
from lucidd.crypto import ChunkSealer
from lucidd.units import parse_size

MiB = 1024 * 1024


class MemorySampler:
    """Peak RSS and PSS over every process of the daemon, sampled in a thread."""

    def __init__(self, root_pid: int) -> None:
        self._root = psutil.Process(root_pid)
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            for proc in [self._root, *self._root.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(0.05)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


def in_process_seal_us(size: int, rounds: int = 200) -> float:
    sealer = ChunkSealer(size)
    payload = os.urandom(size)
    secret, session = os.urandom(32), os.urandom(16)
    times = []
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        sealer.seal(secret, session, i, payload, "off")
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    return times[len(times) // 2] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--latency-chunks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="ld-pb-", dir="/tmp"))
    data_file = base / "input.bin"
    with data_file.open("wb") as f:
        for _ in range(0, size, 64 * MiB):
            f.write(os.urandom(min(64 * MiB, size - f.tell())))
    with started_daemon(args.workers, "fsync") as d:
        assert d.proc is not None
        cmd = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(d.runtime_dir)]
        cmd += ["--json", "put", str(data_file), "--chunk-size", "1MiB"]
        with MemorySampler(d.proc.pid) as memory:
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            put_s = time.perf_counter() - t0
        payload = os.urandom(64 * 1024)
        session = new_session_id()
        latencies = []
        with DataClient(d.runtime_dir) as client:
            for i in range(args.latency_chunks):
                t0_ns = time.perf_counter_ns()
                client.put(session, i, payload)
                latencies.append(time.perf_counter_ns() - t0_ns)
        latencies = sorted(latencies[len(latencies) // 10 :])  # drop the warm-up tenth
    seal_1m = in_process_seal_us(MiB)
    seal_64k = in_process_seal_us(64 * 1024)
    rows = [
        ("lucidctl put, 1 MiB chunks", f"{size / MiB / put_s:.0f} MiB/s ({put_s:.2f} s)"),
        ("in-process seal+hash, 1 MiB", f"{MiB / MiB / (seal_1m / 1e6):.0f} MiB/s per core"),
        ("latency 64 KiB, 1 in flight, p50", f"{percentile(latencies, 0.5):.0f} µs"),
        ("latency 64 KiB, 1 in flight, p99", f"{percentile(latencies, 0.99):.0f} µs"),
        ("in-process seal+hash, 64 KiB", f"{seal_64k:.0f} µs"),
        ("daemon peak RSS (all processes)", f"{memory.peak_rss / MiB:.0f} MiB"),
        ("daemon peak PSS (all processes)", f"{memory.peak_pss / MiB:.0f} MiB"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
