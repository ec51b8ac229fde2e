"""Unit tests for lucidd.crypto: known answers, properties and forgeries.

Known answers come from /work/shared/vectors (Wycheproof AES-GCM, RFC 5869) and from frozen
records that are also rebuilt here from primitives (struct, HMAC, AESGCM), so a frozen value
can only pass if the format in docs/format.md is what the code writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucidd.crypto import (
    AUTH_FAILED,
    COMPRESSIONS,
    FINAL_PLAINTEXT_SIZE,
    HEADER_SIZE,
    KEY_SIZE,
    MAGIC,
    NONCE_SIZE,
    RECORD_OVERHEAD,
    SESSION_ID_SIZE,
    STREAM_PIECE,
    TAG_SIZE,
    WRAPPED_SECRET_SIZE,
    ChunkSealer,
    Codec,
    Compression,
    FinalInfo,
    Keyring,
    RecordType,
    derive_chunk_key,
    derive_final_key,
    hkdf_expand,
    key_commitment,
    new_session_secret,
    open_final,
    open_record,
    parse_header,
    rewrap_secret,
    seal_chunk,
    seal_final,
    unwrap_secret,
    wrap_secret,
)
from lucidd.crypto import seal as sealing
from lucidd.errors import FormatError, IntegrityError, KeyringError

VECTORS = Path(os.environ.get("LUCIDD_VECTORS", "/work/shared/vectors"))
MODES: tuple[Compression, ...] = ("auto", "zstd", "zlib", "off")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HYP_MAX = 64 * 1024
MIB = 1024 * 1024

# Fixed inputs of the frozen records (also used in docs/format.md).
SECRET = bytes(range(32))
SESSION = bytes.fromhex("00112233445566778899aabbccddeeff")
FROZEN_INDEX = 5
FROZEN_NONCE = bytes.fromhex("0f0e0d0c0b0a090807060504")
FROZEN_PLAINTEXT = b"lucidd v1 frozen record\n"
FROZEN_RECORD = bytes.fromhex(
    "4c5543440101000100112233445566778899aabbccddeeff0000000000000005000000180000"
    "00180f0e0d0c0b0a09080706050478b4b221d6527fe494bcc4f28f2e7686b7cb48312c94c4e3"
    "4b7fcd13c4d124e5eeacab7ef0a4c11819b240881d8d652b6ba1bb0b6f6f12c8a7084c279699"
    "7975cf6d26a676dd6bd3"
)
FROZEN_LEAF = bytes.fromhex("e93061fb20392072c3d0489ddbeadfbf68dad6fc8e385ba4a4361cb6cbfedd42")
FINAL_SIZE = 6
FINAL_TOTAL = 123456
FINAL_ROOT = bytes(range(0x20, 0x40))
FINAL_NONCE = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaab")
FROZEN_FINAL = bytes.fromhex(
    "4c5543440102000100112233445566778899aabbccddeeff0000000000000006000000300000"
    "0030a0a1a2a3a4a5a6a7a8a9aaab91755565bb3f5877876616970f59bc3a937519d8f428e87f"
    "f6163fd90da4dba29a3196ebfa8ec340e03a4c6a0b53e487213d388754493937d479d40b070c"
    "796dd7d3353bee92050db95b2dc21104198c6ea955316e799df43182007a9fe9c00f"
)
FROZEN_FINAL_LEAF = bytes.fromhex(
    "6232113fcb0d44f266eabf7397b1ccbbab39884968776660ae9b9b62beb80ad1"
)


# --- independent reference builders (struct + cryptography, no lucidd code) -------------------
def ref_expand32(prk: bytes, info: bytes) -> bytes:
    return HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def ref_chunk_key(secret: bytes, session_id: bytes, index: int) -> bytes:
    return ref_expand32(secret, b"lucidd/v1/chunk\x00" + session_id + struct.pack(">Q", index))


def ref_record(
    key: bytes,
    *,
    record_type: int,
    codec: int,
    session_id: bytes,
    index: int,
    plaintext_length: int,
    body: bytes,
    nonce: bytes,
    commitment: bytes | None = None,
) -> bytes:
    """Build a record the way docs/format.md describes it, with any field forged."""
    if commitment is None:
        commitment = hashlib.sha256(b"lucidd/v1/commit\x00" + key).digest()
    header = (
        b"LUCD"
        + bytes((1, record_type, codec, 1))
        + session_id
        + struct.pack(">QII", index, plaintext_length, len(body))
        + nonce
        + commitment
    )
    assert len(header) == 84
    return header + AESGCM(key).encrypt(nonce, body, header)


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def load_json(name: str) -> dict[str, Any]:
    with open(VECTORS / name, encoding="utf-8") as f:
        result: dict[str, Any] = json.load(f)
    return result


# --- Wycheproof AES-GCM ----------------------------------------------------------------------
def _wycheproof_subset() -> list[dict[str, Any]]:
    data = load_json("wycheproof_aes_gcm_test.json")
    return [
        test
        for group in data["testGroups"]
        if (group["keySize"], group["ivSize"], group["tagSize"]) == (256, 96, 128)
        for test in group["tests"]
    ]


WYCHEPROOF = _wycheproof_subset()


def test_wycheproof_subset_is_the_documented_66_tests() -> None:
    results = [t["result"] for t in WYCHEPROOF]
    assert len(WYCHEPROOF) == 66
    assert results.count("valid") == 39
    assert results.count("invalid") == 27


@pytest.mark.parametrize("case", WYCHEPROOF, ids=lambda t: f"tc{t['tcId']}")
def test_wycheproof_aesgcm_primitive(case: dict[str, Any]) -> None:
    key, iv, aad, msg, ct, tag = (
        bytes.fromhex(case[f]) for f in ("key", "iv", "aad", "msg", "ct", "tag")
    )
    aead = AESGCM(key)
    if case["result"] == "valid":
        assert aead.encrypt(iv, msg, aad) == ct + tag
        assert aead.decrypt(iv, ct + tag, aad) == msg
    else:
        with pytest.raises(InvalidTag):
            aead.decrypt(iv, ct + tag, aad)


@pytest.mark.parametrize("case", WYCHEPROOF, ids=lambda t: f"tc{t['tcId']}")
def test_wycheproof_lucidd_seal_into_and_open(case: dict[str, Any]) -> None:
    """The encrypt_into / decrypt path that ChunkSealer and open_record use."""
    key, iv, aad, msg, ct, tag = (
        bytes.fromhex(case[f]) for f in ("key", "iv", "aad", "msg", "ct", "tag")
    )
    if case["result"] == "valid":
        out = bytearray(len(msg) + TAG_SIZE)
        sealing.gcm_seal_into(key, iv, msg, aad, memoryview(out))
        assert bytes(out) == ct + tag
        assert sealing.gcm_open(key, iv, ct + tag, aad) == msg
    else:
        with pytest.raises(IntegrityError) as err:
            sealing.gcm_open(key, iv, ct + tag, aad)
        assert str(err.value) == AUTH_FAILED


# --- HKDF ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", load_json("rfc5869_hkdf_sha256.json")["tests"], ids=str)
def test_rfc5869_hkdf_expand(case: dict[str, Any]) -> None:
    prk, info, okm = (bytes.fromhex(case[f]) for f in ("prk", "info", "okm"))
    assert hkdf_expand(prk, info, case["L"]) == okm
    assert HKDFExpand(hashes.SHA256(), case["L"], info).derive(prk) == okm


def test_rfc5869_vectors_are_loaded() -> None:
    assert [t["tcId"] for t in load_json("rfc5869_hkdf_sha256.json")["tests"]] == [1, 2, 3]


def test_hkdf_expand_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError):
        hkdf_expand(SECRET, b"", 0)
    with pytest.raises(ValueError):
        hkdf_expand(SECRET, b"", 255 * 32 + 1)


@PROPERTY
@given(
    secret=st.binary(min_size=32, max_size=32),
    session_id=st.binary(min_size=16, max_size=16),
    index=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_chunk_key_equals_cryptography_hkdf_expand(
    secret: bytes, session_id: bytes, index: int
) -> None:
    key = derive_chunk_key(secret, session_id, index)
    assert key == ref_chunk_key(secret, session_id, index)
    assert key == hkdf_expand(
        secret, b"lucidd/v1/chunk\x00" + session_id + struct.pack(">Q", index), 32
    )
    final = derive_final_key(secret, session_id)
    assert final == ref_expand32(secret, b"lucidd/v1/final\x00" + session_id)
    assert final != key


def test_chunk_keys_differ_by_index_and_session() -> None:
    other_session = bytes(16)
    keys = {derive_chunk_key(SECRET, SESSION, i) for i in range(100)}
    keys |= {derive_chunk_key(SECRET, other_session, i) for i in range(100)}
    assert len(keys) == 200


def test_key_commitment_is_labelled_sha256() -> None:
    key = bytes(range(32))
    assert key_commitment(key) == hashlib.sha256(b"lucidd/v1/commit\x00" + key).digest()
    assert key_commitment(key) != hashlib.sha256(key).digest()


@pytest.mark.parametrize(
    ("secret", "session_id", "index"),
    [
        (bytes(31), SESSION, 0),
        (SECRET, bytes(15), 0),
        (SECRET, SESSION, -1),
        (SECRET, SESSION, 2**64),
    ],
)
def test_derive_chunk_key_rejects_caller_bugs(secret: bytes, session_id: bytes, index: int) -> None:
    with pytest.raises(ValueError):
        derive_chunk_key(secret, session_id, index)


# --- frozen records ----------------------------------------------------------------------------
def test_frozen_data_record_bytes_and_leaf_hash() -> None:
    record, leaf = ChunkSealer(1024).seal(
        SECRET, SESSION, FROZEN_INDEX, FROZEN_PLAINTEXT, "off", nonce=FROZEN_NONCE
    )
    assert bytes(record) == FROZEN_RECORD
    assert leaf == FROZEN_LEAF
    assert hashlib.sha256(b"\x00" + FROZEN_RECORD).digest() == FROZEN_LEAF
    rebuilt = ref_record(
        ref_chunk_key(SECRET, SESSION, FROZEN_INDEX),
        record_type=1,
        codec=0,
        session_id=SESSION,
        index=FROZEN_INDEX,
        plaintext_length=len(FROZEN_PLAINTEXT),
        body=FROZEN_PLAINTEXT,
        nonce=FROZEN_NONCE,
    )
    assert rebuilt == FROZEN_RECORD
    assert open_record(SECRET, SESSION, FROZEN_INDEX, FROZEN_RECORD) == FROZEN_PLAINTEXT


def test_frozen_final_record_bytes_and_leaf_hash() -> None:
    record = seal_final(SECRET, SESSION, FINAL_SIZE, FINAL_TOTAL, FINAL_ROOT, nonce=FINAL_NONCE)
    assert record == FROZEN_FINAL
    assert hashlib.sha256(b"\x00" + record).digest() == FROZEN_FINAL_LEAF
    rebuilt = ref_record(
        ref_expand32(SECRET, b"lucidd/v1/final\x00" + SESSION),
        record_type=2,
        codec=0,
        session_id=SESSION,
        index=FINAL_SIZE,
        plaintext_length=48,
        body=struct.pack(">QQ", FINAL_SIZE, FINAL_TOTAL) + FINAL_ROOT,
        nonce=FINAL_NONCE,
    )
    assert rebuilt == FROZEN_FINAL
    assert open_final(SECRET, SESSION, FROZEN_FINAL) == FinalInfo(
        FINAL_SIZE, FINAL_TOTAL, FINAL_ROOT
    )


def test_constants_match_the_format() -> None:
    assert (HEADER_SIZE, TAG_SIZE, NONCE_SIZE, KEY_SIZE, SESSION_ID_SIZE) == (84, 16, 12, 32, 16)
    assert RECORD_OVERHEAD == 100
    assert FINAL_PLAINTEXT_SIZE == 48
    assert WRAPPED_SECRET_SIZE == 64
    assert MAGIC == b"LUCD"
    assert COMPRESSIONS == MODES


def test_parse_header_reads_every_field() -> None:
    header = parse_header(FROZEN_RECORD)
    assert header.record_type is RecordType.DATA
    assert header.codec is Codec.RAW
    assert header.suite == 1
    assert header.session_id == SESSION
    assert header.index == FROZEN_INDEX
    assert header.plaintext_length == header.body_length == len(FROZEN_PLAINTEXT)
    assert header.nonce == FROZEN_NONCE
    assert header.commitment == key_commitment(derive_chunk_key(SECRET, SESSION, FROZEN_INDEX))
    assert header.record_length == len(FROZEN_RECORD)


@pytest.mark.parametrize(
    ("offset", "value"),
    [(0, 0x4D), (4, 0), (4, 2), (5, 0), (5, 3), (6, 3), (7, 0), (7, 2)],
    ids=["magic", "version0", "version2", "type0", "type3", "codec3", "suite0", "suite2"],
)
def test_parse_header_rejects_bad_fields(offset: int, value: int) -> None:
    forged = bytearray(FROZEN_RECORD)
    forged[offset] = value
    with pytest.raises(FormatError):
        parse_header(forged)


def test_parse_header_rejects_short_input_and_raw_length_mismatch() -> None:
    with pytest.raises(FormatError):
        parse_header(FROZEN_RECORD[: HEADER_SIZE - 1])
    forged = bytearray(FROZEN_RECORD)
    forged[36:40] = struct.pack(">I", len(FROZEN_PLAINTEXT) + 1)  # body_length
    with pytest.raises(FormatError):
        parse_header(forged)


# --- round trips -------------------------------------------------------------------------------
SEALER = ChunkSealer(10 * MIB)


@PROPERTY
@given(
    plaintext=st.binary(min_size=0, max_size=HYP_MAX)
    | st.text(alphabet="ab \n0123456789", max_size=HYP_MAX).map(str.encode),
    mode=st.sampled_from(MODES),
    index=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_seal_open_round_trip(plaintext: bytes, mode: Compression, index: int) -> None:
    record, leaf = SEALER.seal(SECRET, SESSION, index, plaintext, mode)
    assert leaf == hashlib.sha256(b"\x00" + bytes(record)).digest()
    header = parse_header(record)
    assert header.index == index
    assert header.plaintext_length == len(plaintext)
    assert open_record(SECRET, SESSION, index, record) == plaintext


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [0, 1, 10 * MIB])
def test_seal_open_edge_sizes(mode: Compression, size: int) -> None:
    plaintext = os.urandom(size)
    record, _ = SEALER.seal(SECRET, SESSION, 3, memoryview(plaintext), mode)
    assert open_record(SECRET, SESSION, 3, record) == plaintext


def test_seal_reads_from_a_memoryview_slice_like_a_ring_slot() -> None:
    ring = bytearray(os.urandom(4096))
    record, _ = SEALER.seal(SECRET, SESSION, 0, memoryview(ring)[100:200], "off")
    assert open_record(SECRET, SESSION, 0, record) == bytes(ring[100:200])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "size", [0, 1, STREAM_PIECE - 1, STREAM_PIECE, STREAM_PIECE + 1, 3 * STREAM_PIECE + 7]
)
def test_streamed_seal_hands_out_exactly_the_record_of_seal(mode: Compression, size: int) -> None:
    """A worker streams large chunks to its segment; the bytes on disk and the leaf must be
    those of the one-shot seal (same nonce), in pieces no larger than STREAM_PIECE."""
    plaintext = os.urandom(size // 2) + bytes(size - size // 2)  # half random, half compressible
    nonce = os.urandom(NONCE_SIZE)
    pieces: list[bytes] = []
    sealer = ChunkSealer(1024)  # far smaller than the chunk: streaming needs no record buffer
    length, leaf = sealer.seal_streamed(
        SECRET,
        SESSION,
        9,
        memoryview(plaintext),
        mode,
        sink=lambda p: pieces.append(bytes(p)),
        nonce=nonce,
    )
    record, expected_leaf = SEALER.seal(SECRET, SESSION, 9, plaintext, mode, nonce=nonce)
    assert b"".join(pieces) == bytes(record)
    assert (length, leaf) == (len(record), expected_leaf)
    assert max(len(p) for p in pieces) <= STREAM_PIECE
    assert open_record(SECRET, SESSION, 9, b"".join(pieces)) == plaintext


def test_seal_chunk_returns_an_owned_copy_equal_to_the_sealer_view() -> None:
    sealer = ChunkSealer(1024)
    view, _ = sealer.seal(SECRET, SESSION, 1, b"first", "off", nonce=FROZEN_NONCE)
    owned = seal_chunk(SECRET, SESSION, 1, b"first", "off", nonce=FROZEN_NONCE)
    assert isinstance(owned, bytes)
    assert owned == bytes(view)
    sealer.seal(SECRET, SESSION, 2, b"second", "off")
    assert bytes(view) != owned  # the view was reused by the next seal, the copy was not
    assert open_record(SECRET, SESSION, 1, owned) == b"first"


def test_sealer_rejects_caller_bugs() -> None:
    sealer = ChunkSealer(10)
    with pytest.raises(ValueError):
        sealer.seal(SECRET, SESSION, 0, bytes(11), "off")
    with pytest.raises(ValueError):
        sealer.seal(bytes(16), SESSION, 0, b"x", "off")
    with pytest.raises(ValueError):
        sealer.seal(SECRET, SESSION, 0, b"x", "lz4")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sealer.seal(SECRET, SESSION, 0, b"x", "off", nonce=bytes(8))


def text_like(size: int) -> bytes:
    lines = []
    n = 0
    while n < size:
        line = f"2025-01-01T00:00:{n % 60:02d} worker={n % 10} chunk={n} bytes={n * 7}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def test_auto_stores_random_data_raw_and_text_as_zstd() -> None:
    random_record, _ = SEALER.seal(SECRET, SESSION, 0, os.urandom(65536), "auto")
    assert parse_header(random_record).codec is Codec.RAW
    text = text_like(65536)
    text_record, _ = SEALER.seal(SECRET, SESSION, 0, text, "auto")
    header = parse_header(text_record)
    assert header.codec is Codec.ZSTD
    assert header.body_length * 100 <= len(text) * 97
    assert open_record(SECRET, SESSION, 0, text_record) == text


@pytest.mark.parametrize(("mode", "codec"), [("zstd", Codec.ZSTD), ("zlib", Codec.ZLIB)])
def test_forced_codecs_compress_even_random_data(mode: Compression, codec: Codec) -> None:
    record, _ = SEALER.seal(SECRET, SESSION, 0, os.urandom(1000), mode)
    assert parse_header(record).codec is codec


# --- tampering -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_every_single_bit_flip_is_rejected(mode: Compression) -> None:
    plaintext = text_like(200)
    record = seal_chunk(SECRET, SESSION, 9, plaintext, mode)
    for bit in range(len(record) * 8):
        with pytest.raises((IntegrityError, FormatError)):
            open_record(SECRET, SESSION, 9, flip_bit(record, bit))


def test_every_single_bit_flip_of_a_final_record_is_rejected() -> None:
    for bit in range(len(FROZEN_FINAL) * 8):
        with pytest.raises((IntegrityError, FormatError)):
            open_final(SECRET, SESSION, flip_bit(FROZEN_FINAL, bit))


@PROPERTY
@given(
    plaintext=st.binary(max_size=4096),
    mode=st.sampled_from(MODES),
    data=st.data(),
)
def test_random_bit_flip_is_rejected(
    plaintext: bytes, mode: Compression, data: st.DataObject
) -> None:
    record = seal_chunk(SECRET, SESSION, 1, plaintext, mode)
    bit = data.draw(st.integers(min_value=0, max_value=len(record) * 8 - 1))
    with pytest.raises((IntegrityError, FormatError)):
        open_record(SECRET, SESSION, 1, flip_bit(record, bit))


def test_record_opened_under_another_index_or_session_is_rejected() -> None:
    with pytest.raises(IntegrityError) as err:
        open_record(SECRET, SESSION, FROZEN_INDEX + 1, FROZEN_RECORD)
    assert str(err.value) == AUTH_FAILED
    with pytest.raises(IntegrityError):
        open_record(SECRET, bytes(16), FROZEN_INDEX, FROZEN_RECORD)
    with pytest.raises(IntegrityError):
        open_record(bytes(32), SESSION, FROZEN_INDEX, FROZEN_RECORD)


def test_misplaced_record_is_rejected_from_its_header_before_any_key_is_derived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_key(*_: object) -> bytes:
        raise AssertionError("a key was derived for a misplaced record")

    monkeypatch.setattr(sealing, "derive_chunk_key", no_key)
    with pytest.raises(IntegrityError):
        open_record(SECRET, SESSION, FROZEN_INDEX + 1, FROZEN_RECORD)
    with pytest.raises(IntegrityError):
        open_record(SECRET, bytes(16), FROZEN_INDEX, FROZEN_RECORD)


def test_record_moved_with_a_rewritten_header_is_rejected() -> None:
    """Rewriting index (or session) in the header to match the new place breaks the commitment
    and the tag: the header is bound to the key and is the AAD."""
    forged = bytearray(FROZEN_RECORD)
    forged[24:32] = struct.pack(">Q", FROZEN_INDEX + 1)
    with pytest.raises(IntegrityError):
        open_record(SECRET, SESSION, FROZEN_INDEX + 1, forged)
    forged[24:32] = struct.pack(">Q", FROZEN_INDEX + 1)
    good_commitment = key_commitment(derive_chunk_key(SECRET, SESSION, FROZEN_INDEX + 1))
    forged[52:84] = good_commitment
    with pytest.raises(IntegrityError):
        open_record(SECRET, SESSION, FROZEN_INDEX + 1, forged)


def test_truncated_or_extended_record_is_rejected() -> None:
    for cut in range(len(FROZEN_RECORD)):
        with pytest.raises((FormatError, IntegrityError)):
            open_record(SECRET, SESSION, FROZEN_INDEX, FROZEN_RECORD[:cut])
    for extra in (b"\x00", b"\x00" * TAG_SIZE, FROZEN_RECORD):
        with pytest.raises(FormatError):
            open_record(SECRET, SESSION, FROZEN_INDEX, FROZEN_RECORD + extra)


def test_final_and_data_records_cannot_stand_in_for_each_other() -> None:
    with pytest.raises(IntegrityError):
        open_record(SECRET, SESSION, FINAL_SIZE, FROZEN_FINAL)
    with pytest.raises(IntegrityError):
        open_final(SECRET, SESSION, FROZEN_RECORD)
    with pytest.raises(IntegrityError):
        open_final(SECRET, bytes(16), FROZEN_FINAL)


def test_final_record_whose_size_disagrees_with_its_index_is_rejected() -> None:
    forged = ref_record(
        derive_final_key(SECRET, SESSION),
        record_type=2,
        codec=0,
        session_id=SESSION,
        index=FINAL_SIZE,
        plaintext_length=48,
        body=struct.pack(">QQ", FINAL_SIZE + 1, FINAL_TOTAL) + FINAL_ROOT,
        nonce=FINAL_NONCE,
    )
    with pytest.raises(IntegrityError):
        open_final(SECRET, SESSION, forged)


def test_forged_commitment_with_valid_tag_is_rejected() -> None:
    """Even with a correct GCM tag, a record whose commitment is not the key's does not open."""
    key = derive_chunk_key(SECRET, SESSION, 0)
    forged = ref_record(
        key,
        record_type=1,
        codec=0,
        session_id=SESSION,
        index=0,
        plaintext_length=3,
        body=b"abc",
        nonce=FROZEN_NONCE,
        commitment=bytes(32),
    )
    with pytest.raises(IntegrityError):
        open_record(SECRET, SESSION, 0, forged)


