"""Unit tests of the I/O-free client cores (lucidd.client.DataCore / ControlCore) and helpers.

No daemon and no fake server: frames the cores build are decoded with the daemon-side decoders
of lucidd.protocol, and replies are encoded with protocol.encode_frame and fed back in random
splits and orders. The only sockets are for "nobody is listening" and for the gathering send.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucidd import client as c
from lucidd import protocol as p
from lucidd.client.control_core import ControlCall
from lucidd.errors import (
    ERROR_BY_CODE,
    BadRequestError,
    InternalError,
    NotFoundError,
    SessionFinalizedError,
    TooLargeError,
    UnavailableError,
    UnknownSessionError,
)

SESSION = bytes(range(16))
OTHER_SESSION = bytes(range(16, 32))
MAX_PAYLOAD = 1 << 20
MAX_BATCH = 100


def leaf_for(req: int, index: int) -> bytes:
    """A distinct fake leaf hash per chunk, so a mismatched ack is visible."""
    return req.to_bytes(16, "big") + index.to_bytes(16, "big")


def ack(req: int, index: int, session: bytes = SESSION) -> bytes:
    return p.encode_frame(
        p.Ack(req=req, session=session, index=index, leaf_hash=leaf_for(req, index))
    )


def error(req: int, code: str, index: int | None = None, session: bytes | None = None) -> bytes:
    return p.encode_frame(
        p.Error(req=req, code=code, message=f"{code} happened", session=session, index=index)
    )


def splits(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` cut at random points (pieces of 0 to 40 bytes)."""
    pos = 0
    while pos < len(data):
        step = rng.randint(0, 40)
        yield data[pos : pos + step]
        pos += step


def decode_requests(stream: bytes) -> list[p.Event]:
    """Events the daemon's data-socket decoder sees for ``stream`` (payload views copied)."""
    decoder = p.data_request_decoder(MAX_PAYLOAD, MAX_BATCH)
    decoder.receive_data(stream)
    events: list[p.Event] = []
    while (event := decoder.next_event()) is not None:
        if isinstance(event, p.PayloadData):
            event = p.PayloadData(memoryview(bytes(event.data)))
        events.append(event)
    return events


# --- frames the cores build ------------------------------------------------------------


def test_chunk_frame_decodes_to_the_chunk_and_its_payload() -> None:
    core = c.DataCore()
    payload = b"hello world"
    req, header = core.chunk(SESSION, 7, len(payload))
    events = decode_requests(header + payload)
    assert events[0] == p.ChunkStart(req, SESSION, 7, len(payload))
    assert bytes(events[1].data) == payload  # type: ignore[union-attr]
    assert events[2] == p.ChunkEnd(req, SESSION, 7)
    assert len(events) == 3
    assert core.pending == 1


def test_batch_frame_decodes_to_each_item_with_its_payload() -> None:
    core = c.DataCore()
    payloads = {4: b"aaaa", 9: b"", 5: b"ccccccc"}
    req, header = core.batch(SESSION, [(i, len(d)) for i, d in payloads.items()])
    events = decode_requests(header + b"".join(payloads.values()))
    starts = [e for e in events if isinstance(e, p.ChunkStart)]
    assert starts == [p.ChunkStart(req, SESSION, i, len(d)) for i, d in payloads.items()]
    ends = [e for e in events if isinstance(e, p.ChunkEnd)]
    assert ends == [p.ChunkEnd(req, SESSION, i) for i in payloads]
    data = b"".join(bytes(e.data) for e in events if isinstance(e, p.PayloadData))
    assert data == b"".join(payloads.values())
    assert core.pending == 3


CONTROL_REQUESTS: list[p.Message] = [
    p.Health(req=0),
    p.Metrics(req=0),
    p.GetConfig(req=0),
    p.OpenSession(req=0, compression="zstd", session=SESSION),
    p.OpenSession(req=0),
    p.ListSessions(req=0),
    p.SessionInfo(req=0, session=SESSION),
    p.GetRoot(req=0, session=SESSION, size=3),
    p.GetInclusionProof(req=0, session=SESSION, index=2, size=9),
    p.GetConsistencyProof(req=0, session=SESSION, size1=2, size2=None),
    p.Finalize(req=0, session=SESSION),
    p.ReadChunk(req=0, session=SESSION, index=5),
    p.Shred(req=0, session=SESSION),
]


