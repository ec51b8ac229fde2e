"""Start-to-ready time of lucidd on a large state (issue: durability, "under 2 s at 1 M chunks").

Fills one session with ``--chunks`` small chunks through the real daemon (Batch frames from
several connections), then measures, as a supervisor would see it, the time from ``exec`` to
``READY=1`` after (a) a clean stop (SIGTERM) and (b) ``kill -9`` of the whole daemon right
after more chunks were acknowledged (recovery scans the segment tails past the last sync).

    python bench/recovery_bench.py --chunks 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.testing import Daemon

#: A large state takes a while to recover.
READY_TIMEOUT_S = 120.0


def start(base: Path) -> Daemon:
    """Start lucidd on ``base``; its ``ready_s`` is the seconds from exec to READY=1."""
    return Daemon(
        base,
        workers=2,
        env={"LUCIDD_COMPRESSION": "off"},
        ready_timeout=READY_TIMEOUT_S,
        listen=False,
    ).start()


FILL_WINDOW = 256


def fill(base: Path, session: bytes, first: int, count: int) -> None:
    """Store chunks ``first..first+count-1``: one connection (a session has one writer at a
    time), many chunks in flight."""
    with DataClient(base / "run") as client:
        chunks = ((i, i.to_bytes(8, "big")) for i in range(first, first + count))
        client.put_many(session, chunks, window=FILL_WINDOW)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ld-rb-", dir="/tmp"))
    session = new_session_id()
    daemon = start(base)
    cold = daemon.ready_s
    t0 = time.monotonic()
    fill(base, session, 0, args.chunks)
    fill_s = time.monotonic() - t0
    daemon.stop()
    daemon = start(base)
    clean = daemon.ready_s
    tail = max(1000, args.chunks // 100)
    fill(base, session, args.chunks, tail)
    daemon.kill_all()
    daemon = start(base)
    crashed = daemon.ready_s
    with ControlClient(daemon.runtime_dir) as control:
        size = control.root(session).size
    daemon.stop()
    figures = {
        "chunks": args.chunks + tail,
        "size_after_crash": size,
        "fill_seconds": round(fill_s, 1),
        "fill_chunks_per_s": round(args.chunks / fill_s),
        "ready_empty_s": round(cold, 3),
        "ready_after_clean_stop_s": round(clean, 3),
        "ready_after_kill9_s": round(crashed, 3),
    }
    print("| measure | value |\n|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    assert size == args.chunks + tail, "acknowledged chunks missing after the crash"
    return 0


if __name__ == "__main__":
    sys.exit(main())
