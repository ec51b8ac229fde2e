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
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from lucidd.client import ControlClient, DataClient, new_session_id


def start(base: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start lucidd; returns the process and the seconds until READY=1."""
    notify_path = base / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), LUCIDD_COMPRESSION="off")
    cmd = [sys.executable, "-m", "lucidd", "serve", "--state-dir", str(base / "state")]
    cmd += ["--runtime-dir", str(base / "run"), "--workers", "2"]
    started = time.monotonic()
    log = (base / "lucidd.log").open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    notify.settimeout(120)
    while b"READY=1" not in notify.recv(4096):
        pass
    elapsed = time.monotonic() - started
    notify.close()
    return proc, elapsed


def fill(base: Path, session: bytes, first: int, count: int, connections: int = 4) -> None:
    batch = 100
    starts = list(range(first, first + count, batch))

    def run(part: list[int]) -> None:
        with DataClient(base / "run") as client:
            for begin in part:
                end = min(begin + batch, first + count)
                client.put_batch(session, [(i, i.to_bytes(8, "big")) for i in range(begin, end)])

    threads = [
        threading.Thread(target=run, args=(starts[k::connections],)) for k in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def kill_all(proc: subprocess.Popen[bytes]) -> None:
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=10)
    proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ld-rb-", dir="/tmp"))
    session = new_session_id()
    proc, cold = start(base)
    t0 = time.monotonic()
    fill(base, session, 0, args.chunks)
    fill_s = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    proc, clean = start(base)
    tail = max(1000, args.chunks // 100)
    fill(base, session, args.chunks, tail)
    kill_all(proc)
    proc, crashed = start(base)
    with ControlClient(base / "run") as control:
        size = control.root(session).size
    proc.send_signal(signal.SIGTERM)
    proc.wait()
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