@pytest.mark.parametrize("request_", CONTROL_REQUESTS, ids=lambda m: type(m).__name__)
def test_control_frame_decodes_to_the_request_with_a_fresh_req(request_: p.Message) -> None:
    core = c.ControlCore()
    req, frame = core.request(request_)
    decoder = p.control_request_decoder()
    decoder.receive_data(frame)
    event = decoder.next_event()
    assert event == p.FrameMessage(msgspec.structs.replace(request_, req=req))
    assert decoder.next_event() is None
    assert req >= c.FIRST_REQ


def test_control_core_refuses_a_reply_type_as_request() -> None:
    with pytest.raises(TypeError):
        c.ControlCore().request(p.RootReply(req=0, session=SESSION, size=0, root=b""))


def test_request_ids_are_unique_and_never_zero() -> None:
    core = c.DataCore()
    reqs = [core.chunk(SESSION, i, 1)[0] for i in range(50)]
    reqs += [core.batch(SESSION, [(i, 1), (i + 1000, 2)])[0] for i in range(50)]
    assert len(set(reqs)) == len(reqs)
    assert 0 not in reqs
    control = c.ControlCore()
    creqs = [control.request(p.Health(req=0))[0] for _ in range(50)]
    assert len(set(creqs)) == len(creqs) and 0 not in creqs


@pytest.mark.parametrize(
    ("session", "index", "length"),
    [
        (SESSION[:15], 0, 0),
        (SESSION + b"x", 0, 0),
        (SESSION, -1, 0),
        (SESSION, 2**63, 0),
        (SESSION, 0, -1),
        (SESSION, True, 0),
    ],
)
def test_chunk_arguments_out_of_range_are_caller_bugs(
    session: bytes, index: int, length: int
) -> None:
    core = c.DataCore()
    with pytest.raises(ValueError):
        core.chunk(session, index, length)
    assert core.pending == 0


def test_batch_refuses_empty_and_repeated_indices() -> None:
    core = c.DataCore()
    with pytest.raises(ValueError):
        core.batch(SESSION, [])
    with pytest.raises(ValueError):
        core.batch(SESSION, [(1, 1), (2, 1), (1, 3)])
    assert core.pending == 0


# --- matching replies ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n_chunks=st.integers(1, 12),
    batch_sizes=st.lists(st.integers(1, 5), max_size=3),
    seed=st.integers(0, 2**32),
)
def test_replies_in_any_order_and_split_reach_their_requests(
    n_chunks: int, batch_sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    core = c.DataCore()
    expected: dict[tuple[int, int], str | None] = {}  # (req, index) -> error code or None
    next_index = 0
    for _ in range(n_chunks):
        req, _ = core.chunk(SESSION, next_index, 10)
        expected[(req, next_index)] = None
        next_index += 1
    for size in batch_sizes:
        indices = list(range(next_index, next_index + size))
        next_index += size
        req, _ = core.batch(SESSION, [(i, 1) for i in indices])
        expected.update(dict.fromkeys(((req, i) for i in indices), None))
    codes = ["duplicate_index", "session_finalized", "busy", "storage"]
    for key in expected:
        if rng.random() < 0.3:
            expected[key] = rng.choice(codes)
    replies = [
        ack(req, index) if code is None else error(req, code, index, SESSION)
        for (req, index), code in expected.items()
    ]
    rng.shuffle(replies)
    results: list[c.ChunkResult] = []
    for piece in splits(b"".join(replies), rng):
        results += core.receive_data(piece)
    assert core.pending == 0
    assert not core.broken
    assert sorted(r.key for r in results) == sorted(expected)
    for result in results:
        code = expected[(result.req, result.index)]
        if code is None:
            assert isinstance(result.outcome, p.Ack)
            assert result.outcome.leaf_hash == leaf_for(result.req, result.index)
        else:
            assert isinstance(result.outcome, ERROR_BY_CODE[code])
            assert result.outcome.context["index"] == result.index
            assert result.outcome.context["session"] == SESSION


def test_replies_byte_by_byte_complete_only_at_the_last_byte() -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 3, 5)
    frame = ack(req, 3)
    for i in range(len(frame) - 1):
        assert core.receive_data(frame[i : i + 1]) == []
    (result,) = core.receive_data(frame[-1:])
    assert result.key == (req, 3)
    assert isinstance(result.outcome, p.Ack)


