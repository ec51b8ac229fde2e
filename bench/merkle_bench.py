"""Benchmark of the Merkle log (daemon.aggregator.merkle_log): durable appends, memory, proofs,
reopen.

Measures, at ``--n`` leaves (default 1 000 000) in a fresh folder:

- durable appends/s with ``extend`` of ``--batch`` leaves and ``sync()`` every ``--sync-every``
  leaves (and once at the end), and the same with one ``append`` call per leaf;
- RSS growth (psutil) over the ``extend`` run, sampled at every sync, the leaf input excluded
  (it is generated before the baseline, as one bytes object);
- median inclusion-proof generation and verification at the current size (random indices),
  and median consistency-proof generation;
- reopen-to-root: ``close()``, ``MerkleLog.open(path)``, ``root()``.

Only the log's calls are timed (slicing the input into leaf hashes is not). Prints a Markdown
table; ``--json FILE`` also writes the figures. Example::

    python bench/merkle_bench.py --n 1000000 --json merkle.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._hdr import Histogram
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.merkle import HASH_SIZE, verify_consistency, verify_inclusion

PROOF_SAMPLES = 10_000
REOPEN_SAMPLES = 7
MIB = 1 << 20
NS_PER_MS = 1_000_000


def _durable_extend(
    path: Path, blob: bytes, n: int, batch: int, sync_every: int
) -> tuple[float, float, bytes]:
    """Append ``n`` leaves with extend+sync; return (seconds, peak RSS growth MiB, root)."""
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    elapsed = 0.0
    log = MerkleLog.open(path)
    since_sync = 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        leaves = [blob[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(start, stop)]
        t0 = time.perf_counter()
        log.extend(leaves)
        elapsed += time.perf_counter() - t0
        since_sync += stop - start
        if since_sync >= sync_every:
            peak = max(peak, process.memory_info().rss)  # buffers at their fullest
            t0 = time.perf_counter()
            log.sync()
            elapsed += time.perf_counter() - t0
            since_sync = 0
    t0 = time.perf_counter()
    log.sync()
    elapsed += time.perf_counter() - t0
    del leaves
    gc.collect()
    peak = max(peak, process.memory_info().rss)
    root = log.root()
    log.close()
    return elapsed, (peak - baseline) / MIB, root


def _durable_append(path: Path, blob: bytes, n: int, sync_every: int) -> float:
    """Append ``n`` leaves one ``append`` call each, sync every ``sync_every``; seconds."""
    leaves = [blob[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(n)]
    log = MerkleLog.open(path)
    append = log.append
    sync = log.sync
    t0 = time.perf_counter()
    for i, leaf in enumerate(leaves, start=1):
        append(leaf)
        if i % sync_every == 0:
            sync()
    sync()
    elapsed = time.perf_counter() - t0
    log.close()
    return elapsed


def _median_ns(samples: list[int]) -> int:
    histogram = Histogram()
    histogram.record_all(samples)
    return histogram.percentile(50)


def _median_us(samples: list[int]) -> float:
    return _median_ns(samples) / 1000


def _proofs(path: Path, blob: bytes, seed: int) -> dict[str, float]:
    log = MerkleLog.open(path)
    size = log.size
    root = log.root()
    rng = random.Random(seed)
    indices = [rng.randrange(size) for _ in range(PROOF_SAMPLES)]
    gen: list[int] = []
    ver: list[int] = []
    clock = time.perf_counter_ns
    for index in indices:
        t0 = clock()
        proof = log.inclusion_proof(index)
        t1 = clock()
        ok = verify_inclusion(
            blob[index * HASH_SIZE : (index + 1) * HASH_SIZE], index, size, proof, root
        )
        t2 = clock()
        if not ok:
            raise AssertionError(f"inclusion proof of {index} did not verify")
        gen.append(t1 - t0)
        ver.append(t2 - t1)
    cons: list[int] = []
    for size1 in (rng.randint(1, size) for _ in range(PROOF_SAMPLES // 10)):
        t0 = clock()
        proof = log.consistency_proof(size1)
        cons.append(clock() - t0)
        if not verify_consistency(size1, size, proof, log.root(size1), root):
            raise AssertionError(f"consistency proof from {size1} did not verify")
    log.close()
    return {
        "inclusion_gen_median_us": _median_us(gen),
        "inclusion_verify_median_us": _median_us(ver),
        "consistency_gen_median_us": _median_us(cons),
    }


def _reopen(path: Path, expected_root: bytes) -> list[int]:
    """Nanoseconds from open to root, per reopen."""
    times = []
    for _ in range(REOPEN_SAMPLES):
        t0 = time.perf_counter_ns()
        log = MerkleLog.open(path)
        root = log.root()
        times.append(time.perf_counter_ns() - t0)
        if root != expected_root:
            raise AssertionError("root changed across reopen")
        log.close()
    return times


def run(n: int, batch: int, sync_every: int, workdir: Path) -> dict[str, float | int]:
    blob = os.urandom(n * HASH_SIZE)
    extend_dir, append_dir = workdir / "extend", workdir / "append"
    seconds, rss_mib, root = _durable_extend(extend_dir, blob, n, batch, sync_every)
    append_seconds = _durable_append(append_dir, blob, n, sync_every)
    results: dict[str, float | int] = {
        "n": n,
        "batch": batch,
        "sync_every": sync_every,
        "extend_appends_per_s": n / seconds,
        "append_appends_per_s": n / append_seconds,
        "rss_growth_mib": rss_mib,
    }
    results.update(_proofs(extend_dir, blob, seed=n))
    reopen = _reopen(extend_dir, root)
    results["reopen_to_root_median_ms"] = _median_ns(reopen) / NS_PER_MS
    results["reopen_to_root_max_ms"] = max(reopen) / NS_PER_MS
    return results


def _table(r: dict[str, float | int]) -> str:
    rows = [
        ("durable appends/s, `extend`", f"{r['extend_appends_per_s']:,.0f}", ">= 300 000"),
        ("durable appends/s, `append` per leaf", f"{r['append_appends_per_s']:,.0f}", ""),
        ("RSS growth over the extend run", f"{r['rss_growth_mib']:.1f} MiB", "<= 8 MB"),
        (
            "inclusion proof generation, median",
            f"{r['inclusion_gen_median_us']:.1f} µs",
            "<= 50 µs",
        ),
        (
            "inclusion proof verification, median",
            f"{r['inclusion_verify_median_us']:.1f} µs",
            "<= 20 µs",
        ),
        ("consistency proof generation, median", f"{r['consistency_gen_median_us']:.1f} µs", ""),
        (
            "reopen-to-root, median (max)",
            f"{r['reopen_to_root_median_ms']:.2f} ms ({r['reopen_to_root_max_ms']:.2f})",
            "<= 50 ms",
        ),
    ]
    head = (
        f"MerkleLog on disk, n = {r['n']:,}, extend batches of {r['batch']}, "
        f"sync every {r['sync_every']:,} leaves\n\n"
    )
    lines = ["| measure | result | target |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="leaves to append")
    parser.add_argument("--batch", type=int, default=1000, help="leaves per extend call")
    parser.add_argument("--sync-every", type=int, default=10_000, help="leaves between syncs")
    parser.add_argument("--dir", type=Path, help="folder to work in (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="merkle-bench-", dir=args.dir) as tmp:
        results = run(args.n, args.batch, args.sync_every, Path(tmp))
    print(_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
