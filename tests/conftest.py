"""Shared fixtures: a real ``lucidd serve`` in temporary folders.

Readiness is awaited the way systemd does it: the test owns a datagram socket, passes it as
``NOTIFY_SOCKET`` and waits for ``READY=1`` — so every integration test also exercises the
daemon's systemd path (DESIGN §9).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import psutil
import pytest

from tests.users import NO_USERS_REASON, HostUser, HostUsers, make_host_users

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


class Daemon:
    """A running ``lucidd serve`` process and its folders."""

    def __init__(
        self,
        base: Path,
        workers: int,
        env: dict[str, str] | None = None,
        *,
        user: HostUser | None = None,
        preexec_fn: Callable[[], None] | None = None,
        fsize_limit: int | None = None,
    ) -> None:
        self.base = base
        #: Runs in the daemon's process before exec (set a resource limit, ...).
        self.preexec_fn = preexec_fn
        #: RLIMIT_FSIZE for the daemon (DESIGN §9: writes past it fail with EFBIG, as on a
        #: full disk). Its output then goes through a pipe, which the limit does not cover.
        self.fsize_limit = fsize_limit
        #: Run as this throw-away user (tests/users.py) instead of the test's own uid.
        self.user = user
        self.state_dir = base / "state"
        self.runtime_dir = base / "run"
        self.workers = workers
        self.extra_env = env or {}
        self.notifications: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "lucidd.log"
        self._notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        self.notifications = []
        notify_path = self.base / "notify.sock"
        if notify_path.exists():
            notify_path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.settimeout(0.2)
        if self.user is not None:
            # The daemon's folders are its own; clients reach base/run through base (0711).
            os.chown(self.base, self.user.uid, self.user.gid)
            os.chmod(self.base, 0o711)
            os.chown(notify_path, self.user.uid, self.user.gid)
        env = dict(os.environ)
        env.update(self.extra_env)
        env["NOTIFY_SOCKET"] = str(notify_path)
        cmd = [
            sys.executable,
            "-m",
            "lucidd",
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--runtime-dir",
            str(self.runtime_dir),
            "--workers",
            str(self.workers),
        ]
        if self.user is not None:
            # setpriv execs, so self.proc.pid stays the supervisor's pid.
            cmd = self.user.command(cmd)
        log = self.log_path.open("ab")
        if self.fsize_limit is None:
            # preexec_fn is unsafe with threads in the parent; tests start daemons from one
            # thread.
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=log,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509
            )
            log.close()
        else:
            # prlimit(1) sets the limit and execs: self.proc.pid stays the supervisor's pid.
            cmd = ["prlimit", f"--fsize={self.fsize_limit}", "--", *cmd]
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509
            )
            threading.Thread(target=_copy_output, args=(self.proc, log), daemon=True).start()
        self.wait_for("READY=1", READY_TIMEOUT_S)
        return self

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._notify is not None and self.proc is not None
        while time.monotonic() < deadline:
            if any(needle in m for m in self.notifications):
                return
            try:
                self.notifications.append(self._notify.recv(4096).decode())
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"lucidd exited with {self.proc.returncode}:\n{self.log()}"
                    ) from None
        raise AssertionError(f"no {needle} from lucidd within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"lucidd did not stop:\n{self.log()}") from None
        self._drain_notifications()
        return code

    def _drain_notifications(self) -> None:
        if self._notify is None:
            return
        self._notify.setblocking(False)
        while True:
            try:
                self.notifications.append(self._notify.recv(4096).decode())
            except BlockingIOError:
                break
        self._notify.close()
        self._notify = None

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every child (a crash of the whole daemon)."""
        assert self.proc is not None
        try:
            procs = [psutil.Process(self.pid), *self.children()]
        except psutil.NoSuchProcess:  # it has exited (and its children died with it)
            procs = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.proc.wait()
        psutil.wait_procs(procs, timeout=10)
        if self._notify is not None:
            self._notify.close()
            self._notify = None


def _copy_output(proc: subprocess.Popen[bytes], log: BinaryIO) -> None:
    assert proc.stdout is not None
    with log:
        while data := os.read(proc.stdout.fileno(), 65536):
            log.write(data)
            log.flush()


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
