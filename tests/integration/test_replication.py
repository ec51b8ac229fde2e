"""Replication to a real S3 server (SeaweedFS, tests/seaweed.py) from a real daemon.

Replicate, lose the local state, restore: the same bytes and the same root. Kill -9 the
replicator and the server mid-upload. ``durability = "replicated"`` never acks before the
pack exists. Create-only conflicts and flipped bytes in objects are caught, never served.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lucidd.client import ControlClient, DataClient
from lucidd.daemon.replication import layout
from lucidd.daemon.replication.objects import ObjectStore, ReplicationTarget, S3Credentials
from lucidd.errors import UnavailableError
from tests.conftest import Daemon
from tests.faults.test_crash_matrix import health_pids
from tests.integration.test_lucidctl import ctl, put_file, random_file
from tests.seaweed import Seaweed

CHUNK = 64 * 1024
DEADLINE_S = 90.0
MakeDaemon = Callable[..., Daemon]


def wait_until(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def settings(seaweed: Seaweed, folder: Path, prefix: str, **extra: object) -> dict[str, object]:
    credentials = folder / f"{prefix}.json"
    if not credentials.exists():
        seaweed.credentials_file(folder, credentials.name)
    return {
        "replication_url": f"s3://{seaweed.bucket}/{prefix}",
        "replication_endpoint": seaweed.endpoint,
        "replication_region": seaweed.region,
        "replication_credentials": str(credentials),
        "checkpoint_interval": 0.2,
        **extra,
    }


def store_of(seaweed: Seaweed, prefix: str) -> tuple[ObjectStore, str]:
    target = ReplicationTarget.parse(
        f"s3://{seaweed.bucket}/{prefix}", seaweed.endpoint, "us-east-1"
    )
    creds = S3Credentials(seaweed.access_key_id, seaweed.secret_access_key)
    return ObjectStore(target, creds), target.prefix


def objects(seaweed: Seaweed, prefix: str) -> list[str]:
    store, _ = store_of(seaweed, prefix)
    return asyncio.run(store.list(prefix))


def progress_of(daemon: Daemon, session: str) -> str:
    path = daemon.state_dir / "replication" / session
    return path.read_text() if path.exists() else ""


def fully_replicated(daemon: Daemon, session: str, size: int, final: bool) -> bool:
    done = progress_of(daemon, session)
    records = {int(line.split()[2]) for line in done.splitlines() if line.startswith("r ")}
    return (max(records, default=0) >= size and (not final or "o final" in done)) and (
        f"o checkpoints/{size:020d}" in done
    )


def lucidd(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LUCIDD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lucidd", *map(str, args)],
        capture_output=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def env_of(config: dict[str, object]) -> dict[str, str]:
    return {f"LUCIDD_{k.upper()}": str(v) for k, v in config.items()}


def test_replicate_lose_the_disk_restore_the_same_bytes_and_root(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    config = settings(seaweed, short_tmp, "restore", anchor_interval=0.4)
    daemon = make_daemon(**config)
    path, data = random_file(short_tmp, "rec.bin", 7 * CHUNK + 123)
    put = put_file(daemon, path, "--finalize")
    session, root = put["session"], put["root"]
    wait_until("the session replicated", lambda: fully_replicated(daemon, session, 8, True))
    host_id = (daemon.state_dir / "host_id").read_text().strip()
    vkey = ctl(daemon, "--json", "signing-key").ok()["vkey"]
    anchor_progress = daemon.state_dir / "replication" / "anchor"
    wait_until(
        "an anchor checkpoint replicated",
        lambda: anchor_progress.exists() and "o anchor/0" in anchor_progress.read_text(),
    )
    keys = {
        name: (daemon.state_dir / "keys" / name).read_bytes() for name in ("keyring", "signing.key")
    }
    assert daemon.stop() == 0
    # The disk is lost; the keys were kept apart (systemd credentials, a vault).
    shutil.rmtree(daemon.state_dir)
    (daemon.state_dir / "keys").mkdir(parents=True, mode=0o700)
    os.chmod(daemon.state_dir, 0o700)
    for name, key in keys.items():
        fd = os.open(daemon.state_dir / "keys" / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, key)
        os.close(fd)
    listed = lucidd("restore", "--list", "--state-dir", daemon.state_dir, env=env_of(config))
    assert listed.returncode == 0, listed.stderr
    hosts = json.loads(listed.stdout)["hosts"]
    assert session in next(h for h in hosts if h["host_id"] == host_id)["sessions"]
    done = lucidd("restore", "--host", host_id, "--state-dir", daemon.state_dir, env=env_of(config))
    assert done.returncode == 0, done.stderr
    restored = json.loads(done.stdout)["restored"]
    assert [r["session"] for r in restored] == [session]
    assert restored[0]["root"] == root
    daemon.start()
    info = ctl(daemon, "--json", "info", session).ok()
    assert (info["state"], info["size"]) == ("finalized", 8)
    assert ctl(daemon, "--json", "root", session).ok()["root"] == root
    assert ctl(daemon, "get", session).stdout == data
    assert ctl(daemon, "--json", "check", session).ok()["bad"] == []
    # The anchor log came back too: a receipt proves into it, under the same key.
    receipt = short_tmp / "after-restore.receipt"
    ctl(daemon, "--json", "receipt", session, "3", "-o", receipt).ok()
    record = short_tmp / "c3.rec"
    ctl(daemon, "record", session, "3", "-o", record)
    verified = ctl(
        daemon, "--json", "verify", "--receipt", receipt, "--record", record, "--vkey", vkey
    )
    assert verified.ok()["valid"] is True


def test_replicated_acks_wait_for_the_pack_and_time_out_as_unavailable(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    daemon = make_daemon(
        **settings(seaweed, short_tmp, "acks", durability="replicated", replication_timeout=3)
    )
    control = ControlClient(daemon.runtime_dir)
    session = control.open_session()
    with DataClient(daemon.runtime_dir) as client:
        ack = client.put(session, 0, b"first chunk")
        # The ack came: the record was fdatasync'd locally first (replicated is fsync and more),
        assert control.metrics()["stage_fsync_seconds_total"] > 0
        # and its pack is in the object store now, not later.
        sid = str(uuid.UUID(bytes=session))
        packs = [k for k in objects(seaweed, "acks") if f"/sessions/{sid}/packs/" in k]
        assert packs, "acked before its pack existed"
        store, _ = store_of(seaweed, "acks")
        pack = asyncio.run(store.get(packs[0]))
        assert pack is not None
        assert [e.leaf_hash for e, _ in layout.pack_records(pack)] == [ack.leaf_hash]
        seaweed.kill()
        try:
            with pytest.raises(UnavailableError, match="not replicated within"):
                client.put(session, 1, b"second chunk")
        finally:
            seaweed.restart()
    # Stored locally all along; once the store is back it is uploaded and a resend is acked
    # (the client resends after unavailable, as the message says; the replicator may still be
    # backing off from the outage for a while).

    def resent() -> bool:
        try:
            with DataClient(daemon.runtime_dir) as client:
                client.put(session, 1, b"second chunk")
        except UnavailableError:
            return False
        return True

    wait_until("a resend acked", resent)
    control.close()


def test_fsync_acks_flow_while_the_store_is_down_and_the_lag_catches_up(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    daemon = make_daemon(**settings(seaweed, short_tmp, "down"))
    seaweed.kill()
    try:
        path, _ = random_file(short_tmp, "a.bin", 20 * CHUNK)
        session = put_file(daemon, path)["session"]  # acked: durability is local

        def lagging() -> bool:
            health = ctl(daemon, "--json", "health").json()
            return any("replicator" in r for r in health["reasons"])

        wait_until("health to say replication lags", lagging)
    finally:
        seaweed.restart()
    wait_until("the lag to catch up", lambda: fully_replicated(daemon, session, 20, False))
    wait_until("health ok again", lambda: ctl(daemon, "--json", "health").json()["status"] == "ok")


def test_kill_9_of_the_replicator_and_of_the_server_mid_upload_loses_nothing(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    daemon = make_daemon(**settings(seaweed, short_tmp, "kills"))
    control = ControlClient(daemon.runtime_dir)
    session = control.open_session()
    sid = str(uuid.UUID(bytes=session))
    with DataClient(daemon.runtime_dir) as client:
        for index in range(200):
            client.put(session, index, os.urandom(4096))
            if index == 60:
                os.kill(health_pids(daemon)["replicator"], signal.SIGKILL)
            if index == 120:
                seaweed.kill()
            if index == 150:
                seaweed.restart()
    control.close()
    wait_until("every chunk replicated", lambda: fully_replicated(daemon, sid, 200, False))

    def figures() -> dict[str, float]:
        values: dict[str, float] = ctl(daemon, "--json", "metrics").json()["metrics"]
        return values

    assert figures()["replicator_restarts_total"] >= 1
    wait_until("the lag reported as 0", lambda: figures()["replication_lag_chunks"] == 0)


def test_a_conflicting_object_is_an_alarm_and_is_never_overwritten(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    daemon = make_daemon(**settings(seaweed, short_tmp, "conflict"))
    host_id = wait_until("a host id", lambda: _read(daemon.state_dir / "host_id"))
    control = ControlClient(daemon.runtime_dir)
    session = control.open_session()
    store, prefix = store_of(seaweed, "conflict")
    key = layout.checkpoint_key(prefix, host_id, session, 1)
    asyncio.run(store.put_once(key, b"someone else's bytes"))
    with DataClient(daemon.runtime_dir) as client:
        client.put(session, 0, b"chunk")
    control.close()

    def alarmed() -> bool:
        reasons = ctl(daemon, "--json", "health").json()["reasons"]
        return any("conflict" in r for r in reasons)

    wait_until("health to report the conflict", alarmed)
    assert asyncio.run(store.get(key)) == b"someone else's bytes"
    assert "event=replication_conflict" in daemon.log()


def test_a_flipped_byte_in_a_pack_is_refused_by_restore_naming_the_object(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    config = settings(seaweed, short_tmp, "flip")
    daemon = make_daemon(**config)
    path, _ = random_file(short_tmp, "a.bin", 3 * CHUNK)
    session = put_file(daemon, path, "--finalize")["session"]
    wait_until("the session replicated", lambda: fully_replicated(daemon, session, 3, True))
    host_id = (daemon.state_dir / "host_id").read_text().strip()
    assert daemon.stop() == 0
    store, prefix = store_of(seaweed, "flip")
    pack_key = next(k for k in objects(seaweed, "flip") if k.endswith(".pack"))
    pack = bytearray(asyncio.run(store.get(pack_key)) or b"")
    pack[100] ^= 0x01
    # The original is create-only: a tampered copy goes under a new prefix, as an attacker
    # with write access to the bucket could arrange for a fresh restore.
    tampered = "flip2"
    for key in objects(seaweed, "flip"):
        body = bytes(pack) if key == pack_key else asyncio.run(store.get(key)) or b""
        asyncio.run(store.put_once(tampered + key[len(prefix) :], body))
    other = short_tmp / "other-state"
    shutil.copytree(daemon.state_dir / "keys", other / "keys")
    os.chmod(other, 0o700)
    config2 = dict(config, replication_url=f"s3://{seaweed.bucket}/{tampered}")
    refused = lucidd("restore", "--host", host_id, "--state-dir", other, env=env_of(config2))
    assert refused.returncode != 0
    assert "pack" in refused.stderr.decode() and "Traceback" not in refused.stderr.decode()
    assert not (other / "sessions" / session / "meta").exists()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def test_a_second_host_reads_the_first_hosts_session_through_the_object_store(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    first = make_daemon(**settings(seaweed, short_tmp, "shared"))
    path, data = random_file(short_tmp, "a.bin", 5 * CHUNK)
    put = put_file(first, path, "--finalize")
    session = put["session"]
    wait_until("the session replicated", lambda: fully_replicated(first, session, 5, True))
    # The second host shares the bucket and the keyring (a key holder may decrypt).
    second = make_daemon(**settings(seaweed, short_tmp, "shared", checkpoint_interval=10))
    second.stop()
    shutil.copy(first.state_dir / "keys" / "keyring", second.state_dir / "keys" / "keyring")
    second.start()
    remote = ctl(second, "--json", "sessions", "--remote").ok()["hosts"]
    first_host = (first.state_dir / "host_id").read_text().strip()
    assert session in next(h for h in remote if h["host_id"] == first_host)["sessions"]
    assert ctl(second, "--json", "root", session).ok()["root"] == put["root"]
    assert ctl(second, "get", session).stdout == data
    proof = ctl(second, "--json", "proof", session, "2").ok()
    assert proof["size"] == 5
    info = ctl(second, "--json", "info", session).ok()
    assert info["state"] == "finalized"
    # Read-only here: no chunk is admitted to it, and it is not uploaded as the second's own.
    refused = ctl(second, "put", "--session", session, path)
    assert refused.code != 0 and "session_finalized" in refused.stderr
    second_host = (second.state_dir / "host_id").read_text().strip()
    time.sleep(3)  # two scans of the second's replicator
    assert not [k for k in objects(seaweed, "shared") if f"{second_host}/sessions/{session}" in k]


def test_local_retention_frees_a_replicated_session_and_reads_fetch_it_back(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    daemon = make_daemon(**settings(seaweed, short_tmp, "retention", local_retention=3))
    path, data = random_file(short_tmp, "a.bin", 6 * CHUNK)
    put = put_file(daemon, path, "--finalize")
    session = put["session"]
    folder = daemon.state_dir / "sessions" / session
    wait_until("the session freed locally", (folder / "evicted").exists)
    assert not list(folder.glob("*.seg")) and not (folder / "index.bin").exists()
    listed = ctl(daemon, "--json", "sessions").ok()["sessions"]
    assert [s["state"] for s in listed if s["session"] == session] == ["finalized"]
    # A read brings it back, verified against its own signed checkpoints, and it is kept
    # another local_retention from then (not freed again at the next pass).
    assert ctl(daemon, "get", session).stdout == data
    assert ctl(daemon, "--json", "root", session).ok()["root"] == put["root"]
    assert not (folder / "evicted").exists()
    assert "event=session_freed_locally" in daemon.log()


def test_a_second_host_makes_a_receipt_of_the_first_hosts_session(
    make_daemon: MakeDaemon, short_tmp: Path, seaweed: Seaweed
) -> None:
    first = make_daemon(**settings(seaweed, short_tmp, "receipts", anchor_interval=0.4))
    first_key = ctl(first, "--json", "signing-key").ok()["vkey"]
    path, _ = random_file(short_tmp, "a.bin", 4 * CHUNK)
    session = put_file(first, path, "--finalize")["session"]
    record = short_tmp / "c2.rec"
    ctl(first, "record", session, "2", "-o", record)
    wait_until("the session replicated", lambda: fully_replicated(first, session, 4, True))
    anchor_progress = first.state_dir / "replication" / "anchor"
    wait_until(
        "an anchor checkpoint replicated",
        lambda: anchor_progress.exists() and "o anchor/0" in anchor_progress.read_text(),
    )
    second = make_daemon(**settings(seaweed, short_tmp, "receipts", checkpoint_interval=10))
    second.stop()
    shutil.copy(first.state_dir / "keys" / "keyring", second.state_dir / "keys" / "keyring")
    second.start()
    receipt = short_tmp / "remote.receipt"
    ctl(second, "--json", "receipt", session, "2", "-o", receipt).ok()
    verified = ctl(
        second, "--json", "verify", "--receipt", receipt, "--record", record, "--vkey", first_key
    ).ok()
    assert verified["valid"] is True and verified["key"] == first_key