# --- decompression after authentication, capped ---------------------------------------------------
def forged_compressed(codec: Codec, body: bytes, plaintext_length: int) -> bytes:
    """A record with a *valid* key and tag whose body lies about its plaintext length."""
    return ref_record(
        derive_chunk_key(SECRET, SESSION, 0),
        record_type=1,
        codec=codec,
        session_id=SESSION,
        index=0,
        plaintext_length=plaintext_length,
        body=body,
        nonce=FROZEN_NONCE,
    )


BOMB_SIZE = 16 * MIB
DECLARED = 1000


def _zstd_bomb(with_content_size: bool) -> bytes:
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=with_content_size)
    if with_content_size:
        return compressor.compress(bytes(BOMB_SIZE))
    stream = compressor.compressobj()
    return stream.compress(bytes(BOMB_SIZE)) + stream.flush()


@pytest.mark.parametrize(
    "body_and_codec",
    [
        pytest.param((Codec.ZSTD, True), id="zstd-with-content-size"),
        pytest.param((Codec.ZSTD, False), id="zstd-streamed"),
        pytest.param((Codec.ZLIB, False), id="zlib"),
    ],
)
def test_decompression_bomb_is_capped_at_the_declared_length(
    body_and_codec: tuple[Codec, bool],
) -> None:
    codec, with_size = body_and_codec
    body = _zstd_bomb(with_size) if codec is Codec.ZSTD else zlib.compress(bytes(BOMB_SIZE), 9)
    record = forged_compressed(codec, body, DECLARED)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            open_record(SECRET, SESSION, 0, record)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOMB_SIZE // 4


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.ZLIB])
def test_compressed_body_shorter_than_declared_or_with_trailing_data_is_rejected(
    codec: Codec,
) -> None:
    plaintext = text_like(2000)
    packed = zstandard.ZstdCompressor(level=3).compress(plaintext)
    if codec is Codec.ZLIB:
        packed = zlib.compress(plaintext)
    with pytest.raises(FormatError):
        open_record(SECRET, SESSION, 0, forged_compressed(codec, packed, len(plaintext) + 1))
    with pytest.raises(FormatError):
        open_record(SECRET, SESSION, 0, forged_compressed(codec, packed + packed, len(plaintext)))
    with pytest.raises(FormatError):
        open_record(SECRET, SESSION, 0, forged_compressed(codec, b"not compressed", 5))
    assert open_record(SECRET, SESSION, 0, forged_compressed(codec, packed, len(plaintext))) == (
        plaintext
    )


