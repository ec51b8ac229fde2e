"""Chunk keys, sealing and opening of records, the FINAL record (layer 1: pure).

A chunk goes in, a self-describing record and its Merkle leaf hash come out; a record goes in,
the plaintext comes out or :class:`~lucidd.errors.IntegrityError` is raised (restic's
``internal/crypto`` is the model: a narrow interface). Keys are derived per chunk with
HKDF-Expand-SHA256 and committed to in the header (DESIGN §4); the byte layout is
:mod:`lucidd.crypto.record`'s.

Layer rules (DESIGN §8): no file I/O, no logging, no asyncio. ``os.urandom`` (nonces, session
secrets) is the only call into the operating system. Caller bugs (a 31-byte secret, a negative
index) raise ``ValueError``; untrusted bytes raise :class:`~lucidd.errors.FormatError` or
:class:`~lucidd.errors.IntegrityError`, and every authentication failure says nothing more
than :data:`~lucidd.crypto.record.AUTH_FAILED`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lucidd.crypto.record import (
    AUTH_FAILED,
    AUTO_KEEP_PERCENT,
    CHUNK_KEY_LABEL,
    COMMIT_LABEL,
    COMPRESSIONS,
    FINAL_KEY_LABEL,
    HEADER_SIZE,
    KEY_SIZE,
    LEAF_PREFIX,
    MAX_PLAINTEXT_SIZE,
    NONCE_SIZE,
    PERCENT,
    RECORD_OVERHEAD,
    TAG_SIZE,
    ZLIB_LEVEL,
    ZSTD_LEVEL,
    Buffer,
    Codec,
    Compression,
    RecordHeader,
    RecordType,
    build_header,
    check_secret,
    check_session_id,
    check_u64,
    compression_bound,
    decompress_body,
    parse_header,
)
from lucidd.errors import FormatError, IntegrityError

# --- the FINAL record: its plaintext is u64be(size) || u64be(total plaintext bytes) || root -----
ROOT_SIZE: Final = 32
_FINAL_STRUCT: Final = struct.Struct(">QQ32s")
FINAL_PLAINTEXT_SIZE: Final = 48
assert _FINAL_STRUCT.size == FINAL_PLAINTEXT_SIZE

_HASH_NAME: Final = "sha256"
_HASH_SIZE: Final = 32
_HKDF_MAX_LENGTH: Final = 255 * _HASH_SIZE
_HKDF_FIRST_BLOCK: Final = b"\x01"


# --- key derivation ------------------------------------------------------------------------------
def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 §2.3): ``T(1) || T(2) || ...`` cut to ``length``.

    lucidd itself only asks for 32 bytes (one HMAC); the general form exists so the RFC 5869
    vectors can check this very code.
    """
    if not 0 < length <= _HKDF_MAX_LENGTH:
        raise ValueError(f"HKDF-Expand length must be 1..{_HKDF_MAX_LENGTH}")
    if len(prk) < _HASH_SIZE:
        raise ValueError("HKDF-Expand PRK must be at least 32 bytes")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), _HASH_NAME)
        out += block
        counter += 1
    return out[:length]


def _expand32(secret: bytes, info: bytes) -> bytes:
    """HKDF-Expand-SHA256 for L = 32: a single ``HMAC(secret, info || 0x01)``."""
    return hmac.digest(secret, info + _HKDF_FIRST_BLOCK, _HASH_NAME)


def derive_chunk_key(secret: bytes, session_id: bytes, index: int) -> bytes:
    """``K_i = HKDF-Expand-SHA256(S, "lucidd/v1/chunk\\0" || sid || u64be(i), 32)``.

    A fresh key per chunk is lucidd's key rotation: a key seals one chunk (and its retries), so
    AES-GCM's per-key limits are never approached and no counter has to be kept.
    """
    check_secret(secret)
    check_session_id(session_id)
    check_u64("index", index)
    return _expand32(secret, CHUNK_KEY_LABEL + session_id + index.to_bytes(8, "big"))


def derive_final_key(secret: bytes, session_id: bytes) -> bytes:
    """``K_fin = HKDF-Expand-SHA256(S, "lucidd/v1/final\\0" || sid, 32)``, the FINAL record key."""
    check_secret(secret)
    check_session_id(session_id)
    return _expand32(secret, FINAL_KEY_LABEL + session_id)


