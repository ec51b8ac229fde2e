"""A real Prometheus server for tests: it scrapes one target, and tests query what it stored.

``prometheus`` comes from Debian's ``prometheus`` package (``apt-get install prometheus``:
``/usr/bin/prometheus`` and ``/usr/bin/promtool``; ``.ci/run`` installs it). The
:func:`make_prometheus` fixture skips the test when the binary is missing; tests that lint an
exposition with :func:`promtool_check` are marked :data:`needs_promtool` (skipped without it).

Use::

    def test_x(make_prometheus):
        server = make_prometheus("127.0.0.1:8123")        # scrapes http://127.0.0.1:8123/metrics
        result = server.wait_for("lucidd_chunks_acked_total")  # the first non-empty answer
        value = float(result[0]["value"][1])

Each server listens on ``127.0.0.1`` on a free port, with its configuration (one scrape job,
``scrape_interval`` 1 s) and its TSDB in a folder of the test's ``tmp_path``; it is ready when
``/-/ready`` answers 200, and is stopped (SIGTERM, then SIGKILL) when the test ends.
:meth:`Prometheus.query` is an instant query of the HTTP API (``/api/v1/query``): the
``result`` list, each item ``{"metric": {labels}, "value": [unix time, "value as text"]}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

HOST: Final = "127.0.0.1"
SCRAPE_INTERVAL: Final = "1s"
JOB: Final = "lucidd"
READY_TIMEOUT_S: Final = 60.0
QUERY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
HTTP_TIMEOUT_S: Final = 5.0
START_ATTEMPTS: Final = 3  # a free port can be taken between choosing it and binding it
_POLL_S: Final = 0.2
_LOG_TAIL_BYTES: Final = 4000
#: Requests to 127.0.0.1 go straight there, whatever http_proxy says.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def prometheus_path() -> Path | None:
    found = shutil.which("prometheus")
    return Path(found) if found is not None else None


PROMTOOL: Final = shutil.which("promtool")
#: For tests that run ``promtool`` (its lint of an exposition: :func:`promtool_check`).
needs_promtool: Final = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)


def promtool_check(body: bytes) -> subprocess.CompletedProcess[bytes]:
    """``promtool check metrics`` of a text-format exposition: exit 0 and no output when it
    finds nothing wrong (3 and one line per problem when its lint finds some)."""
    assert PROMTOOL is not None, "use @needs_promtool"
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def scrape_config(target: str, metrics_path: str = "/metrics") -> dict[str, Any]:
    """One job scraping ``target`` (``host:port``) every second (JSON is YAML too)."""
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": [target]}],
            }
        ],
    }


class Prometheus:
    """One ``prometheus`` process scraping ``target``; its files are under ``folder``."""

    def __init__(self, binary: Path, folder: Path, target: str) -> None:
        self.binary = binary
        self.folder = folder
        self.target = target
        self.config_path = folder / "prometheus.yml"
        self.data_dir = folder / "tsdb"
        self.log_path = folder / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Prometheus:
        """Start it on a free port and wait until it is ready (RuntimeError if it never is)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(scrape_config(self.target), indent=1))
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            self._launch()
            if self._wait_until_ready(last_attempt=attempt == START_ATTEMPTS):
                return self
        raise AssertionError("unreachable")  # the last attempt raises

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--web.listen-address={HOST}:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )

    def _wait_until_ready(self, *, last_attempt: bool) -> bool:
        """True once ``/-/ready`` answers; False if it exited and another try may follow."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            code = self.proc.poll()
            if code is not None:
                if not last_attempt and b"address already in use" in self._log_bytes():
                    return False
                raise RuntimeError(f"prometheus exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"prometheus was not ready on {self.url} within {READY_TIMEOUT_S:g} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL_S)
        return True

    def _ready(self) -> bool:
        try:
            with _OPENER.open(f"{self.url}/-/ready", timeout=HTTP_TIMEOUT_S) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with _OPENER.open(f"{self.url}{path}{query}", timeout=HTTP_TIMEOUT_S) as answer:
            body = json.load(answer)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus answered {path}{query}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (PromQL ``expr``): the result list (empty: no series matched)."""
        data = self._get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (``health``, ``lastError``, ``lastScrape``, ...)."""
        targets: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return targets

    def wait_for(
        self,
        expr: str,
        until: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = QUERY_TIMEOUT_S,
    ) -> list[dict[str, Any]]:
        """Query ``expr`` until ``until(result)`` holds (default: a series matched); the
        AssertionError after ``timeout`` says what the targets' last scrapes reported."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if until(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expr!r} gave {result} after {timeout:g} s; targets: "
                    f"{[(t.get('health'), t.get('lastError')) for t in self.targets()]}"
                )
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`; idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _log_bytes(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except OSError:
            return b""

    def log_tail(self) -> str:
        return self._log_bytes()[-_LOG_TAIL_BYTES:].decode(errors="replace")


@pytest.fixture
def make_prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """Start a Prometheus that scrapes ``host:port`` (``/metrics``); each is stopped after."""
    binary = prometheus_path()
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(binary, tmp_path / f"prometheus{len(started)}", target)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
