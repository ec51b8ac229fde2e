"""``lucidd serve`` start-up: bad configuration stops it with a clear message (exit 78)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import psutil

from lucidd.client import ControlClient, DataClient
from lucidd.errors import EX_CONFIG
from lucidd.testing import serve_command
from tests.conftest import Daemon


def serve(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = serve_command(tmp / "state", tmp / "run", *args)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    return subprocess.run(
        cmd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_flag_out_of_range_names_field_range_and_source(short_tmp: Path) -> None:
    result = serve(short_tmp, "--workers", "0")
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip() == (
        "lucidd: config: workers = 0 is out of range: allowed 1..50 (set by the command line)"
    )
    assert not (short_tmp / "run").exists()  # nothing was started


def test_an_environment_value_is_validated_too(short_tmp: Path) -> None:
    result = serve(short_tmp, env={"LUCIDD_DURABILITY": "sometimes"})
    assert result.returncode == EX_CONFIG
    assert "durability" in result.stderr and "LUCIDD_DURABILITY" in result.stderr


def test_an_unknown_key_in_the_config_file_is_refused(short_tmp: Path) -> None:
    config = short_tmp / "lucidd.toml"
    config.write_text("workers = 4\nworkerz = 5\n")
    result = serve(short_tmp, "--config", str(config))
    assert result.returncode == EX_CONFIG
    assert "workerz" in result.stderr


def _aggregator_of(d: Daemon, workers: int) -> psutil.Process | None:
    """The aggregator, once it exists: the supervisor spawns the workers first, then the
    aggregator, all from the forkserver, so it is the newest of the forkserver's children."""
    for forkserver in psutil.Process(d.pid).children():
        with contextlib.suppress(psutil.Error):
            spawned = forkserver.children()
            if len(spawned) > workers:
                return max(spawned, key=lambda p: (p.create_time(), p.pid))
    return None


def test_sigterm_during_a_long_start_up_recovery_stops_at_once(short_tmp: Path) -> None:
    """A recovery can take minutes on a big state folder; a stop must not wait for it."""
    d = Daemon(short_tmp, workers=1).start()
    with DataClient(d.runtime_dir) as data:
        for n in range(50):
            data.put(n.to_bytes(16, "big"), 0, b"x")
    assert d.stop() == 0, d.log()
    d.launch()
    deadline = time.monotonic() + 30
    aggregator = _aggregator_of(d, workers=1)
    while aggregator is None and time.monotonic() < deadline:
        time.sleep(0.002)
        aggregator = _aggregator_of(d, workers=1)
    assert aggregator is not None, d.log()
    aggregator.suspend()  # a recovery that goes on and on
    # Before, the supervisor waited for the recovery to end: this stop timed out (the
    # harness's stop raises when the daemon does not exit in time).
    assert d.stop() == 0, d.log()
    assert "event=recovery_abandoned" in d.log()
    d.start()  # the next start recovers in full
    with ControlClient(d.runtime_dir) as control:
        assert len(control.sessions()) == 50
    assert d.stop() == 0, d.log()
