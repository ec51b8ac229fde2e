"""The real daemon end to end: sockets, processes, files (issue: the daemon)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from lucidd.client import AsyncDataClient, ControlClient, DataClient, new_session_id
from lucidd.crypto import HEADER_SIZE, TAG_SIZE
from lucidd.daemon.store import SessionPaths
from lucidd.errors import (
    DuplicateIndexError,
    IncompleteSessionError,
    SessionFinalizedError,
    UnknownSessionError,
)
from lucidd.merkle import leaf_hash, verify_consistency, verify_inclusion
from tests.conftest import Daemon, ring_segments
from tests.helpers import records_on_disk, root_from_disk

MiB = 1024 * 1024


def test_ten_worker_processes_exist_by_default(short_tmp: Path) -> None:
    d = Daemon(short_tmp, workers=10).start()
    try:
        names = [" ".join(p.cmdline()) for p in d.children()]
        with ControlClient(d.runtime_dir) as control:
            health = control.health()
        roles = sorted(p.role for p in health.processes)
        assert roles.count("aggregator") == 1
        assert len([r for r in roles if r.startswith("worker")]) == 10
        assert all(p.alive for p in health.processes)
        live_pids = {p.pid for p in d.children()}
        assert {p.pid for p in health.processes if p.role != "supervisor"} <= live_pids
        assert len(names) >= 11  # ten workers, the aggregator (and the forkserver)
    finally:
        assert d.stop() == 0


def test_chunks_out_of_order_from_several_clients_make_one_verifiable_log(
    daemon: Daemon,
) -> None:
    sessions = [new_session_id() for _ in range(4)]
    payloads = {s: [os.urandom(random.randrange(0, 70_000)) for _ in range(40)] for s in sessions}
    errors: list[BaseException] = []
    acks: dict[tuple[bytes, int], bytes] = {}

    def stream(session: bytes, parts: list[list[int]]) -> None:
        # One writer per session at a time: each part on its own connection, in turn.
        try:
            for indices in parts:
                with DataClient(daemon.runtime_dir) as client:
                    chunks = [(i, payloads[session][i]) for i in indices]
                    for ack in client.put_many(session, chunks, window=8):
                        acks[(session, ack.index)] = ack.leaf_hash
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = []
    for session in sessions:
        order = list(range(40))
        random.shuffle(order)
        # two connections per session, each with half of the shuffled indices
        parts = [order[:20], order[20:]]
        threads.append(threading.Thread(target=stream, args=(session, parts)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(acks) == 160

    with ControlClient(daemon.runtime_dir) as control:
        for session in sessions:
            root = control.root(session)
            assert root.size == 40
            for index in range(40):
                chunk = control.read_chunk(session, index)
                assert chunk.data == payloads[session][index]
                assert leaf_hash(chunk.record) == acks[(session, index)]
                proof = control.inclusion_proof(session, index)
                assert proof.leaf_hash == acks[(session, index)]
                assert verify_inclusion(proof.leaf_hash, index, 40, proof.path, root.root)
            consistency = control.consistency_proof(session, 17, 40)
            assert verify_consistency(
                17, 40, consistency.path, consistency.root1, consistency.root2
            )
            assert root_from_disk(daemon.state_dir, session, 40) == root.root


def test_sizes_from_zero_bytes_to_the_maximum(daemon: Daemon) -> None:
    sizes = [0, 1, 4095, 4096, 65_537, MiB, 10 * MiB - 1, 10 * MiB]
    session = new_session_id()
    payloads = [os.urandom(size) for size in sizes]
    with DataClient(daemon.runtime_dir) as client:
        client.put_many(session, list(enumerate(payloads)), window=4)
    with ControlClient(daemon.runtime_dir) as control:
        for index, payload in enumerate(payloads):
            assert control.read_chunk(session, index).data == payload
        assert control.root(session).root == root_from_disk(daemon.state_dir, session, len(sizes))


def test_batch_frame_is_acked_per_chunk(daemon: Daemon) -> None:
    session = new_session_id()
    chunks = [(i, f"line {i}\n".encode() * (i + 1)) for i in range(100)]
    with DataClient(daemon.runtime_dir) as client:
        acks = client.put_batch(session, chunks)
    assert sorted(a.index for a in acks) == list(range(100))
    with ControlClient(daemon.runtime_dir) as control:
        assert control.read_chunk(session, 99).data == chunks[99][1]
        assert control.info(session).chunks == 100


def test_resend_of_acked_index_returns_same_ack_and_different_bytes_are_refused(
    daemon: Daemon,
) -> None:
    session = new_session_id()
    with DataClient(daemon.runtime_dir) as client:
        first = client.put(session, 0, b"hello")
        again = client.put(session, 0, b"hello")
        assert again.leaf_hash == first.leaf_hash
        with pytest.raises(DuplicateIndexError):
            client.put(session, 0, b"HELLO")
    assert len(records_on_disk(daemon.state_dir, session)) == 1  # never sealed twice


def test_finalize_needs_no_gaps_then_refuses_chunks(daemon: Daemon) -> None:
    session = new_session_id()
    with DataClient(daemon.runtime_dir) as client, ControlClient(daemon.runtime_dir) as control:
        client.put(session, 0, b"a")
        client.put(session, 2, b"c")
        with pytest.raises(IncompleteSessionError):
            control.finalize(session)
        client.put(session, 1, b"b")  # the failed finalize thawed the session
        final = control.finalize(session)
        assert final.size == 3
        lines = final.checkpoint.decode().splitlines()
        assert lines[1] == "3"
        assert final.root == control.root(session).root
        with pytest.raises(SessionFinalizedError):
            client.put(session, 3, b"d")
        assert control.finalize(session).root == final.root  # idempotent
        assert control.info(session).state == "finalized"


def test_shred_deletes_secret_and_data(daemon: Daemon) -> None:
    with ControlClient(daemon.runtime_dir) as control, DataClient(daemon.runtime_dir) as client:
        session = control.open_session(compression="zstd")
        client.put(session, 0, b"secret stuff" * 100)
        folder = SessionPaths.of(daemon.state_dir, session).root
        assert folder.exists()
        control.shred(session)
        assert not folder.exists()
        with pytest.raises(UnknownSessionError):
            control.root(session)
        with pytest.raises(UnknownSessionError):
            control.read_chunk(session, 0)


def test_async_client_pipelines_on_one_connection(daemon: Daemon) -> None:
    session = new_session_id()
    payloads = [os.urandom(1000 + i) for i in range(64)]

    async def run() -> list[int]:
        client = await AsyncDataClient.connect(daemon.runtime_dir)
        try:
            acks = await asyncio.gather(
                *(client.put(session, i, p) for i, p in enumerate(payloads))
            )
        finally:
            await client.close()
        return [a.index for a in acks]

    assert asyncio.run(run()) == list(range(64))
    with ControlClient(daemon.runtime_dir) as control:
        assert control.read_chunk(session, 63).data == payloads[63]


def test_state_survives_restart(daemon: Daemon) -> None:
    session = new_session_id()
    with DataClient(daemon.runtime_dir) as client:
        client.put_many(session, [(i, bytes([i]) * 100) for i in range(10)])
    with ControlClient(daemon.runtime_dir) as control:
        before = control.root(session)
    assert daemon.stop() == 0
    daemon.start()
    with ControlClient(daemon.runtime_dir) as control:
        after = control.root(session)
        assert (after.size, after.root) == (before.size, before.root)
        assert control.read_chunk(session, 9).data == bytes([9]) * 100


def test_sigterm_under_load_loses_no_acked_chunk_and_leaves_no_ring(
    daemon: Daemon,
) -> None:
    sessions = [new_session_id() for _ in range(3)]
    acked: dict[tuple[bytes, int], bytes] = {}
    payload_of = {
        (s, i): os.urandom(20_000) + i.to_bytes(4, "big") for s in sessions for i in range(400)
    }
    stop = threading.Event()

    def stream(session: bytes) -> None:
        try:
            with DataClient(daemon.runtime_dir) as client:
                for i in range(400):
                    if stop.is_set():
                        return
                    ack = client.put(session, i, payload_of[(session, i)])
                    acked[(session, ack.index)] = ack.leaf_hash
        except Exception:
            return  # the daemon went away mid-stream: expected

    threads = [threading.Thread(target=stream, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(acked) >= 60, daemon.log()
    ring_before = ring_segments()
    assert any(str(daemon.pid) in name for name in ring_before)
    assert daemon.stop() == 0, daemon.log()
    stop.set()
    for t in threads:
        t.join()
    assert not any(str(daemon.pid) in name for name in ring_segments())
    assert any("STOPPING=1" in m for m in daemon.notifications)
    daemon.start()
    with ControlClient(daemon.runtime_dir) as control:
        for (session, index), leaf in acked.items():
            chunk = control.read_chunk(session, index)
            assert chunk.data == payload_of[(session, index)]
            assert leaf_hash(chunk.record) == leaf


def test_overhead_of_a_record_is_header_and_tag(daemon: Daemon) -> None:
    session = new_session_id()
    with ControlClient(daemon.runtime_dir) as control, DataClient(daemon.runtime_dir) as client:
        control.open_session(compression="off", session=session)
        client.put(session, 0, b"x" * 1000)
        record = control.read_chunk(session, 0).record
    assert len(record) == HEADER_SIZE + 1000 + TAG_SIZE


def test_processes_exit_with_the_supervisor(daemon: Daemon) -> None:
    children = daemon.children()
    assert children
    daemon.kill_all()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_sigterm_to_the_whole_process_group_is_an_orderly_stop(short_tmp: Path) -> None:
    """``timeout`` or ``kill -TERM -<pgid>`` signal every process: only the supervisor acts."""
    d = Daemon(short_tmp, workers=2).start()
    session = new_session_id()
    with DataClient(d.runtime_dir) as client:
        client.put(session, 0, b"before the group signal")
    for proc in [*d.children(), psutil.Process(d.pid)]:  # what killpg would reach
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    assert d.stop() == 0, d.log()
    assert "child_died" not in d.log()


def test_an_acked_chunk_is_visible_to_the_very_next_control_request(daemon: Daemon) -> None:
    """Workers ack straight to the supervisor; the aggregator indexes the same batch from its
    own pipe. Read-your-writes must hold anyway: right after each ack, the chunk reads back,
    has its proof, and counts in the session's size (16 clients keep every worker busy)."""
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with DataClient(daemon.runtime_dir) as data, ControlClient(daemon.runtime_dir) as ctl:
            session = ctl.open_session(compression="off")
            for index in range(40):
                payload = rng.randbytes(rng.randrange(1, 20_000))
                ack = data.put(session, index, payload)
                if ctl.read_chunk(session, index).data != payload:
                    failures.append(f"read {seed}/{index}")
                proof = ctl.inclusion_proof(session, index)
                if proof.leaf_hash != ack.leaf_hash or proof.size != index + 1:
                    failures.append(f"proof {seed}/{index}: size {proof.size}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_workers_ack_while_the_aggregator_is_stopped_and_reads_wait_for_it(
    daemon: Daemon,
) -> None:
    """The ack path is supervisor → worker → supervisor: a frozen aggregator (SIGSTOP) delays
    only control requests, and those see every chunk acked meanwhile once it runs again."""
    with ControlClient(daemon.runtime_dir) as control:
        session = control.open_session(compression="off")
        aggregator = next(p.pid for p in control.health().processes if p.role == "aggregator")
    payloads = [os.urandom(5000 + i) for i in range(30)]
    os.kill(aggregator, signal.SIGSTOP)
    try:
        with DataClient(daemon.runtime_dir, timeout=20) as data:
            acks = data.put_many(session, enumerate(payloads), window=8)
        assert [a.index for a in acks] == list(range(30))
    finally:
        os.kill(aggregator, signal.SIGCONT)
    with ControlClient(daemon.runtime_dir) as control:
        assert control.info(session).size == 30
        for index in (0, 17, 29):
            assert control.read_chunk(session, index).data == payloads[index]
        leaves = [a.leaf_hash for a in acks]
        assert control.root(session).root == root_from_disk(daemon.state_dir, session, 30)
        assert [control.inclusion_proof(session, i, 30).leaf_hash for i in range(30)] == leaves


def test_a_chunk_sent_right_after_a_failed_finalize_is_always_admitted(daemon: Daemon) -> None:
    """The thaw of a failed finalize reaches the supervisor before the finalize's error reply
    reaches the client, every time (50 sessions, no pause between reply and next chunk)."""
    with DataClient(daemon.runtime_dir) as client, ControlClient(daemon.runtime_dir) as control:
        for _ in range(50):
            session = new_session_id()
            client.put(session, 1, b"b")
            with pytest.raises(IncompleteSessionError):
                control.finalize(session)
            client.put(session, 0, b"a")
