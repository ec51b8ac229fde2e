"""A real ``lucidd serve`` for tests and benchmarks: start it, wait for readiness, stop it.

Readiness is awaited the way systemd does it: the harness owns a datagram socket, passes it as
``NOTIFY_SOCKET`` and waits for ``READY=1`` (DESIGN §9), so every caller also exercises the
daemon's systemd path. The daemon runs as a subprocess (``python -m lucidd serve``); this module
imports nothing of ``lucidd.daemon``, only what a client may.

Who may call: tests and benches, from one thread (``preexec_fn`` is unsafe with threads in the
parent). Folders must be short paths: a Unix socket path stays under 108 bytes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final, Protocol, Self

import psutil

READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 40.0
NOTIFY_RECV_TIMEOUT_S: Final = 0.2
NOTIFY_DATAGRAM_MAX: Final = 4096
LOG_TAIL_CHARS: Final = 5000


def serve_command(state_dir: Path, runtime_dir: Path, *args: str) -> list[str]:
    """``python -m lucidd serve`` on these folders, with more arguments."""
    cmd = [sys.executable, "-m", "lucidd", "serve", "--state-dir", str(state_dir)]
    return [*cmd, "--runtime-dir", str(runtime_dir), *args]


class DaemonError(AssertionError):
    """The daemon did not start or stop as expected; the message carries its log's tail.

    An ``AssertionError``, so that a test reports it as a failed check, not as an error."""


class RunAs(Protocol):
    """Another host user to run the daemon as (``tests/users.py``'s ``HostUser``)."""

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    def command(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run as this user by a program that execs it (the pid stays the daemon's)."""
        ...


class Daemon:
    """A ``lucidd serve`` process on its own folders under ``base``.

    ``env`` adds variables (``LUCIDD_*`` settings) to ``base_env`` (default: this process's
    environment). ``command_prefix`` goes before ``python -m lucidd serve ...``: a wrapper that
    execs it (``systemd-socket-activate``, ``sh -c 'exec "$@"'``), so :attr:`pid` stays the
    supervisor's. ``listen`` False closes the notify socket once ``READY=1`` came: nobody reads
    it then, and a full socket would hold up the daemon's sender (benches).
    """

    def __init__(
        self,
        base: Path,
        workers: int,
        env: Mapping[str, str] | None = None,
        *,
        user: RunAs | None = None,
        preexec_fn: Callable[[], None] | None = None,
        fsize_limit: int | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        command_prefix: Sequence[str] = (),
        base_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        listen: bool = True,
        state_dir_name: str = "state",
        runtime_dir_name: str = "run",
    ) -> None:
        self.base = base
        self.workers = workers
        self.extra_env = dict(env or {})
        #: Run as this user instead of the caller's uid.
        self.user = user
        #: Runs in the daemon's process before exec (set a resource limit, ...).
        self.preexec_fn = preexec_fn
        #: RLIMIT_FSIZE for the daemon (DESIGN §9: writes past it fail with EFBIG, as on a
        #: full disk). Its output then goes through a pipe, which the limit does not cover.
        self.fsize_limit = fsize_limit
        #: The longest :meth:`start` waits for ``READY=1``.
        self.ready_timeout = ready_timeout
        self.command_prefix = list(command_prefix)
        self.base_env = base_env
        self.cwd = cwd
        self.listen = listen
        self.state_dir = base / state_dir_name
        self.runtime_dir = base / runtime_dir_name
        self.notify_path = base / "notify.sock"
        self.log_path = base / "lucidd.log"
        #: Every datagram the daemon sent to its ``NOTIFY_SOCKET``, in order.
        self.notifications: list[str] = []
        #: Seconds from the exec to ``READY=1`` at the last :meth:`start`.
        self.ready_s = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        """The command line :meth:`launch` runs."""
        cmd = serve_command(self.state_dir, self.runtime_dir, "--workers", str(self.workers))
        if self.user is not None:
            cmd = self.user.command(cmd)
        if self.fsize_limit is not None:
            # prlimit(1) sets the limit and execs: the pid stays the supervisor's.
            cmd = ["prlimit", f"--fsize={self.fsize_limit}", "--", *cmd]
        return [*self.command_prefix, *cmd]

    def start(self) -> Self:
        """:meth:`launch`, then wait for ``READY=1`` (:class:`DaemonError` if it never comes)."""
        started = time.monotonic()
        self.launch()
        try:
            self.wait_for("READY=1", self.ready_timeout)
        finally:
            if not self.listen:
                self._close_notify()
        self.ready_s = time.monotonic() - started
        return self

    def launch(self) -> Self:
        """Start the process without waiting for it."""
        self.notifications = []
        self.notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        self._notify.settimeout(NOTIFY_RECV_TIMEOUT_S)
        if self.user is not None:
            # The daemon's folders are its own; clients reach base/run through base (0711).
            os.chown(self.base, self.user.uid, self.user.gid)
            os.chmod(self.base, 0o711)
            os.chown(self.notify_path, self.user.uid, self.user.gid)
        env = dict(os.environ if self.base_env is None else self.base_env)
        env.update(self.extra_env)
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        log = self.log_path.open("ab")
        if self.fsize_limit is None:
            # preexec_fn is unsafe with threads in the parent; callers start from one thread.
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                cwd=self.cwd,
                stdout=log,
                stderr=log,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509
            )
            log.close()
        else:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509
            )
            threading.Thread(target=_copy_output, args=(self.proc, log), daemon=True).start()
        return self

    def wait_for(self, needle: str, timeout: float) -> str:
        """The first notification containing ``needle``; :class:`DaemonError` if the daemon
        exits or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        assert self._notify is not None and self.proc is not None
        while time.monotonic() < deadline:
            found = next((m for m in self.notifications if needle in m), None)
            if found is not None:
                return found
            if not self._receive() and self.proc.poll() is not None:
                raise DaemonError(f"lucidd exited with {self.proc.returncode}:\n{self.log()}")
        raise DaemonError(f"no {needle} from lucidd within {timeout}s:\n{self.log()}")

    def collect(self, seconds: float) -> list[str]:
        """Every notification that arrives within ``seconds`` from now."""
        start = len(self.notifications)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive()
        return self.notifications[start:]

    def _receive(self) -> bool:
        assert self._notify is not None
        try:
            self.notifications.append(self._notify.recv(NOTIFY_DATAGRAM_MAX).decode())
        except TimeoutError:
            return False
        return True

    def log(self, tail_chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the daemon's output (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")[-tail_chars:]

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it; returns its exit code. If it does not exit
        within :data:`STOP_TIMEOUT_S` it is killed and :class:`DaemonError` raised."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DaemonError(f"lucidd did not stop:\n{self.log()}") from None
        self._drain_notifications()
        return code

    def _drain_notifications(self) -> None:
        """Keep what the (exited) daemon sent last, then close the socket."""
        if self._notify is None:
            return
        self._notify.setblocking(False)
        while True:
            try:
                self.notifications.append(self._notify.recv(NOTIFY_DATAGRAM_MAX).decode())
            except BlockingIOError:
                break
        self._close_notify()

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
            self.notify_path.unlink(missing_ok=True)

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
        self._close_notify()


def _copy_output(proc: subprocess.Popen[bytes], log: BinaryIO) -> None:
    assert proc.stdout is not None
    with log:
        while data := os.read(proc.stdout.fileno(), 65536):
            log.write(data)
            log.flush()


class HttpGateway(Daemon):
    """A ``lucidd http`` process in front of ``daemon``, listening on ``listen``
    (``127.0.0.1:0``: a port the kernel picks; :attr:`address` says which once started).

    Its folder is ``daemon.base/http`` (its log and notify socket); readiness is its
    ``READY=1``, whose status line names the address."""

    def __init__(
        self,
        daemon: Daemon,
        listen: str,
        env: Mapping[str, str] | None = None,
        *,
        user: RunAs | None = None,
        name: str = "http",
    ) -> None:
        base = daemon.base / name
        base.mkdir(exist_ok=True)
        super().__init__(base, 0, env, user=user)
        self.state_dir = daemon.state_dir
        self.runtime_dir = daemon.runtime_dir
        self.listen_on = listen
        #: Where it listens (``127.0.0.1:PORT`` or ``unix:PATH``), known after :meth:`start`.
        self.address = ""

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "lucidd", "http",
            "--state-dir", str(self.state_dir),
            "--runtime-dir", str(self.runtime_dir),
            "--listen", self.listen_on,
        ]  # fmt: skip
        return self.user.command(cmd) if self.user is not None else cmd

    def start(self) -> Self:
        super().start()
        ready = next(m for m in self.notifications if "READY=1" in m)
        self.address = ready.rsplit(" on ", 1)[1].strip()
        return self

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (TCP only)."""
        return f"http://{self.address}"
