"""``lucidctl`` as a real subprocess against the real daemon (issue: lucidctl).

Every test runs ``python -m lucidd.cli`` exactly as a user or a script would, against the
daemon the ``daemon`` fixture starts, and checks what it prints and how it exits against the
output contract in :mod:`lucidd.cli` (one JSON object with ``--json``, one ``lucidctl: code:
message`` line on stderr on failure, ``sysexits`` statuses) and against values recomputed here
from the bytes (leaf hashes, roots, proofs).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lucidd.client import ControlClient, DataClient, format_session_id, parse_session_id
from lucidd.crypto import HEADER_SIZE, RecordType, parse_header
from lucidd.merkle import Checkpoint, leaf_hash, root_of, verify_consistency, verify_inclusion
from lucidd.note import Verifier, open_checkpoint
from tests.conftest import Daemon

KiB = 1024
MiB = 1024 * KiB
CHUNK_SIZE = 64 * KiB
#: About 3 MB and not a multiple of the chunk size, so the last chunk is short.
BIG_FILE_SIZE = 3 * MiB + 12_345
#: A subprocess that takes longer than this is hung, not slow.
CLI_TIMEOUT_S = 60.0
EMPTY_TREE_ROOT = hashlib.sha256(b"").hexdigest()

HASH_HEX = re.compile(r"[0-9a-f]{64}")
SESSION_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69


# --- running lucidctl -----------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What one ``lucidctl`` process did: exit status, raw stdout, decoded stderr."""

    code: int
    stdout: bytes
    stderr: str

    def json(self) -> dict[str, Any]:
        """The one JSON object on stdout (and nothing else there)."""
        assert self.stdout.endswith(b"\n") and self.stdout.count(b"\n") == 1, self.stdout
        obj = json.loads(self.stdout)
        assert isinstance(obj, dict), obj
        return obj

    def ok(self) -> dict[str, Any]:
        """The JSON result of a successful command: exit 0, nothing on stderr."""
        assert self.code == 0, (self.code, self.stderr)
        assert self.stderr == "", self.stderr
        return self.json()

    def assert_failed(self, code: str, exit_code: int) -> None:
        """Exit ``exit_code`` and exactly one ``lucidctl: <code>: ...`` line on stderr."""
        assert self.code == exit_code, (self.code, self.stdout, self.stderr)
        assert self.stderr.startswith(f"lucidctl: {code}: "), self.stderr
        assert self.stderr.count("\n") == 1 and self.stderr.endswith("\n"), self.stderr
        assert "Traceback" not in self.stderr


def lucidctl(*args: str | Path, stdin: bytes = b"") -> Result:
    """Run ``lucidctl ARGS`` in a fresh interpreter, as a script would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "lucidd.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


def ctl(daemon: Daemon, *args: str | Path, stdin: bytes = b"") -> Result:
    """``lucidctl --runtime-dir <the daemon's> ARGS``."""
    return lucidctl("--runtime-dir", daemon.runtime_dir, *args, stdin=stdin)


def put_file(daemon: Daemon, path: Path, *options: str) -> dict[str, Any]:
    """``lucidctl put PATH --chunk-size 64KiB --json OPTIONS`` (global option after the command)."""
    return ctl(daemon, "put", path, "--chunk-size", "64KiB", "--json", *options).ok()