@pytest.mark.parametrize("code", sorted(ERROR_BY_CODE))
def test_error_reply_becomes_its_lucid_error_with_context(code: str) -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 11, 5)
    (result,) = core.receive_data(error(req, code, 11, SESSION))
    assert type(result.outcome) is ERROR_BY_CODE[code]
    assert result.outcome.message == f"{code} happened"
    assert result.outcome.context == {"req": req, "session": SESSION, "index": 11}


def test_error_without_session_or_index_takes_them_from_the_request() -> None:
    core = c.DataCore()
    req, _ = core.chunk(OTHER_SESSION, 4, 5)
    (result,) = core.receive_data(error(req, "session_finalized"))
    assert isinstance(result.outcome, SessionFinalizedError)
    assert result.outcome.context["session"] == OTHER_SESSION
    assert result.outcome.context["index"] == 4


def test_unknown_error_code_becomes_internal_error() -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 0, 5)
    (result,) = core.receive_data(error(req, "no_such_code", 0))
    assert type(result.outcome) is InternalError


def test_batch_error_without_index_fails_every_item_of_that_batch_only() -> None:
    core = c.DataCore()
    single, _ = core.chunk(SESSION, 0, 1)
    batch, _ = core.batch(SESSION, [(1, 1), (2, 1), (3, 1)])
    results = core.receive_data(ack(batch, 2) + error(batch, "too_large"))
    assert isinstance(results[0].outcome, p.Ack)
    failed = {r.index: r.outcome for r in results[1:]}
    assert set(failed) == {1, 3}
    assert all(isinstance(e, TooLargeError) for e in failed.values())
    assert core.pending == 1 and core.is_pending(single)
    assert not core.broken


def test_error_for_an_unknown_request_fails_everything_and_breaks_the_core() -> None:
    core = c.DataCore()
    first, _ = core.chunk(SESSION, 0, 1)
    second, _ = core.batch(OTHER_SESSION, [(5, 1), (6, 1)])
    results = core.receive_data(error(0, "bad_frame"))
    assert sorted(r.key for r in results) == [(first, 0), (second, 5), (second, 6)]
    assert {type(r.outcome).__name__ for r in results} == {"BadFrameError"}
    sessions = {r.index: r.outcome.context["session"] for r in results}  # type: ignore[union-attr]
    assert sessions == {0: SESSION, 5: OTHER_SESSION, 6: OTHER_SESSION}
    assert core.broken and core.pending == 0
    with pytest.raises(UnavailableError):
        core.chunk(SESSION, 1, 1)


def test_ack_for_a_chunk_not_in_flight_breaks_the_core() -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 0, 1)
    results = core.receive_data(ack(req, 1))
    assert [r.key for r in results] == [(req, 0)]
    assert isinstance(results[0].outcome, InternalError)
    assert core.broken


def test_ack_naming_another_session_breaks_the_core() -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 0, 1)
    (result,) = core.receive_data(ack(req, 0, OTHER_SESSION))
    assert isinstance(result.outcome, InternalError)
    assert core.broken


def test_malformed_reply_bytes_fail_everything_pending() -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 0, 1)
    garbage = (3).to_bytes(4, "big") + b"\xc1\xc1\xc1"
    (result,) = core.receive_data(garbage)
    assert isinstance(result.outcome, InternalError)
    assert "malformed" in result.outcome.message
    assert core.broken
    assert core.receive_data(ack(req, 0)) == []


def test_connection_lost_fails_each_pending_chunk_with_unavailable() -> None:
    core = c.DataCore()
    req, _ = core.chunk(SESSION, 8, 1)
    results = core.connection_lost("lucidd closed the connection")
    assert [r.key for r in results] == [(req, 8)]
    outcome = results[0].outcome
    assert isinstance(outcome, UnavailableError)
    assert outcome.context == {"session": SESSION, "index": 8}
    assert core.connection_lost("again") == []