def test_empty_zero_length_compressed_body_forms() -> None:
    """A declared length of 0 must cap output too (0 is "unlimited" to zlib and zstd)."""
    zlib_record = forged_compressed(Codec.ZLIB, zlib.compress(b"x" * 5000), 0)
    with pytest.raises(FormatError):
        open_record(SECRET, SESSION, 0, zlib_record)
    stream = zstandard.ZstdCompressor().compressobj()
    zstd_record = forged_compressed(Codec.ZSTD, stream.compress(b"x" * 5000) + stream.flush(), 0)
    with pytest.raises(FormatError):
        open_record(SECRET, SESSION, 0, zstd_record)


# --- nonces --------------------------------------------------------------------------------------
def test_100000_seals_under_one_key_never_repeat_a_nonce() -> None:
    sealer = ChunkSealer(16)
    nonces = set()
    count = 100_000
    for _ in range(count):
        record, _ = sealer.seal(SECRET, SESSION, 0, b"same chunk", "off")
        nonces.add(bytes(record[40:52]))
    assert len(nonces) == count


# --- keyring and wrapping ---------------------------------------------------------------------
def test_keyring_serialize_parse_round_trip() -> None:
    keyring = Keyring.generate().rotated().rotated()
    text = keyring.serialize()
    assert text.startswith(b"lucidd-keyring v1\n")
    assert text.endswith(f"current {keyring.current_id}\n".encode())
    parsed = Keyring.parse(text)
    assert parsed == keyring
    assert parsed.key_ids == keyring.key_ids
    assert len(parsed.key_ids) == 3
    for key_id in keyring.key_ids:
        assert parsed.key(key_id) == keyring.key(key_id)