def random_file(folder: Path, name: str, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = folder / name
    path.write_bytes(data)
    return path, data


def fetch_record(daemon: Daemon, session: str, index: int, folder: Path) -> bytes:
    """``lucidctl record SESSION INDEX -o FILE``; the file's bytes, checked against the output."""
    target = folder / f"{session}.{index}.rec"
    result = ctl(daemon, "--json", "record", session, str(index), "-o", target).ok()
    record = target.read_bytes()
    assert result == {
        "session": session,
        "index": index,
        "bytes": len(record),
        "leaf_hash": leaf_hash(record).hex(),
    }
    return record


def vkey(daemon: Daemon) -> str:
    """The daemon's verifier key, as a user pins it (lucidctl --json signing-key)."""
    key: str = ctl(daemon, "--json", "signing-key").ok()["vkey"]
    return key


def open_signed(daemon: Daemon, note: str) -> tuple[Checkpoint, str]:
    """The checkpoint of a signed note, checked against the daemon's key; and the key name."""
    verifier = Verifier.from_vkey(vkey(daemon))
    checkpoint, _ = open_checkpoint(note.encode(), [verifier])
    return checkpoint, verifier.name


def metrics(daemon: Daemon) -> dict[str, float]:
    """``lucidctl --json metrics``: checked to be one object of numbers."""
    answer = ctl(daemon, "--json", "metrics").ok()
    assert list(answer) == ["metrics"]
    values = answer["metrics"]
    assert isinstance(values, dict) and values
    for name, value in values.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), (name, value)
        assert math.isfinite(value) and value >= 0, (name, value)
    return values


# --- daemon status --------------------------------------------------------------------------


def test_health_reports_ok_with_one_aggregator_and_each_worker(daemon: Daemon) -> None:
    health = ctl(daemon, "--json", "health").ok()
    assert health["status"] == "ok"
    assert health["sessions"] == 0
    roles = [p["role"] for p in health["processes"]]
    assert roles.count("supervisor") == 1
    assert roles.count("aggregator") == 1
    assert sorted(r for r in roles if r.startswith("worker")) == [
        f"worker{k}" for k in range(daemon.workers)
    ]
    assert len(roles) == 2 + daemon.workers
    assert all(p["alive"] and p["rss_bytes"] > 0 for p in health["processes"])
    by_role = {p["role"]: p["pid"] for p in health["processes"]}
    assert by_role["supervisor"] == daemon.pid
    children = {child.pid for child in daemon.children()}
    assert {pid for role, pid in by_role.items() if role != "supervisor"} <= children


def test_config_shows_the_daemons_own_settings(daemon: Daemon) -> None:
    config = ctl(daemon, "config", "--json").ok()["config"]
    assert config["workers"] == daemon.workers == 2
    assert Path(config["runtime_dir"]) == daemon.runtime_dir
    assert Path(config["state_dir"]) == daemon.state_dir
    assert config["durability"] == "fsync"
    assert config["max_chunk_size"] == 10 * MiB


def test_metrics_is_one_object_of_numbers_that_count_a_put(daemon: Daemon, short_tmp: Path) -> None:
    before = metrics(daemon)
    assert before["sessions"] == 0
    path, data = random_file(short_tmp, "m.bin", 3 * CHUNK_SIZE + 1)
    assert put_file(daemon, path)["chunks"] == 4
    after = metrics(daemon)
    assert set(before) <= set(after)
    assert after["sessions"] == 1
    # the aggregator's counters are current when the put returns (the supervisor's lag by up
    # to its status interval, so they are not compared here); some appear only once counted
    assert after["chunks_sealed_total"] - before.get("chunks_sealed_total", 0) == 4
    assert after["plaintext_bytes_total"] - before.get("plaintext_bytes_total", 0) == len(data)
    # the human form: one "name value" line per metric, sorted by name
    human = ctl(daemon, "metrics")
    assert (human.code, human.stderr) == (0, "")
    names = [line.split(" ")[0] for line in human.stdout.decode().splitlines()]
    assert names == sorted(names) and set(names) >= set(after)


# --- sessions -------------------------------------------------------------------------------


