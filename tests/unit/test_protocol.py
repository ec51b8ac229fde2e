"""Unit tests of lucidd.protocol, the sans-IO frame codec (h11-style).

Every stream is fed whole, byte by byte and at random splits, and must give the same events;
payload bytes are compared per chunk (``PayloadData`` pieces concatenated), since how a payload
is cut into pieces depends on how the bytes arrive.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucidd import crypto, vocabulary
from lucidd import protocol as p
from lucidd.errors import (
    ERROR_BY_CODE,
    BadFrameError,
    BusyError,
    DuplicateIndexError,
    LucidError,
    TooLargeError,
    error_from_wire,
)

SID = bytes(range(16))
OTHER_SID = bytes(range(100, 116))
HASH = bytes(range(32))
MAX_PAYLOAD = 1000
MAX_BATCH = 8

FAST = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])

#: A decoded stream, normalized: events, with each chunk's payload pieces joined into bytes.
Normalized = list[object]


def data_decoder() -> p.FrameDecoder:
    return p.data_request_decoder(max_payload=MAX_PAYLOAD, max_batch=MAX_BATCH)


def frame(body: bytes) -> bytes:
    """A frame with an arbitrary body (for malformed input)."""
    return p.LENGTH_PREFIX.pack(len(body)) + body


def append_event(events: Normalized, event: p.Event) -> None:
    if isinstance(event, p.PayloadData):
        append_payload(events, bytes(event.data))  # copy: the view dies on the next call
    else:
        events.append(event)


def append_payload(events: Normalized, data: bytes) -> None:
    assert data, "PayloadData must never be empty"
    if events and isinstance(events[-1], bytes):
        events[-1] += data
    else:
        events.append(data)


def drain(decoder: p.FrameDecoder, events: Normalized) -> None:
    while (event := decoder.next_event()) is not None:
        append_event(events, event)


def decode_pieces(decoder: p.FrameDecoder, pieces: Iterable[bytes]) -> Normalized:
    events: Normalized = []
    for piece in pieces:
        decoder.receive_data(piece)
        drain(decoder, events)
    return events


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def decode_direct(decoder: p.FrameDecoder, stream: bytes, read_sizes: Iterator[int]) -> Normalized:
    """Consume ``stream`` as the supervisor's BufferedProtocol does: whenever the decoder
    offers a direct payload window, "read" payload bytes into our own buffer and report them;
    otherwise hand the decoder the next read."""
    events: Normalized = []
    pos = 0
    while pos < len(stream):
        size = next(read_sizes)
        window = decoder.direct_payload_size
        if window:
            n = min(window, size, len(stream) - pos)
            append_payload(events, stream[pos : pos + n])
            pos += n
            end = decoder.payload_received_directly(n)
            if end is not None:
                events.append(end)
        else:
            decoder.receive_data(stream[pos : pos + size])
            pos += size
        drain(decoder, events)
    return events


def chunk_events(req: int, session: bytes, index: int, payload: bytes) -> Normalized:
    events: Normalized = [p.ChunkStart(req, session, index, len(payload))]
    if payload:
        events.append(payload)
    events.append(p.ChunkEnd(req, session, index))
    return events


def decode_one(decoder: p.FrameDecoder, data: bytes) -> p.Event | None:
    decoder.receive_data(data)
    return decoder.next_event()


def raises_on_next(decoder: p.FrameDecoder, data: bytes) -> LucidError:
    decoder.receive_data(data)
    with pytest.raises(LucidError) as info:
        drain(decoder, [])
    return info.value


# --- every message type round-trips ---------------------------------------------------------

SUMMARY = p.SessionSummary(
    session=SID, state="open", size=3, chunks=3, plaintext_bytes=99, compression="zstd"
)

DATA_REPLIES: list[p.Message] = [
    p.Ack(req=1, session=SID, index=5, leaf_hash=HASH),
    p.Error(req=2, code="busy", message="try later"),
    p.Error(req=3, code="duplicate_index", message="index 9 differs", session=SID, index=9),
    p.ActingAs(req=4, uid=1000),
    p.MemoryShared(req=5, size=1 << 20),
]

CONTROL_REQUESTS: list[p.Message] = [
    p.Health(req=1),
    p.Metrics(req=2),
    p.GetConfig(req=3),
    p.OpenSession(req=4),
    p.OpenSession(req=5, compression="zlib", session=SID),
    p.ListSessions(req=6),
    p.SessionInfo(req=7, session=SID),
    p.GetRoot(req=8, session=SID),
    p.GetRoot(req=9, session=SID, size=3),
    p.GetInclusionProof(req=10, session=SID, index=2),
    p.GetInclusionProof(req=11, session=SID, index=2, size=7),
    p.GetConsistencyProof(req=12, session=SID, size1=2),
    p.GetConsistencyProof(req=13, session=SID, size1=2, size2=9),
    p.Finalize(req=14, session=SID),
    p.ReadChunk(req=15, session=SID, index=0),
    p.Shred(req=16, session=SID),
    p.Check(req=17, session=SID),
    p.GetSigningKey(req=18),
    p.GetCheckpoint(req=19, session=SID),
    p.GetCheckpoint(req=20, session=SID, size=7),
    p.Anchor(req=21),
    p.GetReceipt(req=22, session=SID, index=3),
    p.ListRemoteSessions(req=23),
    p.ActAs(req=24, uid=1000),
    p.ListKeys(req=25),
    p.RotateKeys(req=26),
    p.RotateKeys(req=27, new=True),
    p.RewrapKeys(req=28),
    p.RetireKey(req=29, key_id=4_294_967_295),
    p.LoadKeyring(req=30, keyring=b"lucidd-keyring v1\n"),
]

CONTROL_REPLIES: list[p.Message] = [
    p.HealthReply(
        req=1,
        status="ok",
        processes=[
            p.ProcessStatus(role="supervisor", pid=10, alive=True),
            p.ProcessStatus(role="worker", pid=11, alive=False, rss_bytes=5 << 20, restarts=2),
        ],
        sessions=4,
    ),
    p.MetricsReply(req=2, metrics={"chunks_total": 12.0, "ring_used": 0.25}),
    p.ConfigReply(req=3, config={"workers": 10, "compression": "auto", "watchdog": True}),
    p.SessionOpened(req=4, session=SID),
    p.SessionListReply(req=5, sessions=[SUMMARY, SUMMARY]),
    p.SessionListReply(req=6, sessions=[]),
    p.SessionInfoReply(req=7, info=SUMMARY),
    p.RootReply(req=8, session=SID, size=3, root=HASH),
    p.InclusionProofReply(
        req=9, session=SID, index=1, size=3, leaf_hash=HASH, path=[HASH, HASH[::-1]], root=HASH
    ),
    p.ConsistencyProofReply(
        req=10, session=SID, size1=1, size2=3, path=[HASH], root1=HASH, root2=HASH[::-1]
    ),
    p.FinalizeReply(req=11, session=SID, size=3, root=HASH, checkpoint=b"lucidd/x\n3\nAAAA\n"),
    p.ChunkReply(req=12, session=SID, index=0, data=b"plain"),
    p.ChunkReply(req=13, session=SID, index=1, data=b"", record=b"LUCD..."),
    p.ShredReply(req=14, session=SID),
    p.CheckReply(req=16, session=SID, size=3, checked=3, bad=[1]),
    p.CheckReply(req=17, session=SID, size=0, checked=0),
    p.SigningKeyReply(req=18, name="h.example/lucidd", key_id=b"\x01\x02\x03\x04", vkey="v"),
    p.CheckpointReply(req=19, session=SID, size=7, checkpoint=b"o\n7\nr\n\n\xe2\x80\x94 k s\n"),
    p.AnchorReply(req=21, size=0, checkpoint=b""),
    p.AnchorReply(req=21, size=3, checkpoint=b"n", backends=["command"]),
    p.ReceiptReply(
        req=22,
        session=SID,
        index=3,
        leaf_hash=b"\x00" * 32,
        session_size=7,
        session_checkpoint=b"note",
        path=[b"\x01" * 32],
        anchor_index=0,
        anchor_size=1,
        anchor_path=[],
        anchor_checkpoint=b"anchor note",
        attestations=[p.Attestation("command", b"out")],
    ),
    p.RemoteSessionsReply(req=23, hosts=[]),
    p.KeysReply(req=25, current=7, keys=[p.KeyInfo(id=7, current=True, sessions=2)]),
    p.KeysReply(
        req=25,
        current=7,
        keys=[
            p.KeyInfo(id=3, current=False, sessions=0),
            p.KeyInfo(id=7, current=True, sessions=1),
        ],
        missing=[p.MissingKey(session=SID, key_id=9)],
        unreadable=[SID],
    ),
    p.KeysChanged(req=26, current=7, keys=2, rewrapped=3, added=7),
    p.KeysChanged(req=29, current=7, keys=1, retired=3),
    p.RemoteSessionsReply(req=23, hosts=[p.RemoteHost("h1", "o.example/l", "v", [SID])]),
    p.HealthReply(req=18, status="degraded", processes=[], sessions=2, damaged_sessions=1),
    p.SessionInfoReply(
        req=19,
        info=p.SessionSummary(
            session=SID,
            state="open",
            size=3,
            chunks=3,
            plaintext_bytes=9,
            compression="auto",
            damaged=True,
            missing=[1],
            quarantined=2,
            problem="1 chunk(s) whose record is gone",
        ),
    ),
    p.Error(req=15, code="unknown_session", message="no such session", session=SID),
    p.ActingAs(req=16, uid=0),
]

DECODERS: list[tuple[str, Callable[[], p.FrameDecoder], list[p.Message]]] = [
    ("data_reply", p.data_reply_decoder, DATA_REPLIES),
    ("control_request", p.control_request_decoder, CONTROL_REQUESTS),
    ("control_reply", lambda: p.control_reply_decoder(max_chunk=4096), CONTROL_REPLIES),
]


def _concrete_messages(cls: type[p.Message]) -> set[type[p.Message]]:
    found: set[type[p.Message]] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _concrete_messages(sub)
    return found


def test_samples_cover_every_message_type() -> None:
    # The data socket's requests are decoded into events, tested on their own.
    requests = {p.Chunk, p.Batch, p.SharedChunk, p.ShareMemory}
    sampled = {type(m) for _, _, samples in DECODERS for m in samples} | requests
    assert sampled == _concrete_messages(p.Message)


@pytest.mark.parametrize(
    ("make_decoder", "message"),
    [
        pytest.param(make, message, id=f"{name}-{type(message).__name__}-{message.req}")
        for name, make, samples in DECODERS
        for message in samples
    ],
)
def test_message_round_trips_through_its_decoder(
    make_decoder: Callable[[], p.FrameDecoder], message: p.Message
) -> None:
    data = p.encode_frame(message)
    assert decode_pieces(make_decoder(), [data]) == [p.FrameMessage(message)]
    assert decode_pieces(make_decoder(), byte_by_byte(data)) == [p.FrameMessage(message)]


@pytest.mark.parametrize(("name", "make_decoder", "samples"), DECODERS)
def test_all_messages_of_a_channel_in_one_stream(
    name: str, make_decoder: Callable[[], p.FrameDecoder], samples: list[p.Message]
) -> None:
    stream = b"".join(p.encode_frame(m) for m in samples)
    expected = [p.FrameMessage(m) for m in samples]
    assert decode_pieces(make_decoder(), [stream]) == expected
    assert decode_pieces(make_decoder(), byte_by_byte(stream)) == expected
    assert decode_pieces(make_decoder(), split_at(stream, range(0, len(stream), 7))) == expected


def test_encode_frame_is_a_length_prefix_and_a_tagged_msgpack_body() -> None:
    message = p.Ack(req=7, session=SID, index=3, leaf_hash=HASH)
    data = p.encode_frame(message)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    body = msgspec.msgpack.decode(data[4:])
    assert body == {"type": "ack", "req": 7, "session": SID, "index": 3, "leaf_hash": HASH}


def test_defaults_are_omitted_on_the_wire() -> None:
    body = msgspec.msgpack.decode(p.encode_frame(p.GetRoot(req=1, session=SID))[4:])
    assert body == {"type": "root", "req": 1, "session": SID}


def test_act_as_is_a_frame_of_its_own_before_the_chunks_behind_it() -> None:
    act_as = p.ActAs(req=1, uid=p.MAX_UID)
    assert msgspec.msgpack.decode(p.encode_frame(act_as)[4:]) == {
        "type": "act_as",
        "req": 1,
        "uid": 2**32 - 2,
    }
    stream = p.encode_frame(act_as) + p.encode_frame(p.Chunk(req=2, session=SID, index=0, length=2))
    assert decode_pieces(data_decoder(), [stream + b"hi"]) == [
        p.FrameMessage(act_as),
        p.ChunkStart(2, SID, 0, 2),
        b"hi",
        p.ChunkEnd(2, SID, 0),
    ]


@pytest.mark.parametrize(
    ("make_decoder", "message"),
    [
        (data_decoder, p.Health(req=1)),
        (data_decoder, p.Ack(req=1, session=SID, index=0, leaf_hash=HASH)),
        (p.data_reply_decoder, p.Health(req=1)),
        (p.control_request_decoder, p.Ack(req=1, session=SID, index=0, leaf_hash=HASH)),
        (p.control_request_decoder, p.Chunk(req=1, session=SID, index=0, length=0)),
    ],
)
def test_a_message_of_another_channel_is_a_bad_frame(
    make_decoder: Callable[[], p.FrameDecoder], message: p.Message
) -> None:
    assert isinstance(raises_on_next(make_decoder(), p.encode_frame(message)), BadFrameError)


# --- chunks and batches -------------------------------------------------------------------


def test_chunk_is_announced_before_its_payload_arrives() -> None:
    decoder = data_decoder()
    header = p.encode_frame(p.Chunk(req=4, session=SID, index=2, length=5))
    assert decode_one(decoder, header) == p.ChunkStart(4, SID, 2, 5)
    assert decoder.next_event() is None
    assert decoder.direct_payload_size == 5
    assert decode_pieces(decoder, [b"hel", b"lo"]) == [b"hello", p.ChunkEnd(4, SID, 2)]
    assert decoder.buffered == 0


def test_empty_chunk_has_no_payload_event() -> None:
    stream = p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=0))
    assert decode_pieces(data_decoder(), [stream]) == chunk_events(1, SID, 0, b"")


def test_payload_bytes_that_look_like_frames_are_payload() -> None:
    inner = p.encode_frame(p.Chunk(req=9, session=SID, index=9, length=0))
    stream = p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=len(inner))) + inner
    assert decode_pieces(data_decoder(), byte_by_byte(stream)) == chunk_events(1, SID, 0, inner)


def test_batch_expands_into_chunks_with_the_batch_req() -> None:
    payloads = [b"aa", b"", b"cccc"]
    batch = p.Batch(req=42, session=SID, indices=[7, 3, 9], lengths=[2, 0, 4])
    stream = p.encode_frame(batch) + b"".join(payloads)
    expected = [
        *chunk_events(42, SID, 7, b"aa"),
        *chunk_events(42, SID, 3, b""),
        *chunk_events(42, SID, 9, b"cccc"),
    ]
    assert decode_pieces(data_decoder(), [stream]) == expected
    assert decode_pieces(data_decoder(), byte_by_byte(stream)) == expected


def test_large_payload_arrives_in_read_sized_pieces() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    decoder = p.data_request_decoder(max_payload=len(payload), max_batch=1)
    stream = p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=len(payload))) + payload
    pieces = split_at(stream, range(0, len(stream), 65536))
    assert decode_pieces(decoder, pieces) == chunk_events(1, SID, 0, payload)


def test_payload_view_is_released_when_more_data_arrives() -> None:
    decoder = data_decoder()
    decoder.receive_data(p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=4)) + b"ab")
    assert isinstance(decoder.next_event(), p.ChunkStart)
    event = decoder.next_event()
    assert isinstance(event, p.PayloadData)
    assert bytes(event.data) == b"ab"
    decoder.receive_data(b"cd")
    with pytest.raises(ValueError, match="released"):
        bytes(event.data)


# --- the direct payload path ----------------------------------------------------------------


def test_direct_payload_gives_the_same_chunk_end() -> None:
    decoder = data_decoder()
    header = p.encode_frame(p.Chunk(req=3, session=SID, index=1, length=10))
    assert decode_one(decoder, header) == p.ChunkStart(3, SID, 1, 10)
    assert decoder.direct_payload_size == 10
    assert decoder.payload_received_directly(4) is None
    assert decoder.direct_payload_size == 6
    assert decoder.payload_received_directly(6) == p.ChunkEnd(3, SID, 1)
    assert decoder.direct_payload_size == 0
    assert decoder.next_event() is None


def test_no_direct_window_while_bytes_are_buffered() -> None:
    decoder = data_decoder()
    decoder.receive_data(p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=10)) + b"x")
    assert isinstance(decoder.next_event(), p.ChunkStart)
    assert decoder.direct_payload_size == 0  # the buffered "x" must be delivered first
    event = decoder.next_event()
    assert isinstance(event, p.PayloadData)
    assert bytes(event.data) == b"x"
    assert decoder.direct_payload_size == 9


def test_no_direct_window_outside_a_payload() -> None:
    decoder = data_decoder()
    assert decoder.direct_payload_size == 0
    with pytest.raises(ValueError, match="direct payload window"):
        decoder.payload_received_directly(1)


@pytest.mark.parametrize("nbytes", [0, -1, 6])
def test_direct_payload_beyond_the_window_is_a_caller_bug(nbytes: int) -> None:
    decoder = data_decoder()
    decode_one(decoder, p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=5)))
    with pytest.raises(ValueError, match="direct payload window"):
        decoder.payload_received_directly(nbytes)
    assert decoder.direct_payload_size == 5  # nothing was counted


# --- whole, byte by byte, at random splits (hypothesis) ---------------------------------------

payloads = st.binary(max_size=300)
indices = st.integers(0, p.MAX_INDEX)
reqs = st.integers(0, 2**64 - 1)
sessions = st.sampled_from([SID, OTHER_SID])


@st.composite
def data_requests(draw: st.DrawFn) -> tuple[bytes, Normalized]:
    """A valid data-socket stream of Chunk and Batch frames, and the events it must give."""
    stream = bytearray()
    expected: Normalized = []
    for _ in range(draw(st.integers(0, 6))):
        req, session = draw(reqs), draw(sessions)
        items = draw(st.lists(st.tuples(indices, payloads), min_size=1, max_size=MAX_BATCH))
        if len(items) == 1 and draw(st.booleans()):
            ((index, payload),) = items
            stream += p.encode_frame(
                p.Chunk(req=req, session=session, index=index, length=len(payload))
            )
        else:
            stream += p.encode_frame(
                p.Batch(
                    req=req,
                    session=session,
                    indices=[index for index, _ in items],
                    lengths=[len(payload) for _, payload in items],
                )
            )
        for index, payload in items:
            stream += payload
            expected += chunk_events(req, session, index, payload)
    return bytes(stream), expected


@FAST
@given(data_requests())
def test_stream_whole_and_byte_by_byte_give_the_expected_events(
    case: tuple[bytes, Normalized],
) -> None:
    stream, expected = case
    assert decode_pieces(data_decoder(), [stream]) == expected
    assert decode_pieces(data_decoder(), byte_by_byte(stream)) == expected


@FAST
@given(data_requests(), st.data())
def test_stream_at_random_splits_gives_the_expected_events(
    case: tuple[bytes, Normalized], data: st.DataObject
) -> None:
    stream, expected = case
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    assert decode_pieces(data_decoder(), split_at(stream, cuts)) == expected


@FAST
@given(data_requests(), st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_direct_payload_consumer_gets_the_same_events(
    case: tuple[bytes, Normalized], read_sizes: list[int]
) -> None:
    stream, expected = case
    assert decode_direct(data_decoder(), stream, itertools.cycle(read_sizes)) == expected


@FAST
@given(st.lists(st.sampled_from(CONTROL_REPLIES), max_size=8), st.data())
def test_control_replies_at_random_splits(messages: list[p.Message], data: st.DataObject) -> None:
    stream = b"".join(p.encode_frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    decoder = p.control_reply_decoder(max_chunk=4096)
    assert decode_pieces(decoder, split_at(stream, cuts)) == [p.FrameMessage(m) for m in messages]


# --- limits -------------------------------------------------------------------------------


def test_oversized_frame_is_refused_from_its_length_prefix_alone() -> None:
    decoder = data_decoder()
    err = raises_on_next(decoder, p.LENGTH_PREFIX.pack(p.MAX_DATA_HEADER_SIZE + 1))
    assert isinstance(err, BadFrameError)
    assert str(p.MAX_DATA_HEADER_SIZE) in err.message


def test_frame_of_exactly_max_frame_waits_for_its_body() -> None:
    decoder = data_decoder()
    assert decode_one(decoder, p.LENGTH_PREFIX.pack(p.MAX_DATA_HEADER_SIZE)) is None


def test_control_reply_frame_limit_follows_max_chunk() -> None:
    max_chunk = 4096
    limit = 2 * max_chunk + p.CONTROL_FRAME_OVERHEAD  # plaintext and record
    big = p.ChunkReply(req=1, session=SID, index=0, data=b"x" * max_chunk, record=b"r" * 1000)
    assert decode_pieces(p.control_reply_decoder(max_chunk), [p.encode_frame(big)]) == [
        p.FrameMessage(big)
    ]
    assert decode_one(p.control_reply_decoder(max_chunk), p.LENGTH_PREFIX.pack(limit)) is None
    err = raises_on_next(p.control_reply_decoder(max_chunk), p.LENGTH_PREFIX.pack(limit + 1))
    assert isinstance(err, BadFrameError)


def test_chunk_of_exactly_max_payload_is_accepted() -> None:
    header = p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=MAX_PAYLOAD))
    assert decode_one(data_decoder(), header) == p.ChunkStart(1, SID, 0, MAX_PAYLOAD)


def test_chunk_over_max_payload_is_too_large_before_its_payload() -> None:
    header = p.encode_frame(p.Chunk(req=9, session=SID, index=4, length=MAX_PAYLOAD + 1))
    err = raises_on_next(data_decoder(), header)
    assert isinstance(err, TooLargeError)
    assert err.context == {"req": 9, "session": SID, "index": 4, "limit": MAX_PAYLOAD}


def test_batch_item_over_max_payload_names_that_item() -> None:
    batch = p.Batch(req=5, session=SID, indices=[0, 1], lengths=[1, MAX_PAYLOAD + 1])
    err = raises_on_next(data_decoder(), p.encode_frame(batch))
    assert isinstance(err, TooLargeError)
    assert (err.context["req"], err.context["index"]) == (5, 1)


def test_batch_of_exactly_max_batch_is_accepted() -> None:
    batch = p.Batch(req=1, session=SID, indices=list(range(MAX_BATCH)), lengths=[0] * MAX_BATCH)
    events = decode_pieces(data_decoder(), [p.encode_frame(batch)])
    assert events == [e for i in range(MAX_BATCH) for e in chunk_events(1, SID, i, b"")]


def test_batch_over_max_batch_is_too_large() -> None:
    n = MAX_BATCH + 1
    batch = p.Batch(req=6, session=SID, indices=list(range(n)), lengths=[0] * n)
    err = raises_on_next(data_decoder(), p.encode_frame(batch))
    assert isinstance(err, TooLargeError)
    assert err.context == {"req": 6, "limit": MAX_BATCH}


@pytest.mark.parametrize(
    "message",
    [
        p.Chunk(req=1, session=SID[:15], index=0, length=0),
        p.Chunk(req=1, session=SID + b"x", index=0, length=0),
        p.Chunk(req=1, session=b"", index=0, length=0),
        p.Batch(req=1, session=SID[:15], indices=[0], lengths=[0]),
    ],
)
def test_session_id_must_be_16_bytes(message: p.Message) -> None:
    err = raises_on_next(data_decoder(), p.encode_frame(message))
    assert isinstance(err, BadFrameError)
    assert err.message == "session id must be 16 bytes"


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (p.Chunk(req=1, session=SID, index=-1, length=0), "chunk index out of range"),
        (p.Chunk(req=1, session=SID, index=p.MAX_INDEX + 1, length=0), "chunk index out of range"),
        (p.Chunk(req=1, session=SID, index=0, length=-1), "negative chunk length"),
        (p.Batch(req=1, session=SID, indices=[0, -5], lengths=[0, 0]), "chunk index out of range"),
        (p.Batch(req=1, session=SID, indices=[0], lengths=[-1]), "negative chunk length"),
        (p.Batch(req=1, session=SID, indices=[0, 1], lengths=[0]), "differ in count"),
        (p.Batch(req=1, session=SID, indices=[], lengths=[]), "empty batch"),
    ],
)
def test_invalid_chunk_fields_are_bad_frames(message: p.Message, text: str) -> None:
    err = raises_on_next(data_decoder(), p.encode_frame(message))
    assert isinstance(err, BadFrameError)
    assert text in err.message
    assert err.context["req"] == 1


def test_index_at_max_index_is_accepted() -> None:
    header = p.encode_frame(p.Chunk(req=1, session=SID, index=p.MAX_INDEX, length=0))
    assert decode_one(data_decoder(), header) == p.ChunkStart(1, SID, p.MAX_INDEX, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgspec.msgpack.encode({"type": "nope", "req": 1}),
        msgspec.msgpack.encode({"type": "chunk", "req": 1}),
        msgspec.msgpack.encode(
            {"type": "chunk", "req": "1", "session": SID, "index": 0, "length": 0}
        ),
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"type": "chunk", "req": 1, "session": SID, "index": 0, "length": 0})
        + b"\x00",
    ],
)
def test_malformed_bodies_are_bad_frames(body: bytes) -> None:
    assert isinstance(raises_on_next(data_decoder(), frame(body)), BadFrameError)


def test_deeply_nested_reply_is_a_bad_frame_not_a_recursion_error() -> None:
    nested = b"\x91" * 20000 + b"\x01"  # [[[[...1...]]]]
    body = msgspec.msgpack.encode({"type": "config_reply", "req": 1, "config": {"a": 0}})
    body = body[:-1] + nested  # the value of "a"
    err = raises_on_next(p.control_reply_decoder(max_chunk=1024), frame(body))
    assert isinstance(err, BadFrameError)


def test_a_broken_stream_keeps_raising_the_same_error() -> None:
    decoder = data_decoder()
    first = raises_on_next(decoder, p.LENGTH_PREFIX.pack(p.MAX_DATA_HEADER_SIZE + 1))
    for _ in range(3):
        with pytest.raises(BadFrameError) as info:
            decoder.next_event()
        assert info.value is first
    decoder.receive_data(p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=0)))
    with pytest.raises(BadFrameError):
        decoder.next_event()


def test_events_before_an_error_are_delivered_first() -> None:
    good = p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=2)) + b"ok"
    bad = p.encode_frame(p.Chunk(req=2, session=SID, index=1, length=MAX_PAYLOAD + 1))
    decoder = data_decoder()
    decoder.receive_data(good + bad)
    events: Normalized = []
    with pytest.raises(TooLargeError):
        drain(decoder, events)
    assert events == chunk_events(1, SID, 0, b"ok")


# --- fuzz: only events or LucidError, bounded buffering ---------------------------------------

_TAGS = ["chunk", "batch", "ack", "error", "health", "config_reply", "metrics_reply", "nope"]
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=20)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = [
    "req", "session", "index", "length", "indices", "lengths", "code", "message",
    "leaf_hash", "config", "metrics", "status", "processes",
]  # fmt: skip
_tagged_dicts = st.builds(
    lambda tag, extra: {"type": tag, **extra},
    st.sampled_from(_TAGS),
    st.dictionaries(st.sampled_from(_fields), _values, max_size=6),
)
_valid_frames = st.sampled_from(
    [p.encode_frame(m) for m in DATA_REPLIES + CONTROL_REQUESTS + CONTROL_REPLIES]
    + [
        p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=3)),
        p.encode_frame(p.Batch(req=1, session=SID, indices=[0, 1], lengths=[2, 2])),
    ]
)
_pieces = st.one_of(
    st.binary(max_size=64),  # raw garbage, mostly absurd length prefixes
    st.binary(max_size=200).map(frame),  # framed garbage
    _tagged_dicts.map(lambda d: frame(msgspec.msgpack.encode(d))),  # plausible but wrong
    _valid_frames,
)
garbage_streams = st.lists(_pieces, max_size=8).map(b"".join)

FUZZ_DECODERS: list[tuple[str, Callable[[], p.FrameDecoder], int]] = [
    ("data_request", data_decoder, p.MAX_DATA_HEADER_SIZE),
    ("data_reply", p.data_reply_decoder, p.MAX_DATA_HEADER_SIZE),
    ("control_request", p.control_request_decoder, p.MAX_DATA_HEADER_SIZE),
    (
        "control_reply",
        lambda: p.control_reply_decoder(max_chunk=1024),
        1024 + p.CONTROL_FRAME_OVERHEAD,
    ),
]


def feed_untrusted(decoder: p.FrameDecoder, pieces: Sequence[bytes], max_frame: int) -> None:
    """Feed ``pieces``; events or a LucidError are fine, anything else fails the test."""
    bound = max_frame + p.LENGTH_PREFIX_SIZE
    for piece in pieces:
        decoder.receive_data(piece)
        assert decoder.buffered <= bound + len(piece)
        try:
            while (event := decoder.next_event()) is not None:
                assert isinstance(event, p.FrameMessage | p.ChunkStart | p.PayloadData | p.ChunkEnd)
                if isinstance(event, p.PayloadData):
                    assert len(event.data) > 0
        except (BadFrameError, TooLargeError) as exc:
            with pytest.raises(type(exc)):
                decoder.next_event()
            return
        assert decoder.buffered < bound


@pytest.mark.parametrize(("name", "make_decoder", "max_frame"), FUZZ_DECODERS)
@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(stream=garbage_streams, data=st.data())
def test_untrusted_bytes_give_events_or_a_lucid_error(
    name: str,
    make_decoder: Callable[[], p.FrameDecoder],
    max_frame: int,
    stream: bytes,
    data: st.DataObject,
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=16))
    feed_untrusted(make_decoder(), split_at(stream, cuts), max_frame)


@FAST
@given(stream=st.binary(max_size=2000), read_size=st.integers(1, 300))
def test_random_bytes_to_the_data_decoder_via_the_direct_path(
    stream: bytes, read_size: int
) -> None:
    # Prefix a valid header so the garbage is sometimes payload taken directly.
    header = p.encode_frame(p.Chunk(req=1, session=SID, index=0, length=min(len(stream), 500)))
    with contextlib.suppress(BadFrameError, TooLargeError):
        decode_direct(data_decoder(), header + stream, itertools.repeat(read_size))


# --- error_reply --------------------------------------------------------------------------


def test_error_reply_carries_code_message_session_and_index() -> None:
    err = DuplicateIndexError("index 3 differs", session=SID, index=3, limit=9)
    assert p.error_reply(17, err) == p.Error(
        req=17, code="duplicate_index", message="index 3 differs", session=SID, index=3
    )


def test_error_reply_of_a_decoder_error_round_trips_to_the_same_class() -> None:
    header = p.encode_frame(p.Chunk(req=9, session=SID, index=4, length=MAX_PAYLOAD + 1))
    err = raises_on_next(data_decoder(), header)
    reply = p.error_reply(9, err)
    assert (reply.code, reply.session, reply.index) == ("too_large", SID, 4)
    event = decode_one(p.data_reply_decoder(), p.encode_frame(reply))
    assert event == p.FrameMessage(reply)
    assert isinstance(event, p.FrameMessage)
    wire = event.message
    assert isinstance(wire, p.Error)
    assert type(error_from_wire(wire.code, wire.message)) is TooLargeError


def test_error_reply_without_context_has_no_session_or_index() -> None:
    assert p.error_reply(1, BusyError("draining")) == p.Error(
        req=1, code="busy", message="draining"
    )


def test_error_reply_ignores_context_of_the_wrong_type() -> None:
    reply = p.error_reply(1, BadFrameError("x", session="not-bytes", index="7"))
    assert (reply.session, reply.index) == (None, None)


@pytest.mark.parametrize("cls", [cls for _, cls in sorted(ERROR_BY_CODE.items())])
def test_error_reply_uses_each_class_code(cls: type[LucidError]) -> None:
    reply = p.error_reply(3, cls("m"))
    assert reply.code == cls.code
    assert type(error_from_wire(reply.code, reply.message)) is cls


def test_error_reply_and_context_types_survive_msgpack() -> None:
    reply = p.error_reply(5, DuplicateIndexError("x", session=SID, index=2**63 - 1))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(reply), type=p.Error) == reply


def test_the_largest_batch_config_allows_fits_one_header_frame() -> None:
    """batch_size's ceiling and the data socket's frame bound are one limit, not two."""
    n = p.MAX_BATCH_ITEMS
    worst = p.Batch(
        req=2**63 - 1, session=bytes(16), indices=[2**63 - 1] * n, lengths=[2**32 - 1] * n
    )
    frame = p.encode_frame(worst)
    assert len(frame) - p.LENGTH_PREFIX_SIZE <= p.MAX_DATA_HEADER_SIZE
    decoder = p.data_request_decoder(max_payload=2**32 - 1, max_batch=n)
    decoder.receive_data(frame)
    event = decoder.next_event()
    assert isinstance(event, p.ChunkStart) and event.index == 2**63 - 1


def test_the_compression_type_and_the_enum_name_the_same_choices() -> None:
    """crypto's static Literal and vocabulary's enum must never drift apart."""
    assert set(typing.get_args(crypto.Compression)) == {c.value for c in vocabulary.Compression}


# --- shared memory (issue 17) --------------------------------------------------------


def test_a_shared_chunk_is_one_event_and_no_payload_follows() -> None:
    share = p.ShareMemory(req=1, size=4096)
    shared = p.SharedChunk(req=2, session=SID, index=3, offset=128, length=10)
    after = p.Chunk(req=3, session=SID, index=4, length=2)
    stream = p.encode_frame(share) + p.encode_frame(shared) + p.encode_frame(after) + b"hi"
    events = decode_pieces(data_decoder(), [stream])
    assert events == [
        p.FrameMessage(share),
        p.ChunkStart(2, SID, 3, 10, offset=128),
        p.ChunkStart(3, SID, 4, 2),
        b"hi",
        p.ChunkEnd(3, SID, 4),
    ]
    assert isinstance(events[1], p.ChunkStart) and events[1].shared
    assert isinstance(events[2], p.ChunkStart) and not events[2].shared


@pytest.mark.parametrize(
    ("chunk", "code"),
    [
        (p.SharedChunk(req=1, session=SID, index=0, offset=-1, length=1), "bad_frame"),
        (p.SharedChunk(req=1, session=b"short", index=0, offset=0, length=1), "bad_frame"),
        (p.SharedChunk(req=1, session=SID, index=-1, offset=0, length=1), "bad_frame"),
        (p.SharedChunk(req=1, session=SID, index=0, offset=0, length=-1), "bad_frame"),
        (p.SharedChunk(req=1, session=SID, index=0, offset=0, length=MAX_PAYLOAD + 1), "too_large"),
    ],
)
def test_a_shared_chunk_is_checked_like_any_chunk(chunk: p.SharedChunk, code: str) -> None:
    err = raises_on_next(data_decoder(), p.encode_frame(chunk))
    assert err.code == code
