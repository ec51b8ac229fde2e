"""The trust chain on a real daemon: signed checkpoints, the anchor log, anchoring, receipts.

Every check goes through the sockets and ``lucidctl`` as a user would; receipts are verified
after the daemon, its state folder and its keys are gone. The ethereum round trip runs
against a real local chain (anvil, tests/anvil.py).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lucidd.note import Verifier, open_checkpoint
from lucidd.receipt import ReceiptError, decode_receipt, note_hash, verify_receipt
from tests.anvil import AnvilNode
from tests.conftest import Daemon
from tests.faults.test_crash_matrix import health_pids
from tests.integration.test_lucidctl import (
    EX_DATAERR,
    ctl,
    lucidctl,
    put_file,
    random_file,
)
from tests.users import HostUsers

EX_TEMPFAIL = 75
EX_NOPERM = 77
CHUNK = 64 * 1024
#: The longest a test waits for a periodic checkpoint or an anchoring (a hung daemon, not a
#: slow one: the intervals below are a fraction of a second).
DEADLINE_S = 60.0
FAST = {"checkpoint_interval": 0.2, "anchor_interval": 0.4}

MakeDaemon = Callable[..., Daemon]


def wait_until(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def pinned(daemon: Daemon) -> str:
    key: str = ctl(daemon, "--json", "signing-key").ok()["vkey"]
    return key


def session_dir(daemon: Daemon, session: str) -> Path:
    return daemon.state_dir / "sessions" / session


def stored_checkpoints(daemon: Daemon, session: str) -> dict[int, bytes]:
    folder = session_dir(daemon, session) / "checkpoints"
    if not folder.is_dir():
        return {}
    return {int(p.name): p.read_bytes() for p in folder.iterdir() if p.name.isdigit()}


def command_backend(folder: Path) -> dict[str, object]:
    """The ``command`` backend with a program that prints a digest of the note it is given."""
    script = folder / "attest.sh"
    script.write_text("#!/bin/sh\nsha256sum\n")
    script.chmod(0o755)
    return {"anchors": "command", "anchor_command": str(script)}


def receipt_of(daemon: Daemon, session: str, index: int, out: Path) -> dict[str, Any]:
    """``lucidctl --json receipt`` once the chunk is anchored (exit 75 until then)."""

    def attempt() -> dict[str, Any] | None:
        result = ctl(daemon, "--json", "receipt", session, str(index), "-o", out)
        if result.code == EX_TEMPFAIL:
            assert "not_anchored" in result.stderr, result.stderr
            return None
        return result.ok()

    made: dict[str, Any] = wait_until(f"a receipt of chunk {index}", attempt)
    return made


def verify_receipt_cli(receipt: Path, record: Path, *keys: str, rpc: str = "") -> Any:
    args: list[str | Path] = ["--json", "verify", "--receipt", receipt, "--record", record]
    for key in keys:
        args += ["--vkey", key]
    if rpc:
        args += ["--rpc", rpc]
    return lucidctl(*args)


# --- the signing key and signed checkpoints ---------------------------------------------


def test_signing_key_is_made_once_kept_0600_and_never_logged(daemon: Daemon) -> None:
    key = ctl(daemon, "--json", "signing-key").ok()
    verifier = Verifier.from_vkey(key["vkey"])
    assert (verifier.name, verifier.key_id.hex()) == (key["name"], key["key_id"])
    path = daemon.state_dir / "keys" / "signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seed = path.read_text().strip()
    assert seed not in daemon.log()
    # The origin is stored at first start, so a renamed host keeps its key name and origins.
    assert (daemon.state_dir / "origin").read_text().strip() == key["name"]
    daemon.stop()
    daemon.start()
    assert ctl(daemon, "--json", "signing-key").ok() == key
    assert seed not in daemon.log()


def test_a_growing_session_gets_periodic_signed_checkpoints_any_two_consistent(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    daemon = make_daemon(**FAST)
    verifier = Verifier.from_vkey(pinned(daemon))
    path, _ = random_file(short_tmp, "a.bin", 3 * CHUNK)
    session = put_file(daemon, path)["session"]
    wait_until("a checkpoint of size 3", lambda: 3 in stored_checkpoints(daemon, session))
    more, _ = random_file(short_tmp, "b.bin", 2 * CHUNK)
    put_file(daemon, more, "--session", session)
    wait_until("a checkpoint of size 5", lambda: 5 in stored_checkpoints(daemon, session))
    final = ctl(daemon, "--json", "finalize", session).ok()
    stored = stored_checkpoints(daemon, session)
    assert stored[5] == final["checkpoint"].encode()  # create-only: the final is the same note
    for size, note in stored.items():
        checkpoint, _ = open_checkpoint(note, [verifier])
        assert (checkpoint.origin, checkpoint.size) == (f"{verifier.name}/{session}", size)
    sizes = sorted(stored)
    proof_file = short_tmp / "consistency.json"
    for old, new in itertools.pairwise(sizes):
        proof_file.write_bytes(
            ctl(daemon, "--json", "consistency", session, str(old), str(new)).stdout
        )
        old_note = short_tmp / "old.note"
        old_note.write_bytes(stored[old])
        checked = lucidctl(
            "--json", "verify-consistency", proof_file, "--old", old_note, "--vkey", verifier.vkey
        ).ok()
        assert checked["valid"] is True
        assert (checked["size1"], checked["size2"]) == (old, new)


def test_checkpoint_on_request_is_signed_stored_and_the_same_after_a_restart(
    daemon: Daemon, short_tmp: Path
) -> None:
    path, _ = random_file(short_tmp, "a.bin", 4 * CHUNK)
    session = put_file(daemon, path)["session"]
    first = ctl(daemon, "--json", "checkpoint", session).ok()
    assert first["size"] == 4
    assert stored_checkpoints(daemon, session)[4] == first["checkpoint"].encode()
    daemon.stop()
    daemon.start()
    again = ctl(daemon, "--json", "checkpoint", session, "--size", "4").ok()
    assert again["checkpoint"] == first["checkpoint"]


def test_consistency_between_sessions_or_keys_is_refused(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    one, two = make_daemon(), make_daemon()
    path, _ = random_file(short_tmp, "a.bin", 2 * CHUNK)
    s1 = put_file(one, path)["session"]
    proof = short_tmp / "p.json"
    proof.write_bytes(ctl(one, "--json", "consistency", s1, "1", "2").stdout)
    ok = lucidctl("--json", "verify-consistency", proof, "--vkey", pinned(one)).ok()
    assert ok["valid"] is True
    refused = lucidctl("--json", "verify-consistency", proof, "--vkey", pinned(two))
    assert refused.code == EX_DATAERR
    assert "no signature from a known key" in refused.json()["reason"]
    s2 = put_file(one, path)["session"]
    other = short_tmp / "other.note"
    other.write_text(ctl(one, "--json", "checkpoint", s2).ok()["checkpoint"])
    mixed = lucidctl("--json", "verify-consistency", proof, "--new", other, "--vkey", pinned(one))
    assert mixed.code == EX_DATAERR
    assert "different logs" in mixed.json()["reason"]


# --- the anchor log and receipts ---------------------------------------------------------


def test_one_anchor_log_takes_every_session_checkpoint_and_is_anchored_per_interval(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    daemon = make_daemon(**FAST, **command_backend(short_tmp))
    path, _ = random_file(short_tmp, "a.bin", 2 * CHUNK)
    sessions = [put_file(daemon, path)["session"] for _ in range(3)]
    for session in sessions:

        def has_checkpoint(s: str = session) -> bool:
            return bool(stored_checkpoints(daemon, s))

        wait_until("a checkpoint", has_checkpoint)
    anchor = daemon.state_dir / "anchor" / "checkpoints"
    wait_until("an attested anchor checkpoint", lambda: any(anchor.glob("*.command")))
    daemon.stop()
    # The anchor log's leaves are exactly the hashes of the sessions' stored checkpoints.
    notes = [n for s in sessions for n in stored_checkpoints(daemon, s).values()]
    entries = (daemon.state_dir / "anchor" / "entries.bin").read_bytes()
    hashes = {entries[i + 24 : i + 56] for i in range(0, len(entries), 56)}
    assert hashes == {note_hash(n) for n in notes}
    newest = max(int(p.name) for p in anchor.iterdir() if p.name.isdigit())
    assert newest <= len(notes)


def test_receipt_verifies_offline_after_the_daemon_its_state_and_keys_are_gone(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    daemon = make_daemon(**FAST, **command_backend(short_tmp))
    key = pinned(daemon)
    path, _ = random_file(short_tmp, "a.bin", 5 * CHUNK)
    session = put_file(daemon, path)["session"]
    receipt = short_tmp / "chunk3.receipt"
    made = receipt_of(daemon, session, 3, receipt)
    assert made["attestations"] == ["command"]
    record = short_tmp / "chunk3.rec"
    ctl(daemon, "record", session, "3", "-o", record)
    assert daemon.stop() == 0
    shutil.rmtree(daemon.state_dir)
    result = verify_receipt_cli(receipt, record, key).ok()
    assert result["valid"] is True
    assert (result["session"], result["index"], result["key"]) == (session, 3, key)
    assert result["record_checked"] is True
    assert result["session_size"] == 5
    assert result["attestations"][0]["backend"] == "command"
    # Another host's key, or another chunk's record: refused, naming why.
    other = Verifier.from_vkey(key)
    stranger = lucidctl("--json", "signing-key")  # no daemon: a typed failure, not a key
    assert stranger.code != 0
    fake = f"{other.name}+00000000+A{'A' * 43}"
    assert verify_receipt_cli(receipt, record, fake).code == EX_DATAERR
    wrong = short_tmp / "wrong.rec"
    data = bytearray(record.read_bytes())
    data[-1] ^= 1
    wrong.write_bytes(bytes(data))
    refused = verify_receipt_cli(receipt, wrong, key)
    assert refused.code == EX_DATAERR
    assert "leaf hash" in refused.json()["reason"]


def test_every_byte_of_a_receipt_flipped_is_rejected_or_shown_not_to_matter(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    daemon = make_daemon(**FAST, **command_backend(short_tmp))
    verifier = Verifier.from_vkey(pinned(daemon))
    path, _ = random_file(short_tmp, "a.bin", 4 * CHUNK)
    session = put_file(daemon, path)["session"]
    receipt_path = short_tmp / "r.receipt"
    receipt_of(daemon, session, 1, receipt_path)
    record = short_tmp / "c.rec"
    ctl(daemon, "record", session, "1", "-o", record)
    raw = receipt_path.read_bytes()
    record_bytes = record.read_bytes()
    proven = verify_receipt(decode_receipt(raw), record_bytes, [verifier])
    # Bytes that may change without changing what is proven: JSON layout, and the opaque
    # attestation of the command backend (it is reported, not authenticated).
    attestation_region = range(raw.index(b'"attestations"'), len(raw))
    accepted_elsewhere = []
    for position in range(len(raw)):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        try:
            facts = verify_receipt(decode_receipt(bytes(flipped)), record_bytes, [verifier])
        except ReceiptError:
            continue
        core = (facts.key, facts.session, facts.index, facts.session_root, facts.anchor_root)
        assert core == (
            proven.key,
            proven.session,
            proven.index,
            proven.session_root,
            proven.anchor_root,
        )
        if position not in attestation_region:
            accepted_elsewhere.append((position, raw[position : position + 1]))
    # Outside the attestations only JSON whitespace may flip harmlessly (none is written in
    # the base64 and hex fields a proof depends on).
    assert all(ch in (b" ", b"\n", b"\t", b"\r") for _, ch in accepted_elsewhere), (
        accepted_elsewhere
    )


def test_a_receipt_before_anything_is_anchored_says_when(daemon: Daemon, short_tmp: Path) -> None:
    path, _ = random_file(short_tmp, "a.bin", CHUNK)
    session = put_file(daemon, path)["session"]
    early = ctl(daemon, "receipt", session, "0", "-o", short_tmp / "r")
    early.assert_failed("not_anchored", EX_TEMPFAIL)
    assert "due within 10 s" in early.stderr
    ctl(daemon, "--json", "checkpoint", session).ok()
    logged = ctl(daemon, "receipt", session, "0", "-o", short_tmp / "r")
    logged.assert_failed("not_anchored", EX_TEMPFAIL)
    assert "anchored within 60 s" in logged.stderr
    # On demand (root here) it is anchored at once; no backend is configured.
    anchored = ctl(daemon, "--json", "anchor").ok()
    assert anchored["size"] == 1 and anchored["backends"] == []
    assert ctl(daemon, "--json", "receipt", session, "0", "-o", short_tmp / "r").ok()["index"] == 0


def test_a_failing_backend_is_retried_and_never_blocks_chunks(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    marker = short_tmp / "fail-once"
    marker.write_text("")
    script = short_tmp / "flaky.sh"
    script.write_text(
        f'#!/bin/sh\nif [ -e "{marker}" ]; then rm "{marker}"; exit 3; fi\nsha256sum\n'
    )
    script.chmod(0o755)
    daemon = make_daemon(**FAST, anchors="command", anchor_command=str(script))
    path, _ = random_file(short_tmp, "a.bin", 2 * CHUNK)
    session = put_file(daemon, path)["session"]
    receipt_of(daemon, session, 0, short_tmp / "r")
    assert "event=anchor_failed backend=command" in daemon.log()
    assert not marker.exists()


def test_the_anchor_log_survives_kill_9_and_old_receipts_still_verify(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    daemon = make_daemon(**FAST, **command_backend(short_tmp))
    key = pinned(daemon)
    path, _ = random_file(short_tmp, "a.bin", 3 * CHUNK)
    session = put_file(daemon, path)["session"]
    first = short_tmp / "first.receipt"
    receipt_of(daemon, session, 0, first)
    record = short_tmp / "c0.rec"
    ctl(daemon, "record", session, "0", "-o", record)
    daemon.kill_all()
    daemon.start()
    more, _ = random_file(short_tmp, "b.bin", 3 * CHUNK)
    put_file(daemon, more, "--session", session)
    second = short_tmp / "second.receipt"
    receipt_of(daemon, session, 5, second)
    assert verify_receipt_cli(first, record, key).ok()["valid"] is True
    facts = verify_receipt(decode_receipt(second.read_bytes()), None, [Verifier.from_vkey(key)])
    assert facts.session_size == 6


def test_anchor_on_demand_is_for_the_privileged(
    user_daemon: Callable[..., Daemon], host_users: HostUsers
) -> None:
    """An ordinary user may not make the host anchor (each anchoring may cost money), and
    gets the key and checkpoints of its own sessions only."""
    daemon = user_daemon(admin_group=host_users.admin_group)
    alice = host_users.alice.lucidctl("--runtime-dir", daemon.runtime_dir, "anchor")
    assert alice.returncode == EX_NOPERM, alice
    assert b"forbidden" in alice.stderr
    admin = host_users.admin.lucidctl("--runtime-dir", daemon.runtime_dir, "--json", "anchor")
    assert admin.returncode == 0, admin
    key = host_users.alice.lucidctl("--runtime-dir", daemon.runtime_dir, "--json", "signing-key")
    assert key.returncode == 0 and json.loads(key.stdout)["vkey"]


# --- ethereum: a real local chain --------------------------------------------------------


def credentials_file(folder: Path, node: AnvilNode) -> Path:
    path = folder / "ethereum.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"rpc_url": node.rpc_url, "private_key": node.private_key}, f)
    return path


def test_ethereum_round_trip_anchor_read_the_event_back_verify_with_rpc(
    make_daemon: MakeDaemon, short_tmp: Path, anvil: AnvilNode
) -> None:
    pytest.importorskip("web3", reason="lucidd[ethereum] is not installed")
    from lucidd.anchoring import ethereum  # noqa: PLC0415

    credentials = credentials_file(short_tmp, anvil)
    deployed = lucidd_anchor_deploy(credentials)
    daemon = make_daemon(
        **FAST,
        anchors="ethereum",
        ethereum_credentials=str(credentials),
        ethereum_contract=deployed,
    )
    key = pinned(daemon)
    path, _ = random_file(short_tmp, "a.bin", 3 * CHUNK)
    session = put_file(daemon, path)["session"]
    receipt = short_tmp / "eth.receipt"
    made = receipt_of(daemon, session, 2, receipt)
    assert made["attestations"] == ["ethereum"]
    record = short_tmp / "c2.rec"
    ctl(daemon, "record", session, "2", "-o", record)
    assert daemon.stop() == 0
    # The event is on chain: the contract recorded the anchor checkpoint's note hash.
    parsed = decode_receipt(receipt.read_bytes())
    claim = json.loads(parsed.attestations[0].data)
    assert claim["contract"].lower() == deployed.lower()
    block = ethereum.anchored_at(anvil.rpc_url, deployed, bytes.fromhex(claim["note_hash"]))
    assert block == claim["block_number"]
    offline = verify_receipt_cli(receipt, record, key).ok()
    assert offline["attestations"][0]["checked_on_chain"] is False
    online = verify_receipt_cli(receipt, record, key, rpc=anvil.rpc_url).ok()
    assert online["attestations"][0]["checked_on_chain"] is True
    assert f"of chain {claim['chain_id']}" in online["attestations"][0]["on_chain"]
    # A claim that differs from the chain (another block hash) fails on chain only.
    forged_claim = dict(claim, block_hash="0x" + "11" * 32)
    raw = json.loads(receipt.read_text())
    raw["attestations"][0]["data"] = _b64(json.dumps(forged_claim).encode())
    forged = short_tmp / "forged.receipt"
    forged.write_text(json.dumps(raw))
    assert verify_receipt_cli(forged, record, key).ok()["valid"] is True
    on_chain = verify_receipt_cli(forged, record, key, rpc=anvil.rpc_url)
    assert on_chain.code == EX_DATAERR
    assert "on chain" in on_chain.json()["reason"]


def _b64(data: bytes) -> str:
    import base64  # noqa: PLC0415

    return base64.b64encode(data).decode()


def lucidd_anchor_deploy(credentials: Path) -> str:
    import subprocess  # noqa: PLC0415

    done = subprocess.run(
        [sys.executable, "-m", "lucidd", "anchor", "deploy", "--credentials", str(credentials)],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    contract: str = json.loads(done.stdout)["contract"]
    return contract


def test_kill_9_of_the_aggregator_keeps_the_signing_key_and_checkpoints(
    make_daemon: MakeDaemon, short_tmp: Path
) -> None:
    daemon = make_daemon(**FAST)
    key = pinned(daemon)
    path, _ = random_file(short_tmp, "a.bin", 2 * CHUNK)
    session = put_file(daemon, path)["session"]
    note = ctl(daemon, "--json", "checkpoint", session).ok()["checkpoint"]
    old = health_pids(daemon)["aggregator"]
    os.kill(old, signal.SIGKILL)
    wait_until("a new aggregator", lambda: health_pids(daemon).get("aggregator", old) != old)
    assert pinned(daemon) == key
    assert ctl(daemon, "--json", "checkpoint", session, "--size", "2").ok()["checkpoint"] == note
