"""trust_bench's part 5: a real receipt from a daemon, and what checking it costs.

:func:`make_receipt` fetches an attested receipt with ``lucidctl``; :func:`measure_receipt`
times ``verify_receipt`` in-process and ``lucidctl verify --receipt`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench._daemon import REPO_ROOT
from bench._results import log
from bench._rows import Row
from bench._timing import median_ns
from bench._trust_settings import (
    CHUNK_SIZE,
    GOAL_VERIFY_MS,
    LUCIDCTL_TIMEOUT_S,
    MS_PER_S,
    NS_PER_MS,
    NS_PER_S,
    RECEIPT_CHUNKS,
    RECEIPT_POLL_S,
    RECEIPT_TIMEOUT_S,
    Settings,
)
from lucidd.client import ControlClient, DataClient, format_session_id
from lucidd.errors import EX_OK, EX_TEMPFAIL
from lucidd.note import Verifier
from lucidd.receipt import decode_receipt, verify_receipt


def lucidctl(runtime_dir: Path | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m lucidd.cli [--runtime-dir R] ARGS`` of this checkout."""
    where = ["--runtime-dir", str(runtime_dir)] if runtime_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "lucidd.cli", *where, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=LUCIDCTL_TIMEOUT_S,
        check=False,
    )


def _checked(done: subprocess.CompletedProcess[bytes]) -> bytes:
    if done.returncode != EX_OK:
        raise RuntimeError(
            f"{' '.join(map(str, done.args))} exited {done.returncode}: {done.stderr.decode()}"
        )
    return done.stdout


@dataclass(frozen=True)
class ReceiptFiles:
    receipt: Path
    record: Path
    vkey: str
    wait_s: float


def make_receipt(runtime_dir: Path, folder: Path) -> ReceiptFiles:
    """Put a few chunks in a fresh session and fetch chunk 0's receipt once it is attested."""
    with ControlClient(runtime_dir) as control, DataClient(runtime_dir) as data:
        session = control.open_session(compression="off")
        data.put_many(session, ((i, os.urandom(CHUNK_SIZE)) for i in range(RECEIPT_CHUNKS)))
    sid = format_session_id(session)
    receipt, record = folder / "chunk0.receipt", folder / "chunk0.rec"
    started = time.monotonic()
    while True:
        done = lucidctl(runtime_dir, "--json", "receipt", sid, "0", "-o", str(receipt))
        if done.returncode == EX_OK and json.loads(done.stdout)["attestations"]:
            break
        if done.returncode not in (EX_OK, EX_TEMPFAIL):
            _checked(done)
        if time.monotonic() - started > RECEIPT_TIMEOUT_S:
            raise RuntimeError(f"no attested receipt after {RECEIPT_TIMEOUT_S:g} s")
        time.sleep(RECEIPT_POLL_S)
    wait_s = time.monotonic() - started
    _checked(lucidctl(runtime_dir, "record", sid, "0", "-o", str(record)))
    vkey = json.loads(_checked(lucidctl(runtime_dir, "--json", "signing-key")))["vkey"]
    return ReceiptFiles(receipt, record, str(vkey), wait_s)


def _children_cpu_ns(argv: list[str]) -> int:
    """CPU (user + system) of one run of ``argv``, which must succeed, in ns."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _checked(subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, check=False))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(seconds * NS_PER_S)


def measure_receipt(settings: Settings, files: ReceiptFiles) -> list[Row]:
    raw, record = files.receipt.read_bytes(), files.record.read_bytes()
    verifiers = [Verifier.from_vkey(files.vkey)]
    receipt = decode_receipt(raw)
    n = settings.verifications
    log(f"receipt: {n} in-process verifications, {settings.subprocess_runs} lucidctl runs")
    t0 = time.process_time()
    for _ in range(n):
        verify_receipt(receipt, record, verifiers)
    verify_ms = (time.process_time() - t0) * MS_PER_S / n
    t0 = time.process_time()
    for _ in range(n):
        verify_receipt(decode_receipt(raw), record, [Verifier.from_vkey(files.vkey)])
    whole_ms = (time.process_time() - t0) * MS_PER_S / n
    verify_cli = [sys.executable, "-m", "lucidd.cli", "verify", "--receipt", str(files.receipt)]
    verify_cli += ["--record", str(files.record), "--vkey", files.vkey]
    import_only = [sys.executable, "-c", "import lucidd.cli"]
    bare = [sys.executable, "-c", "pass"]
    cli_ns: list[int] = []
    base_ns: list[int] = []
    bare_ns: list[int] = []
    for _ in range(settings.subprocess_runs):
        bare_ns.append(_children_cpu_ns(bare))
        base_ns.append(_children_cpu_ns(import_only))
        cli_ns.append(_children_cpu_ns(verify_cli))
    cli_ms, base_ms = median_ns(cli_ns) / NS_PER_MS, median_ns(base_ns) / NS_PER_MS
    bare_ms = median_ns(bare_ns) / NS_PER_MS
    goal = f"< {GOAL_VERIFY_MS:g} ms CPU"
    return [
        Row(
            "5 receipt",
            "`verify_receipt`, CPU per call (record checked)",
            verify_ms,
            "ms",
            "the goal",
            GOAL_VERIFY_MS,
            goal=goal,
            met=verify_ms < GOAL_VERIFY_MS,
        ),
        Row(
            "5 receipt",
            "decode + vkey parse + `verify_receipt`, CPU per call",
            whole_ms,
            "ms",
            "the goal",
            GOAL_VERIFY_MS,
        ),
        Row(
            "5 receipt",
            "`lucidctl verify --receipt` CPU beyond `import lucidd.cli`, median",
            cli_ms - base_ms,
            "ms",
            "`python -c 'import lucidd.cli'` CPU, median",
            base_ms,
        ),
        Row(
            "5 receipt",
            "`python -c 'import lucidd.cli'` CPU, median",
            base_ms,
            "ms",
            "`python -c pass` CPU, median",
            bare_ms,
        ),
        Row(
            "5 receipt",
            "wait from the last put to an attested receipt",
            files.wait_s,
            "s",
        ),
    ]
