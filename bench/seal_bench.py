"""Single-core cost of sealing a chunk: lucidd's ChunkSealer against bare AES-GCM + SHA-256.

Not a test (tests never assert on time). It answers two questions from DESIGN §2/§4:

- how much does lucidd add on top of the unavoidable work (encrypt, hash) per chunk?
  Baseline: ``AESGCM(key).encrypt(nonce, data, aad)`` then ``sha256(ct).digest()``.
  lucidd: ``ChunkSealer.seal(..., compression="off")``, which also derives the chunk key,
  computes the key commitment, draws a random nonce, writes the header and the leaf hash.
  Goals: throughput ratio lucidd/baseline >= 0.85 at 1 MiB, at most 10 us added at 4 KiB.
- what does ``auto`` compression cost on random (incompressible) and on text-like data?

Baseline and lucidd repetitions are interleaved on the same data so that noise from other
processes hits both alike; each figure is the median over repetitions of the mean per chunk.

    python3 bench/seal_bench.py            # ~1 minute
    python3 bench/seal_bench.py --quick    # a few seconds
    python3 bench/seal_bench.py --json bench/out/seal.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cryptography
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lucidd.crypto import (
    HEADER_SIZE,
    KEY_SIZE,
    NONCE_SIZE,
    SESSION_ID_SIZE,
    ChunkSealer,
    Compression,
    parse_header,
)

KIB = 1024
MIB = 1024 * KIB
NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
SIZES = (4 * KIB, 64 * KIB, MIB)
AUTO_SIZES = (64 * KIB, MIB)
RATIO_GOAL_SIZE = MIB
RATIO_GOAL = 0.85
ADDED_GOAL_SIZE = 4 * KIB
ADDED_GOAL_US = 10.0


@dataclass(frozen=True)
class Settings:
    """How long each measurement runs: repetitions and the target time of one repetition."""

    repetitions: int
    rep_seconds: float
    warmup_seconds: float


FULL = Settings(repetitions=9, rep_seconds=0.25, warmup_seconds=0.2)
QUICK = Settings(repetitions=3, rep_seconds=0.04, warmup_seconds=0.02)


@dataclass(frozen=True)
class Row:
    """One measured configuration; times are per chunk (median of repetitions)."""

    name: str
    size: int
    ns_per_chunk: float

    @property
    def us_per_chunk(self) -> float:
        return self.ns_per_chunk / NS_PER_US

    @property
    def mib_per_s(self) -> float:
        return self.size / MIB / (self.ns_per_chunk / NS_PER_S)


def calibrate(fn: Callable[[], object], seconds: float) -> int:
    """Iterations of ``fn`` that take about ``seconds`` (also serves as warm-up)."""
    iterations = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed >= seconds * NS_PER_S / 4:
            return max(1, round(iterations * seconds * NS_PER_S / elapsed))
        iterations *= 2


def time_per_call(fn: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        fn()
    return (time.perf_counter_ns() - start) / iterations


def measure_interleaved(
    fns: dict[str, Callable[[], object]], settings: Settings
) -> dict[str, float]:
    """Median ns per call of each function, repetitions of all functions interleaved."""
    iterations = {}
    for name, fn in fns.items():
        calibrate(fn, settings.warmup_seconds)
        iterations[name] = calibrate(fn, settings.rep_seconds)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(settings.repetitions):
        for name, fn in fns.items():
            samples[name].append(time_per_call(fn, iterations[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def baseline_fn(data: bytes) -> Callable[[], object]:
    """Bare AES-256-GCM under a fixed key and nonce plus SHA-256 of the output."""
    key = os.urandom(KEY_SIZE)
    nonce = os.urandom(NONCE_SIZE)
    aad = bytes(HEADER_SIZE)

    def run() -> bytes:
        ciphertext = AESGCM(key).encrypt(nonce, data, aad)
        return hashlib.sha256(ciphertext).digest()

    return run


def lucidd_fn(sealer: ChunkSealer, data: bytes, compression: Compression) -> Callable[[], object]:
    """One ChunkSealer.seal per call, each under a new chunk index (so a new chunk key)."""
    secret = os.urandom(KEY_SIZE)
    session_id = os.urandom(SESSION_ID_SIZE)
    view = memoryview(data)
    counter = iter(range(2**62))

    def run() -> object:
        return sealer.seal(secret, session_id, next(counter), view, compression)

    return run


def text_like(size: int) -> bytes:
    """Log lines with varying numbers: compressible, but not trivially."""
    parts: list[bytes] = []
    total = 0
    n = 0
    while total < size:
        line = (
            f"2025-06-01T12:{n // 60 % 60:02d}:{n % 60:02d}.{n * 7919 % 1000:03d}Z "
            f"lucidd[{1000 + n % 17}]: session={n * 2654435761 % 2**32:08x} chunk={n} "
            f"bytes={n * 7 % 65536} latency_us={n * 31 % 997}\n"
        ).encode()
        parts.append(line)
        total += len(line)
        n += 1
    return b"".join(parts)[:size]


def stored_fraction(sealer: ChunkSealer, data: bytes) -> tuple[str, float]:
    record, _ = sealer.seal(os.urandom(KEY_SIZE), bytes(SESSION_ID_SIZE), 0, data, "auto")
    header = parse_header(record)
    return header.codec.name, header.body_length / max(1, len(data))


def run(settings: Settings) -> dict[str, object]:
    sealer = ChunkSealer(max(SIZES + AUTO_SIZES))
    overhead: list[dict[str, float | int]] = []
    for size in SIZES:
        data = os.urandom(size)
        medians = measure_interleaved(
            {"baseline": baseline_fn(data), "lucidd": lucidd_fn(sealer, data, "off")}, settings
        )
        base = Row("baseline", size, medians["baseline"])
        ours = Row("lucidd-off", size, medians["lucidd"])
        overhead.append(
            {
                "size": size,
                "baseline_us": base.us_per_chunk,
                "baseline_mib_s": base.mib_per_s,
                "lucidd_us": ours.us_per_chunk,
                "lucidd_mib_s": ours.mib_per_s,
                "ratio": ours.mib_per_s / base.mib_per_s,
                "added_us": ours.us_per_chunk - base.us_per_chunk,
            }
        )
    auto: list[dict[str, float | int | str]] = []
    for kind, make in (("random", os.urandom), ("text", text_like)):
        for size in AUTO_SIZES:
            data = make(size)
            medians = measure_interleaved({"auto": lucidd_fn(sealer, data, "auto")}, settings)
            row = Row(f"auto-{kind}", size, medians["auto"])
            codec, fraction = stored_fraction(sealer, data)
            auto.append(
                {
                    "data": kind,
                    "size": size,
                    "us": row.us_per_chunk,
                    "mib_s": row.mib_per_s,
                    "codec": codec,
                    "stored_fraction": fraction,
                }
            )
    return {
        "settings": asdict(settings),
        "environment": {
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "zstandard": zstandard.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "overhead": overhead,
        "auto": auto,
    }


def human_size(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def markdown(result: dict[str, object]) -> str:
    overhead = result["overhead"]
    auto = result["auto"]
    assert isinstance(overhead, list) and isinstance(auto, list)
    lines = [
        "| chunk | baseline µs | baseline MiB/s | lucidd µs | lucidd MiB/s | ratio | added µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in overhead:
        lines.append(
            f"| {human_size(r['size'])} | {r['baseline_us']:.2f} | {r['baseline_mib_s']:.0f} "
            f"| {r['lucidd_us']:.2f} | {r['lucidd_mib_s']:.0f} | {r['ratio']:.3f} "
            f"| {r['added_us']:+.2f} |"
        )
    by_size = {r["size"]: r for r in overhead}
    ratio = by_size[RATIO_GOAL_SIZE]["ratio"]
    added = by_size[ADDED_GOAL_SIZE]["added_us"]
    lines += [
        "",
        f"- ratio at {human_size(RATIO_GOAL_SIZE)}: {ratio:.3f} (goal >= {RATIO_GOAL}): "
        f"{'met' if ratio >= RATIO_GOAL else 'NOT met'}",
        f"- added at {human_size(ADDED_GOAL_SIZE)}: {added:.2f} µs (goal <= {ADDED_GOAL_US}): "
        f"{'met' if added <= ADDED_GOAL_US else 'NOT met'}",
        "",
        "| auto on | chunk | µs | MiB/s | stored as | stored / plaintext |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in auto:
        lines.append(
            f"| {r['data']} | {human_size(r['size'])} | {r['us']:.1f} | {r['mib_s']:.0f} "
            f"| {r['codec']} | {r['stored_fraction']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few-second run (noisier)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--repetitions", type=int, help="override the number of repetitions")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.repetitions:
        settings = Settings(args.repetitions, settings.rep_seconds, settings.warmup_seconds)
    result = run(settings)
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
