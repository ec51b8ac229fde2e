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

No figure is asserted; the exit status is 1 when a goal in the table is missed::

    python bench/trust_bench.py --quick            # under 2 minutes on 2 cores
    python bench/trust_bench.py --json trust.json  # more samples and rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import _lucidd as drive
from bench._baselines import Workload
from bench._daemon import REPO_ROOT, cpu_roles, sample_cpu, short_tmp, started_daemon
from bench._hdr import Histogram
from bench._results import log
from lucidd.client import ControlClient, DataClient, format_session_id
from lucidd.daemon.aggregator.anchor_log import AnchorLog
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.errors import EX_OK, EX_TEMPFAIL
from lucidd.merkle import HASH_SIZE, Checkpoint, leaf_hash
from lucidd.note import Signer, Verifier, open_checkpoint, sign_checkpoint
from lucidd.receipt import decode_receipt, verify_receipt
from lucidd.testing import Daemon
from lucidd.units import KiB, MiB

NS_PER_US: Final = 1_000
NS_PER_MS: Final = 1_000_000
NS_PER_S: Final = 1_000_000_000
US_PER_S: Final = 1e6
MS_PER_S: Final = 1e3
KEY_NAME: Final = "bench.example/lucidd"
SESSION_ID_SIZE: Final = 16
#: Appends of the anchor log between two syncs in its second run.
SYNC_EVERY: Final = 100
#: The trust daemon's intervals (s): far shorter than the defaults, to make the cost visible.
CHECKPOINT_INTERVAL_S: Final = 0.1
ANCHOR_INTERVAL_S: Final = 0.2
DEFAULT_CHECKPOINT_INTERVAL_S: Final = 10.0
DEFAULT_ANCHOR_INTERVAL_S: Final = 60.0
#: The command backend: the SHA-256 of the signed anchor checkpoint, as its attestation.
ANCHOR_SCRIPT: Final = "#!/bin/sh\nsha256sum | cut -d ' ' -f 1\n"
ANCHOR_BACKEND: Final = "command"
CHUNK_SIZE: Final = 64 * KiB
DATA_BYTES: Final = 16 * MiB
WORKERS: Final = 2
CLIENTS: Final = 4
WINDOW: Final = 16
WARMUP: Final = 8
RECEIPT_CHUNKS: Final = 8
RECEIPT_TIMEOUT_S: Final = 30.0
RECEIPT_POLL_S: Final = 0.1
LUCIDCTL_TIMEOUT_S: Final = 60.0
#: Goals: the trust chain never slows the chunk path; a receipt checks in under 1 ms of CPU.
GOAL_PUT_RATIO: Final = 0.9
GOAL_VERIFY_MS: Final = 1.0


@dataclass(frozen=True)
class Settings:
    """How many samples each part takes (``--quick`` takes fewer)."""

    signatures: int = 20_000
    appends: int = 200_000
    synced_appends: int = 20_000
    put_chunks: int = 8_000
    put_rounds: int = 5
    anchors: int = 100
    verifications: int = 5_000
    subprocess_runs: int = 15


QUICK: Final = Settings(
    signatures=3_000,
    appends=20_000,
    synced_appends=3_000,
    put_chunks=4_000,
    put_rounds=3,
    anchors=20,
    verifications=1_000,
    subprocess_runs=7,
)


@dataclass
class Row:
    """One figure: its value, the baseline it is compared with, and the goal if there is one."""

    part: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None

    def __post_init__(self) -> None:
        if self.baseline_value and self.ratio is None:
            self.ratio = self.value / self.baseline_value


def _median(samples_ns: list[int]) -> int:
    histogram = Histogram()
    histogram.record_all(samples_ns)
    return histogram.percentile(50)


