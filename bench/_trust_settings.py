"""trust_bench's settings: the sizes, intervals and goals of its parts, and how many samples.

Named once here, for the bench and its parts (``_trust_inprocess``, ``_trust_receipt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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
