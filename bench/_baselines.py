"""What a user could do instead of lucidd, and the machine's limits, on the bench's data.

Every baseline does exactly a worker's work on the same chunks (DESIGN §2): seal with
:class:`~lucidd.crypto.ChunkSealer` (compression off; the leaf hash is part of ``seal``), append
the record to a segment file, and — with durability ``fsync`` — one ``fdatasync`` per batch.
A batch is ``batch`` chunks handed over at once and made durable together; its chunks' latency
is the batch's duration (for a batch of one, the chunk's own time).

- ``inprocess``: one thread, one loop (the floor for per-chunk cost).
- ``threads10``: a ``ThreadPoolExecutor(10)``, one task per chunk (seal + append), the batch's
  ``fdatasync`` in the caller once all its tasks are done (the original specification's design).
- ``procpool10``: a ``ProcessPoolExecutor(10)`` (fork), one task per chunk passing the payload
  as ``bytes`` (pickled through a pipe); each process appends to the same ``O_APPEND`` segment
  and the caller's ``fdatasync`` of that file makes the batch durable.
- ``restic``: ``restic backup`` of the same chunks, written as one file per chunk, into a local
  repository (only when ``restic`` is on ``PATH``; its flags follow its version,
  :class:`Restic`; a failure is :class:`BaselineError`, which the bench reports as the row's).

Limits: the *compute limit* seals (and so hashes) the chunks in as many processes as there are
cores, no I/O; the *disk limit* appends the same bytes (record-sized writes) and fdatasyncs them
in the same batches, no crypto.
"""

from __future__ import annotations

import abc
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bench._hdr import Histogram
from lucidd.crypto import KEY_SIZE, RECORD_OVERHEAD, SESSION_ID_SIZE, ChunkSealer

POOL_SIZE: Final = 10
NS_PER_S: Final = 1_000_000_000
RESTIC_PASSWORD: Final = "lucidd-bench"


@dataclass(frozen=True)
class Workload:
    """``count`` chunks of ``chunk_size`` bytes cut from ``data`` (the same for every design).

    Chunk ``i`` starts at ``i * chunk_size`` modulo the room left in ``data``, so consecutive
    chunks differ and every design, lucidd included, seals the very same bytes.
    """

    data: bytes
    chunk_size: int
    count: int

    def __post_init__(self) -> None:
        if self.chunk_size > len(self.data):
            raise ValueError("chunk_size exceeds the data blob")

    def chunk(self, i: int) -> memoryview:
        room = len(self.data) - self.chunk_size + 1
        start = (i * self.chunk_size) % room
        return memoryview(self.data)[start : start + self.chunk_size]

    @property
    def nbytes(self) -> int:
        return self.chunk_size * self.count