def test_open_with_zstd_is_listed_and_described(daemon: Daemon) -> None:
    opened = ctl(daemon, "--json", "open", "--compression", "zstd").ok()
    assert list(opened) == ["session"]
    session = opened["session"]
    assert SESSION_UUID.fullmatch(session), session
    expected = {
        "session": session,
        "state": "open",
        "size": 0,
        "chunks": 0,
        "plaintext_bytes": 0,
        "compression": "zstd",
        "owner_uid": os.geteuid(),
        "owner": pwd.getpwuid(os.geteuid()).pw_name,
        "label": "",
        "chunk_size": 0,
        "stored_bytes": 0,
        "compression_ratio": None,
        "damaged": False,
        "missing": [],
        "quarantined": 0,
        "problem": "",
    }
    listed = ctl(daemon, "--json", "sessions").ok()
    created = listed["sessions"][0]["created"]
    assert abs(datetime.datetime.fromisoformat(created).timestamp() - time.time()) < 3600
    expected["created"] = created
    assert listed == {"sessions": [expected]}
    assert ctl(daemon, "--json", "info", session).ok() == expected
    # an upper-case id names the same session
    assert ctl(daemon, "--json", "info", session.upper()).ok() == expected
    human = ctl(daemon, "info", session)
    assert human.code == 0
    assert "compression: zstd" in human.stdout.decode().splitlines()


# --- put and get ----------------------------------------------------------------------------


def test_put_file_in_64kib_chunks_round_trips_through_get(daemon: Daemon, short_tmp: Path) -> None:
    path, data = random_file(short_tmp, "big.bin", BIG_FILE_SIZE)
    put = put_file(daemon, path)
    assert set(put) == {"session", "chunks", "bytes", "size", "root", "transport"}
    assert put["transport"] == "memfd"
    session = put["session"]
    assert SESSION_UUID.fullmatch(session), session
    assert put["chunks"] == math.ceil(BIG_FILE_SIZE / CHUNK_SIZE) == 49
    assert put["bytes"] == BIG_FILE_SIZE
    assert put["size"] == put["chunks"]
    assert HASH_HEX.fullmatch(put["root"]), put["root"]
    assert ctl(daemon, "--json", "root", session).ok() == {
        "session": session,
        "size": 49,
        "root": put["root"],
    }
    info = ctl(daemon, "--json", "info", session).ok()
    assert (info["state"], info["chunks"], info["plaintext_bytes"]) == ("open", 49, BIG_FILE_SIZE)

    copy = short_tmp / "copy.bin"
    got = ctl(daemon, "--json", "get", session, "-o", copy).ok()
    assert got == {"session": session, "chunks": 49, "bytes": BIG_FILE_SIZE}
    assert copy.read_bytes() == data
    to_stdout = ctl(daemon, "get", session)
    assert (to_stdout.code, to_stdout.stderr) == (0, "")
    assert to_stdout.stdout == data


def test_put_from_stdin_then_append_with_session_continues_the_indices(
    daemon: Daemon, short_tmp: Path
) -> None:
    first, second = os.urandom(2_500), os.urandom(1_500)
    put = ctl(daemon, "--json", "put", "-", "--chunk-size", "1000", stdin=first).ok()
    session = put["session"]
    assert (put["chunks"], put["bytes"], put["size"]) == (3, 2_500, 3)
    more = ctl(
        daemon, "--json", "put", "--session", session, "-", "--chunk-size", "1000", stdin=second
    ).ok()
    # two more chunks, numbered 3 and 4: the size is the whole session's
    assert (more["session"], more["chunks"], more["bytes"], more["size"]) == (session, 2, 1_500, 5)
    assert more["root"] != put["root"]
    assert ctl(daemon, "--json", "root", session, "--size", "3").ok()["root"] == put["root"]
    copy = short_tmp / "copy.bin"
    ctl(daemon, "--json", "get", session, "-o", copy).ok()
    assert copy.read_bytes() == first + second
    assert parse_header(fetch_record(daemon, session, 4, short_tmp)).plaintext_length == 500


