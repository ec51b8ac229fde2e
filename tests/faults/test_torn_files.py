"""Torn writes and damaged files: restart recovers a consistent prefix (issue: durability).

The state folder of a crashed daemon is copied, then damaged the way a crash or a bad disk
leaves it: the tails of segment files hold half-written records or garbage, and the derived
files (chunk index, Merkle leaves and level files, Merkle state, ledger state) are cut at
random offsets or grow garbage. Records are the truth; everything else must be rebuilt from
them, and nothing that fails authentication may ever be served.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest

from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.daemon.store import SessionPaths
from lucidd.errors import LucidError
from lucidd.merkle import leaf_hash, root_of
from tests.conftest import Daemon

CHUNKS = 60
TRIALS = int(os.environ.get("FAULT_TRIALS", "2")) * 3


@pytest.fixture
def crashed_state(short_tmp: Path) -> tuple[Path, bytes, list[bytes]]:
    """A state folder left by kill -9: 40 chunks synced by the aggregator, 20 more only
    acknowledged (their records are durable; the index and Merkle files lag behind)."""
    rng = random.Random(7)
    d = Daemon(short_tmp / "origin", workers=2)
    d.base.mkdir()
    d.start()
    session = new_session_id()
    payloads = [rng.randbytes(rng.randrange(0, 9000)) for _ in range(CHUNKS)]
    with DataClient(d.runtime_dir) as client:
        client.put_many(session, list(enumerate(payloads))[:40], window=16)
        time.sleep(1.5)  # the aggregator syncs its files once a second
        client.put_many(session, list(enumerate(payloads))[40:], window=16)
    d.kill_all()
    return d.state_dir, session, payloads


def damage(paths: SessionPaths, rng: random.Random) -> list[str]:
    """Tear segment tails and cut or pad the derived files; returns what was done."""
    done: list[str] = []
    for name in paths.segments():
        path = paths.segment(name)
        choice = rng.randrange(3)
        if choice == 0:  # a record whose write was cut short
            with path.open("ab") as f:
                f.write(b"LUCD\x01\x01\x00\x01" + rng.randbytes(rng.randrange(0, 200)))
            done.append(f"{name}: torn record appended")
        elif choice == 1:
            with path.open("ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 500)))
            done.append(f"{name}: garbage appended")
    derived = [paths.index, paths.root / "ledger.state", *sorted(paths.merkle.iterdir())]
    derived = [path for path in derived if path.exists()]
    for path in rng.sample(derived, k=rng.randrange(1, len(derived) + 1)):
        size = path.stat().st_size
        if rng.random() < 0.7:
            cut = rng.randrange(0, size + 1)
            os.truncate(path, cut)
            done.append(f"{path.name}: cut to {cut} of {size}")
        else:
            with path.open("ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 100)))
            done.append(f"{path.name}: garbage appended")
    return done


def test_restart_after_torn_writes_recovers_every_acknowledged_chunk(
    crashed_state: tuple[Path, bytes, list[bytes]], short_tmp: Path
) -> None:
    state_dir, session, payloads = crashed_state
    for trial in range(TRIALS):
        rng = random.Random(trial)
        base = short_tmp / f"trial{trial}"
        base.mkdir()
        d = Daemon(base, workers=2)
        shutil.copytree(state_dir, d.state_dir)
        done = damage(SessionPaths.of(d.state_dir, session), rng)
        d.start()
        try:
            with ControlClient(d.runtime_dir) as control:
                root = control.root(session)
                # Every chunk was acknowledged, so every chunk must come back, whole.
                assert root.size == CHUNKS, done
                leaves = []
                for index, payload in enumerate(payloads):
                    chunk = control.read_chunk(session, index)
                    assert chunk.data == payload, done
                    leaves.append(leaf_hash(chunk.record))
                assert root_of(leaves) == root.root, done
            with DataClient(d.runtime_dir) as client:  # and the session goes on
                client.put(session, CHUNKS, b"after the repair")
            # A torn or garbage tail is copied to the quarantine, never cut off (issue 11.7).
            if any(".seg:" in x for x in done):
                assert "event=segment_quarantined" in d.log(), done
                assert (SessionPaths.of(d.state_dir, session).root / "quarantine").is_dir()
        except BaseException:
            print("\n".join(done), d.log(), sep="\n")
            raise
        finally:
            assert d.stop() == 0, d.log()


def test_a_record_damaged_in_place_is_never_served(
    crashed_state: tuple[Path, bytes, list[bytes]], short_tmp: Path
) -> None:
    state_dir, session, payloads = crashed_state
    d = Daemon(short_tmp / "flip", workers=2)
    d.base.mkdir()
    shutil.copytree(state_dir, d.state_dir)
    paths = SessionPaths.of(d.state_dir, session)
    segment = paths.segment(paths.segments()[0])
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40  # bit rot inside some stored record
    segment.write_bytes(bytes(data))
    d.start()
    try:
        served = refused = 0
        with ControlClient(d.runtime_dir) as control:
            for index, payload in enumerate(payloads):
                try:
                    chunk = control.read_chunk(session, index)
                except LucidError as err:
                    assert err.code in ("integrity", "bad_format")
                    refused += 1
                    continue
                assert chunk.data == payload  # served means authentic
                served += 1
        assert refused == 1 and served == CHUNKS - 1
    finally:
        assert d.stop() == 0, d.log()
