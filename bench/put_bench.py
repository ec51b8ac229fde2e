"""End-to-end figures of the daemon issue: ``lucidctl put`` of a large file, per-chunk latency.

Starts a real daemon (10 workers, default durability), then in one run:

1. ``lucidctl put FILE --chunk-size 1MiB`` of a ``--size`` file of random bytes (1 GiB by
   default), timed as a user would (the whole command), with the peak RSS and PSS of all
   daemon processes together sampled every 50 ms, and the transport it used (its ``--json``
   output's ``transport``, ``socket`` where it names none);
2. per-chunk latency (client send to durable ack) of 64 KiB chunks, one in flight;
3. the in-process floor for the same work: seal + hash (``ChunkSealer``, compression off) of
   the same chunk sizes in this process, no I/O.

    python bench/put_bench.py [--size 1GiB] [--latency-chunks 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemon import daemon_processes, started_daemon
from bench._hdr import Histogram
from bench._lucidd import DEFAULT_TRANSPORT, transport_of
from bench._memory import MemoryWatch
from lucidd.client import DataClient, new_session_id
from lucidd.crypto import ChunkSealer
from lucidd.units import parse_size

MiB = 1024 * 1024
#: Samples often enough to catch the peak of a put that lasts seconds.
MEMORY_SAMPLE_INTERVAL_S = 0.05


def in_process_seal_us(size: int, rounds: int = 200) -> float:
    sealer = ChunkSealer(size)
    payload = os.urandom(size)
    secret, session = os.urandom(32), os.urandom(16)
    times = Histogram()
    for i in range(rounds):
        t0 = time.perf_counter_ns()
        sealer.seal(secret, session, i, payload, "off")
        times.record(time.perf_counter_ns() - t0)
    return times.percentile(50) / 1000


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
        cmd = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(d.runtime_dir)]
        cmd += ["--json", "put", str(data_file), "--chunk-size", "1MiB"]
        with MemoryWatch(daemon_processes(d.runtime_dir), MEMORY_SAMPLE_INTERVAL_S) as memory:
            t0 = time.perf_counter()
            put = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
            put_s = time.perf_counter() - t0
        put_transport = json.loads(put.stdout).get("transport", DEFAULT_TRANSPORT)
        payload = os.urandom(64 * 1024)
        session = new_session_id()
        latencies = Histogram()
        warmup = args.latency_chunks // 10  # the warm-up tenth is not recorded
        with DataClient(d.runtime_dir) as client:
            latency_transport = transport_of(client)
            for i in range(args.latency_chunks):
                t0_ns = time.perf_counter_ns()
                client.put(session, i, payload)
                if i >= warmup:
                    latencies.record(time.perf_counter_ns() - t0_ns)
    peaks = memory.peaks
    seal_1m = in_process_seal_us(MiB)
    seal_64k = in_process_seal_us(64 * 1024)
    rows = [
        (
            f"lucidctl put, 1 MiB chunks ({put_transport})",
            f"{size / MiB / put_s:.0f} MiB/s ({put_s:.2f} s)",
        ),
        ("in-process seal+hash, 1 MiB", f"{MiB / MiB / (seal_1m / 1e6):.0f} MiB/s per core"),
        (
            f"latency 64 KiB, 1 in flight, p50 ({latency_transport})",
            f"{latencies.percentile(50) / 1000:.0f} µs",
        ),
        (
            f"latency 64 KiB, 1 in flight, p99 ({latency_transport})",
            f"{latencies.percentile(99) / 1000:.0f} µs",
        ),
        ("in-process seal+hash, 64 KiB", f"{seal_64k:.0f} µs"),
        ("daemon peak RSS (all processes)", f"{peaks.peak_rss.rss / MiB:.0f} MiB"),
        ("daemon peak PSS (all processes)", f"{peaks.peak_pss.pss / MiB:.0f} MiB"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
