"""A worker stuck on a chunk is killed and replaced; the chunk is retried once, then failed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.errors import RequestTimeoutError
from tests.conftest import Daemon


def worker_pids(d: Daemon) -> dict[str, int]:
    with ControlClient(d.runtime_dir) as control:
        return {p.role: p.pid for p in control.health().processes if p.role.startswith("worker")}


def test_stuck_worker_is_replaced_and_the_chunk_retried(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(workers=1, worker_timeout=1)
    stuck = worker_pids(d)["worker0"]
    os.kill(stuck, signal.SIGSTOP)  # hangs like a worker caught in an endless loop
    session = new_session_id()
    started = time.monotonic()
    with DataClient(d.runtime_dir) as client:
        ack = client.put(session, 0, b"sealed by the replacement")
    assert time.monotonic() - started >= 1.0  # waited for worker_timeout, not an error
    replacement = worker_pids(d)["worker0"]
    assert replacement != stuck
    with ControlClient(d.runtime_dir) as control:
        chunk = control.read_chunk(session, 0)
        assert chunk.data == b"sealed by the replacement"
        assert control.inclusion_proof(session, 0).leaf_hash == ack.leaf_hash
        assert "event=worker_timeout" in d.log()


def test_chunk_that_times_out_twice_fails_with_a_typed_error(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(workers=2, worker_timeout=1)
    for pid in worker_pids(d).values():
        os.kill(pid, signal.SIGSTOP)  # every worker hangs: the retry goes to the other one
    session = new_session_id()
    with DataClient(d.runtime_dir) as client:
        with pytest.raises(RequestTimeoutError) as failed:
            client.put(session, 0, b"never sealed in time")
        assert failed.value.code == "timeout"
        assert failed.value.retryable
        # the replacements work: the same chunk goes through now
        client.put(session, 0, b"never sealed in time")
    with ControlClient(d.runtime_dir) as control:
        assert control.read_chunk(session, 0).data == b"never sealed in time"
