"""Shared fixtures: a real ``lucidd serve`` in temporary folders.

The daemon is :class:`lucidd.testing.Daemon` (readiness through a test-owned
``NOTIFY_SOCKET``, as systemd waits for it); it is importable from here as ``Daemon``, with its
timeouts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lucidd.testing import READY_TIMEOUT_S, STOP_TIMEOUT_S, Daemon, DaemonError
from tests.anvil import anvil
from tests.prometheus import make_prometheus
from tests.seaweed import seaweed
from tests.users import NO_USERS_REASON, HostUsers, make_host_users

__all__ = [
    "READY_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Daemon",
    "DaemonError",
    "anvil",
    "daemon",
    "host_users",
    "make_daemon",
    "make_prometheus",
    "ring_segments",
    "seaweed",
    "short_tmp",
    "user_daemon",
]


def ring_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("lucidd-*-ring")}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ld-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    """A daemon with 2 workers (this machine has 2 cores); stopped with SIGTERM afterwards."""
    d = Daemon(short_tmp, workers=2).start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        assert d.stop() == 0, d.log()


@pytest.fixture
def make_daemon(short_tmp: Path) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon with extra ``LUCIDD_*`` settings; each is stopped (exit 0) afterwards."""
    started: list[Daemon] = []

    def start(workers: int = 2, **settings: object) -> Daemon:
        env = {f"LUCIDD_{k.upper()}": str(v) for k, v in settings.items()}
        base = short_tmp / f"d{len(started)}"
        base.mkdir()
        d = Daemon(base, workers=workers, env=env).start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            assert d.stop() == 0, d.log()


@pytest.fixture(scope="session")
def host_users() -> Iterator[HostUsers]:
    """Throw-away users and groups (root only; tests/users.py), shared by the whole run."""
    if NO_USERS_REASON is not None:
        pytest.skip(NO_USERS_REASON)
    with make_host_users() as users:
        yield users


@pytest.fixture
def user_daemon(short_tmp: Path, host_users: HostUsers) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon as ``host_users.daemon`` with extra ``LUCIDD_*`` settings (root only).

    Its runtime folder is group-accessible to ``host_users.group``; each daemon is stopped
    (exit 0) afterwards.
    """
    os.chmod(short_tmp, 0o711)
    started: list[Daemon] = []

    def start(workers: int = 2, **settings: object) -> Daemon:
        env = {f"LUCIDD_{k.upper()}": str(v) for k, v in settings.items()}
        base = short_tmp / f"u{len(started)}"
        base.mkdir()
        d = Daemon(base, workers=workers, env=env, user=host_users.daemon).start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            assert d.stop() == 0, d.log()
