"""``lucidctl verify`` (offline, no daemon, no keys) and lucidctl's error contract.

The inputs are built with the real pieces: records sealed by lucidd.crypto, a MerkleLog in
memory, and the proof and checkpoint files written exactly as ``lucidctl --json proof`` and
``lucidctl --json finalize`` print them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lucidd import crypto, merkle
from lucidd.cli import main
from lucidd.cli.formats import CheckpointFile, InclusionProofFile
from lucidd.client import format_session_id, new_session_id
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.note import Signer, sign_checkpoint

#: The host key of these tests; verify pins it with --vkey.
HOST = "test.example/lucidd"
SIGNER = Signer(HOST, Ed25519PrivateKey.generate())
OTHER_SIGNER = Signer(HOST, Ed25519PrivateKey.generate())

N_CHUNKS = 7
INDEX = 3

Run = Callable[..., tuple[int, str, str]]


@dataclass
class Fixture:
    folder: Path
    session: bytes
    records: list[bytes]
    log: MerkleLog
    proof: Path
    checkpoint: Path
    record: Path

    def write_proof(self, index: int, size: int, name: str = "proof.json") -> Path:
        path = self.folder / name
        path.write_text(json.dumps(proof_json(self.session, self.log, index, size)))
        return path

    def write_record(self, data: bytes, name: str = "record.bin") -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def write_checkpoint(self, text: bytes, name: str = "checkpoint.txt") -> Path:
        path = self.folder / name
        path.write_bytes(text)
        return path


def origin(session: bytes) -> str:
    return f"{HOST}/{format_session_id(session)}"


def signed(checkpoint: merkle.Checkpoint, signer: Signer = SIGNER) -> bytes:
    return sign_checkpoint(checkpoint, signer)


def proof_json(session: bytes, log: MerkleLog, index: int, size: int) -> dict[str, Any]:
    """What ``lucidctl --json proof SESSION INDEX --size SIZE`` prints."""
    return {
        "session": format_session_id(session),
        "index": index,
        "size": size,
        "leaf_hash": log.leaf(index).hex(),
        "path": [node.hex() for node in log.inclusion_proof(index, size)],
        "root": log.root(size).hex(),
    }


def build_session(n: int) -> tuple[bytes, list[bytes], MerkleLog]:
    secret = os.urandom(crypto.KEY_SIZE)
    session = new_session_id()
    records = [
        crypto.seal_chunk(secret, session, i, f"chunk {i} ".encode() * 20, "off") for i in range(n)
    ]
    log = MerkleLog()
    for record in records:
        log.append(merkle.leaf_hash(record))
    return session, records, log


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    session, records, log = build_session(N_CHUNKS)
    fixture = Fixture(tmp_path, session, records, log, Path(), Path(), Path())
    fixture.proof = fixture.write_proof(INDEX, N_CHUNKS)
    fixture.checkpoint = fixture.write_checkpoint(signed(log.checkpoint(origin(session))))
    fixture.record = fixture.write_record(records[INDEX])
    return fixture


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str | Path) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def verify_json(run: Run, fx: Fixture, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    code, out, err = run(
        "--json",
        "verify",
        "--proof",
        fx.proof,
        "--checkpoint",
        fx.checkpoint,
        "--vkey",
        SIGNER.verifier.vkey,
        *extra,
    )
    assert out.endswith("\n") and out.count("\n") == 1, "exactly one JSON object on stdout"
    obj = json.loads(out)
    assert isinstance(obj, dict)
    assert "Traceback" not in err
    return code, obj


# --- valid ---------------------------------------------------------------------------------


def test_record_proof_and_checkpoint_verify(run: Run, fx: Fixture) -> None:
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert code == 0
    assert obj["valid"] is True
    assert obj["session"] == format_session_id(fx.session)
    assert obj["index"] == INDEX and obj["size"] == N_CHUNKS
    assert obj["leaf_hash"] == merkle.leaf_hash(fx.records[INDEX]).hex()
    assert obj["root"] == fx.log.root().hex()
    assert obj["reason"]


def test_every_leaf_of_the_tree_verifies(run: Run, fx: Fixture) -> None:
    for index in range(N_CHUNKS):
        fx.proof = fx.write_proof(index, N_CHUNKS)
        record = fx.write_record(fx.records[index])
        code, obj = verify_json(run, fx, "--record", record)
        assert (code, obj["valid"]) == (0, True), obj


def test_leaf_hash_instead_of_record_verifies(run: Run, fx: Fixture) -> None:
    leaf = merkle.leaf_hash(fx.records[INDEX]).hex()
    code, obj = verify_json(run, fx, "--leaf-hash", leaf.upper())
    assert (code, obj["valid"]) == (0, True)


def test_proof_alone_verifies_against_the_checkpoint(run: Run, fx: Fixture) -> None:
    code, obj = verify_json(run, fx)
    assert (code, obj["valid"]) == (0, True)


def test_checkpoint_may_be_the_json_that_finalize_prints(run: Run, fx: Fixture) -> None:
    finalize_output = {
        "session": format_session_id(fx.session),
        "size": N_CHUNKS,
        "root": fx.log.root().hex(),
        "checkpoint": signed(fx.log.checkpoint(origin(fx.session))).decode(),
    }
    fx.checkpoint = fx.write_checkpoint(json.dumps(finalize_output).encode(), "final.json")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert (code, obj["valid"]) == (0, True)


def test_human_output_says_valid(run: Run, fx: Fixture) -> None:
    code, out, _ = run(
        "verify",
        "--proof",
        fx.proof,
        "--checkpoint",
        fx.checkpoint,
        "--vkey",
        SIGNER.verifier.vkey,
        "--record",
        fx.record,
    )
    assert code == 0
    assert out.startswith("valid: ")


def test_proof_file_struct_round_trips_the_printed_proof(fx: Fixture) -> None:
    printed = proof_json(fx.session, fx.log, INDEX, N_CHUNKS)
    decoded = msgspec.json.decode(json.dumps(printed), type=InclusionProofFile)
    assert msgspec.to_builtins(decoded) == printed
    assert list(msgspec.to_builtins(decoded)) == list(printed)  # same keys, same order


def test_checkpoint_file_struct_has_the_fields_finalize_prints() -> None:
    assert CheckpointFile.__struct_fields__ == (
        "session",
        "size",
        "root",
        "checkpoint",
        "already_finalized",
    )
    decoded = msgspec.json.decode(b'{"checkpoint": "text"}', type=CheckpointFile)
    assert decoded.checkpoint == "text"


# --- invalid -------------------------------------------------------------------------------


def assert_invalid(code: int, obj: dict[str, Any], *words: str) -> None:
    assert code == 65
    assert obj["valid"] is False
    reason = obj["reason"]
    assert isinstance(reason, str) and "\n" not in reason
    for word in words:
        assert word in reason, reason


def test_tampered_record_is_invalid(run: Run, fx: Fixture) -> None:
    tampered = bytearray(fx.records[INDEX])
    tampered[crypto.HEADER_SIZE + 5] ^= 0x01
    record = fx.write_record(bytes(tampered), "tampered.bin")
    code, obj = verify_json(run, fx, "--record", record)
    assert_invalid(code, obj, "leaf hash")


def test_truncated_record_is_invalid(run: Run, fx: Fixture) -> None:
    record = fx.write_record(fx.records[INDEX][:-1], "short.bin")
    code, obj = verify_json(run, fx, "--record", record)
    assert_invalid(code, obj, "header announces")


def test_record_of_another_index_is_invalid(run: Run, fx: Fixture) -> None:
    record = fx.write_record(fx.records[INDEX + 1], "other.bin")
    code, obj = verify_json(run, fx, "--record", record)
    assert_invalid(code, obj, f"chunk {INDEX + 1}", f"chunk {INDEX}")


def test_proof_for_another_index_with_its_record_is_invalid(run: Run, fx: Fixture) -> None:
    # A consistent (proof, record) pair for leaf 4, but the proof claims index 3.
    other = proof_json(fx.session, fx.log, INDEX + 1, N_CHUNKS)
    other["index"] = INDEX
    fx.proof.write_text(json.dumps(other))
    code, obj = verify_json(run, fx, "--leaf-hash", other["leaf_hash"])
    assert_invalid(code, obj, "does not lead")


def test_record_of_another_session_is_invalid(run: Run, fx: Fixture) -> None:
    _, records, _ = build_session(N_CHUNKS)
    record = fx.write_record(records[INDEX], "foreign.bin")
    code, obj = verify_json(run, fx, "--record", record)
    assert_invalid(code, obj, "session")


def test_garbage_record_is_invalid(run: Run, fx: Fixture) -> None:
    record = fx.write_record(b"not a record at all" * 10, "garbage.bin")
    code, obj = verify_json(run, fx, "--record", record)
    assert_invalid(code, obj, "record")


def test_final_record_is_not_a_chunk(run: Run, fx: Fixture) -> None:
    final = crypto.seal_final(os.urandom(32), fx.session, N_CHUNKS, 100, fx.log.root())
    record = fx.write_record(final, "final.bin")
    code, obj = verify_json(run, fx, "--record", record)
    assert_invalid(code, obj, "FINAL")


def test_wrong_leaf_hash_is_invalid(run: Run, fx: Fixture) -> None:
    code, obj = verify_json(run, fx, "--leaf-hash", "ab" * 32)
    assert_invalid(code, obj, "leaf")


def test_checkpoint_of_another_tree_is_invalid(run: Run, fx: Fixture) -> None:
    # Same session and size, different leaves: the root differs.
    _, _, other_log = build_session(N_CHUNKS)
    fake = merkle.Checkpoint(origin(fx.session), N_CHUNKS, other_log.root())
    fx.checkpoint = fx.write_checkpoint(signed(fake), "wrong-root.txt")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "root")


def test_tampered_proof_path_is_invalid(run: Run, fx: Fixture) -> None:
    obj = json.loads(fx.proof.read_text())
    first = bytearray.fromhex(obj["path"][0])
    first[0] ^= 0x80
    obj["path"][0] = first.hex()
    fx.proof.write_text(json.dumps(obj))
    code, result = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, result, "does not lead")


def test_proof_for_a_smaller_tree_needs_a_consistency_proof(run: Run, fx: Fixture) -> None:
    fx.proof = fx.write_proof(INDEX, N_CHUNKS - 2, "proof-5.json")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "consistency", str(N_CHUNKS - 2), str(N_CHUNKS))


def test_proof_for_a_larger_tree_is_invalid(run: Run, fx: Fixture) -> None:
    small = fx.log.checkpoint(origin(fx.session))
    small = merkle.Checkpoint(small.origin, N_CHUNKS - 1, fx.log.root(N_CHUNKS - 1))
    fx.checkpoint = fx.write_checkpoint(signed(small), "small.txt")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "larger")


def test_checkpoint_of_another_session_is_invalid(run: Run, fx: Fixture) -> None:
    other = merkle.Checkpoint(origin(new_session_id()), N_CHUNKS, fx.log.root())
    fx.checkpoint = fx.write_checkpoint(signed(other), "other-origin.txt")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "session")


def test_an_unsigned_checkpoint_proves_nothing(run: Run, fx: Fixture) -> None:
    fx.checkpoint = fx.write_checkpoint(fx.log.checkpoint(origin(fx.session)).encode())
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "not signed")


def test_a_checkpoint_signed_by_another_key_is_invalid(run: Run, fx: Fixture) -> None:
    # The same name (a fake daemon calling itself the host) but not the pinned key.
    forged = signed(fx.log.checkpoint(origin(fx.session)), OTHER_SIGNER)
    fx.checkpoint = fx.write_checkpoint(forged, "forged.txt")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "no signature from a known key")


def test_verify_without_a_pinned_key_is_refused(run: Run, fx: Fixture) -> None:
    code, out, _ = run("--json", "verify", "--proof", fx.proof, "--checkpoint", fx.checkpoint)
    assert code == 65
    assert "--vkey" in json.loads(out)["reason"]


@pytest.mark.parametrize(
    "text",
    [b"", b"hello\n", b"lucidd/x\n7\nAAAA\n", b'{"checkpoint": 5}', b"{not json"],
)
def test_malformed_checkpoint_is_invalid(run: Run, fx: Fixture, text: bytes) -> None:
    fx.checkpoint = fx.write_checkpoint(text, "bad.txt")
    code, obj = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, obj, "checkpoint")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(session="nope"),
        lambda o: o.update(index=-1),
        lambda o: o.update(size="7"),
        lambda o: o.update(leaf_hash="zz"),
        lambda o: o.update(path="abc"),
        lambda o: o["path"].append("00"),
        lambda o: o.pop("leaf_hash"),
    ],
)
def test_malformed_proof_is_invalid(
    run: Run, fx: Fixture, mutate: Callable[[dict[str, Any]], None]
) -> None:
    obj = json.loads(fx.proof.read_text())
    mutate(obj)
    fx.proof.write_text(json.dumps(obj))
    code, result = verify_json(run, fx, "--record", fx.record)
    assert_invalid(code, result, "proof file")


def test_human_output_says_invalid_in_one_line(run: Run, fx: Fixture) -> None:
    code, out, _ = run(
        "verify",
        "--proof",
        fx.proof,
        "--checkpoint",
        fx.checkpoint,
        "--vkey",
        SIGNER.verifier.vkey,
        "--leaf-hash",
        "00" * 32,
    )
    assert code == 65
    assert out.startswith("INVALID: ") and out.count("\n") == 1


# --- lucidctl's error contract -------------------------------------------------------------


def test_missing_proof_file_is_one_line_noinput(run: Run, fx: Fixture) -> None:
    code, out, err = run(
        "verify", "--proof", fx.folder / "absent.json", "--checkpoint", fx.checkpoint
    )
    assert code == 66
    assert err.startswith("lucidctl: noinput: ") and err.count("\n") == 1
    assert "absent.json" in err
    assert out == ""


def test_health_without_daemon_is_unavailable_in_one_line(run: Run, tmp_path: Path) -> None:
    code, out, err = run("--runtime-dir", tmp_path, "health")
    assert code == 69
    assert err.startswith("lucidctl: unavailable: ") and err.count("\n") == 1
    assert str(tmp_path / "control.sock") in err and "lucidd serve" in err
    assert "Traceback" not in err
    assert out == ""


def test_json_failure_is_one_error_object(run: Run, tmp_path: Path) -> None:
    code, out, err = run("health", "--json", "--runtime-dir", tmp_path)
    assert code == 69
    assert json.loads(out) == {
        "error": {"code": "unavailable", "message": err.split(": ", 2)[2].strip(), "exit_code": 69}
    }


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["root", "not-a-uuid"],
        ["proof", "00112233-4455-6677-8899-aabbccddeeff", "-1"],
        ["put", "file", "--chunk-size", "0"],
        ["put", "file", "--chunk-size", "12 parsecs"],
        ["put", "file", "--window", "0"],
        ["verify", "--proof", "p", "--checkpoint", "c", "--record", "r", "--leaf-hash", "00"],
    ],
)
def test_usage_errors_exit_64(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert code == 64
    assert "lucidctl: usage: " in err
    assert "Traceback" not in err
    assert out == ""


def test_help_exits_zero(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "verify" in out


def test_get_json_needs_an_output_file(run: Run, tmp_path: Path) -> None:
    code, out, err = run(
        "--json", "--runtime-dir", tmp_path, "get", format_session_id(new_session_id())
    )
    assert code == 64
    assert json.loads(out)["error"]["code"] == "bad_request"
    assert err.count("\n") == 1


def test_verify_with_a_proof_and_no_checkpoint_is_a_usage_error(run: Run) -> None:
    code, _, err = run("verify", "--proof", "p.json")
    assert code == 64
    assert "--checkpoint" in err and "Traceback" not in err
