"""Crash matrix: kill -9 any process, or all of them, while clients stream (issue: durability).

Each trial streams three sessions from three clients that use the library's resend loop
(``put_until_acked``), kills one kind of process at a random moment, restarts the daemon where
the kill took it down, lets the clients finish, and then checks the promise of an ack: every
acknowledged chunk reads back to its bytes under the very leaf hash its ack named, every
session holds exactly the chunks meant (no gap, no duplicate), and each root equals the root
recomputed from the record files on disk. Alongside, a ``lucidctl put`` of a file runs
through each fault and is then finished with ``lucidctl put --resume``: the session must hold
the file byte for byte, each chunk once, under the root of its records.

(A run without faults would give the same plaintexts but other roots: every seal draws a fresh
random nonce, so "the same root as a fault-free run" is checked as the same chunk sequence.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from lucidd.client import ControlClient, put_until_acked
from lucidd.merkle import leaf_hash, root_of, verify_inclusion
from tests.conftest import Daemon, ring_segments
from tests.helpers import all_records_on_disk

TRIALS = int(os.environ.get("FAULT_TRIALS", "2"))
CHUNKS = 120
SESSIONS = 3


class Stream:
    """Clients that keep resending until every chunk is acknowledged."""

    def __init__(self, d: Daemon, rng: random.Random) -> None:
        self.sessions = [rng.randbytes(16) for _ in range(SESSIONS)]
        self.data = {
            s: [rng.randbytes(rng.randrange(0, 40_000)) for _ in range(CHUNKS)]
            for s in self.sessions
        }
        self.acks: dict[tuple[bytes, int], set[bytes]] = {}
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(d, s), daemon=True) for s in self.sessions
        ]

    def _run(self, d: Daemon, session: bytes) -> None:
        def record(ack: object) -> None:
            with self._lock:
                key = (session, ack.index)  # type: ignore[attr-defined]
                self.acks.setdefault(key, set()).add(ack.leaf_hash)  # type: ignore[attr-defined]

        try:
            put_until_acked(
                session,
                enumerate(self.data[session]),
                d.runtime_dir,
                window=8,
                deadline_s=120,
                timeout=30,
                on_ack=record,
            )
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wait_for_acks(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    def join(self) -> None:
        for t in self._threads:
            t.join(180)
            assert not t.is_alive(), "a client never finished"
        assert not self.errors, self.errors


def health_pids(d: Daemon) -> dict[str, int]:
    """Role -> pid of every live process, as the daemon's health reply lists them."""
    deadline = time.monotonic() + 10
    while True:
        with ControlClient(d.runtime_dir) as control:
            rows = control.health().processes
        if all(p.alive and psutil.pid_exists(p.pid) for p in rows) or time.monotonic() > deadline:
            return {p.role: p.pid for p in rows}
        time.sleep(0.05)  # a replacement is starting: the table catches up


