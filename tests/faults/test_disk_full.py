"""Disk full: typed storage errors, reads keep working, writing resumes by itself."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lucidd.client import ControlClient, DataClient, new_session_id, put_until_acked
from lucidd.errors import StorageError
from lucidd.merkle import leaf_hash, root_of
from tests.conftest import Daemon

CHUNK = 256 * 1024


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (root only; skipped elsewhere, as DESIGN §9 allows)."""
    mount_point = short_tmp / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_refuses_with_storage_error_serves_reads_and_recovers(
    small_disk: Path,
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(6 * 1024 * 1024))  # room we can give back later
    d = Daemon(small_disk, workers=2).start()
    session = new_session_id()
    payloads: list[bytes] = []
    acked: dict[int, bytes] = {}
    try:
        with DataClient(d.runtime_dir) as client:
            with pytest.raises(StorageError) as refused:
                for index in range(200):  # far more than fits
                    payloads.append(os.urandom(CHUNK))
                    acked[index] = client.put(session, index, payloads[index]).leaf_hash
            assert refused.value.retryable
            assert refused.value.code == "storage"
            full_at = len(acked)
            assert full_at > 10
            # a second attempt is refused the same way, never acknowledged
            with pytest.raises(StorageError):
                client.put(session, full_at, payloads[full_at])

        with ControlClient(d.runtime_dir) as control:  # reads go on while the disk is full
            for index in (0, full_at // 2, full_at - 1):
                assert control.read_chunk(session, index).data == payloads[index]
            assert control.health().status == "ok"

        filler.unlink()  # space is back: no restart, no operator action
        more = [os.urandom(CHUNK) for _ in range(8)]
        payloads[full_at:] = more
        result = put_until_acked(
            session, list(enumerate(payloads))[full_at:], d.runtime_dir, deadline_s=60
        )
        acked.update({index: ack.leaf_hash for index, ack in result.items()})

        deadline = time.monotonic() + 10
        with ControlClient(d.runtime_dir) as control:
            while control.root(session).size < len(payloads):  # the log catches up on sync
                assert time.monotonic() < deadline
                time.sleep(0.2)
            root = control.root(session)
            leaves = []
            for index, payload in enumerate(payloads):
                chunk = control.read_chunk(session, index)
                assert chunk.data == payload
                assert leaf_hash(chunk.record) == acked[index]
                leaves.append(acked[index])
            assert root.size == len(payloads)
            assert root_of(leaves) == root.root
    except BaseException:
        print(d.log())
        raise
    finally:
        assert d.stop() == 0, d.log()