def test_control_replies_out_of_order_reach_their_requests() -> None:
    core = c.ControlCore()
    root_req, _ = core.request(p.GetRoot(req=0, session=SESSION))
    info_req, _ = core.request(p.SessionInfo(req=0, session=OTHER_SESSION))
    read_req, _ = core.request(p.ReadChunk(req=0, session=SESSION, index=3))
    summary = p.SessionSummary(OTHER_SESSION, "open", 2, 2, 10, "auto")
    stream = (
        p.encode_frame(p.SessionInfoReply(req=info_req, info=summary))
        + error(read_req, "not_found")
        + p.encode_frame(p.RootReply(req=root_req, session=SESSION, size=2, root=b"r" * 32))
    )
    results: list[c.ControlResult] = []
    for piece in splits(stream, random.Random(7)):
        results += core.receive_data(piece)
    by_req = {r.req: r.outcome for r in results}
    assert by_req[info_req] == p.SessionInfoReply(req=info_req, info=summary)
    assert isinstance(by_req[root_req], p.RootReply)
    not_found = by_req[read_req]
    assert isinstance(not_found, NotFoundError)
    assert not_found.context == {"req": read_req, "session": SESSION, "index": 3}
    assert core.pending == 0


def test_control_reply_of_the_wrong_type_is_internal_error() -> None:
    core = c.ControlCore()
    req, _ = core.request(p.Health(req=0))
    (result,) = core.receive_data(p.encode_frame(p.MetricsReply(req=req, metrics={})))
    assert isinstance(result.outcome, InternalError)
    assert core.broken


def test_control_error_for_unknown_request_fails_all_pending() -> None:
    core = c.ControlCore()
    first, _ = core.request(p.Finalize(req=0, session=SESSION))
    second, _ = core.request(p.Health(req=0))
    results = core.receive_data(error(0, "bad_frame"))
    assert sorted(r.req for r in results) == [first, second]
    assert core.broken


def test_control_error_is_the_class_of_its_code() -> None:
    core = c.ControlCore()
    req, _ = core.request(p.SessionInfo(req=0, session=SESSION))
    (result,) = core.receive_data(error(req, "unknown_session"))
    assert isinstance(result.outcome, UnknownSessionError)
    assert result.outcome.context["session"] == SESSION


# --- session ids and the runtime folder ------------------------------------------------


@given(st.binary(min_size=16, max_size=16))
def test_session_id_round_trips_through_its_text(session: bytes) -> None:
    text = c.format_session_id(session)
    assert text == str(uuid.UUID(bytes=session))
    assert c.parse_session_id(text) == session
    assert c.parse_session_id(text.upper()) == session


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "00112233445566778899aabbccddeeff",
        "{00112233-4455-6677-8899-aabbccddeeff}",
        "urn:uuid:00112233-4455-6677-8899-aabbccddeeff",
        "00112233-4455-6677-8899-aabbccddeef",
        "00112233-4455-6677-8899-aabbccddeeffa",
        "0011223g-4455-6677-8899-aabbccddeeff",
        "00112233_4455_6677_8899_aabbccddeeff",
    ],
)
def test_parse_session_id_rejects_garbage(text: str) -> None:
    with pytest.raises(c.SessionIdError) as info:
        c.parse_session_id(text)
    assert isinstance(info.value, BadRequestError)
    assert isinstance(info.value, ValueError)
    assert info.value.exit_code == 64


def test_format_session_id_refuses_wrong_length() -> None:
    with pytest.raises(ValueError):
        c.format_session_id(b"short")


