"""The REST API (issue 15): ``lucidd http`` in front of a real daemon, through a real client.

Every endpoint over a Unix socket (the caller is the kernel's peer) and over TCP (bearer
tokens); every error status; the original clients' JSON/base64 shape; and hostile clients
(slowloris, huge bodies, bad JSON, header floods) that leave the daemon and other clients
unaffected. The answers are checked against what the daemon stored (lucidctl, kill -9).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from lucidd.testing import Daemon, HttpGateway
from tests.users import HostUsers

pytestmark = pytest.mark.timeout(180)

MakeDaemon = Callable[..., Daemon]
TOKEN_A = "a" * 40
TOKEN_B = "b" * 40
KiB = 1024


@pytest.fixture
def gateways() -> Iterator[Callable[..., HttpGateway]]:
    started: list[HttpGateway] = []

    def start(daemon: Daemon, listen: str = "", **settings: object) -> HttpGateway:
        env = {f"LUCIDD_{k.upper()}": str(v) for k, v in settings.items()}
        where = listen or f"unix:{daemon.base}/h{len(started)}.sock"
        gateway = HttpGateway(daemon, where, env, name=f"http{len(started)}").start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.proc is not None and gateway.proc.poll() is None:
            assert gateway.stop() == 0, gateway.log()


def unix_client(gateway: HttpGateway, timeout: float = 30.0) -> httpx.Client:
    path = gateway.address.removeprefix("unix:")
    transport = httpx.HTTPTransport(uds=path)
    return httpx.Client(transport=transport, base_url="http://lucidd", timeout=timeout)


def tcp_client(gateway: HttpGateway, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gateway.url, headers=headers, timeout=30.0)


def write_tokens(daemon: Daemon, lines: str) -> Path:
    keys = daemon.state_dir / "keys"
    path = keys / "http-tokens"
    path.write_text(lines)
    path.chmod(0o600)
    return path


def ctl(daemon: Daemon, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "lucidd.cli", "--runtime-dir", str(daemon.runtime_dir)]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, timeout=60, check=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def open_session(client: httpx.Client) -> str:
    reply = client.post("/api/v1/sessions")
    assert reply.status_code == 201, reply.text
    session: str = reply.json()["session_id"]
    assert reply.headers["location"] == f"/api/v1/sessions/{session}"
    return session


def put_raw(client: httpx.Client, session: str, index: int, data: bytes) -> httpx.Response:
    return client.post(
        "/api/v1/chunks/process",
        params={"session_id": session, "chunk_index": index},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def assert_problem(reply: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = reply.json()
    assert body["code"] == code and body["status"] == status, body
    assert body["type"] == f"https://lucidd.dev/problems/{code}"
    assert "Traceback" not in reply.text
    return body


def test_every_endpoint_over_a_unix_socket_and_lucidctl_verifies_the_proof(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway], short_tmp: Path
) -> None:
    daemon = make_daemon()
    gateway = gateways(daemon)
    with unix_client(gateway) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        config = client.get("/api/v1/config").json()
        assert config["max_chunk_size"] > 0 and "keyring" in config
        session = open_session(client)
        chunks = [os.urandom(64 * KiB), b"hello", os.urandom(1000)]
        acked = put_raw(client, session, 0, chunks[0])
        assert acked.status_code == 200, acked.text
        assert acked.json() == {
            "session_id": session,
            "chunk_index": 0,
            "leaf_hash": acked.json()["leaf_hash"],
            "size": 64 * KiB,
            "durable": True,
        }
        # The original clients' shape: JSON with base64 data.
        original = client.post(
            "/api/v1/chunks/process",
            json={"session_id": session, "chunk_index": 1, "data": b64(chunks[1])},
        )
        assert original.status_code == 200 and original.json()["chunk_index"] == 1
        binary = struct.pack(">QI", 2, len(chunks[2])) + chunks[2]
        batch = client.post(
            "/api/v1/chunks/process-batch",
            params={"session_id": session},
            content=binary,
            headers={"content-type": "application/vnd.lucidd.batch"},
        )
        assert batch.status_code == 200 and batch.json()["acked"] == 1, batch.text
        info = client.get(f"/api/v1/sessions/{session}").json()
        assert info["chunks"] == 3 and info["state"] == "open"
        root = client.get(f"/api/v1/sessions/{session}/merkle-root").json()
        assert root["size"] == 3 and len(root["root"]) == 64
        proof = client.get(f"/api/v1/sessions/{session}/proof/1")
        assert proof.status_code == 200 and proof.json()["root"] == root["root"]
        final = client.post(f"/api/v1/sessions/{session}/finalize")
        assert final.status_code == 200 and final.json()["size"] == 3
        again = client.post(f"/api/v1/sessions/{session}/finalize")
        assert again.json()["already_finalized"] is True
        assert again.json()["checkpoint"] == final.json()["checkpoint"]
        served = client.get("/openapi.json")
        assert served.status_code == 200
    # What the daemon stored is what was sent, and lucidctl verifies the HTTP proof offline.
    assert ctl(daemon, "get", session).stdout == b"".join(chunks)
    proof_file = short_tmp / "proof.json"
    proof_file.write_text(proof.text)
    checkpoint_file = short_tmp / "checkpoint.json"
    checkpoint_file.write_text(final.text)
    vkey = json.loads(ctl(daemon, "--json", "signing-key").stdout)["vkey"]
    verified = ctl(
        daemon, "verify", "--proof", proof_file, "--checkpoint", checkpoint_file,
        "--vkey", vkey, "--leaf-hash", original.json()["leaf_hash"],
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


def test_the_openapi_document_is_valid_and_names_every_route(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway]
) -> None:
    from openapi_spec_validator import validate  # noqa: PLC0415

    checked_in = Path(__file__).parents[2] / "lucidd" / "http" / "openapi.json"
    document = json.loads(checked_in.read_text())
    validate(document)
    gateway = gateways(make_daemon())
    with unix_client(gateway) as client:
        assert client.get("/openapi.json").json() == document
    assert set(document["paths"]) == {
        "/health", "/metrics", "/openapi.json", "/api/v1/config", "/api/v1/sessions",
        "/api/v1/sessions/{session_id}", "/api/v1/chunks/process",
        "/api/v1/chunks/process-batch", "/api/v1/sessions/{session_id}/merkle-root",
        "/api/v1/sessions/{session_id}/proof/{index}", "/api/v1/sessions/{session_id}/finalize",
    }  # fmt: skip


def test_each_refusal_is_a_problem_document_with_its_status(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway]
) -> None:
    daemon = make_daemon(max_chunk_size=256 * KiB, batch_size=4)
    gateway = gateways(daemon)
    unknown = "00000000-0000-4000-8000-000000000000"
    with unix_client(gateway) as client:
        session = open_session(client)
        assert put_raw(client, session, 0, b"first").status_code == 200
        assert_problem(client.get("/nowhere"), 404, "no_route")
        assert_problem(client.delete("/api/v1/config"), 405, "method_not_allowed")
        assert_problem(
            client.get(f"/api/v1/sessions/{unknown}/merkle-root"), 404, "unknown_session"
        )
        assert_problem(client.get(f"/api/v1/sessions/{session}/proof/5"), 400, "bad_request")
        assert_problem(client.get("/api/v1/sessions/not-a-uuid/merkle-root"), 400, "bad_request")
        assert_problem(put_raw(client, session, 0, b"other"), 409, "duplicate_index")
        too_big = put_raw(client, session, 1, b"x" * (256 * KiB + 1))
        assert_problem(too_big, 413, "too_large")
        # A body announced small but sent in chunks past the limit is cut off too.
        streamed = client.post(
            "/api/v1/chunks/process",
            params={"session_id": session, "chunk_index": 1},
            content=iter([b"y" * (128 * KiB)] * 3),
            headers={"content-type": "application/octet-stream"},
        )
        assert_problem(streamed, 413, "too_large")
        bad_json = client.post(
            "/api/v1/chunks/process",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_problem(bad_json, 400, "bad_request")
        wrong_shape = client.post("/api/v1/chunks/process", json={"session_id": session})
        assert_problem(wrong_shape, 400, "bad_request")
        bad_base64 = client.post(
            "/api/v1/chunks/process",
            json={"session_id": session, "chunk_index": 2, "data": "@@@"},
        )
        assert_problem(bad_base64, 400, "bad_request")
        csv = {"content-type": "text/csv"}
        as_csv = client.post("/api/v1/chunks/process", content=b"x", headers=csv)
        assert_problem(as_csv, 415, "unsupported_media_type")
        assert_problem(
            client.post("/api/v1/chunks/process", content=b"x"), 400, "bad_request"
        )  # no session_id in the query
        many = [{"chunk_index": i, "data": "eA=="} for i in range(1, 6)]
        too_many = client.post(
            "/api/v1/chunks/process-batch", json={"session_id": session, "chunks": many}
        )
        assert_problem(too_many, 400, "bad_request")
        # A batch answers each chunk: the duplicate is refused, the others stored.
        mixed = client.post(
            "/api/v1/chunks/process-batch",
            json={"session_id": session, "chunks": [
                {"chunk_index": 0, "data": b64(b"changed")},
                {"chunk_index": 1, "data": "eA=="},
            ]},
        )  # fmt: skip
        assert mixed.status_code == 200
        results = mixed.json()["results"]
        assert results[0]["error"]["code"] == "duplicate_index" and results[0]["chunk_index"] == 0
        assert results[1]["chunk_index"] == 1 and "leaf_hash" in results[1]
        assert client.post(f"/api/v1/sessions/{session}/finalize").status_code == 200
        assert_problem(put_raw(client, session, 9, b"late"), 409, "session_finalized")
        assert_problem(
            client.post("/api/v1/sessions", json={"compression": "lz9"}), 400, "bad_request"
        )
    # The daemon down: 503 with Retry-After, and the gateway still answers.
    daemon.stop()
    with unix_client(gateway) as client:
        down = client.get(f"/api/v1/sessions/{session}/merkle-root")
        assert_problem(down, 503, "unavailable")
        assert down.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 503


def test_tcp_needs_a_bearer_token_and_tokens_never_show(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway]
) -> None:
    daemon = make_daemon()
    write_tokens(daemon, f"# who may call\n{os.geteuid()} {TOKEN_A}\n")
    gateway = gateways(daemon, "127.0.0.1:0")
    with tcp_client(gateway, None) as anonymous:
        assert anonymous.get("/health").status_code == 200  # public
        refused = anonymous.get("/api/v1/config")
        assert_problem(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"].startswith("Bearer")
    with tcp_client(gateway, "c" * 40) as stranger:
        assert_problem(stranger.post("/api/v1/sessions"), 401, "unauthorized")
    with tcp_client(gateway, TOKEN_A) as client:
        session = open_session(client)
        assert put_raw(client, session, 0, b"over tcp").status_code == 200
    assert TOKEN_A not in gateway.log() and TOKEN_A not in daemon.log()


def test_tcp_without_tokens_is_refused_at_start(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    gateway = HttpGateway(daemon, "127.0.0.1:0")
    with pytest.raises(AssertionError, match="needs bearer tokens"):
        gateway.start()


def test_an_acknowledged_chunk_survives_kill_9_of_the_daemon(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway]
) -> None:
    daemon = make_daemon()
    gateway = gateways(daemon)
    data = os.urandom(200 * KiB)
    with unix_client(gateway) as client:
        session = open_session(client)
        assert put_raw(client, session, 0, data).status_code == 200
    daemon.kill_all()
    daemon.start()
    assert ctl(daemon, "get", session).stdout == data
    with unix_client(gateway) as client:  # the gateway reconnects by itself
        assert client.get(f"/api/v1/sessions/{session}/merkle-root").json()["size"] == 1


def _slow_connection(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address.removeprefix("unix:"))
    sock.sendall(b"POST /api/v1/sessions HTTP/1.1\r\nhost: x\r\n")
    return sock


def test_hostile_http_clients_leave_the_daemon_and_other_clients_unaffected(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway]
) -> None:
    daemon = make_daemon(max_chunk_size=1024 * KiB)
    gateway = gateways(daemon, http_request_timeout=1.0, http_user_requests=4)
    # Slowloris: connections that trickle their head are closed with 408 after the timeout.
    slow = [_slow_connection(gateway.address) for _ in range(20)]
    with unix_client(gateway) as client:
        session = open_session(client)  # served while they trickle
        for sock in slow[:5]:
            sock.sendall(b"x-slow: 1\r\n")
        time.sleep(2.5)
        for sock in slow:
            sock.settimeout(5)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            sock.close()
        # A header flood is refused with 431 before it grows.
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(gateway.address.removeprefix("unix:"))
        flood.settimeout(5)
        with contextlib.suppress(BrokenPipeError):
            flood.sendall(b"GET /health HTTP/1.1\r\n" + b"x-a: " + b"b" * 100_000 + b"\r\n")
        assert flood.recv(4096).startswith(b"HTTP/1.1 431")
        flood.close()
        # A client that stalls in the middle of a body is cut off; it stored nothing.
        stall = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stall.connect(gateway.address.removeprefix("unix:"))
        stall.sendall(
            f"POST /api/v1/chunks/process?session_id={session}&chunk_index=7 HTTP/1.1\r\n"
            "host: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n"
            "partial".encode()
        )
        stall.settimeout(10)
        assert stall.recv(4096) == b""  # closed once the gap passes
        stall.close()
        # A huge body is refused from its Content-Length, without reading it.
        huge = client.post(
            "/api/v1/chunks/process",
            params={"session_id": session, "chunk_index": 0},
            content=b"z" * (2 * 1024 * KiB),
            headers={"content-type": "application/octet-stream"},
        )
        assert_problem(huge, 413, "too_large")
        # The others keep being served, and the daemon is whole.
        assert put_raw(client, session, 0, b"after the storm").status_code == 200
        assert client.get("/health").json()["status"] == "ok"
    assert ctl(daemon, "get", session).stdout == b"after the storm"
    assert b"chunk 7" not in ctl(daemon, "--json", "info", session).stdout
    assert "Traceback" not in gateway.log()


def test_one_user_cannot_hold_every_request_slot(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway]
) -> None:
    daemon = make_daemon()
    gateway = gateways(daemon, http_user_requests=2)
    path = gateway.address.removeprefix("unix:")
    with unix_client(gateway) as client:
        session = open_session(client)
        held = []
        for index in range(2):  # two requests of this user, in progress: bodies not done
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(
                f"POST /api/v1/chunks/process?session_id={session}&chunk_index={index} "
                "HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
                "content-length: 10\r\n\r\nabc".encode()
            )
            held.append(sock)
        time.sleep(0.5)
        busy = put_raw(client, session, 5, b"third")
        assert_problem(busy, 429, "too_many_requests")
        assert busy.headers["retry-after"] == "1"
        for sock in held:
            sock.sendall(b"defghij")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.close()
        assert put_raw(client, session, 5, b"third").status_code == 200


def test_users_act_as_themselves_through_the_gateway(
    make_daemon: MakeDaemon, gateways: Callable[..., HttpGateway], host_users: HostUsers
) -> None:
    daemon = make_daemon()
    alice, bob = host_users.alice, host_users.bob
    write_tokens(daemon, f"{alice.name} {TOKEN_A}\n{bob.uid} {TOKEN_B}\n")
    gateway = gateways(daemon, "127.0.0.1:0")
    with tcp_client(gateway, TOKEN_A) as as_alice, tcp_client(gateway, TOKEN_B) as as_bob:
        reply = as_alice.post("/api/v1/sessions")
        assert reply.status_code == 201 and reply.json()["owner_uid"] == alice.uid
        session = reply.json()["session_id"]
        assert put_raw(as_alice, session, 0, b"alice's").status_code == 200
        for refused in (
            put_raw(as_bob, session, 1, b"bob's"),
            as_bob.get(f"/api/v1/sessions/{session}/merkle-root"),
            as_bob.get(f"/api/v1/sessions/{session}/proof/0"),
            as_bob.post(f"/api/v1/sessions/{session}/finalize"),
        ):
            assert_problem(refused, 403, "forbidden")
        assert as_alice.post(f"/api/v1/sessions/{session}/finalize").status_code == 200


def test_a_unix_socket_caller_is_the_kernels_peer(
    make_daemon: MakeDaemon,
    gateways: Callable[..., HttpGateway],
    host_users: HostUsers,
    short_tmp: Path,
) -> None:
    daemon = make_daemon()
    gateway = gateways(daemon)
    for folder in (short_tmp, daemon.base):
        folder.chmod(0o711)
    alice = host_users.alice
    script = (
        "import httpx, sys\n"
        f"t = httpx.HTTPTransport(uds={gateway.address.removeprefix('unix:')!r})\n"
        "c = httpx.Client(transport=t, base_url='http://lucidd')\n"
        "r = c.post('/api/v1/sessions')\n"
        "print(r.status_code, r.json()['owner_uid'])\n"
    )
    done = subprocess.run(
        alice.command([sys.executable, "-c", script]),
        env=alice.env({"PYTHONPATH": str(Path(__file__).parents[2])}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["201", str(alice.uid)]
