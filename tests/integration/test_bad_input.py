"""Bad input is a typed error, never a traceback (issue 10, item 5).

Each case is sent as raw frames, the way a hostile or buggy client would, and checked three
ways: the reply is the typed error, the connection goes on serving the next request when the
framing is intact, and the daemon's log holds no traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from lucidd import protocol as p
from lucidd.client import ControlClient, DataClient, new_session_id
from tests.conftest import Daemon
from tests.integration.test_hostile import assert_still_serving, raw_data_socket

MiB = 1024 * 1024
MAX_INDEX = 2**63 - 1


class RawControl:
    """A control connection that sends any request and reads replies as they come."""

    def __init__(self, d: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(d.runtime_dir / "control.sock"))
        self.decoder = p.control_reply_decoder(MiB)

    def send(self, *requests: p.Message) -> None:
        self.sock.sendall(b"".join(p.encode_frame(r) for r in requests))

    def replies(self, count: int) -> list[p.Message]:
        got: list[p.Message] = []
        while len(got) < count:
            data = self.sock.recv(65536)
            assert data, f"connection closed after {got}"
            self.decoder.receive_data(data)
            while (event := self.decoder.next_event()) is not None:
                assert isinstance(event, p.FrameMessage)
                got.append(event.message)
        return got

    def ask(self, request: p.Message) -> p.Message:
        self.send(request)
        (reply,) = self.replies(1)
        return reply

    def close(self) -> None:
        self.sock.close()


def stored_session(d: Daemon, chunks: int = 3) -> bytes:
    session = new_session_id()
    with DataClient(d.runtime_dir) as data:
        for index in range(chunks):
            data.put(session, index, b"chunk %d" % index)
    return session


def error_code(reply: p.Message) -> str:
    assert isinstance(reply, p.Error), reply
    return reply.code


def assert_no_traceback(d: Daemon) -> None:
    log = d.log()
    assert "Traceback" not in log, log
    assert "internal" not in log.lower() or "event=client_error" in log


def bad_control_requests(session: bytes) -> Iterator[p.Message]:
    for wrong in (b"", bytes(15), bytes(17), bytes(1000)):
        yield p.SessionInfo(req=1, session=wrong)
        yield p.GetRoot(req=1, session=wrong)
        yield p.ReadChunk(req=1, session=wrong, index=0)
        yield p.Finalize(req=1, session=wrong)
        yield p.Shred(req=1, session=wrong)
        yield p.OpenSession(req=1, session=wrong)
    for index in (-1, MAX_INDEX + 1, 2**64 - 1):
        yield p.GetInclusionProof(req=1, session=session, index=index)
        yield p.ReadChunk(req=1, session=session, index=index)
        yield p.GetRoot(req=1, session=session, size=index)
        yield p.GetConsistencyProof(req=1, session=session, size1=index)
        yield p.GetConsistencyProof(req=1, session=session, size1=0, size2=index)
    yield p.GetInclusionProof(req=1, session=session, index=MAX_INDEX)
    yield p.ReadChunk(req=1, session=session, index=MAX_INDEX)


def test_malformed_ids_and_out_of_range_indices_are_bad_requests_on_one_connection(
    daemon: Daemon,
) -> None:
    session = stored_session(daemon)
    control = RawControl(daemon)
    try:
        for request in bad_control_requests(session):
            code = error_code(control.ask(request))
            assert code in ("bad_request", "not_found"), (request, code)
        # The connection is still good: framing was never broken.
        info = control.ask(p.SessionInfo(req=2, session=session))
        assert isinstance(info, p.SessionInfoReply)
        assert info.info.chunks == 3
    finally:
        control.close()
    assert_no_traceback(daemon)
    assert_still_serving(daemon)


def test_an_index_past_2_63_on_the_data_socket_is_a_bad_frame(daemon: Daemon) -> None:
    with raw_data_socket(daemon) as sock:
        sock.sendall(
            p.encode_frame(p.Chunk(req=9, session=new_session_id(), index=2**63, length=1))
        )
        data = sock.recv(65536)
    decoder = p.data_reply_decoder()
    decoder.receive_data(data)
    event = decoder.next_event()
    assert isinstance(event, p.FrameMessage)
    assert error_code(event.message) == "bad_frame"
    assert_no_traceback(daemon)
    assert_still_serving(daemon)


def test_finalize_racing_shred_gives_typed_replies_only(daemon: Daemon) -> None:
    control = RawControl(daemon)
    try:
        for _ in range(20):
            session = stored_session(daemon, chunks=2)
            control.send(
                p.Finalize(req=1, session=session),
                p.Shred(req=2, session=session),
                p.Finalize(req=3, session=session),
                p.Shred(req=4, session=session),
            )
            replies = {r.req: r for r in control.replies(4)}
            for req in (1, 3):
                reply = replies[req]
                assert isinstance(reply, p.FinalizeReply) or error_code(reply) == (
                    "unknown_session"
                ), reply
            assert isinstance(replies[2], p.ShredReply) or error_code(replies[2]) == (
                "unknown_session"
            )
            shredded = [r for r in (replies[2], replies[4]) if isinstance(r, p.ShredReply)]
            assert len(shredded) == 1
    finally:
        control.close()
    assert_no_traceback(daemon)
    assert_still_serving(daemon)


def test_a_second_finalize_says_it_was_already_finalized(daemon: Daemon) -> None:
    session = stored_session(daemon)
    with ControlClient(daemon.runtime_dir) as control:
        first = control.finalize(session)
        second = control.finalize(session)
    assert not first.already_finalized
    assert second.already_finalized
    assert (second.size, second.root, second.checkpoint) == (
        first.size,
        first.root,
        first.checkpoint,
    )


def test_client_errors_are_logged_once_per_connection_and_rate_limited(daemon: Daemon) -> None:
    session = stored_session(daemon)
    control = RawControl(daemon)
    try:
        for _ in range(200):
            control.send(p.GetInclusionProof(req=1, session=session, index=99))
        control.replies(200)
    finally:
        control.close()
    for _ in range(60):  # 60 connections, each with one bad frame
        with raw_data_socket(daemon) as sock:
            sock.sendall(p.encode_frame(p.Chunk(req=1, session=b"short", index=0, length=0)))
            sock.recv(65536)
    lines = [line for line in daemon.log().splitlines() if "event=client_error" in line]
    # One line for the 200 refusals of one connection; the 60 connections hit the burst limit.
    assert 1 + 1 <= len(lines) <= 1 + 25, lines
    assert_no_traceback(daemon)
