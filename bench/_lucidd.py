"""Drive a running lucidd through its client and measure each chunk from send to durable ack.

Three ways of sending, as a recording tool would:

- ``serial``: one chunk in flight, :meth:`DataClient.put` per chunk; a chunk's latency is the
  duration of its ``put`` (send, then wait for the ack).
- ``pipelined``: :meth:`DataClient.put_many` with a window of ``window`` chunks. A chunk's
  latency runs from when ``put_many`` could send it — when it took the chunk from the iterator,
  or, if the window was full then, when the ack that made room arrived — to its own ack. (The
  moment room was made is taken as that ack's callback; acks handled in the same read after it
  shift the true send by a few microseconds, so latencies lean slightly high.)
- ``clients``: ``clients`` threads, each with its own connection and session, one chunk in
  flight each.

Each run opens fresh sessions (compression off), sends ``warmup`` chunks first (the workers
open the session's segment and unwrap its secret on its first chunk), then the measured ones.
The daemon's metrics are read just before and just after the measured chunks, for the stage
breakdown; ``settle_s`` bounds the wait for the supervisor's counters to catch up (see
:func:`bench._daemon.read_metrics`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench._baselines import Workload
from bench._daemon import SETTLE_TIMEOUT_S, read_metrics, stage_breakdown
from bench._hdr import Histogram
from lucidd.client import Ack, ControlClient, DataClient

NS_PER_S: Final = 1_000_000_000
COMPRESSION: Final = "off"
#: What ``lucidctl --json put`` output without a ``transport`` field (an older lucidctl) used.
DEFAULT_TRANSPORT: Final = "socket"
#: Whether the bench's clients ask for shared memory (``--transport``; set by _measure.run).
SHARED_MEMORY = True


def _data_client(runtime_dir: Path) -> DataClient:
    return DataClient(runtime_dir, shared_memory=SHARED_MEMORY)


def transport_of(data: DataClient) -> str:
    """The client transport a connection uses: ``memfd`` or ``socket``."""
    return data.transport


@dataclass
class RunResult:
    """What one lucidd run measured."""

    seconds: float
    chunks: int
    histogram: Histogram | None = None
    stages: dict[str, float] = field(default_factory=dict)
    #: The client transport (:func:`transport_of`); several joined by ``+`` if connections
    #: differed.
    transport: str = DEFAULT_TRANSPORT


def _warm(data: DataClient, session: bytes, workload: Workload, warmup: int, window: int) -> None:
    """Send chunk indices ``0 .. warmup-1`` of the session (payloads past the measured ones)."""
    if warmup:
        chunks = ((j, workload.chunk(workload.count + j)) for j in range(warmup))
        data.put_many(session, chunks, window=max(1, min(window, warmup)))


def prime(runtime_dir: Path, workload: Workload, window: int) -> None:
    """Send ``workload`` in a throwaway session, unmeasured.

    Used once per daemon with the whole shared-memory ring in flight: the first use of every
    ring page costs page faults in the supervisor and in each worker, which would otherwise
    land in whichever run first needs that much of the ring.
    """
    with ControlClient(runtime_dir) as control, _data_client(runtime_dir) as data:
        session = control.open_session(compression=COMPRESSION)
        data.put_many(session, ((k, workload.chunk(k)) for k in range(workload.count)), window)


def serial(
    runtime_dir: Path, workload: Workload, warmup: int, *, settle_s: float = SETTLE_TIMEOUT_S
) -> RunResult:
    """One chunk in flight: ``put`` after ``put``."""
    clock = time.perf_counter_ns
    histogram = Histogram()
    with ControlClient(runtime_dir) as control, _data_client(runtime_dir) as data:
        session = control.open_session(compression=COMPRESSION)
        _warm(data, session, workload, warmup, 1)
        before = read_metrics(control, settle_s)
        start = clock()
        for k in range(workload.count):
            payload = workload.chunk(k)
            t0 = clock()
            data.put(session, warmup + k, payload)
            histogram.record(clock() - t0)
        seconds = (clock() - start) / NS_PER_S
        after = read_metrics(control, settle_s)
        transport = transport_of(data)
    return RunResult(seconds, workload.count, histogram, stage_breakdown(before, after), transport)


def pipelined(
    runtime_dir: Path,
    workload: Workload,
    warmup: int,
    window: int,
    *,
    settle_s: float = SETTLE_TIMEOUT_S,
    data: DataClient | None = None,
) -> RunResult:
    """``put_many`` with ``window`` chunks in flight on one connection (``data``'s, when given:
    one opened before the measured part, e.g. before an attack fills the socket's connections)."""
    clock = time.perf_counter_ns
    count = workload.count
    taken = [0] * count  # when put_many took chunk k from the iterator
    acked = [0] * count  # when chunk k's ack arrived
    ack_times: list[int] = []  # every ack's arrival, in order

    def chunks() -> Iterator[tuple[int, memoryview]]:
        for k in range(count):
            taken[k] = clock()
            yield warmup + k, workload.chunk(k)

    def on_ack(ack: Ack) -> None:
        now = clock()
        acked[ack.index - warmup] = now
        ack_times.append(now)

    with contextlib.ExitStack() as stack:
        control = stack.enter_context(ControlClient(runtime_dir))
        if data is None:
            data = stack.enter_context(_data_client(runtime_dir))
        session = control.open_session(compression=COMPRESSION)
        _warm(data, session, workload, warmup, window)
        before = read_metrics(control, settle_s)
        start = clock()
        data.put_many(session, chunks(), window=window, on_ack=on_ack)
        seconds = (clock() - start) / NS_PER_S
        after = read_metrics(control, settle_s)
        transport = transport_of(data)
    histogram = Histogram()
    for k in range(count):
        sent = taken[k] if k < window else max(taken[k], ack_times[k - window])
        histogram.record(acked[k] - sent)
    return RunResult(seconds, count, histogram, stage_breakdown(before, after), transport)


def _threaded(
    runtime_dir: Path,
    workload: Workload,
    *,
    warmup: int,
    clients: int,
    window: int,
    body: Callable[[DataClient, bytes, range, Histogram], None],
    settle_s: float,
) -> RunResult:
    """Run ``body`` in ``clients`` threads, each with its own connection, session and share of
    the chunks (client ``c`` sends chunks ``c, c + clients, ...``); time from the common start
    to the last thread's end."""
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    histograms = [Histogram() for _ in range(clients)]
    spans: list[tuple[int, int]] = []
    transports: set[str] = set()
    errors: list[BaseException] = []
    clock = time.perf_counter_ns

    def client(c: int, session: bytes) -> None:
        try:
            with _data_client(runtime_dir) as data:
                transports.add(transport_of(data))
                _warm(data, session, workload, warmup, window)
                ready.wait()
                go.wait()
                t0 = clock()
                body(data, session, range(c, workload.count, clients), histograms[c])
                spans.append((t0, clock()))
        except Exception as exc:  # reported by the caller, after every thread ended
            errors.append(exc)
            ready.abort()

    with ControlClient(runtime_dir) as control:
        sessions = [control.open_session(compression=COMPRESSION) for _ in range(clients)]
        threads = [
            threading.Thread(target=client, args=(c, sessions[c]), name=f"client{c}")
            for c in range(clients)
        ]
        for thread in threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: see below
            ready.wait()
        before = read_metrics(control, settle_s)
        go.set()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        after = read_metrics(control, settle_s)
    merged = Histogram()
    for histogram in histograms:
        merged.merge(histogram)
    seconds = (max(end for _, end in spans) - min(start for start, _ in spans)) / NS_PER_S
    stages = stage_breakdown(before, after)
    return RunResult(seconds, workload.count, merged, stages, "+".join(sorted(transports)))


def concurrent_clients(
    runtime_dir: Path,
    workload: Workload,
    warmup: int,
    clients: int,
    *,
    settle_s: float = SETTLE_TIMEOUT_S,
) -> RunResult:
    """``clients`` threads, each with its own DataClient and session, one chunk in flight each."""

    def body(data: DataClient, session: bytes, share: range, histogram: Histogram) -> None:
        clock = time.perf_counter_ns
        for n, k in enumerate(share):
            payload = workload.chunk(k)
            t0 = clock()
            data.put(session, warmup + n, payload)
            histogram.record(clock() - t0)

    return _threaded(
        runtime_dir,
        workload,
        warmup=warmup,
        clients=clients,
        window=1,
        body=body,
        settle_s=settle_s,
    )


def throughput(
    runtime_dir: Path,
    workload: Workload,
    warmup: int,
    clients: int,
    window: int,
    *,
    settle_s: float = SETTLE_TIMEOUT_S,
) -> RunResult:
    """``clients`` connections, each sending its share with ``put_many`` (``window`` in flight)."""

    def body(data: DataClient, session: bytes, share: range, histogram: Histogram) -> None:
        chunks = ((warmup + n, workload.chunk(k)) for n, k in enumerate(share))
        data.put_many(session, chunks, window=window)

    result = _threaded(
        runtime_dir,
        workload,
        warmup=warmup,
        clients=clients,
        window=window,
        body=body,
        settle_s=settle_s,
    )
    result.histogram = None
    return result