def key_commitment(key: bytes) -> bytes:
    """``SHA-256("lucidd/v1/commit\\0" || key)``, stored in the header.

    AES-GCM is not key-committing: without this a crafted record could open under two keys.
    The commitment also lets a key holder reveal one chunk key that anyone can check against
    the (Merkle-anchored) record.
    """
    return hashlib.sha256(COMMIT_LABEL + key).digest()


def new_session_secret() -> bytes:
    """A fresh random session secret ``S`` (32 bytes from the OS CSPRNG)."""
    return os.urandom(KEY_SIZE)


# --- AEAD primitives (shared by sealing, opening, unwrapping and the Wycheproof tests) ----------
def gcm_seal_into(key: bytes, nonce: bytes, data: Buffer, aad: Buffer, out: memoryview) -> None:
    """AES-256-GCM encrypt ``data`` into ``out``, which must be exactly ``len(data) + 16``."""
    AESGCM(key).encrypt_into(nonce, data, aad, out)


def gcm_open(key: bytes, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
    """AES-256-GCM decrypt ``data`` (ciphertext || tag); any failure is :class:`IntegrityError`."""
    try:
        return AESGCM(key).decrypt(nonce, data, aad)
    except (InvalidTag, ValueError):
        raise IntegrityError(AUTH_FAILED) from None


# --- sealing -------------------------------------------------------------------------------------
#: Bytes :meth:`ChunkSealer.seal_streamed` encrypts per piece (and of the sealer's buffer it uses).
STREAM_PIECE: Final = 256 * 1024
AES_BLOCK_SIZE: Final = 16


def sealer_buffer_size(max_plaintext: int) -> int:
    """Bytes of output buffer a :class:`ChunkSealer` needs for chunks up to ``max_plaintext``
    (and at least what :meth:`ChunkSealer.seal_streamed` uses)."""
    return max(compression_bound(max_plaintext) + RECORD_OVERHEAD, STREAM_PIECE + AES_BLOCK_SIZE)


class ChunkSealer:
    """Seals chunks into one preallocated buffer; one per worker process, reused for every chunk.

    Not thread-safe: the zstd contexts and the output buffer are per sealer. The record returned
    by :meth:`seal` is a view into the sealer's buffer, valid until the next :meth:`seal` call;
    copy it (or write it out) before sealing again.
    """

    __slots__ = ("_buf", "_max_plaintext", "_view", "_zstd_c", "_zstd_d")

    def __init__(self, max_plaintext: int, buffer: memoryview | None = None) -> None:
        """``buffer`` (writable, at least :func:`sealer_buffer_size` bytes) lets the caller
        choose the memory: a worker passes an anonymous mmap, whose pages cost nothing until
        a chunk that large is sealed (a ``bytearray`` is zero-filled, so all resident)."""
        if not 0 <= max_plaintext <= MAX_PLAINTEXT_SIZE:
            raise ValueError(f"max_plaintext must be in 0..{MAX_PLAINTEXT_SIZE}")
        self._max_plaintext = max_plaintext
        size = sealer_buffer_size(max_plaintext)
        if buffer is None:
            buffer = memoryview(bytearray(size))
        if buffer.readonly or buffer.nbytes < size:
            raise ValueError(f"the sealer buffer must be writable and hold {size} bytes")
        self._buf = buffer
        self._view = buffer.cast("B")
        self._zstd_c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._zstd_d = zstandard.ZstdDecompressor()

    @property
    def max_plaintext(self) -> int:
        """Largest plaintext this sealer accepts."""
        return self._max_plaintext

    def _compress(self, plaintext: Buffer, compression: Compression) -> tuple[Codec, Buffer]:
        if compression == "off":
            return Codec.RAW, plaintext
        if compression == "auto":
            packed = self._zstd_c.compress(plaintext)
            if len(packed) * PERCENT <= len(plaintext) * AUTO_KEEP_PERCENT:
                return Codec.ZSTD, packed
            return Codec.RAW, plaintext
        if compression == "zstd":
            return Codec.ZSTD, self._zstd_c.compress(plaintext)
        if compression == "zlib":
            return Codec.ZLIB, zlib.compress(plaintext, ZLIB_LEVEL)
        raise ValueError(f"compression must be one of {COMPRESSIONS}")

    def seal(
        self,
        secret: bytes,
        session_id: bytes,
        index: int,
        plaintext: Buffer,
        compression: Compression,
        *,
        nonce: bytes | None = None,
    ) -> tuple[memoryview, bytes]:
        """Seal chunk ``index`` of a session; return ``(record, leaf_hash)``.

        ``record`` is a view into this sealer's buffer, valid until the next call.
        ``leaf_hash`` is ``SHA-256(0x00 || record)`` (RFC 9162). ``nonce`` is random unless
        given; give it only in known-answer tests, since reusing one under a key breaks GCM.
        Cost: one compression pass (unless ``off``), one AES-GCM pass, one SHA-256 pass.
        """
        size = len(plaintext)
        if size > self._max_plaintext:
            raise ValueError("plaintext larger than this sealer's max_plaintext")
        key = derive_chunk_key(secret, session_id, index)
        codec, body = self._compress(plaintext, compression)
        return self._seal_body(
            key,
            record_type=RecordType.DATA,
            codec=codec,
            session_id=session_id,
            index=index,
            plaintext_length=size,
            body=body,
            nonce=nonce,
        )

    def seal_streamed(
        self,
        secret: bytes,
        session_id: bytes,
        index: int,
        plaintext: Buffer,
        compression: Compression,
        *,
        sink: Callable[[memoryview], None],
        nonce: bytes | None = None,
    ) -> tuple[int, bytes]:
        """Seal like :meth:`seal`, but hand the record to ``sink`` in pieces; return
        ``(record_length, leaf_hash)``.

        The pieces, in order, are exactly :meth:`seal`'s record; only ``STREAM_PIECE`` bytes of
        this sealer's buffer are used, whatever the chunk's size, so a worker sealing 10 MiB
        chunks keeps 256 KiB resident instead of 10 MiB. Each piece is a view valid only
        during the ``sink`` call. Any plaintext size up to ``MAX_PLAINTEXT_SIZE`` is accepted.
        """
        size = len(plaintext)
        if size > MAX_PLAINTEXT_SIZE:
            raise ValueError("plaintext larger than MAX_PLAINTEXT_SIZE")
        key = derive_chunk_key(secret, session_id, index)
        codec, body = self._compress(plaintext, compression)
        nonce = _nonce_or_random(nonce)
        body_view = memoryview(body).cast("B")
        header = build_header(
            key_commitment(key),
            record_type=RecordType.DATA,
            codec=codec,
            session_id=session_id,
            index=index,
            plaintext_length=size,
            body_length=body_view.nbytes,
            nonce=nonce,
        )
        encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(header)
        leaf = hashlib.sha256(LEAF_PREFIX)
        leaf.update(header)
        sink(memoryview(header))
        # update_into wants room for len(data) + block size - 1 bytes (GCM returns len(data)).
        out = self._view[: STREAM_PIECE + AES_BLOCK_SIZE - 1]
        for start in range(0, body_view.nbytes, STREAM_PIECE):
            count = encryptor.update_into(body_view[start : start + STREAM_PIECE], out)
            piece = out[:count]
            leaf.update(piece)
            sink(piece)
        encryptor.finalize()
        tag = encryptor.tag
        leaf.update(tag)
        sink(memoryview(tag))
        return HEADER_SIZE + body_view.nbytes + TAG_SIZE, leaf.digest()

    def _seal_body(
        self,
        key: bytes,
        *,
        record_type: RecordType,
        codec: Codec,
        session_id: bytes,
        index: int,
        plaintext_length: int,
        body: Buffer,
        nonce: bytes | None,
    ) -> tuple[memoryview, bytes]:
        nonce = _nonce_or_random(nonce)
        body_length = len(body)
        end = HEADER_SIZE + body_length + TAG_SIZE
        if end > self._view.nbytes:  # cannot happen within compression_bound; a guard, not a path
            raise ValueError("compressed body exceeds the sealer's buffer")
        header = build_header(
            key_commitment(key),
            record_type=record_type,
            codec=codec,
            session_id=session_id,
            index=index,
            plaintext_length=plaintext_length,
            body_length=body_length,
            nonce=nonce,
        )
        view = self._view
        view[:HEADER_SIZE] = header
        gcm_seal_into(key, nonce, body, header, view[HEADER_SIZE:end])
        record = view[:end]
        leaf = hashlib.sha256(LEAF_PREFIX)
        leaf.update(record)
        return record, leaf.digest()


def _nonce_or_random(nonce: bytes | None) -> bytes:
    if nonce is None:
        return os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    return nonce


def seal_chunk(
    secret: bytes,
    session_id: bytes,
    index: int,
    plaintext: Buffer,
    compression: Compression,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal one chunk and return an owned copy of the record (convenience; not the fast path)."""
    record, _ = ChunkSealer(len(plaintext)).seal(
        secret, session_id, index, plaintext, compression, nonce=nonce
    )
    return bytes(record)


# --- opening -------------------------------------------------------------------------------------
def _check_record_frame(
    record: Buffer, record_type: RecordType, session_id: bytes, index: int | None
) -> RecordHeader:
    """Parse the header and check the record belongs here, before any key is derived."""
    header = parse_header(record)
    if len(record) != header.record_length:
        raise FormatError(
            "record length differs from its header",
            length=len(record),
            expected=header.record_length,
        )
    if header.record_type != record_type:
        raise IntegrityError(AUTH_FAILED)
    if header.session_id != session_id or (index is not None and header.index != index):
        raise IntegrityError(AUTH_FAILED)
    return header


def _authenticate(key: bytes, header: RecordHeader, record: Buffer) -> bytes:
    """Check the key commitment, then decrypt; returns the (possibly compressed) body."""
    if not hmac.compare_digest(header.commitment, key_commitment(key)):
        raise IntegrityError(AUTH_FAILED)
    view = memoryview(record)
    return gcm_open(key, header.nonce, view[HEADER_SIZE:], view[:HEADER_SIZE])


def open_record(secret: bytes, session_id: bytes, index: int, record: Buffer) -> bytes:
    """Authenticate and decrypt the DATA record stored as chunk ``index``; return its plaintext.

    Rejects (IntegrityError) a record of another session or index, whatever its tag: a record
    moved elsewhere must not open. Malformed framing is FormatError. Decompression happens only
    after authentication and is capped at the authenticated plaintext length.
    """
    check_session_id(session_id)
    header = _check_record_frame(record, RecordType.DATA, session_id, index)
    key = derive_chunk_key(secret, session_id, index)
    body = _authenticate(key, header, record)
    return decompress_body(header.codec, body, header.plaintext_length)


@dataclass(frozen=True, slots=True)
class FinalInfo:
    """What a FINAL record attests: the tree size, the total plaintext bytes and the root."""

    size: int
    total_plaintext_bytes: int
    root: bytes


def seal_final(
    secret: bytes,
    session_id: bytes,
    size: int,
    total_plaintext_bytes: int,
    root: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal the FINAL record of a session holding chunks ``0..size-1`` with Merkle ``root``.

    Type FINAL, codec RAW, ``index = size``, key :func:`derive_final_key`, plaintext
    ``u64be(size) || u64be(total_plaintext_bytes) || root``.
    """
    check_u64("size", size)
    check_u64("total_plaintext_bytes", total_plaintext_bytes)
    if len(root) != ROOT_SIZE:
        raise ValueError(f"root must be {ROOT_SIZE} bytes")
    key = derive_final_key(secret, session_id)
    body = _FINAL_STRUCT.pack(size, total_plaintext_bytes, root)
    sealer = ChunkSealer(FINAL_PLAINTEXT_SIZE)
    record, _ = sealer._seal_body(
        key,
        record_type=RecordType.FINAL,
        codec=Codec.RAW,
        session_id=session_id,
        index=size,
        plaintext_length=FINAL_PLAINTEXT_SIZE,
        body=body,
        nonce=nonce,
    )
    return bytes(record)


def open_final(secret: bytes, session_id: bytes, record: Buffer) -> FinalInfo:
    """Authenticate a FINAL record of ``session_id`` and return what it attests."""
    check_session_id(session_id)
    header = _check_record_frame(record, RecordType.FINAL, session_id, None)
    if header.codec != Codec.RAW or header.plaintext_length != FINAL_PLAINTEXT_SIZE:
        raise FormatError("FINAL record must be raw with a 48-byte plaintext")
    body = _authenticate(derive_final_key(secret, session_id), header, record)
    size, total, root = _FINAL_STRUCT.unpack(body)
    if size != header.index:
        raise IntegrityError(AUTH_FAILED)
    return FinalInfo(size, total, root)
