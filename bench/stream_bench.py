"""A long-lived connection streaming chunks: shared memory against the socket (issue 17).

The main bench's throughput runs are short and open a new connection each, so a new
shared-memory region's first-touch page faults weigh on them; a recording session streams for
minutes on one connection. This starts one daemon (compression off), then alternates
``--rounds`` pairs of runs on it: one ``DataClient`` streaming ``--size`` chunks for
``--seconds`` with ``--window`` in flight, with shared memory, then the same over the socket.
Prints MiB/s of each run and the ratio of the medians::

    python bench/stream_bench.py [--size 1MiB] [--seconds 8] [--window 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemon import started_daemon
from lucidd.client import DataClient, new_session_id
from lucidd.units import MiB, parse_size


def stream(runtime_dir: Path, blob: bytes, seconds: float, window: int, shared: bool) -> float:
    """MiB/s of one connection sending ``blob`` as chunk after chunk for ``seconds``."""
    sent = 0
    started = time.perf_counter()

    def chunks() -> Iterator[tuple[int, bytes]]:
        nonlocal sent
        while time.perf_counter() - started < seconds:
            yield sent, blob
            sent += 1

    with DataClient(runtime_dir, shared_memory=shared) as client:
        assert client.transport == ("memfd" if shared else "socket"), client.transport
        client.put_many(new_session_id(), chunks(), window=window)
    return sent * len(blob) / MiB / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="1MiB")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    args = parser.parse_args()
    blob = os.urandom(parse_size(args.size))
    runs: dict[bool, list[float]] = {True: [], False: []}
    with started_daemon(args.workers, args.durability) as daemon:
        for _ in range(args.rounds):
            for shared in (True, False):
                runs[shared].append(
                    stream(daemon.runtime_dir, blob, args.seconds, args.window, shared)
                )
    print(f"| transport | {args.size} chunks, window {args.window}, {args.durability} MiB/s |")
    print("|---|---|")
    for shared, label in ((True, "memfd"), (False, "socket")):
        print(f"| {label} | {', '.join(f'{v:,.0f}' for v in runs[shared])} |")
    ratio = statistics.median(runs[True]) / statistics.median(runs[False])
    print(f"\nshared memory / socket (medians): {ratio:.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