def test_put_finalize_prints_the_checkpoint_and_later_puts_are_refused(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, data = random_file(short_tmp, "f.bin", 5 * CHUNK_SIZE)
    put = put_file(daemon, path, "--finalize")
    session = put["session"]
    assert (put["chunks"], put["size"]) == (5, 5)
    checkpoint, host = open_signed(daemon, put["checkpoint"])
    assert checkpoint == Checkpoint(f"{host}/{session}", 5, bytes.fromhex(put["root"]))
    assert ctl(daemon, "--json", "info", session).ok()["state"] == "finalized"

    refused = ctl(daemon, "put", "--session", session, "-", stdin=b"more data")
    refused.assert_failed("session_finalized", EX_DATAERR)
    assert refused.stdout == b""
    refused_json = ctl(daemon, "--json", "put", "--session", session, path)
    refused_json.assert_failed("session_finalized", EX_DATAERR)
    assert refused_json.json()["error"]["code"] == "session_finalized"
    assert refused_json.json()["error"]["exit_code"] == EX_DATAERR
    # nothing was added, and the data is still all there
    info = ctl(daemon, "--json", "info", session).ok()
    assert (info["size"], info["chunks"], info["plaintext_bytes"]) == (5, 5, len(data))
    assert ctl(daemon, "get", session).stdout == data


def test_put_of_an_empty_file_makes_an_empty_session_and_get_gives_an_empty_file(
    daemon: Daemon, short_tmp: Path
) -> None:
    empty = short_tmp / "empty.bin"
    empty.write_bytes(b"")
    put = put_file(daemon, empty, "--finalize")
    session = put["session"]
    # zero chunks (not one empty chunk): the empty tree, whose root is SHA-256("")
    assert (put["chunks"], put["bytes"], put["size"], put["root"]) == (0, 0, 0, EMPTY_TREE_ROOT)
    checkpoint, host = open_signed(daemon, put["checkpoint"])
    assert checkpoint == Checkpoint(f"{host}/{session}", 0, bytes.fromhex(EMPTY_TREE_ROOT))
    info = ctl(daemon, "--json", "info", session).ok()
    assert (info["state"], info["size"], info["chunks"]) == ("finalized", 0, 0)
    copy = short_tmp / "copy.bin"
    assert ctl(daemon, "--json", "get", session, "-o", copy).ok() == {
        "session": session,
        "chunks": 0,
        "bytes": 0,
    }
    assert copy.exists() and copy.read_bytes() == b""
    ctl(daemon, "--json", "record", session, "0", "-o", short_tmp / "r").assert_failed(
        "not_found", EX_NOINPUT
    )


# --- roots and proofs -----------------------------------------------------------------------


def test_root_of_a_prefix_is_the_root_of_the_fetched_records_leaf_hashes(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, _ = random_file(short_tmp, "r.bin", 9 * CHUNK_SIZE + 7)
    put = put_file(daemon, path)
    session = put["session"]
    records = [fetch_record(daemon, session, i, short_tmp) for i in range(5)]
    for index, record in enumerate(records):
        header = parse_header(record)
        assert header.record_type == RecordType.DATA
        assert (header.session_id, header.index) == (parse_session_id(session), index)
        assert header.record_length == len(record)
    for size in (5, 1):
        root = ctl(daemon, "--json", "root", session, "--size", str(size)).ok()
        assert root["size"] == size
        assert root["root"] == root_of([leaf_hash(r) for r in records[:size]]).hex()
    assert put["root"] != root_of([leaf_hash(r) for r in records]).hex()  # 10 leaves, not 5
    ctl(daemon, "--json", "root", session, "--size", "11").assert_failed("bad_request", EX_USAGE)


def test_inclusion_and_consistency_proofs_verify_with_the_merkle_module(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, _ = random_file(short_tmp, "p.bin", 10 * CHUNK_SIZE)
    session = put_file(daemon, path)["session"]
    proof = ctl(daemon, "proof", session, "3", "--json").ok()
    assert (proof["session"], proof["index"], proof["size"]) == (session, 3, 10)
    leaf = bytes.fromhex(proof["leaf_hash"])
    assert leaf == leaf_hash(fetch_record(daemon, session, 3, short_tmp))
    path_nodes = [bytes.fromhex(node) for node in proof["path"]]
    root = bytes.fromhex(proof["root"])
    assert proof["root"] == ctl(daemon, "--json", "root", session).ok()["root"]
    assert verify_inclusion(leaf, 3, 10, path_nodes, root)
    assert not verify_inclusion(leaf, 4, 10, path_nodes, root)

    at_size = ctl(daemon, "--json", "proof", session, "3", "--size", "7").ok()
    root7 = ctl(daemon, "--json", "root", session, "--size", "7").ok()["root"]
    assert at_size["root"] == root7
    assert verify_inclusion(
        leaf, 3, 7, [bytes.fromhex(n) for n in at_size["path"]], bytes.fromhex(root7)
    )

    consistency = ctl(daemon, "--json", "consistency", session, "3", "7").ok()
    assert (consistency["size1"], consistency["size2"]) == (3, 7)
    assert (
        consistency["root1"] == ctl(daemon, "--json", "root", session, "--size", "3").ok()["root"]
    )
    assert consistency["root2"] == root7
    nodes = [bytes.fromhex(node) for node in consistency["path"]]
    root1, root2 = bytes.fromhex(consistency["root1"]), bytes.fromhex(consistency["root2"])
    assert verify_consistency(3, 7, nodes, root1, root2)
    assert not verify_consistency(3, 7, nodes, root2, root1)


# --- offline verification (the README's flow) -----------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What an auditor keeps: final.json, proof files, record files (README quick start)."""

    session: str
    root: str
    checkpoint: Path
    proofs: dict[int, Path]
    records: dict[int, Path]
    vkey: str


def keep_evidence(daemon: Daemon, folder: Path, indices: tuple[int, ...]) -> Evidence:
    """Run the README's commands, then stop the daemon and delete its state (and keys)."""
    path, _ = random_file(folder, "recording.bin", 6 * CHUNK_SIZE + 100)
    put = ctl(daemon, "--json", "put", path, "--chunk-size", "64KiB", "--finalize").ok()
    session = put["session"]
    proofs: dict[int, Path] = {}
    records: dict[int, Path] = {}
    for index in indices:
        proof = ctl(daemon, "--json", "proof", session, str(index))
        proof.ok()
        proofs[index] = folder / f"proof{index}.json"
        proofs[index].write_bytes(proof.stdout)
        records[index] = folder / f"chunk{index}.rec"
        stored = ctl(daemon, "record", session, str(index), "-o", records[index])
        assert (stored.code, stored.stderr) == (0, ""), stored.stderr
    key = vkey(daemon)  # pinned while the daemon runs, as a user would
    final = ctl(daemon, "--json", "finalize", session)  # again: the README finalizes twice
    assert final.ok()["checkpoint"] == put["checkpoint"]
    checkpoint = folder / "final.json"
    checkpoint.write_bytes(final.stdout)
    assert daemon.stop() == 0
    shutil.rmtree(daemon.state_dir)  # no keyring, no segments: verify must need neither
    assert not (daemon.runtime_dir / "control.sock").exists()
    return Evidence(session, put["root"], checkpoint, proofs, records, key)


def verify(evidence: Evidence, proof: Path, record: Path, *options: str) -> Result:
    return lucidctl(
        "verify",
        "--record",
        record,
        "--proof",
        proof,
        "--checkpoint",
        evidence.checkpoint,
        "--vkey",
        evidence.vkey,
        *options,
    )


def assert_invalid(result: Result, reason_part: str) -> None:
    assert result.code == EX_DATAERR, (result.code, result.stdout, result.stderr)
    answer = result.json()
    assert answer["valid"] is False
    assert reason_part in answer["reason"], answer["reason"]
    assert "Traceback" not in result.stderr


def test_offline_verify_of_a_record_needs_neither_daemon_nor_keys(
    daemon: Daemon, short_tmp: Path
) -> None:
    evidence = keep_evidence(daemon, short_tmp, (2,))
    result = verify(evidence, evidence.proofs[2], evidence.records[2], "--json").ok()
    assert result["valid"] is True
    assert (result["session"], result["index"], result["size"]) == (evidence.session, 2, 7)
    assert result["root"] == evidence.root
    assert result["leaf_hash"] == leaf_hash(evidence.records[2].read_bytes()).hex()
    # the bare C2SP checkpoint text verifies as well as the JSON that holds it
    text = short_tmp / "checkpoint.txt"
    text.write_text(json.loads(evidence.checkpoint.read_bytes())["checkpoint"])
    human = lucidctl(
        "verify",
        "--record",
        evidence.records[2],
        "--proof",
        evidence.proofs[2],
        "--checkpoint",
        text,
        "--vkey",
        evidence.vkey,
    )
    assert (human.code, human.stderr) == (0, "")
    assert human.stdout.decode().startswith("valid: ")


LEAF_DIFFERS = "the record's leaf hash differs from the proof's leaf_hash"


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (HEADER_SIZE + 1_000, LEAF_DIFFERS),
        (-1, LEAF_DIFFERS),
        (HEADER_SIZE - 1, LEAF_DIFFERS),
        (0, "record: "),
    ],
    ids=["ciphertext", "tag", "key-commitment", "magic"],
)
def test_offline_verify_refuses_a_record_with_one_flipped_byte(
    daemon: Daemon, short_tmp: Path, offset: int, reason: str
) -> None:
    evidence = keep_evidence(daemon, short_tmp, (2,))
    record = bytearray(evidence.records[2].read_bytes())
    record[offset] ^= 0x01
    tampered = short_tmp / "tampered.rec"
    tampered.write_bytes(record)
    assert_invalid(verify(evidence, evidence.proofs[2], tampered, "--json"), reason)


def test_offline_verify_refuses_a_proof_rewritten_for_a_tampered_record(
    daemon: Daemon, short_tmp: Path
) -> None:
    evidence = keep_evidence(daemon, short_tmp, (2,))
    record = bytearray(evidence.records[2].read_bytes())
    record[HEADER_SIZE + 10] ^= 0x80
    tampered = short_tmp / "tampered.rec"
    tampered.write_bytes(record)
    proof = json.loads(evidence.proofs[2].read_bytes())
    proof["leaf_hash"] = leaf_hash(bytes(record)).hex()  # the forger fixes the leaf hash too
    forged = short_tmp / "forged.json"
    forged.write_text(json.dumps(proof))
    assert_invalid(verify(evidence, forged, tampered, "--json"), "does not lead to")


def test_offline_verify_refuses_a_proof_for_another_index(daemon: Daemon, short_tmp: Path) -> None:
    evidence = keep_evidence(daemon, short_tmp, (2, 3))
    assert verify(evidence, evidence.proofs[3], evidence.records[3]).code == 0
    # the record of chunk 3 against the proof of chunk 2
    assert_invalid(verify(evidence, evidence.proofs[2], evidence.records[3], "--json"), "chunk 3")
    # the proof of chunk 2 relabelled as chunk 3, with chunk 3's record and leaf hash
    proof = json.loads(evidence.proofs[2].read_bytes())
    proof["index"] = 3
    proof["leaf_hash"] = leaf_hash(evidence.records[3].read_bytes()).hex()
    relabelled = short_tmp / "relabelled.json"
    relabelled.write_text(json.dumps(proof))
    assert_invalid(verify(evidence, relabelled, evidence.records[3], "--json"), "does not lead to")
    # without --json: "INVALID: ..." in one line, same status
    human = verify(evidence, evidence.proofs[2], evidence.records[3])
    assert human.code == EX_DATAERR
    assert human.stdout.decode().startswith("INVALID: ") and human.stdout.count(b"\n") == 1


# --- shred and errors -----------------------------------------------------------------------


def test_shred_makes_the_session_unknown(daemon: Daemon, short_tmp: Path) -> None:
    path, _ = random_file(short_tmp, "s.bin", 2 * CHUNK_SIZE)
    session = put_file(daemon, path)["session"]
    kept = put_file(daemon, path)["session"]
    assert ctl(daemon, "--json", "shred", session, "--yes").ok() == {
        "session": session,
        "shredded": True,
    }

    root = ctl(daemon, "root", session)
    root.assert_failed("unknown_session", EX_NOINPUT)
    assert session in root.stderr
    assert root.stdout == b""
    copy = short_tmp / "copy.bin"
    ctl(daemon, "get", session, "-o", copy).assert_failed("unknown_session", EX_NOINPUT)
    assert not copy.exists()
    listed = ctl(daemon, "--json", "sessions").ok()["sessions"]
    assert [s["session"] for s in listed] == [kept]
    ctl(daemon, "--json", "shred", session, "--yes").assert_failed("unknown_session", EX_NOINPUT)


@pytest.mark.parametrize(
    "bad_id",
    ["not-a-uuid", "0123456789abcdef0123456789abcdef0", "{00112233-4455-6677-8899-aabbccddeeff}"],
)
def test_a_malformed_session_id_is_a_usage_error_that_touches_nothing(
    daemon: Daemon, bad_id: str
) -> None:
    for argv in (["root", bad_id], ["put", "--session", bad_id, "-"]):
        result = ctl(daemon, *argv, stdin=b"data")
        assert result.code == EX_USAGE, (argv, result.stderr)
        assert result.stderr.splitlines()[-1].startswith("lucidctl: usage: ")
        assert "Traceback" not in result.stderr
        assert result.stdout == b""
    assert ctl(daemon, "--json", "sessions").ok() == {"sessions": []}  # no session opened


def test_without_a_daemon_every_daemon_command_is_unavailable(short_tmp: Path) -> None:
    nowhere = short_tmp / "run"
    nowhere.mkdir()
    health = lucidctl("--runtime-dir", nowhere, "health")
    health.assert_failed("unavailable", EX_UNAVAILABLE)
    assert str(nowhere / "control.sock") in health.stderr
    assert health.stdout == b""
    put = lucidctl("--runtime-dir", nowhere, "--json", "put", "-", stdin=b"data")
    put.assert_failed("unavailable", EX_UNAVAILABLE)
    assert put.json()["error"]["exit_code"] == EX_UNAVAILABLE


def test_a_daemon_stopped_under_lucidctl_is_unavailable(daemon: Daemon) -> None:
    assert ctl(daemon, "health").code == 0
    assert daemon.stop() == 0
    ctl(daemon, "sessions").assert_failed("unavailable", EX_UNAVAILABLE)


# --- known bugs (see the report that comes with this file) ----------------------------------


def test_a_usage_error_with_json_still_prints_one_error_object(daemon: Daemon) -> None:
    result = ctl(daemon, "--json", "root", "not-a-uuid")
    assert result.code == EX_USAGE
    error = result.json()["error"]
    assert (error["code"], error["exit_code"]) == ("usage", EX_USAGE)


def test_put_session_refuses_to_append_to_a_session_with_gaps(daemon: Daemon) -> None:
    with ControlClient(daemon.runtime_dir) as control, DataClient(daemon.runtime_dir) as data:
        session_id = control.open_session("off")
        data.put_many(session_id, [(0, b"a"), (1, b"b"), (5, b"f")])
    session = format_session_id(session_id)
    before = ctl(daemon, "--json", "info", session).ok()
    assert (before["size"], before["chunks"]) == (2, 3)
    result = ctl(daemon, "put", "--session", session, "-", "--chunk-size", "1", stdin=b"cdefgh")
    assert result.code != 0
    assert result.stderr.count("\n") == 1
    # refused before sending: nothing of the input was stored at indices 3, 4, 6, 7
    assert ctl(daemon, "--json", "info", session).ok() == before
