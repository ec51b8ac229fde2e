"""replication_bench's settings: sizes, the daemons, the goals, and how much each part sends.

Named once here, for the bench and its parts (``_replication_watch``, ``_replication_store``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lucidd.units import KiB, MiB

NS_PER_MS: Final = 1_000_000
NS_PER_S: Final = 1_000_000_000
MS_PER_S: Final = 1e3
CHUNK_SIZE: Final = MiB
LATENCY_CHUNK_SIZE: Final = 64 * KiB
DATA_BYTES: Final = 64 * MiB
WORKERS: Final = 2
CLIENTS: Final = 2
WINDOW: Final = 8
WARMUP: Final = 4
LATENCY_WARMUP: Final = 8
#: How often the lag gauge is read (the replicator reports it to the supervisor every second).
LAG_SAMPLE_S: Final = 0.5
#: How often the lag is read from the files (index sizes and progress files).
LAG_FILES_S: Final = 0.05
PROGRESS_POLL_S: Final = 0.02
CATCH_UP_TIMEOUT_S: Final = 300.0
#: How long to wait for another SeaweedFS (a test run, another bench) to free the ports.
PORTS_WAIT_S: Final = 60.0
PORTS_POLL_S: Final = 1.0
PROGRESS_RECORDS: Final = "r"
ANCHOR_PROGRESS: Final = "anchor"
LAG_GAUGE: Final = "replication_lag_bytes"
#: Goals: replication keeps up with ingest (it ends within a few seconds of the last ack and
#: its lag does not grow), and replicated acks keep half of fsync's throughput.
GOAL_CATCH_UP_S: Final = 3.0
GOAL_LAG_GROWTH: Final = 0.1
GOAL_REPLICATED_RATIO: Final = 0.5
#: Part 1b paces ingest at these fractions of the replication rate part 1 measured.
PACED_FRACTIONS: Final = (0.5, 0.8)
#: The daemons, by name: durability and whether it replicates.
DAEMONS: Final = {
    "off": ("fsync", False),
    "fsync": ("fsync", True),
    "replicated": ("replicated", True),
}
#: CPU roles reported (``sample_cpu``'s, the replicator's, and the SeaweedFS server's).
ROLES: Final = ("client", "supervisor", "workers", "aggregator", "replicator", "weed")
REPLICATION_ROLES: Final = ("replicator", "weed")


@dataclass(frozen=True)
class Settings:
    """How much each part sends (``--quick`` sends less)."""

    ingest_chunks: int = 1536
    ingest_rounds: int = 4
    latency_puts: int = 600
    latency_rounds: int = 4
    store_packs: int = 48
    #: Seconds of each paced round.
    paced_s: float = 20.0


QUICK: Final = Settings(
    ingest_chunks=512,
    ingest_rounds=2,
    latency_puts=200,
    latency_rounds=2,
    store_packs=16,
    paced_s=6.0,
)
