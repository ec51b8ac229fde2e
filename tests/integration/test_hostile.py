"""Bad input never takes the daemon down or loses accepted data (issue: the daemon, item 6)."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable

import pytest

from lucidd import protocol as p
from lucidd.client import ControlClient, DataClient, new_session_id
from lucidd.errors import BusyError, SessionFullError, UnknownSessionError
from tests.conftest import Daemon

MiB = 1024 * 1024


def raw_data_socket(d: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(d.runtime_dir / "data.sock"))
    return sock


def read_replies_until_closed(sock: socket.socket) -> list[p.Message]:
    """Every reply the daemon sends before it closes the connection."""
    decoder = p.data_reply_decoder()
    replies: list[p.Message] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return replies
        decoder.receive_data(data)
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, p.FrameMessage)
            replies.append(event.message)


def read_replies(sock: socket.socket, count: int) -> list[p.Message]:
    decoder = p.data_reply_decoder()
    replies: list[p.Message] = []
    while len(replies) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {replies}"
        decoder.receive_data(data)
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, p.FrameMessage)
            replies.append(event.message)
    return replies


def assert_still_serving(d: Daemon) -> None:
    session = new_session_id()
    with DataClient(d.runtime_dir) as client:
        ack = client.put(session, 0, b"still here")
    with ControlClient(d.runtime_dir) as control:
        assert control.read_chunk(session, 0).data == b"still here"
        assert ack.leaf_hash == control.inclusion_proof(session, 0).leaf_hash


def wait_metric(d: Daemon, name: str, want: float, timeout: float = 10.0) -> None:
    """Metrics from the supervisor refresh every second: poll until ``name == want``."""
    deadline = time.monotonic() + timeout
    with ControlClient(d.runtime_dir) as control:
        while True:
            value = control.metrics().get(name)
            if value == want:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} = {value}, expected {want}")
            time.sleep(0.2)


def test_malformed_frame_gets_bad_frame_and_closes_only_that_connection(daemon: Daemon) -> None:
    bystander = DataClient(daemon.runtime_dir)
    session = new_session_id()
    bystander.put(session, 0, b"before")
    with raw_data_socket(daemon) as sock:
        sock.sendall(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
        replies = read_replies_until_closed(sock)
    assert [(type(r), getattr(r, "code", None)) for r in replies] == [(p.Error, "bad_frame")]
    bystander.put(session, 1, b"after")  # the other connection is unaffected
    bystander.close()
    with ControlClient(daemon.runtime_dir) as control:
        assert control.read_chunk(session, 0).data == b"before"
        assert control.read_chunk(session, 1).data == b"after"


def test_frame_length_over_the_limit_is_refused_before_reading_it(daemon: Daemon) -> None:
    with raw_data_socket(daemon) as sock:
        sock.sendall(struct.pack(">I", 2**32 - 1))
        replies = read_replies_until_closed(sock)
    assert [getattr(r, "code", None) for r in replies] == ["bad_frame"]
    assert_still_serving(daemon)


def test_chunk_over_max_size_gets_too_large_with_its_request_id(daemon: Daemon) -> None:
    with raw_data_socket(daemon) as sock:
        header = p.Chunk(req=77, session=new_session_id(), index=0, length=10 * MiB + 1)
        sock.sendall(p.encode_frame(header))
        replies = read_replies_until_closed(sock)
    assert len(replies) == 1
    error = replies[0]
    assert isinstance(error, p.Error)
    assert (error.code, error.req) == ("too_large", 77)
    assert_still_serving(daemon)


def test_session_id_of_wrong_length_is_a_bad_frame(daemon: Daemon) -> None:
    with raw_data_socket(daemon) as sock:
        sock.sendall(p.encode_frame(p.Chunk(req=3, session=b"short", index=0, length=1)) + b"x")
        replies = read_replies_until_closed(sock)
    assert [getattr(r, "code", None) for r in replies] == ["bad_frame"]


def test_client_vanishing_mid_payload_gives_its_slots_back(daemon: Daemon) -> None:
    session = new_session_id()
    sock = raw_data_socket(daemon)
    sock.sendall(p.encode_frame(p.Chunk(req=1, session=session, index=0, length=8 * MiB)))
    sock.sendall(os.urandom(3 * MiB))
    wait_metric(daemon, "in_flight", 1.0)
    sock.close()
    wait_metric(daemon, "in_flight", 0.0)
    wait_metric(daemon, "ring_slots_used", 0.0)
    # the index was never stored: the same index can be sent again in full
    with DataClient(daemon.runtime_dir) as client:
        client.put(session, 0, b"complete this time")
    with ControlClient(daemon.runtime_dir) as control:
        assert control.read_chunk(session, 0).data == b"complete this time"


def test_unknown_session_on_the_control_socket(daemon: Daemon) -> None:
    with ControlClient(daemon.runtime_dir) as control:
        calls: list[Callable[[bytes], object]] = [
            control.root,
            control.info,
            control.shred,
            control.finalize,
            lambda s: control.inclusion_proof(s, 0),
            lambda s: control.read_chunk(s, 0),
        ]
        for call in calls:
            with pytest.raises(UnknownSessionError):
                call(new_session_id())
    assert_still_serving(daemon)


def test_malformed_control_request_closes_that_connection_only(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.runtime_dir / "control.sock"))
        sock.sendall(struct.pack(">I", 3) + b"\x93\x01\x02")
        decoder = p.control_reply_decoder(MiB)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        decoder.receive_data(data)
        event = decoder.next_event()
    assert isinstance(event, p.FrameMessage)
    assert isinstance(event.message, p.Error)
    assert event.message.code == "bad_frame"
    assert_still_serving(daemon)


def test_full_session_is_refused_and_space_left_is_still_usable(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(max_session_size=10_000)
    session = new_session_id()
    with DataClient(d.runtime_dir) as client:
        client.put(session, 0, b"a" * 6000)
        with pytest.raises(SessionFullError):
            client.put(session, 1, b"b" * 6000)
        client.put(session, 1, b"c" * 4000)  # exactly the limit
    with ControlClient(d.runtime_dir) as control:
        assert control.info(session).plaintext_bytes == 10_000


def test_index_far_past_the_first_gap_is_refused_as_busy(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(reorder_window=16)
    session = new_session_id()
    with DataClient(d.runtime_dir) as client:
        client.put(session, 15, b"inside the window")
        with pytest.raises(BusyError):
            client.put(session, 16, b"too far")


def test_same_index_twice_in_flight_is_sealed_once(daemon: Daemon) -> None:
    session = new_session_id()
    payload = os.urandom(500_000)
    with raw_data_socket(daemon) as sock:
        frames = [
            p.encode_frame(p.Chunk(req=r, session=session, index=0, length=len(payload)))
            for r in (1, 2)
        ]
        sock.sendall(frames[0] + payload + frames[1] + payload)
        replies = read_replies(sock, 2)
    kinds = sorted((type(r).__name__, getattr(r, "code", "")) for r in replies)
    assert kinds in (
        [("Ack", ""), ("Ack", "")],  # the second arrived after the first was durable
        [("Ack", ""), ("Error", "duplicate_index")],  # it arrived while the first was in flight
    )
    with ControlClient(daemon.runtime_dir) as control:
        assert control.info(session).chunks == 1
        assert control.read_chunk(session, 0).data == payload


def test_random_garbage_from_many_connections_leaves_accepted_data_intact(
    daemon: Daemon,
) -> None:
    session = new_session_id()
    payloads = [os.urandom(2000) for _ in range(20)]
    rng = random.Random(1234)
    with DataClient(daemon.runtime_dir) as client:
        for i, payload in enumerate(payloads[:10]):
            client.put(session, i, payload)
        for _ in range(30):
            with raw_data_socket(daemon) as sock:
                try:
                    sock.sendall(rng.randbytes(rng.randrange(1, 5000)))
                    sock.shutdown(socket.SHUT_WR)
                    read_replies_until_closed(sock)
                except OSError:
                    pass
        for i, payload in enumerate(payloads[10:], start=10):
            client.put(session, i, payload)
    with ControlClient(daemon.runtime_dir) as control:
        for i, payload in enumerate(payloads):
            assert control.read_chunk(session, i).data == payload


def test_backpressure_with_a_tiny_ring_never_drops_a_chunk(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon(ring_size=2 * MiB, slot_size=64 * 1024, max_chunk_size=MiB)
    session = new_session_id()
    payloads = [os.urandom(256 * 1024) for _ in range(64)]
    # Over the socket: shared memory would keep the payloads out of the ring.
    with DataClient(d.runtime_dir, shared_memory=False) as client:
        acks = client.put_many(session, list(enumerate(payloads)), window=64)
    assert sorted(a.index for a in acks) == list(range(64))
    with ControlClient(d.runtime_dir) as control:
        deadline = time.monotonic() + 5  # supervisor figures reach metrics once a second
        while control.metrics()["backpressure_pauses_total"] == 0:
            assert time.monotonic() < deadline, "the ring never filled up"
            time.sleep(0.2)
        for i in (0, 31, 63):
            assert control.read_chunk(session, i).data == payloads[i]
