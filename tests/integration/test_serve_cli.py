"""``lucidd serve`` start-up: bad configuration stops it with a clear message (exit 78)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lucidd.errors import EX_CONFIG
from lucidd.testing import serve_command


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
