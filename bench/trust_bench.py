"""What the trust chain costs (issue 13): signing, the anchor log, anchoring, receipts.

Five parts, each figure next to a baseline measured in the same run:

1. ``sign_checkpoint`` and ``open_checkpoint`` per call, in-process, against one bare Ed25519
   signature and verification of the same text (the note's own share is the ratio's excess);
2. anchor-log appends per second (:class:`AnchorLog` in a temporary folder: ``N`` appends then
   one ``sync``, and a ``sync`` every 100 appends), against ``N`` appends of a session's
   :class:`MerkleLog` and one ``sync``;
3. a real daemon's put throughput (``put_many`` of 64 KiB chunks, one session per client) with
   checkpoints every 0.1 s, anchoring every 0.2 s and the ``command`` backend (a shell script
   printing the SHA-256 of its stdin), against a daemon with the defaults (10 s, 60 s, no
   backend); both run side by side and are measured in alternating rounds (medians). Also the
   checkpoints signed per second (``checkpoints_signed_total``), the anchor checkpoints and
   attestations written per second, and the aggregator's CPU per chunk;
4. with anvil (found by ``tests/anvil.py``'s ``tool_path``; skipped with the reason otherwise):
   ``ethereum.deploy``, then ``N`` calls of ``ethereum.anchor``, wall time and this process's
   CPU per anchoring and the gas used, against one JSON-RPC round trip (``eth_blockNumber``);
5. a real receipt (from the daemon of part 3: ``lucidctl --json receipt``, retried while it exits
   75, and ``lucidctl record``), then (a) CPU time per in-process ``verify_receipt``, against the
   1 ms goal, and (b) the CPU of ``python -m lucidd.cli verify --receipt`` as a subprocess minus
   that of ``python -c "import lucidd.cli"`` (children's rusage), medians of alternating runs;
   and that import's CPU beyond a bare ``python -c pass``.

Parts 1 and 2 are in ``bench/_trust_inprocess.py``, part 5 in ``bench/_trust_receipt.py``,
the settings in ``bench/_trust_settings.py``; parts 3 and 4 and the run are here.

No figure is asserted; the exit status is 1 when a goal in the table is missed::

    python bench/trust_bench.py --quick            # under 2 minutes on 2 cores
    python bench/trust_bench.py --json trust.json  # more samples and rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _lucidd as drive
from bench._baselines import Workload
from bench._daemon import cpu_roles, sample_cpu, short_tmp, started_daemon
from bench._results import log
from bench._rows import Row, markdown
from bench._timing import median_ns, per_call_ns
from bench._trust_inprocess import measure_anchor_log, measure_signing
from bench._trust_receipt import make_receipt, measure_receipt
from bench._trust_settings import (
    ANCHOR_BACKEND,
    ANCHOR_INTERVAL_S,
    ANCHOR_SCRIPT,
    CHECKPOINT_INTERVAL_S,
    CHUNK_SIZE,
    CLIENTS,
    DATA_BYTES,
    DEFAULT_ANCHOR_INTERVAL_S,
    DEFAULT_CHECKPOINT_INTERVAL_S,
    GOAL_PUT_RATIO,
    KEY_NAME,
    MS_PER_S,
    NS_PER_MS,
    NS_PER_S,
    QUICK,
    US_PER_S,
    WARMUP,
    WINDOW,
    WORKERS,
    Settings,
)
from lucidd.client import ControlClient
from lucidd.merkle import HASH_SIZE
from lucidd.testing import Daemon
from lucidd.units import MiB

# --- 3: a daemon with short intervals and the command backend --------------------------------


@dataclass
class Round:
    """One daemon's figures over one round of puts (``seconds``: the puts; ``wall_s``: from
    the first figure read to the last)."""

    seconds: float
    chunks: int
    wall_s: float
    checkpoints: float
    anchor_notes: int
    attestations: int
    aggregator_cpu_s: float


def _put_round(daemon: Daemon, workload: Workload) -> Round:
    runtime_dir = daemon.runtime_dir
    roles = cpu_roles(runtime_dir)
    with ControlClient(runtime_dir) as control:
        before = control.metrics()
    files_before = _anchor_files(daemon)
    cpu_before = sample_cpu(roles)
    t0 = time.perf_counter_ns()
    result = drive.throughput(runtime_dir, workload, WARMUP, CLIENTS, WINDOW, settle_s=0)
    wall_s = (time.perf_counter_ns() - t0) / NS_PER_S
    cpu = sample_cpu(roles).minus(cpu_before)
    files_after = _anchor_files(daemon)
    with ControlClient(runtime_dir) as control:
        after = control.metrics()
    signed = after["checkpoints_signed_total"] - before["checkpoints_signed_total"]
    notes, attestations = (a - b for a, b in zip(files_after, files_before, strict=True))
    return Round(
        result.seconds, result.chunks, wall_s, signed, notes, attestations, cpu["aggregator"]
    )


def _anchor_files(daemon: Daemon) -> tuple[int, int]:
    """(anchor checkpoints, command attestations) stored by the daemon so far."""
    folder = daemon.state_dir / "anchor" / "checkpoints"
    if not folder.is_dir():  # made with the first anchor checkpoint
        return 0, 0
    names = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    notes = sum(1 for name in names if "." not in name)
    return notes, sum(1 for name in names if name.endswith(f".{ANCHOR_BACKEND}"))


def _median_float(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _rounds(
    settings: Settings, daemons: dict[str, Daemon], workload: Workload
) -> dict[str, list[Round]]:
    """Alternating rounds (ABBA...) so that drift in the machine lands on both daemons."""
    rounds: dict[str, list[Round]] = {name: [] for name in daemons}
    names = list(daemons)
    for r in range(settings.put_rounds):
        for name in names if r % 2 == 0 else reversed(names):
            log(f"put: {name} daemon, round {r + 1}, {workload.count} x 64 KiB")
            rounds[name].append(_put_round(daemons[name], workload))
    return rounds


def _put_rows(rounds: dict[str, list[Round]]) -> list[Row]:
    def rate(name: str) -> float:
        return _median_float([r.chunks / r.seconds for r in rounds[name]])

    def cpu_us(name: str) -> float:
        return _median_float([r.aggregator_cpu_s * US_PER_S / r.chunks for r in rounds[name]])

    trust = rounds["trust"]
    signed = _median_float([r.checkpoints / r.seconds for r in trust])
    notes = _median_float([r.anchor_notes / r.wall_s for r in trust])
    attested = _median_float([r.attestations / r.wall_s for r in trust])
    ratio = rate("trust") / rate("default")
    added_ms = (cpu_us("trust") - cpu_us("default")) * rate("trust") / MS_PER_S
    intervals = f"{CHECKPOINT_INTERVAL_S:g} s / {ANCHOR_INTERVAL_S:g} s + {ANCHOR_BACKEND}"
    defaults = f"defaults ({DEFAULT_CHECKPOINT_INTERVAL_S:g} s / {DEFAULT_ANCHOR_INTERVAL_S:g} s)"
    return [
        Row(
            "3 daemon",
            f"put throughput, {intervals}",
            rate("trust"),
            "chunks/s",
            defaults,
            rate("default"),
            ratio,
            f"ratio >= {GOAL_PUT_RATIO:g} (~1)",
            ratio >= GOAL_PUT_RATIO,
        ),
        Row(
            "3 daemon",
            "aggregator CPU per chunk",
            cpu_us("trust"),
            "µs",
            defaults,
            cpu_us("default"),
        ),
        Row(
            "3 daemon",
            "aggregator CPU the short intervals add, per second of puts",
            added_ms,
            "ms/s",
        ),
        Row(
            "3 daemon",
            f"checkpoints signed ({CLIENTS} sessions growing)",
            signed,
            "per s",
            f"{CLIENTS} sessions / {CHECKPOINT_INTERVAL_S:g} s",
            CLIENTS / CHECKPOINT_INTERVAL_S,
        ),
        Row(
            "3 daemon",
            "anchor checkpoints signed",
            notes,
            "per s",
            f"1 / {ANCHOR_INTERVAL_S:g} s",
            1 / ANCHOR_INTERVAL_S,
        ),
        Row(
            "3 daemon",
            f"attestations by the {ANCHOR_BACKEND} backend",
            attested,
            "per s",
            "anchor checkpoints signed",
            notes,
        ),
    ]


# --- 3 and 5 together: the daemons -----------------------------------------------------------


def measure_daemons(settings: Settings, workdir: Path) -> list[Row]:
    script = workdir / "anchor.sh"
    script.write_text(ANCHOR_SCRIPT)
    script.chmod(0o700)
    trust_settings = {
        "checkpoint_interval": f"{CHECKPOINT_INTERVAL_S:g}",
        "anchor_interval": f"{ANCHOR_INTERVAL_S:g}",
        "anchors": ANCHOR_BACKEND,
        "anchor_command": str(script),
    }
    blob = os.urandom(DATA_BYTES)
    workload = Workload(blob, CHUNK_SIZE, settings.put_chunks)
    with (
        started_daemon(WORKERS, "fsync") as default,
        started_daemon(WORKERS, "fsync", trust_settings) as trust,
    ):
        daemons = {"default": default, "trust": trust}
        for daemon in daemons.values():
            prime = Workload(blob, MiB, int(daemon_config(daemon)["ring_size"]) // MiB + 1)
            drive.prime(daemon.runtime_dir, prime, prime.count)
        rows = _put_rows(_rounds(settings, daemons, workload))
        log("receipt: waiting for an attested receipt of chunk 0")
        rows += measure_receipt(settings, make_receipt(trust.runtime_dir, workdir))
    return rows


def daemon_config(daemon: Daemon) -> dict[str, Any]:
    with ControlClient(daemon.runtime_dir) as control:
        return control.config()


# --- 4: ethereum -----------------------------------------------------------------------------


def _find_anvil() -> Path | str:
    """anvil's path, or why there is none."""
    try:
        from tests.anvil import tool_path  # noqa: PLC0415 - the tests' finder, pytest and all

        return tool_path("anvil")
    except Exception as exc:  # a missing tool, npm or pytest: this part is skipped
        return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _anvil(anvil: Path) -> Iterator[tuple[str, str]]:
    from tests.anvil import run_anvil  # noqa: PLC0415

    with run_anvil(anvil) as node:
        yield node.rpc_url, node.private_key


