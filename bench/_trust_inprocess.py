"""trust_bench's in-process parts: 1, signing and opening checkpoints against bare Ed25519;
2, anchor-log appends against a session's MerkleLog (in a temporary folder, no daemon)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._results import log
from bench._rows import Row
from bench._timing import paired_ns
from bench._trust_settings import (
    KEY_NAME,
    NS_PER_S,
    NS_PER_US,
    SESSION_ID_SIZE,
    SYNC_EVERY,
    Settings,
)
from lucidd.daemon.aggregator.anchor_log import AnchorLog
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.merkle import HASH_SIZE, Checkpoint, leaf_hash
from lucidd.note import Signer, open_checkpoint, sign_checkpoint


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
    sign_ns, raw_sign_ns = paired_ns(
        lambda: sign_checkpoint(checkpoint, signer), lambda: private_key.sign(text), n
    )
    open_ns, raw_verify_ns = paired_ns(
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
