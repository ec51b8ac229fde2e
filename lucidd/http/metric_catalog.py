"""What each figure of the daemon's ``metrics_reply`` is called in Prometheus, its type, unit
and help text (layer 2, a client of the daemon: it imports nothing of ``lucidd.daemon``).

The daemon names its figures for ``lucidctl metrics``; Prometheus' conventions differ a little
(the ``lucidd_`` prefix, ``_total`` only on counters, the base unit last before it:
``_seconds``, ``_bytes``), so a figure may be renamed here, never in the daemon. A key the
catalogue does not know is still exported by :func:`describe`: as a counter when it ends in
``_total``, else as a gauge, with a generic help text, its name made a valid metric name
(``lucidd_`` + the key, ``_`` for each character a name may not hold, and ``_value`` after a
gauge name that would end like a histogram's or a summary's samples).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

PREFIX: Final = "lucidd_"
COUNTER_SUFFIX: Final = "_total"
#: A character a metric name may not hold (Prometheus' classic names: [a-zA-Z_:][a-zA-Z0-9_:]*).
_INVALID_NAME_CHAR: Final = re.compile(r"[^a-zA-Z0-9_:]")
#: Endings that name the samples of histograms, summaries, counters and infos: a gauge made up
#: for an unknown key that ends so gets :data:`_GAUGE_SUFFIX` after it (promtool's lint and
#: OpenMetrics would read it as part of another family).
_RESERVED_SUFFIXES: Final = ("_bucket", "_count", "_sum", "_created", "_info")
_GAUGE_SUFFIX: Final = "_value"


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One exported metric family. ``name`` is the full Prometheus name (a counter's with
    ``_total``, a histogram's without its ``_bucket``/``_sum``/``_count``); ``unit`` is the
    OpenMetrics unit the name ends with (``seconds``, ``bytes``), "" for a plain count."""

    name: str
    kind: Kind
    help: str
    unit: str = ""

    def __post_init__(self) -> None:
        base = self.name.removesuffix(COUNTER_SUFFIX) if self.kind == Kind.COUNTER else self.name
        if self.unit and not base.endswith(f"_{self.unit}"):
            raise ValueError(f"{self.name} must end with its unit {self.unit}")
        if (self.kind == Kind.COUNTER) != self.name.endswith(COUNTER_SUFFIX):
            raise ValueError(f"{self.name}: only (and every) counter ends with {COUNTER_SUFFIX}")


def _counter(name: str, help: str, unit: str = "") -> MetricInfo:
    return MetricInfo(PREFIX + name, Kind.COUNTER, help, unit)


def _gauge(name: str, help: str, unit: str = "") -> MetricInfo:
    return MetricInfo(PREFIX + name, Kind.GAUGE, help, unit)


def _histogram(name: str, help: str, unit: str = "") -> MetricInfo:
    return MetricInfo(PREFIX + name, Kind.HISTOGRAM, help, unit)


_S: Final = "seconds"
_B: Final = "bytes"