def test_new_session_ids_are_random_uuid4() -> None:
    ids = {c.new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(uuid.UUID(bytes=i).version == 4 for i in ids)


def test_default_runtime_dir_follows_the_daemon_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCIDD_RUNTIME_DIR", "/srv/run")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert c.default_runtime_dir() == Path("/srv/run")
    monkeypatch.delenv("LUCIDD_RUNTIME_DIR")
    assert c.default_runtime_dir() == Path("/run/user/7/lucidd")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/ignored")
    assert c.default_runtime_dir() == Path(f"/tmp/lucidd-{os.getuid()}")


# --- what needs a socket, but no server ------------------------------------------------


def test_missing_socket_is_unavailable_with_a_hint(tmp_path: Path) -> None:
    for make in (c.DataClient, c.ControlClient):
        with pytest.raises(UnavailableError) as info:
            make(tmp_path)
        message = str(info.value)
        assert str(tmp_path) in message and "lucidd serve" in message
        assert info.value.exit_code == 69


def test_socket_nobody_listens_on_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound, never listening: connect is refused
        with pytest.raises(UnavailableError, match="refused"):
            c.ControlClient(path=path)

        async def connect() -> None:
            await c.AsyncControlClient.connect(path=path)

        with pytest.raises(UnavailableError):
            asyncio.run(connect())


def test_send_all_delivers_every_byte_of_many_buffers_in_order() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rng = random.Random(3)
    buffers: Sequence[c.Buffer] = [
        rng.randbytes(rng.randint(0, 50_000)) for _ in range(c.IOV_MAX + 300)
    ]
    expected = b"".join(bytes(b) for b in buffers)
    received = bytearray()

    def drain() -> None:
        while chunk := right.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    with left:
        c._send_all(left, buffers)  # partial writes and more buffers than IOV_MAX
    reader.join(timeout=30)
    right.close()
    assert bytes(received) == expected


# --- the typed control requests (what both front ends call) ----------------------------

SUMMARY = p.SessionSummary(SESSION, "open", 2, 2, 10, "auto")
ROOT_REPLY = p.RootReply(req=0, session=SESSION, size=2, root=b"r" * 32)
CHECK_REPLY = p.CheckReply(req=0, session=SESSION, size=2, checked=2, bad=[1])


@pytest.mark.parametrize(
    ("start", "sent", "reply", "value"),
    [
        (lambda core: core.metrics(), p.Metrics(req=0), p.MetricsReply(req=0, metrics={"a": 1.0}),
         {"a": 1.0}),
        (lambda core: core.open_session("zstd", str(uuid.UUID(bytes=SESSION)), label="x"),
         p.OpenSession(req=0, compression="zstd", session=SESSION, label="x"),
         p.SessionOpened(req=0, session=SESSION), SESSION),
        (lambda core: core.sessions(), p.ListSessions(req=0),
         p.SessionListReply(req=0, sessions=[SUMMARY]), [SUMMARY]),
        (lambda core: core.info(SESSION), p.SessionInfo(req=0, session=SESSION),
         p.SessionInfoReply(req=0, info=SUMMARY), SUMMARY),
        (lambda core: core.root(SESSION, 2), p.GetRoot(req=0, session=SESSION, size=2),
         ROOT_REPLY, ROOT_REPLY),
        (lambda core: core.shred(SESSION), p.Shred(req=0, session=SESSION),
         p.ShredReply(req=0, session=SESSION), None),
        (lambda core: core.check(SESSION), p.Check(req=0, session=SESSION), CHECK_REPLY,
         CHECK_REPLY),
    ],
    ids=["metrics", "open_session", "sessions", "info", "root", "shred", "check"],
)  # fmt: skip
def test_typed_request_sends_its_message_and_reads_its_reply(
    start: Callable[[c.ControlCore], ControlCall[object]],
    sent: p.Message,
    reply: p.Message,
    value: object,
) -> None:
    core = c.ControlCore()
    call = start(core)
    decoder = p.control_request_decoder()
    decoder.receive_data(call.frame)
    assert decoder.next_event() == p.FrameMessage(msgspec.structs.replace(sent, req=call.req))
    (result,) = core.receive_data(p.encode_frame(msgspec.structs.replace(reply, req=call.req)))
    assert result.req == call.req
    # A reply that is the value itself comes back with this request's id.
    expected = msgspec.structs.replace(reply, req=call.req) if value is reply else value
    assert call.result(result.outcome) == expected


def test_typed_request_raises_the_error_it_is_answered_with() -> None:
    core = c.ControlCore()
    call = core.finalize(SESSION)
    (result,) = core.receive_data(error(call.req, "session_finalized"))
    with pytest.raises(SessionFinalizedError) as info:
        call.result(result.outcome)
    assert info.value.context["session"] == SESSION


def test_typed_request_refuses_a_bad_session_before_registering() -> None:
    core = c.ControlCore()
    with pytest.raises(ValueError):
        core.info(b"short")
    with pytest.raises(c.SessionIdError):
        core.read_chunk("not-a-uuid", 0)
    assert core.pending == 0
