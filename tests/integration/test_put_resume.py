"""Sessions a user can rely on (issue 11): resume, no accidental sessions, what lucidctl says.

Everything goes through ``lucidctl`` as a script would run it, against the real daemon, and
is checked by reading the session back (``get``) and the records on disk.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lucidd.client import ControlClient, parse_session_id
from lucidd.testing import serve_command
from tests.conftest import Daemon
from tests.helpers import all_records_on_disk, root_from_disk
from tests.integration.test_lucidctl import (
    CLI_TIMEOUT_S,
    EX_DATAERR,
    EX_NOINPUT,
    EX_USAGE,
    KiB,
    ctl,
    lucidctl,
    put_file,
    random_file,
)

CHUNK = 64 * KiB
EX_TEMPFAIL = 75


def get_bytes(daemon: Daemon, session: str) -> bytes:
    result = ctl(daemon, "get", session)
    assert result.code == 0, result.stderr
    return result.stdout


def assert_session_is_exactly(daemon: Daemon, session: str, data: bytes) -> None:
    """The session holds ``data`` once: get matches, one record per index, root from disk."""
    assert get_bytes(daemon, session) == data
    chunks = -(-len(data) // CHUNK)
    records = all_records_on_disk(daemon.state_dir, parse_session_id(session))
    assert sorted(records) == list(range(chunks))
    assert all(len(copies) == 1 for copies in records.values()), "a chunk was stored twice"
    root = ctl(daemon, "--json", "root", session).ok()
    assert root["size"] == chunks
    assert root["root"] == root_from_disk(daemon.state_dir, parse_session_id(session), chunks).hex()


def test_put_killed_with_the_daemon_prints_a_resume_command_that_finishes_the_job(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, data = random_file(short_tmp, "big.bin", 400 * CHUNK + 999)
    cmd = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(daemon.runtime_dir)]
    put = subprocess.Popen(
        [*cmd, "--json", "put", str(path), "--chunk-size", "64KiB", "--window", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with ControlClient(daemon.runtime_dir) as control:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while not any(s.chunks >= 20 for s in control.sessions()):
            assert time.monotonic() < deadline and put.poll() is None, "put never got going"
            time.sleep(0.02)
    daemon.kill_all()
    stdout, stderr = put.communicate(timeout=CLI_TIMEOUT_S)
    assert put.returncode != 0
    text = stderr.decode()
    assert "Traceback" not in text
    assert "put interrupted: session " in text, text
    error = json.loads(stdout)["error"]
    assert error["code"] == "unavailable"
    assert error["acked"] >= 20
    resume = error["resume"]
    assert resume in text
    assert "--resume" in resume and f"--session {error['session']}" in resume

    daemon.start()
    words = shlex.split(resume)
    assert words[0] == "lucidctl"
    finished = lucidctl(*words[1:])
    assert finished.code == 0, finished.stderr
    assert_session_is_exactly(daemon, error["session"], data)


def test_resume_of_a_complete_session_changes_nothing(daemon: Daemon, short_tmp: Path) -> None:
    path, data = random_file(short_tmp, "f.bin", 10 * CHUNK + 5)
    session = put_file(daemon, path)["session"]
    again = put_file(daemon, path, "--session", session, "--resume")
    assert again["chunks"] == 11
    assert_session_is_exactly(daemon, session, data)


def test_resume_with_another_chunk_size_or_other_bytes_is_refused(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, data = random_file(short_tmp, "f.bin", 6 * CHUNK)
    session = put_file(daemon, path)["session"]
    info = ctl(daemon, "--json", "info", session).ok()
    assert info["chunk_size"] == CHUNK
    other = ctl(daemon, "put", path, "--session", session, "--resume", "--chunk-size", "32KiB")
    other.assert_failed("bad_request", EX_USAGE)
    assert "65536" in other.stderr

    changed = bytearray(data)
    changed[3 * CHUNK + 7] ^= 1
    path.write_bytes(changed)
    refused = ctl(daemon, "put", path, "--session", session, "--resume")
    assert refused.code == EX_DATAERR, refused.stderr
    assert "duplicate_index" in refused.stderr and "chunk 3" in refused.stderr
    path.write_bytes(data)
    assert_session_is_exactly(daemon, session, data)


def test_resume_from_a_pipe_replays_stdin(daemon: Daemon, short_tmp: Path) -> None:
    _, data = random_file(short_tmp, "f.bin", 5 * CHUNK + 1)
    first = ctl(daemon, "--json", "put", "-", "--chunk-size", "64KiB", stdin=data[: 2 * CHUNK])
    session = first.ok()["session"]
    resumed = ctl(daemon, "--json", "put", "-", "--session", session, "--resume", stdin=data).ok()
    assert resumed["chunks"] == 6
    assert_session_is_exactly(daemon, session, data)


def test_an_unknown_session_is_not_created_without_create(daemon: Daemon, short_tmp: Path) -> None:
    path, data = random_file(short_tmp, "f.bin", CHUNK)
    typo = "00000000-0000-4000-8000-000000000001"
    ctl(daemon, "put", path, "--session", typo).assert_failed("unknown_session", EX_NOINPUT)
    assert ctl(daemon, "--json", "sessions").ok() == {"sessions": []}
    created = put_file(daemon, path, "--session", typo, "--create")
    assert created["session"] == typo
    assert get_bytes(daemon, typo) == data


def test_a_chunk_size_over_the_daemons_limit_opens_no_session(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, _ = random_file(short_tmp, "f.bin", 100)
    ctl(daemon, "put", path, "--chunk-size", "1TiB").assert_failed("too_large", EX_DATAERR)
    assert ctl(daemon, "--json", "sessions").ok() == {"sessions": []}


def test_sessions_describe_themselves(daemon: Daemon, short_tmp: Path) -> None:
    path, _ = random_file(short_tmp, "f.bin", 3 * CHUNK)
    path.write_bytes(bytes(3 * CHUNK))  # compressible
    first = put_file(daemon, path, "--label", "screen 1")["session"]
    second = put_file(daemon, path)["session"]
    listed = ctl(daemon, "--json", "sessions").ok()["sessions"]
    assert [s["session"] for s in listed] == [first, second]  # by creation time
    info = ctl(daemon, "--json", "info", first).ok()
    assert info["label"] == "screen 1"
    assert info["chunk_size"] == CHUNK
    assert info["plaintext_bytes"] == 3 * CHUNK
    assert 0 < info["stored_bytes"] < info["plaintext_bytes"]
    assert info["compression_ratio"] > 10
    human = ctl(daemon, "sessions")
    assert "screen 1" in human.stdout.decode()


def test_shred_needs_yes_without_a_terminal(daemon: Daemon, short_tmp: Path) -> None:
    path, data = random_file(short_tmp, "f.bin", CHUNK)
    session = put_file(daemon, path)["session"]
    ctl(daemon, "shred", session).assert_failed("bad_request", EX_USAGE)
    assert get_bytes(daemon, session) == data
    assert ctl(daemon, "--json", "shred", session, "--yes").ok()["shredded"] is True


def test_a_second_finalize_says_so(daemon: Daemon, short_tmp: Path) -> None:
    path, _ = random_file(short_tmp, "f.bin", CHUNK)
    session = put_file(daemon, path, "--finalize")["session"]
    again = ctl(daemon, "finalize", session)
    assert again.code == 0
    assert "already finalized" in again.stdout.decode()
    assert ctl(daemon, "--json", "finalize", session).ok()["already_finalized"] is True


def test_verify_without_data_says_no_data_was_checked(daemon: Daemon, short_tmp: Path) -> None:
    path, _ = random_file(short_tmp, "f.bin", CHUNK)
    session = put_file(daemon, path, "--finalize")["session"]
    proof = short_tmp / "proof.json"
    final = short_tmp / "final.json"
    proof.write_bytes(ctl(daemon, "--json", "proof", session, "0").stdout)
    final.write_bytes(ctl(daemon, "--json", "finalize", session).stdout)
    key = ctl(daemon, "--json", "signing-key").ok()["vkey"]
    result = lucidctl("verify", "--proof", proof, "--checkpoint", final, "--vkey", key)
    assert result.code == 0, result.stderr
    assert "no data was checked" in result.stdout.decode()


def test_version_flags() -> None:
    for argv in (["-m", "lucidd", "--version"], ["-m", "lucidd.cli", "--version"]):
        result = subprocess.run([sys.executable, *argv], capture_output=True, check=False)
        assert result.returncode == 0
        assert result.stdout.decode().split()[1][0].isdigit()


def test_a_second_daemon_on_the_same_state_folder_exits_75_naming_the_holder(
    daemon: Daemon, short_tmp: Path
) -> None:
    other_runtime = short_tmp / "run2"
    second = subprocess.run(
        serve_command(daemon.state_dir, other_runtime, "--workers", "1"),
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert second.returncode == EX_TEMPFAIL, second.stderr
    message = second.stderr.decode()
    assert str(daemon.state_dir) in message and f"pid {daemon.pid}" in message, message
    assert "Traceback" not in message
    assert not (other_runtime / "data.sock").exists()
    # The first daemon is untouched, and after a kill -9 the lock is free again.
    assert ctl(daemon, "--json", "health").ok()["status"] == "ok"
    daemon.kill_all()
    daemon.start()
    assert ctl(daemon, "--json", "health").ok()["status"] == "ok"


def test_a_second_writer_gets_session_busy_before_anything_is_stored(
    daemon: Daemon, short_tmp: Path
) -> None:
    _, data = random_file(short_tmp, "big.bin", 300 * CHUNK)
    other, _ = random_file(short_tmp, "other.bin", 4 * CHUNK)
    cmd = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(daemon.runtime_dir)]
    # The first writer reads a pipe that holds back the rest of its input until the second
    # writer was refused: it is still writing then, however fast the daemon is.
    first = subprocess.Popen(
        [*cmd, "--json", "put", "-", "--chunk-size", "64KiB", "--window", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert first.stdin is not None
    first.stdin.write(data[: 8 * CHUNK])
    first.stdin.flush()
    with ControlClient(daemon.runtime_dir) as control:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while not (listed := [s for s in control.sessions() if s.chunks >= 5]):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        session = str(uuid.UUID(bytes=listed[0].session))
        held = control.info(session).chunks
        second = ctl(daemon, "put", other, "--session", session)
        assert first.poll() is None, "the first put ended before the second tried"
        second.assert_failed("session_busy", EX_TEMPFAIL)
        # Nothing of the second writer's: every stored chunk so far is the first file's.
        for index in range(held):
            assert (
                control.read_chunk(session, index).data == data[index * CHUNK : (index + 1) * CHUNK]
            )
    _, err = first.communicate(data[8 * CHUNK :], timeout=CLI_TIMEOUT_S)
    assert first.returncode == 0, err.decode()
    assert_session_is_exactly(daemon, session, data)
    # The lease ended with the first connection: now the session takes another writer.
    appended = put_file(daemon, other, "--session", session)
    assert appended["chunks"] == 4