class SegmentFile:
    """An append-only file, as a worker's segment: ``O_APPEND`` writes; on sync, ``fdatasync``
    and then, like a worker (``lucidd.daemon.store.SegmentWriter``), the now clean pages are dropped
    from the page cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, buffers: Sequence[memoryview | bytes]) -> None:
        write_fully(self.fd, buffers)

    def sync(self) -> None:
        os.fdatasync(self.fd)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_fully(fd: int, buffers: Sequence[memoryview | bytes]) -> None:
    """``writev`` until every byte of ``buffers`` is written."""
    views = [memoryview(b) for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if written:
            views[0] = views[0][written:]


class Design(abc.ABC):
    """One way of doing a worker's work. ``process`` seals and appends chunks ``indices`` and
    returns when all are written (not yet synced); the caller syncs :attr:`segment`."""

    name: str

    def __init__(self, workload: Workload, folder: Path) -> None:
        self.workload = workload
        self.segment = SegmentFile(folder / f"{self.name}.seg")
        self.secret = os.urandom(KEY_SIZE)
        self.session_id = os.urandom(SESSION_ID_SIZE)

    @abc.abstractmethod
    def process(self, indices: range) -> None: ...

    def close(self) -> None:
        self.segment.close()
        self.segment.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InProcess(Design):
    name = "inprocess"

    def __init__(self, workload: Workload, folder: Path) -> None:
        super().__init__(workload, folder)
        self._sealer = ChunkSealer(workload.chunk_size)

    def process(self, indices: range) -> None:
        seal, chunk, write = self._sealer.seal, self.workload.chunk, self.segment.write
        for i in indices:
            record, _leaf = seal(self.secret, self.session_id, i, chunk(i), "off")
            write((record,))


class Threads(Design):
    name = "threads10"

    def __init__(self, workload: Workload, folder: Path) -> None:
        super().__init__(workload, folder)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="seal")

    def _task(self, i: int) -> bytes:
        sealer: ChunkSealer | None = getattr(self._local, "sealer", None)
        if sealer is None:
            sealer = self._local.sealer = ChunkSealer(self.workload.chunk_size)
        record, leaf = sealer.seal(self.secret, self.session_id, i, self.workload.chunk(i), "off")
        self.segment.write((record,))
        return leaf

    def process(self, indices: range) -> None:
        for future in [self._pool.submit(self._task, i) for i in indices]:
            future.result()

    def close(self) -> None:
        self._pool.shutdown()
        super().close()


# State of a procpool10 child process, set by its initializer.
_child_sealer: ChunkSealer | None = None
_child_fd = -1
_child_keys: tuple[bytes, bytes] = (b"", b"")


def _procpool_init(path: str, secret: bytes, session_id: bytes, chunk_size: int) -> None:
    global _child_sealer, _child_fd, _child_keys  # noqa: PLW0603 - per-process state
    _child_sealer = ChunkSealer(chunk_size)
    _child_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    _child_keys = (secret, session_id)


def _procpool_task(i: int, payload: bytes) -> bytes:
    assert _child_sealer is not None
    record, leaf = _child_sealer.seal(_child_keys[0], _child_keys[1], i, payload, "off")
    write_fully(_child_fd, (record,))
    return leaf


class ProcPool(Design):
    name = "procpool10"

    def __init__(self, workload: Workload, folder: Path) -> None:
        super().__init__(workload, folder)
        self._pool = ProcessPoolExecutor(
            POOL_SIZE,
            mp_context=mp.get_context("fork"),
            initializer=_procpool_init,
            initargs=(str(self.segment.path), self.secret, self.session_id, workload.chunk_size),
        )

    def process(self, indices: range) -> None:
        chunk = self.workload.chunk
        futures: list[Future[bytes]] = [
            self._pool.submit(_procpool_task, i, bytes(chunk(i))) for i in indices
        ]
        for future in futures:
            future.result()

    def close(self) -> None:
        self._pool.shutdown()
        super().close()


DESIGNS: Final[dict[str, Callable[[Workload, Path], Design]]] = {
    "inprocess": InProcess,
    "threads10": Threads,
    "procpool10": ProcPool,
}


def drive(
    design: Design,
    *,
    batch: int,
    fsync: bool,
    first: int,
    count: int,
    histogram: Histogram | None = None,
) -> float:
    """Process chunks ``first .. first+count-1`` in batches; seconds taken.

    Each batch is handed over whole and made durable (``fdatasync``) before the next one; every
    chunk of a batch is recorded in ``histogram`` with the batch's duration in nanoseconds.
    """
    clock = time.perf_counter_ns
    start = clock()
    for b0 in range(first, first + count, batch):
        indices = range(b0, min(b0 + batch, first + count))
        t0 = clock()
        design.process(indices)
        if fsync:
            design.segment.sync()
        if histogram is not None:
            elapsed = clock() - t0
            for _ in indices:
                histogram.record(elapsed)
    return (clock() - start) / NS_PER_S


def run_design(
    name: str,
    workload: Workload,
    folder: Path,
    *,
    batch: int,
    fsync: bool,
    warmup: int,
    histogram: Histogram | None = None,
) -> float:
    """Warm ``name`` up on ``warmup`` chunks, then time the workload; seconds."""
    with DESIGNS[name](workload, folder) as design:
        # Warm-up chunks take indices past the measured ones.
        drive(design, batch=batch, fsync=fsync, first=workload.count, count=warmup)
        return drive(
            design, batch=batch, fsync=fsync, first=0, count=workload.count, histogram=histogram
        )


# --- limits ---------------------------------------------------------------------------------


def _compute_child(
    workload: Workload,
    share: range,
    seconds: float,
    barrier: Barrier,
    out: mp.SimpleQueue[tuple[int, int, int]],
) -> None:
    sealer = ChunkSealer(workload.chunk_size)
    secret, session_id = os.urandom(KEY_SIZE), os.urandom(SESSION_ID_SIZE)
    for i in share[:4]:  # warm the sealer's buffer
        sealer.seal(secret, session_id, i, workload.chunk(i), "off")
    barrier.wait()
    t0 = time.monotonic_ns()
    deadline = t0 + int(seconds * NS_PER_S)
    done = 0
    while done < len(share) or time.monotonic_ns() < deadline:
        i = share[done % len(share)]
        sealer.seal(secret, session_id, i, workload.chunk(i), "off")
        done += 1
    out.put((t0, time.monotonic_ns(), done))


@dataclass(frozen=True)
class Rate:
    """Chunks of one size processed in a time."""

    chunks: int
    seconds: float


def compute_limit(workload: Workload, processes: int, seconds: float) -> Rate:
    """Seal (and so hash) the workload's chunks in ``processes`` forked processes, no I/O.

    Each process takes an equal share and goes over it again until ``seconds`` have passed
    (at least once). The time runs from the first start to the last end (CLOCK_MONOTONIC is one
    clock for all processes). The data is inherited, not copied.
    """
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes)
    out: mp.SimpleQueue[tuple[int, int, int]] = ctx.SimpleQueue()
    shares = [range(k, workload.count, processes) for k in range(processes)]
    children = [
        ctx.Process(target=_compute_child, args=(workload, share, seconds, barrier, out))
        for share in shares
    ]
    for child in children:
        child.start()
    spans = [out.get() for _ in children]
    for child in children:
        child.join()
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return Rate(sum(done for _, _, done in spans), wall / NS_PER_S)


def disk_limit(workload: Workload, folder: Path, batch: int, seconds: float) -> Rate:
    """Append record-sized writes of the chunks, one fdatasync per ``batch``, no crypto; go on
    over the chunks again until ``seconds`` have passed (at least once)."""
    pad = bytes(RECORD_OVERHEAD)
    segment = SegmentFile(folder / "disk.seg")
    try:
        clock = time.perf_counter_ns
        start = clock()
        deadline = start + int(seconds * NS_PER_S)
        done = 0
        while done < workload.count or clock() < deadline:
            for i in range(done, done + batch):
                segment.write((workload.chunk(i), pad))
            segment.sync()
            done += batch
        return Rate(done, (clock() - start) / NS_PER_S)
    finally:
        segment.close()
        segment.path.unlink(missing_ok=True)


# --- restic ---------------------------------------------------------------------------------

#: The first restic release that knows ``backup --no-scan`` (skip the size pre-scan).
RESTIC_NO_SCAN_SINCE: Final = (0, 15, 0)
#: The first restic release with compression (repository format 2) and ``--compression``.
RESTIC_COMPRESSION_SINCE: Final = (0, 14, 0)
#: How much of a failed restic's stderr a row error keeps.
RESTIC_ERROR_CHARS: Final = 300
_RESTIC_VERSION: Final = re.compile(r"^restic (\d+)\.(\d+)\.(\d+)")


class BaselineError(Exception):
    """A baseline's external tool failed; the bench reports it as the row's error and goes on."""


def restic_available() -> bool:
    return shutil.which("restic") is not None


def parse_restic_version(text: str) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` from ``restic version`` output, e.g. ``restic 0.14.0 compiled
    with go1.19.8 on linux/amd64`` or ``restic 0.16.0-dev (compiled manually) ...``; None if the
    text is not that."""
    match = _RESTIC_VERSION.match(text.strip())
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class Restic:
    """The installed restic and the flags this bench gives it.

    ``--no-scan`` only where it exists (0.15+: older releases reject it and fail the backup);
    ``--compression off`` where compression exists (0.14+), as lucidd runs with compression off.
    An unreadable version gets neither flag: what every release accepts.
    """

    version: tuple[int, int, int] | None

    @classmethod
    def installed(cls) -> Restic:
        try:
            out = subprocess.run(
                ["restic", "version"], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise BaselineError(f"restic version: {exc}") from exc
        return cls(parse_restic_version(out))

    @property
    def version_text(self) -> str:
        return "unknown" if self.version is None else ".".join(map(str, self.version))

    def global_flags(self) -> list[str]:
        if self.version is not None and self.version >= RESTIC_COMPRESSION_SINCE:
            return ["--compression", "off"]
        return []

    def backup_flags(self) -> list[str]:
        if self.version is not None and self.version >= RESTIC_NO_SCAN_SINCE:
            return ["--no-scan"]
        return []

    def backup(self, source: Path, repo: Path, cache: Path) -> float:
        """Seconds for ``restic backup --quiet SOURCE`` into a new repository at ``repo``.

        ``restic init`` is not timed. restic's local backend fsyncs every file it saves, so
        this is durable as lucidd's ``fsync`` acks are. Raises :class:`BaselineError` (with
        the end of restic's stderr) when a restic command fails.
        """
        env = dict(
            os.environ,
            RESTIC_PASSWORD=RESTIC_PASSWORD,
            RESTIC_REPOSITORY=str(repo),
            RESTIC_CACHE_DIR=str(cache),
        )
        self._run(["init"], env)
        start = time.perf_counter_ns()
        self._run(["backup", *self.backup_flags(), "--quiet", str(source)], env)
        return (time.perf_counter_ns() - start) / NS_PER_S

    def _run(self, args: list[str], env: dict[str, str]) -> None:
        command = ["restic", *self.global_flags(), *args]
        try:
            subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            tail = " ".join((exc.stderr or "").split())[-RESTIC_ERROR_CHARS:]
            raise BaselineError(
                f"restic {self.version_text}: {' '.join(command)}: exit {exc.returncode}: {tail}"
            ) from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise BaselineError(f"restic {self.version_text}: {' '.join(command)}: {exc}") from exc


def restic_backup(workload: Workload, folder: Path, restic: Restic) -> float:
    """Seconds for ``restic backup`` of the chunks (one file each) into a new local repository.

    Writing the files and ``restic init`` are not timed; :class:`BaselineError` if restic fails.
    """
    source, repo, cache = folder / "restic-src", folder / "restic-repo", folder / "restic-cache"
    source.mkdir()
    try:
        for i in range(workload.count):
            (source / f"{i:08d}.chunk").write_bytes(workload.chunk(i))
        return restic.backup(source, repo, cache)
    finally:
        for path in (source, repo, cache):
            shutil.rmtree(path, ignore_errors=True)