def test_keyring_parse_reads_a_written_file_exactly() -> None:
    text = (
        b"lucidd-keyring v1\n"
        b"key 7 " + b"ab" * 32 + b"\n"
        b"key 4294967295 " + b"01" * 32 + b"\n"
        b"current 7\n"
    )
    keyring = Keyring.parse(text)
    assert keyring.current_id == 7
    assert keyring.current_key == b"\xab" * 32
    assert keyring.key(4294967295) == b"\x01" * 32
    assert keyring.serialize() == text


def test_keyring_repr_and_str_never_show_keys() -> None:
    keyring = Keyring.generate().rotated()
    shown = repr(keyring) + str(keyring)
    assert shown == 2 * f"Keyring(current_id={keyring.current_id}, keys=2)"
    for key_id in keyring.key_ids:
        assert keyring.key(key_id).hex()[:16] not in shown


SECRET_HEX = "5e" * 32
MALFORMED = [
    b"",
    b"lucidd-keyring v2\nkey 1 " + SECRET_HEX.encode() + b"\ncurrent 1\n",
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX.encode() + b"\n",  # no current
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX.encode() + b"\ncurrent 2\n",  # unknown current
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX.encode() + b"\ncurrent 1\ncurrent 1\n",
    b"lucidd-keyring v1\nkey 1 "
    + SECRET_HEX.encode()
    + b"\nkey 1 "
    + SECRET_HEX.encode()
    + b"\ncurrent 1\n",  # duplicate id
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX[:-2].encode() + b"\ncurrent 1\n",  # short key
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX.upper().encode() + b"\ncurrent 1\n",
    b"lucidd-keyring v1\nkey 4294967296 " + SECRET_HEX.encode() + b"\ncurrent 4294967296\n",
    b"lucidd-keyring v1\nkey 01 " + SECRET_HEX.encode() + b"\ncurrent 01\n",
    b"lucidd-keyring v1\nkey 1  " + SECRET_HEX.encode() + b"\ncurrent 1\n",
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX.encode() + b"\n\ncurrent 1\n",
    b"lucidd-keyring v1\r\nkey 1 " + SECRET_HEX.encode() + b"\r\ncurrent 1\r\n",
    b"lucidd-keyring v1\nkey 1 " + SECRET_HEX.encode() + b"\xff\ncurrent 1\n",
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_keyring_raises_keyring_error_without_echoing_input(data: bytes) -> None:
    with pytest.raises(KeyringError) as err:
        Keyring.parse(data)
    message = str(err.value) + repr(err.value.context)
    assert SECRET_HEX[:8] not in message.lower()


def test_keyring_key_unknown_id_raises() -> None:
    keyring = Keyring.generate()
    with pytest.raises(KeyringError):
        keyring.key(keyring.current_id ^ 1)


def test_wrap_unwrap_round_trip_and_layout() -> None:
    keyring = Keyring.generate()
    secret = new_session_secret()
    assert len(secret) == KEY_SIZE
    wrapped = wrap_secret(keyring, SESSION, secret)
    assert len(wrapped) == WRAPPED_SECRET_SIZE
    assert struct.unpack(">I", wrapped[:4])[0] == keyring.current_id
    assert unwrap_secret(keyring, SESSION, wrapped) == secret
    # The layout of docs/format.md, rebuilt from the primitive:
    nonce = wrapped[4:16]
    aad = b"lucidd/v1/wrap\x00" + wrapped[:4] + SESSION
    assert AESGCM(keyring.current_key).decrypt(nonce, wrapped[16:], aad) == secret


def test_wrap_under_another_session_or_tampered_is_integrity_error() -> None:
    keyring = Keyring.generate()
    wrapped = wrap_secret(keyring, SESSION, SECRET)
    with pytest.raises(IntegrityError):
        unwrap_secret(keyring, bytes(16), wrapped)
    for bit in range(32, len(wrapped) * 8):  # past the key id
        with pytest.raises(IntegrityError):
            unwrap_secret(keyring, SESSION, flip_bit(wrapped, bit))
    with pytest.raises(FormatError):
        unwrap_secret(keyring, SESSION, wrapped[:-1])


def test_unwrap_with_unknown_key_id_is_keyring_error() -> None:
    wrapped = wrap_secret(Keyring.generate(), SESSION, SECRET)
    with pytest.raises(KeyringError):
        unwrap_secret(Keyring.generate(), SESSION, wrapped)


def test_rotation_keeps_old_wraps_readable_and_rewrap_moves_to_the_new_key() -> None:
    old = Keyring.generate()
    wrapped = wrap_secret(old, SESSION, SECRET)
    new = old.rotated()
    assert new.current_id != old.current_id
    assert set(old.key_ids) < set(new.key_ids)
    assert old.current_id == Keyring.parse(old.serialize()).current_id  # old is unchanged
    assert unwrap_secret(new, SESSION, wrapped) == SECRET
    rewrapped = rewrap_secret(new, SESSION, wrapped)
    assert struct.unpack(">I", rewrapped[:4])[0] == new.current_id
    assert unwrap_secret(new, SESSION, rewrapped) == SECRET
    with pytest.raises(KeyringError):
        unwrap_secret(old, SESSION, rewrapped)


def test_relabelled_key_id_is_rejected() -> None:
    """The key id is in the AAD: pointing a wrap at another key id of the same keyring fails."""
    keyring = Keyring.generate().rotated()
    wrapped = wrap_secret(keyring, SESSION, SECRET)
    other = next(k for k in keyring.key_ids if k != keyring.current_id)
    with pytest.raises(IntegrityError):
        unwrap_secret(keyring, SESSION, struct.pack(">I", other) + wrapped[4:])


# --- passphrase-locked keyring (Argon2id: each derivation is slow on purpose, so few) -------
PASSPHRASE = "correct horse battery staple"


def test_locked_keyring_round_trip_and_independent_decryption() -> None:
    keyring = Keyring.generate().rotated()
    locked = keyring.lock(PASSPHRASE)
    assert Keyring.unlock(locked, PASSPHRASE) == keyring
    lines = locked.decode().splitlines()
    assert lines[0] == "lucidd-keyring-locked v1"
    assert keyring.current_key.hex() not in locked.decode()
    salt = bytes.fromhex(lines[1].removeprefix("argon2id m=65536 t=3 p=4 salt="))
    key = Argon2id(salt=salt, length=32, iterations=3, lanes=4, memory_cost=65536).derive(
        PASSPHRASE.encode()
    )
    aad = (lines[0] + "\n" + lines[1] + "\n").encode()
    text = AESGCM(key).decrypt(
        bytes.fromhex(lines[2].removeprefix("nonce ")),
        bytes.fromhex(lines[3].removeprefix("sealed ")),
        aad,
    )
    assert text == keyring.serialize()


def test_locked_keyring_rejects_wrong_passphrase_tampering_and_weak_parameters() -> None:
    locked = Keyring.generate().lock(PASSPHRASE)
    with pytest.raises(KeyringError, match="passphrase"):
        Keyring.unlock(locked, PASSPHRASE + "!")
    lines = locked.decode().splitlines(keepends=True)
    salt_line = lines[1]
    flipped_salt = salt_line[:-2] + ("0" if salt_line[-2] != "0" else "1") + "\n"
    with pytest.raises(KeyringError):
        Keyring.unlock("".join([lines[0], flipped_salt, *lines[2:]]).encode(), PASSPHRASE)
    weak = salt_line.replace("m=65536", "m=1024")
    with pytest.raises(KeyringError, match="unsupported"):
        Keyring.unlock("".join([lines[0], weak, *lines[2:]]).encode(), PASSPHRASE)
    with pytest.raises(KeyringError):
        Keyring.unlock(locked[:-10], PASSPHRASE)
    with pytest.raises(ValueError):
        Keyring.generate().lock("")