def _per_call_ns(call: Callable[[], object], count: int) -> int:
    """The median wall time of ``count`` calls of ``call``, in ns."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return _median(samples)


def _paired_ns(
    call: Callable[[], object], baseline: Callable[[], object], count: int
) -> tuple[int, int]:
    """Median ns of ``call`` and of ``baseline``, called in turn ``count`` times each (so that
    a busy moment of the machine lands on both)."""
    clock = time.perf_counter_ns
    samples: tuple[list[int], list[int]] = ([], [])
    for _ in range(count):
        for which, function in enumerate((call, baseline)):
            t0 = clock()
            function()
            samples[which].append(clock() - t0)
    return _median(samples[0]), _median(samples[1])


# --- 1: signing ------------------------------------------------------------------------------


def measure_signing(settings: Settings) -> list[Row]:
    private_key = Ed25519PrivateKey.generate()
    signer = Signer(KEY_NAME, private_key)
    verifiers = [signer.verifier]
    public_key = private_key.public_key()
    checkpoint = Checkpoint(f"{KEY_NAME}/{uuid.uuid4()}", 123_456, os.urandom(HASH_SIZE))
    text = checkpoint.encode()
    note = sign_checkpoint(checkpoint, signer)
    raw = private_key.sign(text)
    n = settings.signatures
    log(f"signing: {n} signatures and verifications of each kind, interleaved")
    sign_ns, raw_sign_ns = _paired_ns(
        lambda: sign_checkpoint(checkpoint, signer), lambda: private_key.sign(text), n
    )
    open_ns, raw_verify_ns = _paired_ns(
        lambda: open_checkpoint(note, verifiers), lambda: public_key.verify(raw, text), n
    )
    return [
        Row(
            "1 signing",
            "`sign_checkpoint`, median",
            sign_ns / NS_PER_US,
            "µs",
            "bare Ed25519 sign",
            raw_sign_ns / NS_PER_US,
        ),
        Row(
            "1 signing",
            "`open_checkpoint` (verify), median",
            open_ns / NS_PER_US,
            "µs",
            "bare Ed25519 verify",
            raw_verify_ns / NS_PER_US,
        ),
    ]


# --- 2: the anchor log -----------------------------------------------------------------------


def _anchor_log_rate(
    folder: Path, entries: list[tuple[bytes, int]], note: bytes, every: int
) -> float:
    """Appends per second to a fresh AnchorLog, with a sync every ``every`` and at the end."""
    folder.mkdir()
    anchor_log = AnchorLog.open(folder)
    append, sync = anchor_log.append, anchor_log.sync
    t0 = time.perf_counter_ns()
    for n, (session, size) in enumerate(entries, start=1):
        append(session, size, note)
        if n % every == 0:
            sync()
    sync()
    seconds = (time.perf_counter_ns() - t0) / NS_PER_S
    anchor_log.close()
    return len(entries) / seconds


def _merkle_log_rate(folder: Path, leaves: list[bytes]) -> float:
    """Appends per second to a fresh session MerkleLog, one sync at the end."""
    merkle_log = MerkleLog.open(folder)
    append = merkle_log.append
    t0 = time.perf_counter_ns()
    for leaf in leaves:
        append(leaf)
    merkle_log.sync()
    seconds = (time.perf_counter_ns() - t0) / NS_PER_S
    merkle_log.close()
    return len(leaves) / seconds


def measure_anchor_log(settings: Settings, workdir: Path) -> list[Row]:
    signer = Signer(KEY_NAME, Ed25519PrivateKey.generate())
    session = os.urandom(SESSION_ID_SIZE)
    note = sign_checkpoint(
        Checkpoint(f"{KEY_NAME}/{uuid.UUID(bytes=session)}", 1, os.urandom(HASH_SIZE)), signer
    )
    n, synced = settings.appends, settings.synced_appends
    # One session growing one leaf at a time: every (session, size) is new, as in the daemon.
    entries = [(session, size) for size in range(1, n + 1)]
    leaves = [leaf_hash(os.urandom(HASH_SIZE)) for _ in range(n)]
    log(f"anchor log: {n} appends, one sync; {synced} with a sync every {SYNC_EVERY}")
    merkle_rate = _merkle_log_rate(workdir / "merkle", leaves)
    one_sync = _anchor_log_rate(workdir / "one", entries, note, n + 1)
    every = _anchor_log_rate(workdir / "every", entries[:synced], note, SYNC_EVERY)
    baseline = "session `MerkleLog.append`, one sync"
    return [
        Row(
            "2 anchor log",
            f"`AnchorLog.append` x {n}, one sync",
            one_sync,
            "appends/s",
            baseline,
            merkle_rate,
        ),
        Row(
            "2 anchor log",
            f"`AnchorLog.append` x {synced}, sync every {SYNC_EVERY}",
            every,
            "appends/s",
            baseline,
            merkle_rate,
        ),
    ]


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


# --- 5: a receipt ----------------------------------------------------------------------------


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
    cli_ms, base_ms = _median(cli_ns) / NS_PER_MS, _median(base_ns) / NS_PER_MS
    bare_ms = _median(bare_ns) / NS_PER_MS
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
    except ImportError as exc:
        return [], f"no web3 ({exc}): pip install 'lucidd[ethereum]'"
    n = settings.anchors
    with _anvil(found) as (rpc_url, private_key):
        creds = ethereum.EthereumCredentials(rpc_url=rpc_url, private_key=private_key)
        contract = ethereum.deploy(creds)
        w3 = Web3(Web3.HTTPProvider(rpc_url))
        log(f"ethereum: {n} anchorings on anvil ({found.name})")
        rtt_ns = _per_call_ns(lambda: w3.eth.block_number, n)
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
            _median(wall) / NS_PER_MS,
            "ms",
            "`eth_blockNumber` round trip, median",
            rtt_ns / NS_PER_MS,
        ),
        Row(
            "4 ethereum",
            "`ethereum.anchor`, CPU of the caller, median",
            _median(cpu) / NS_PER_MS,
            "ms",
        ),
        Row("4 ethereum", "gas used per anchoring, median", float(_median(gas)), "gas"),
    ], ""


# --- report ----------------------------------------------------------------------------------


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(rows: list[Row], skipped: list[str]) -> str:
    lines = [
        "| part | figure | value | baseline | baseline value | ratio | goal |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        base = "" if row.baseline_value is None else f"{_number(row.baseline_value)} {row.unit}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        goal = row.goal if row.met is None else f"{row.goal}: {'met' if row.met else '**missed**'}"
        lines.append(
            f"| {row.part} | {row.figure} | {_number(row.value)} {row.unit} | {row.baseline} "
            f"| {base} | {ratio} | {goal} |"
        )
    lines += [f"\nSkipped: {why}" for why in skipped]
    return "\n".join(lines) + "\n"


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