def inject(fault: str, d: Daemon, rng: random.Random) -> None:
    if fault == "worker":
        pids = health_pids(d)
        victim = rng.choice([pid for role, pid in pids.items() if role.startswith("worker")])
        os.kill(victim, signal.SIGKILL)
    elif fault == "aggregator":
        os.kill(health_pids(d)["aggregator"], signal.SIGKILL)
    elif fault == "supervisor":
        children = d.children()
        os.kill(d.pid, signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left after the supervisor died: {alive}"
        time.sleep(rng.uniform(0, 0.5))
        d.start()
    else:  # the whole daemon at once
        d.kill_all()
        time.sleep(rng.uniform(0, 0.5))
        d.start()


class CliPut:
    """A ``lucidctl put`` of a file running through the fault, then finished with --resume."""

    CHUNK = 16 * 1024

    def __init__(self, d: Daemon, folder: Path, rng: random.Random) -> None:
        self.daemon = d
        self.path = folder / f"put-{rng.randrange(2**32):08x}.bin"
        self.data = rng.randbytes(rng.randrange(40, 80) * self.CHUNK + rng.randrange(self.CHUNK))
        self.path.write_bytes(self.data)
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self, *args: str) -> list[str]:
        runtime = ["--runtime-dir", str(self.daemon.runtime_dir)]
        return [
            sys.executable,
            "-m",
            "lucidd.cli",
            *runtime,
            "--json",
            "put",
            str(self.path),
            *args,
        ]

    def start(self) -> None:
        argv = self._argv("--chunk-size", str(self.CHUNK), "--window", "2")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def resume(self) -> str:
        """Wait for the interrupted (or finished) put; resume it; return the session id."""
        assert self.proc is not None
        stdout, stderr = self.proc.communicate(timeout=120)
        assert b"Traceback" not in stderr, stderr
        outcome = json.loads(stdout)
        session = outcome.get("session") or outcome["error"].get("session")
        if session is None:  # killed before it opened a session: nothing to resume
            argv = self._argv("--chunk-size", str(self.CHUNK))
        else:
            argv = self._argv("--session", session, "--resume")
        done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return str(json.loads(done.stdout)["session"])

    def check(self, session: str) -> None:
        """The session holds the file, each chunk a record on disk, the records' root."""
        sid = uuid.UUID(session).bytes
        chunks = -(-len(self.data) // self.CHUNK)
        on_disk = all_records_on_disk(self.daemon.state_dir, sid)
        assert sorted(on_disk) == list(range(chunks))
        with ControlClient(self.daemon.runtime_dir) as control:
            served = [control.read_chunk(sid, i) for i in range(chunks)]
            root = control.root(sid)
        assert b"".join(chunk.data for chunk in served) == self.data
        assert all(chunk.record in on_disk[chunk.index] for chunk in served)
        assert root.size == chunks
        assert root_of([leaf_hash(chunk.record) for chunk in served]) == root.root


def check(d: Daemon, stream: Stream) -> None:
    with ControlClient(d.runtime_dir) as control:
        for session in stream.sessions:
            expected = stream.data[session]
            root = control.root(session)
            assert root.size == len(expected)
            on_disk = all_records_on_disk(d.state_dir, session)
            leaves = []
            for index, payload in enumerate(expected):
                chunk = control.read_chunk(session, index)
                assert chunk.data == payload
                leaf = leaf_hash(chunk.record)
                acked = stream.acks[(session, index)]
                assert acked == {leaf}, "an ack named a leaf that is not the stored one"
                assert chunk.record in on_disk[index]
                leaves.append(leaf)
            assert root_of(leaves) == root.root
            for index in (0, len(expected) // 2, len(expected) - 1):
                proof = control.inclusion_proof(session, index)
                assert verify_inclusion(proof.leaf_hash, index, root.size, proof.path, root.root)


@pytest.mark.parametrize("fault", ["worker", "aggregator", "supervisor", "group"])
def test_kill_9_while_streaming_loses_no_acknowledged_chunk(fault: str, short_tmp: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    d = Daemon(short_tmp, workers=3).start()
    acked_before_fault = acked_total = 0
    try:
        for _ in range(TRIALS):
            stream = Stream(d, rng)
            cli_put = CliPut(d, short_tmp, rng)
            stream.start()
            cli_put.start()
            stream.wait_for_acks(rng.randrange(10, SESSIONS * CHUNKS // 2))
            acked_before_fault += len(stream.acks)
            crashed = d.pid
            inject(fault, d, rng)
            stream.join()
            check(d, stream)
            cli_put.check(cli_put.resume())
            acked_total += len(stream.acks)
            if fault in ("supervisor", "group"):
                # The crashed run's ring segment is gone once the new daemon is up (only this
                # test's own rings are looked at: other daemons may run on a shared machine).
                assert f"lucidd-{crashed}-ring" not in ring_segments()
    except BaseException:
        print(f"seed={seed}\n{d.log()}")
        if d.proc is not None and d.proc.poll() is None:
            d.kill_all()  # no orphaned daemon after a failure
        raise
    print(
        f"fault={fault} trials={TRIALS} acked_before_fault={acked_before_fault} "
        f"acked={acked_total} lost=0"
    )
    pid = d.pid
    assert d.stop() == 0, d.log()
    assert f"lucidd-{pid}-ring" not in ring_segments()


def test_an_aggregator_that_keeps_dying_is_replaced_with_growing_delays(short_tmp: Path) -> None:
    """Three kill -9 in a row, each right after the replacement came up: the supervisor
    spaces the respawns out (no tight loop), and once one lives the daemon serves as before."""
    d = Daemon(short_tmp, workers=2).start()
    try:
        session = os.urandom(16)
        acks = [put_until_acked(session, [(0, b"before")], d.runtime_dir)[0]]
        for _ in range(3):
            os.kill(health_pids(d)["aggregator"], signal.SIGKILL)
            time.sleep(0.3)  # health_pids waits for the replacement
        acks.append(put_until_acked(session, [(1, b"after")], d.runtime_dir)[1])
        pids = health_pids(d)
        with ControlClient(d.runtime_dir) as control:
            root = control.root(session)
            rows = {p.role: p for p in control.health().processes}
        assert rows["aggregator"].restarts == 3 and pids["aggregator"] == rows["aggregator"].pid
        assert (root.size, root.root) == (2, root_of([a.leaf_hash for a in acks]))
        log = d.log()
        assert log.count("event=respawn_delayed role=aggregator") >= 2
        assert "Traceback" not in log
    finally:
        assert d.stop() == 0, d.log()


def test_a_worker_that_keeps_dying_is_replaced_with_growing_delays(short_tmp: Path) -> None:
    """Worker 0 is killed three times right after each start while chunks stream in: its
    replacements come after growing delays, meanwhile its slot gets no new chunks if another
    worker can take them, and every chunk is acknowledged exactly once."""
    d = Daemon(short_tmp, workers=2).start()
    try:
        rng = random.Random(5)
        stream = Stream(d, rng)
        stream.start()
        for acked in (20, 40, 60):  # the kills land early in the stream, or after it
            stream.wait_for_acks(acked)
            os.kill(health_pids(d)["worker0"], signal.SIGKILL)
            time.sleep(0.05)
        stream.join()
        check(d, stream)
        log = d.log()
        assert log.count("event=respawn_delayed role=worker0") >= 2
        assert "Traceback" not in log
        health_pids(d)  # until the last replacement, started after its delay, is up
        with ControlClient(d.runtime_dir) as control:
            rows = {p.role: p for p in control.health().processes}
        assert rows["worker0"].restarts == 3 and rows["worker0"].alive
    finally:
        assert d.stop() == 0, d.log()
