"""Never wedged by file descriptors (issue 10): clients holding every descriptor the daemon may
lend, or a limit that leaves it none at all, never stop it from replacing a dead worker.

Two ways to starve the supervisor, both on the real daemon:

- a low ``RLIMIT_NOFILE`` (soft = hard, so raising it at start gains nothing) and more idle
  data connections than the limit: connections beyond the budget (fds.fd_budget) are closed at
  once, and the reserve lets a respawn through at once;
- the supervisor's soft limit lowered under it (``prlimit``) to 3, below every descriptor it
  holds, the reserve included: the respawn fails, is retried, health says why, the other
  worker keeps acknowledging, and once the limit is back the worker returns and health is ok;
  the same for the aggregator (acks keep coming meanwhile: workers ack to the supervisor).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lucidd.client import ControlClient, DataClient, HealthReply, new_session_id
from lucidd.daemon.supervisor.fds import fd_budget
from tests.conftest import Daemon

WORKERS = 2
#: The daemon's whole descriptor limit in the first test (soft = hard).
LOW_NOFILE = 512
#: Idle connections opened against it: past its budget, and past the limit itself (without
#: the budget they would take every descriptor).
IDLE_CONNECTIONS = 600
#: Bounds every wait (a broken daemon fails the test instead of hanging it); never asserted.
WAIT_S = 30.0
POLL_S = 0.05
PAYLOAD = os.urandom(4096)


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


def role(health: HealthReply, name: str) -> tuple[int, bool, int]:
    (process,) = [p for p in health.processes if p.role == name]
    return process.pid, process.alive, process.restarts


def kill_worker(control: ControlClient, name: str) -> int:
    pid, alive, _ = role(control.health(), name)
    assert alive
    os.kill(pid, signal.SIGKILL)
    return pid


def back_and_ok(control: ControlClient, name: str, old_pid: int) -> bool:
    health = control.health()
    pid, alive, restarts = role(health, name)
    return health.status == "ok" and alive and pid != old_pid and restarts == 1


@contextlib.contextmanager
def idle_connections(path: Path, count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.connect(str(path))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def lucidctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(daemon.runtime_dir), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S, check=False)


def full_log(daemon: Daemon) -> str:
    return daemon.log_path.read_text(errors="replace")


def no_traceback(daemon: Daemon) -> None:
    text = full_log(daemon)
    assert "Traceback" not in text, text[-5000:]


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, LOW_NOFILE))


@pytest.fixture
def low_limit_daemon(short_tmp: Path) -> Iterator[Daemon]:
    # max_connections far above the budget: the descriptor budget is what must hold.
    env = {"LUCIDD_MAX_CONNECTIONS": "65536"}
    d = Daemon(short_tmp, workers=WORKERS, env=env, preexec_fn=low_nofile).start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        assert d.stop() == 0, d.log()


def test_idle_connections_past_the_budget_are_closed_and_a_respawn_still_works(
    low_limit_daemon: Daemon,
) -> None:
    daemon = low_limit_daemon
    budget = fd_budget(LOW_NOFILE, WORKERS)
    assert 0 < budget < LOW_NOFILE < IDLE_CONNECTIONS
    session = new_session_id()
    with (
        ControlClient(daemon.runtime_dir) as control,
        DataClient(daemon.runtime_dir) as good,
    ):
        good.put(session, 0, PAYLOAD)
        with idle_connections(daemon.runtime_dir / "data.sock", IDLE_CONNECTIONS):

            def all_handled() -> bool:
                metrics = control.metrics()
                handled = metrics["connections"] + metrics["connections_refused_total"]
                return handled == IDLE_CONNECTIONS + 1

            wait_until("every connection accepted or refused", all_handled)
            metrics = control.metrics()
            # The good client is one of them, and its shared-memory region takes a
            # descriptor of the budget too.
            assert metrics["shared_regions"] == 1
            assert metrics["connections"] + metrics["shared_regions"] == budget
            refused = IDLE_CONNECTIONS + 1 - metrics["connections"]
            assert metrics["connections_refused_total"] == refused
            assert len(os.listdir(f"/proc/{daemon.pid}/fd")) < LOW_NOFILE
            old = kill_worker(control, "worker0")
            for index in range(1, 21):  # acks keep coming while it is replaced
                assert good.put(session, index, PAYLOAD).index == index
            wait_until("worker0 back and health ok", lambda: back_and_ok(control, "worker0", old))
            assert control.health().reasons == []
        for index in range(21, 31):
            assert good.put(session, index, PAYLOAD).index == index
        assert control.info(session).chunks == 31
    no_traceback(daemon)


def test_a_respawn_that_cannot_get_descriptors_is_retried_and_health_says_why(
    daemon: Daemon,
) -> None:
    session = new_session_id()
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    with (
        ControlClient(daemon.runtime_dir) as control,
        DataClient(daemon.runtime_dir) as good,
    ):
        good.put(session, 0, PAYLOAD)
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (3, hard))  # not one more fd
        try:
            old = kill_worker(control, "worker1")

            def degraded_with_reason() -> bool:
                health = control.health()
                return health.status == "degraded" and any(
                    r.startswith("worker1: cannot start a process (Too many open files)")
                    for r in health.reasons
                )

            wait_until("health to say why worker1 is missing", degraded_with_reason)
            for index in range(1, 21):  # worker0 takes every chunk meanwhile
                assert good.put(session, index, PAYLOAD).index == index
            pid, alive, _ = role(control.health(), "worker1")
            assert (pid, alive) == (old, False)  # still the dead one: the respawn cannot start
            shown = lucidctl(daemon, "health")
            assert shown.returncode == 0, shown.stderr
            assert "status: degraded" in shown.stdout
            assert "degraded: worker1: cannot start a process (Too many open files)" in shown.stdout
        finally:
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_until("worker1 back and health ok", lambda: back_and_ok(control, "worker1", old))
        assert control.health().reasons == []
        assert json.loads(lucidctl(daemon, "--json", "health").stdout)["reasons"] == []
        for index in range(21, 31):
            assert good.put(session, index, PAYLOAD).index == index
        assert control.info(session).chunks == 31
    log = full_log(daemon)
    assert "event=spawn_failed role=worker1" in log and "event=spawn_recovered role=worker1" in log
    no_traceback(daemon)


def test_an_aggregator_that_cannot_be_restarted_is_retried_while_acks_keep_coming(
    daemon: Daemon,
) -> None:
    session = new_session_id()
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    with DataClient(daemon.runtime_dir) as good:
        good.put(session, 0, PAYLOAD)
        with ControlClient(daemon.runtime_dir) as control:
            old, _, _ = role(control.health(), "aggregator")
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (3, hard))
        try:
            os.kill(old, signal.SIGKILL)
            wait_until(
                "a failed aggregator spawn",
                lambda: "event=spawn_failed role=aggregator" in full_log(daemon),
            )
            for index in range(1, 11):  # workers ack to the supervisor directly
                assert good.put(session, index, PAYLOAD).index == index
        finally:
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
        with ControlClient(daemon.runtime_dir) as control:
            wait_until(
                "the aggregator back and health ok", lambda: back_and_ok(control, "aggregator", old)
            )
            assert control.info(session).chunks == 11
    assert "event=spawn_recovered role=aggregator" in full_log(daemon)
    no_traceback(daemon)