def measure_ethereum(settings: Settings) -> tuple[list[Row], str]:
    """Rows, or none and the reason the part was skipped."""
    found = _find_anvil()
    if isinstance(found, str):
        return [], f"no anvil ({found})"
    try:
        from eth_typing import HexStr  # noqa: PLC0415 - comes with web3
        from web3 import Web3  # noqa: PLC0415 - lucidd[ethereum]

        from lucidd.anchoring import ethereum  # noqa: PLC0415
        from lucidd.anchoring.ethereum_credentials import EthereumCredentials  # noqa: PLC0415
    except ImportError as exc:
        return [], f"no web3 ({exc}): pip install 'lucidd[ethereum]'"
    n = settings.anchors
    with _anvil(found) as (rpc_url, private_key):
        creds = EthereumCredentials(rpc_url=rpc_url, private_key=private_key)
        contract = ethereum.deploy(creds)
        w3 = Web3(Web3.HTTPProvider(rpc_url))
        log(f"ethereum: {n} anchorings on anvil ({found.name})")
        rtt_ns = per_call_ns(lambda: w3.eth.block_number, n)
        wall: list[int] = []
        cpu: list[int] = []
        gas: list[int] = []
        for size in range(1, n + 1):
            root, digest = os.urandom(HASH_SIZE), os.urandom(HASH_SIZE)
            t0, c0 = time.perf_counter_ns(), time.process_time_ns()
            attestation = ethereum.anchor(creds, contract, f"{KEY_NAME}/anchor", size, root, digest)
            wall.append(time.perf_counter_ns() - t0)
            cpu.append(time.process_time_ns() - c0)
            receipt = w3.eth.get_transaction_receipt(HexStr(attestation.tx_hash))
            gas.append(int(receipt["gasUsed"]))
    return [
        Row(
            "4 ethereum",
            "`ethereum.anchor` on anvil, wall, median",
            median_ns(wall) / NS_PER_MS,
            "ms",
            "`eth_blockNumber` round trip, median",
            rtt_ns / NS_PER_MS,
        ),
        Row(
            "4 ethereum",
            "`ethereum.anchor`, CPU of the caller, median",
            median_ns(cpu) / NS_PER_MS,
            "ms",
        ),
        Row("4 ethereum", "gas used per anchoring, median", float(median_ns(gas)), "gas"),
    ], ""


def run(settings: Settings) -> tuple[list[Row], list[str]]:
    rows = measure_signing(settings)
    with tempfile.TemporaryDirectory(prefix="trust-bench-") as tmp:
        rows += measure_anchor_log(settings, Path(tmp))
    workdir = short_tmp("ltb-")
    try:
        rows += measure_daemons(settings, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ethereum_rows, why = measure_ethereum(settings)
    if why:
        log(f"ethereum: skipped: {why}")
    rows += ethereum_rows
    rows.sort(key=lambda row: row.part)  # the parts' order (the daemon's run before ethereum)
    return rows, [f"4 ethereum: {why}"] if why else []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (under 2 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rows, skipped = run(QUICK if args.quick else Settings())
    print(markdown(rows, skipped), end="")
    if args.json is not None:
        document = {"rows": [asdict(row) for row in rows], "skipped": skipped}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