#: The daemon's counters and gauges (``MetricsReply.metrics``), by the daemon's key.
METRICS: Final[Mapping[str, MetricInfo]] = {
    # -- the supervisor: the data socket and admission
    "chunks_received_total": _counter(
        "chunks_received_total", "Chunks admitted on the data socket."
    ),
    "chunks_acked_total": _counter(
        "chunks_acked_total",
        "Chunks acknowledged as durable (resends of stored chunks included).",
    ),
    "chunks_refused_total": _counter(
        "chunks_refused_total", "Admitted chunks answered with an error instead of an ack."
    ),
    "bytes_received_total": _counter(
        "received_payload_bytes_total", "Payload bytes of the chunks admitted.", _B
    ),
    "chunks_shared_total": _counter(
        "chunks_shared_total",
        "Chunks admitted whose payload was in the client's shared memory (not the socket).",
    ),
    "backpressure_pauses_total": _counter(
        "backpressure_pauses_total",
        "Times a data connection waited for ring room or in-flight capacity.",
    ),
    "connections_refused_total": _counter(
        "data_connections_refused_total", "Data connections refused (max_connections)."
    ),
    "payload_timeouts_total": _counter(
        "payload_timeouts_total", "Data connections dropped for a stalled payload."
    ),
    "idle_timeouts_total": _counter(
        "idle_timeouts_total", "Data connections closed for idleness (idle_timeout)."
    ),
    "peer_hangups_total": _counter(
        "peer_hangups_total", "Paused data connections dropped because their peer hung up."
    ),
    "stage_ack_seconds_total": _counter(
        "stage_ack_seconds_total",
        "Seconds from a worker's report of a batch to its acks, summed over the chunks.",
        _S,
    ),
    "in_flight": _gauge("chunks_in_flight", "Chunks admitted and not yet answered."),
    "ring_slots_used": _gauge("ring_slots_used", "Slots of the shared-memory ring in use."),
    "ring_slots_total": _gauge("ring_slots", "Slots of the shared-memory ring."),
    "connections": _gauge("data_connections", "Open data-socket connections."),
    "shared_regions": _gauge(
        "shared_regions", "Client shared-memory regions alive (connections, or chunks in flight)."
    ),
    "shared_region_bytes": _gauge(
        "shared_region_bytes", "Bytes of the client shared-memory regions alive.", _B
    ),
    # -- the supervisor: its children
    "worker_restarts_total": _counter("worker_restarts_total", "Worker processes replaced."),
    "aggregator_restarts_total": _counter(
        "aggregator_restarts_total", "Aggregator processes replaced."
    ),
    "replicator_restarts_total": _counter(
        "replicator_restarts_total", "Replicator processes replaced."
    ),
    # -- replication (durability = replicated holds acks until the upload)
    "replication_timeouts_total": _counter(
        "replication_timeouts_total",
        "Chunks answered unavailable: not replicated within replication_timeout.",
    ),
    "replication_acks_held": _gauge(
        "replication_acks_held", "Acks held until their chunks are in the object store."
    ),
    "replication_lag_chunks": _gauge(
        "replication_lag_chunks", "Records stored locally and not yet uploaded."
    ),
    "replication_lag_bytes": _gauge(
        "replication_lag_bytes", "Bytes of the records not yet uploaded.", _B
    ),
    "replication_lag_seconds": _gauge(
        "replication_lag_seconds", "Age of the oldest record not yet uploaded.", _S
    ),
    "replication_objects_total": _counter(
        "replication_objects_total", "Objects created in the object store."
    ),
    "replication_bytes_total": _counter(
        "replication_bytes_total", "Bytes of the objects created in the object store.", _B
    ),
    "replication_records_total": _counter(
        "replication_records_total", "Records uploaded to the object store."
    ),
    "replication_failures_total": _counter(
        "replication_failures_total", "Failed attempts to write to the object store."
    ),
    "replication_conflicts_total": _counter(
        "replication_conflicts_total",
        "Uploads refused because a different object of that name exists.",
    ),
    # -- the aggregator: the workers' group commits
    "chunks_sealed_total": _counter("chunks_sealed_total", "Chunks sealed and made durable."),
    "chunks_failed_total": _counter(
        "chunks_failed_total", "Chunks a worker could not seal or store."
    ),
    "plaintext_bytes_total": _counter(
        "sealed_plaintext_bytes_total", "Plaintext bytes of the chunks sealed.", _B
    ),
    "batches_total": _counter("batches_total", "Group commits of the workers."),
    "stage_queue_wait_seconds_total": _counter(
        "stage_queue_wait_seconds_total",
        "Seconds chunks waited in worker pipes, summed over the chunks.",
        _S,
    ),
    "stage_seal_seconds_total": _counter(
        "stage_seal_seconds_total", "Seconds workers spent sealing (and hashing).", _S
    ),
    "stage_write_seconds_total": _counter(
        "stage_write_seconds_total", "Seconds workers spent writing records.", _S
    ),
    "stage_fsync_seconds_total": _counter(
        "stage_fsync_seconds_total", "Seconds workers spent in fdatasync.", _S
    ),
    "stage_aggregate_seconds_total": _counter(
        "stage_aggregate_seconds_total",
        "Seconds the aggregator spent indexing the workers' batches.",
        _S,
    ),
    # -- the aggregator: sessions, checkpoints, the control socket
    "checkpoints_signed_total": _counter(
        "checkpoints_signed_total", "Session checkpoints signed periodically."
    ),
    "sessions": _gauge("sessions", "Sessions in the state folder (damaged ones included)."),
    "sessions_damaged": _gauge("sessions_damaged", "Sessions that are damaged."),
    "control_connections": _gauge("control_connections", "Open control-socket connections."),
    "control_connections_refused_total": _counter(
        "control_connections_refused_total", "Control connections refused (their bound)."
    ),
}

#: The daemon's histograms (``MetricsReply.histograms``), by the daemon's key.
HISTOGRAMS: Final[Mapping[str, MetricInfo]] = {
    "ack_latency_seconds": _histogram(
        "ack_latency_seconds",
        "Seconds from a chunk's payload being received to its durable ack being sent.",
        _S,
    ),
    "seal_seconds": _histogram(
        "batch_seal_seconds", "Seconds one worker batch spent sealing its chunks.", _S
    ),
    "write_seconds": _histogram(
        "batch_write_seconds", "Seconds one worker batch spent writing its records.", _S
    ),
    "fsync_seconds": _histogram(
        "batch_fsync_seconds", "Seconds of one worker batch's fdatasync.", _S
    ),
    "batch_chunks": _histogram("batch_chunks", "Chunks per worker batch (group commit)."),
}


def metric_name(key: str) -> str:
    """``lucidd_`` and ``key``, every character a metric name may not hold made ``_``."""
    return PREFIX + _INVALID_NAME_CHAR.sub("_", key)


def describe(key: str) -> MetricInfo:
    """The catalogue's entry for a counter or gauge key, or one made up for an unknown key."""
    known = METRICS.get(key)
    if known is not None:
        return known
    name = metric_name(key)
    if name.endswith(COUNTER_SUFFIX):
        return MetricInfo(name, Kind.COUNTER, f"lucidd counter {key} (not in the catalogue).")
    if name.endswith(_RESERVED_SUFFIXES):
        name += _GAUGE_SUFFIX
    return MetricInfo(name, Kind.GAUGE, f"lucidd figure {key} (not in the catalogue).")


def describe_histogram(key: str) -> MetricInfo:
    """The catalogue's entry for a histogram key, or one made up for an unknown key."""
    known = HISTOGRAMS.get(key)
    if known is not None:
        return known
    return MetricInfo(
        metric_name(key), Kind.HISTOGRAM, f"lucidd histogram {key} (not in the catalogue)."
    )
