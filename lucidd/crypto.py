"""Sealing of records, key derivation and session-secret wrapping (layer 1: pure).

This module is the whole of lucidd's cryptography, kept narrow in the manner of restic's
``internal/crypto``: a chunk goes in, a self-describing record and its Merkle leaf hash come out;
a record goes in, the plaintext comes out or :class:`~lucidd.errors.IntegrityError` is raised.
The exact byte layout is specified in ``docs/format.md`` (DESIGN §4); every size is a named
constant below.

Layer rules (DESIGN §8): no file I/O, no logging, no asyncio. ``os.urandom`` is the only call
into the operating system. Caller bugs (a 31-byte secret, a negative index) raise
``ValueError``; untrusted bytes raise :class:`FormatError` or :class:`IntegrityError`, and every
authentication failure says nothing more than :data:`AUTH_FAILED`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import struct
import types
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from lucidd import vocabulary
from lucidd.errors import FormatError, IntegrityError, KeyringError

__all__ = [
    "AUTH_FAILED",
    "COMMITMENT_SIZE",
    "COMPRESSIONS",
    "FINAL_PLAINTEXT_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "KEY_ID_MAX",
    "KEY_SIZE",
    "MAGIC",
    "MAX_PLAINTEXT_SIZE",
    "NONCE_SIZE",
    "RECORD_OVERHEAD",
    "SESSION_ID_SIZE",
    "SUITE_AES256GCM_HKDF_SHA256",
    "SUPPORTED_SUITES",
    "TAG_SIZE",
    "WRAPPED_SECRET_SIZE",
    "Buffer",
    "ChunkSealer",
    "Codec",
    "Compression",
    "FinalInfo",
    "Keyring",
    "RecordHeader",
    "RecordType",
    "derive_chunk_key",
    "derive_final_key",
    "hkdf_expand",
    "key_commitment",
    "new_session_secret",
    "open_final",
    "open_record",
    "parse_header",
    "rewrap_secret",
    "seal_chunk",
    "seal_final",
    "unwrap_secret",
    "wrap_secret",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Anything with the buffer protocol that lucidd seals from: a ``bytes`` or a view of the ring."""

# --- format constants (docs/format.md) ---------------------------------------------------------
MAGIC: Final = b"LUCD"
FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 84
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 12
KEY_SIZE: Final = 32
SESSION_ID_SIZE: Final = 16
COMMITMENT_SIZE: Final = 32
RECORD_OVERHEAD: Final = HEADER_SIZE + TAG_SIZE
SUITE_AES256GCM_HKDF_SHA256: Final = 1
ROOT_SIZE: Final = 32
U64_MAX: Final = 2**64 - 1
U32_MAX: Final = 2**32 - 1
MAX_PLAINTEXT_SIZE: Final = U32_MAX
"""The header stores plaintext and body lengths as u32."""

_FINAL_STRUCT: Final = struct.Struct(">QQ32s")
FINAL_PLAINTEXT_SIZE: Final = 48
assert _FINAL_STRUCT.size == FINAL_PLAINTEXT_SIZE

# magic, version, type, codec, suite, session id, index, plaintext length, body length, nonce,
# key commitment. The packed header is also the AES-GCM associated data.
_HEADER_STRUCT: Final = struct.Struct(">4sBBBB16sQII12s32s")
assert _HEADER_STRUCT.size == HEADER_SIZE

# --- domain-separation labels (each ends in NUL so no label is a prefix of another) ------------
CHUNK_KEY_LABEL: Final = b"lucidd/v1/chunk\0"
FINAL_KEY_LABEL: Final = b"lucidd/v1/final\0"
COMMIT_LABEL: Final = b"lucidd/v1/commit\0"
WRAP_LABEL: Final = b"lucidd/v1/wrap\0"
LEAF_PREFIX: Final = b"\x00"
"""RFC 9162 leaf prefix: ``leaf_hash = SHA-256(0x00 || record)``."""

_HASH_NAME: Final = "sha256"
_HASH_SIZE: Final = 32
_HKDF_MAX_LENGTH: Final = 255 * _HASH_SIZE
_HKDF_FIRST_BLOCK: Final = b"\x01"

AUTH_FAILED: Final = "record failed authentication"
"""The one message of every authentication failure: it says nothing about why."""

# --- compression ---------------------------------------------------------------------------------
Compression: TypeAlias = Literal["auto", "zstd", "zlib", "off"]
COMPRESSIONS: Final[tuple[str, ...]] = tuple(c.value for c in vocabulary.Compression)
ZSTD_LEVEL: Final = 3
ZLIB_LEVEL: Final = 6
AUTO_KEEP_PERCENT: Final = 97
"""``auto`` keeps zstd output only if it is at most 97 % of the input (at least 3 % smaller)."""
PERCENT: Final = 100


class RecordType(enum.IntEnum):
    """The record's role: one chunk of the session, or the session's closing FINAL record."""

    DATA = 1
    FINAL = 2


class Codec(enum.IntEnum):
    """How the record body was compressed before encryption."""

    RAW = 0
    ZLIB = 1
    ZSTD = 2


SUPPORTED_SUITES: Final = (SUITE_AES256GCM_HKDF_SHA256,)
"""Suites this build can open (the header's ``suite`` byte)."""

_RECORD_TYPES: Final = frozenset(int(t) for t in RecordType)
_CODECS: Final = frozenset(int(c) for c in Codec)


def compression_bound(size: int) -> int:
    """Largest body zstd (level 3) or zlib (level 6) can emit for ``size`` input bytes.

    zstd's ``ZSTD_COMPRESSBOUND`` is ``n + n/256 + (128 KiB - n)/2048`` plus a frame header of
    at most 18 bytes; zlib's ``deflateBound`` is about ``n + n/4096 + n/16384 + 13`` plus a
    6-byte wrapper. ``n/128 + 1024`` covers both with room to spare.
    """
    return size + (size >> 7) + 1024


# --- header --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordHeader:
    """The parsed 84-byte record header. Parsing checks form only; nothing is authenticated yet."""

    record_type: RecordType
    codec: Codec
    suite: int
    session_id: bytes
    index: int
    plaintext_length: int
    body_length: int
    nonce: bytes
    commitment: bytes

    @property
    def record_length(self) -> int:
        """Length of the whole record this header announces: header, ciphertext and tag."""
        return HEADER_SIZE + self.body_length + TAG_SIZE


def parse_header(buf: Buffer) -> RecordHeader:
    """Parse the first :data:`HEADER_SIZE` bytes of ``buf`` (extra bytes are ignored).

    Raises :class:`FormatError` on short input, a wrong magic, version, type, codec or suite, or
    a RAW body whose length differs from the plaintext length. The header is not authenticated
    by this call: that happens in :func:`open_record` / :func:`open_final`.
    """
    if len(buf) < HEADER_SIZE:
        raise FormatError("record shorter than its header", length=len(buf))
    (
        magic,
        version,
        record_type,
        codec,
        suite,
        session_id,
        index,
        plaintext_length,
        body_length,
        nonce,
        commitment,
    ) = _HEADER_STRUCT.unpack_from(buf)
    if magic != MAGIC:
        raise FormatError("not a lucidd record (bad magic)")
    if version != FORMAT_VERSION:
        raise FormatError("unsupported record format version", version=version)
    if record_type not in _RECORD_TYPES:
        raise FormatError("unknown record type", record_type=record_type)
    if codec not in _CODECS:
        raise FormatError("unknown record codec", codec=codec)
    if suite not in SUPPORTED_SUITES:
        raise FormatError("unknown cipher suite", suite=suite)
    if codec == Codec.RAW and body_length != plaintext_length:
        raise FormatError("raw record body length differs from its plaintext length")
    return RecordHeader(
        RecordType(record_type),
        Codec(codec),
        suite,
        session_id,
        index,
        plaintext_length,
        body_length,
        nonce,
        commitment,
    )


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


def _check_secret(secret: bytes) -> None:
    if len(secret) != KEY_SIZE:
        raise ValueError(f"session secret must be {KEY_SIZE} bytes")


def _check_session_id(session_id: bytes) -> None:
    if len(session_id) != SESSION_ID_SIZE:
        raise ValueError(f"session id must be {SESSION_ID_SIZE} bytes")


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be in 0..2**64-1")


def _expand32(secret: bytes, info: bytes) -> bytes:
    """HKDF-Expand-SHA256 for L = 32: a single ``HMAC(secret, info || 0x01)``."""
    return hmac.digest(secret, info + _HKDF_FIRST_BLOCK, _HASH_NAME)


def derive_chunk_key(secret: bytes, session_id: bytes, index: int) -> bytes:
    """``K_i = HKDF-Expand-SHA256(S, "lucidd/v1/chunk\\0" || sid || u64be(i), 32)``.

    A fresh key per chunk is lucidd's key rotation: a key seals one chunk (and its retries), so
    AES-GCM's per-key limits are never approached and no counter has to be kept.
    """
    _check_secret(secret)
    _check_session_id(session_id)
    _check_u64("index", index)
    return _expand32(secret, CHUNK_KEY_LABEL + session_id + index.to_bytes(8, "big"))


def derive_final_key(secret: bytes, session_id: bytes) -> bytes:
    """``K_fin = HKDF-Expand-SHA256(S, "lucidd/v1/final\\0" || sid, 32)``, the FINAL record key."""
    _check_secret(secret)
    _check_session_id(session_id)
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


# --- AEAD primitives (shared by sealing, opening and the Wycheproof tests) ---------------------
def _gcm_seal_into(key: bytes, nonce: bytes, data: Buffer, aad: Buffer, out: memoryview) -> None:
    """AES-256-GCM encrypt ``data`` into ``out``, which must be exactly ``len(data) + 16``."""
    AESGCM(key).encrypt_into(nonce, data, aad, out)


def _gcm_open(key: bytes, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
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
        header = _record_header(
            key,
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
        header = _record_header(
            key,
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
        _gcm_seal_into(key, nonce, body, header, view[HEADER_SIZE:end])
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


def _record_header(
    key: bytes,
    *,
    record_type: RecordType,
    codec: Codec,
    session_id: bytes,
    index: int,
    plaintext_length: int,
    body_length: int,
    nonce: bytes,
) -> bytes:
    return _HEADER_STRUCT.pack(
        MAGIC,
        FORMAT_VERSION,
        record_type,
        codec,
        SUITE_AES256GCM_HKDF_SHA256,
        session_id,
        index,
        plaintext_length,
        body_length,
        nonce,
        key_commitment(key),
    )


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
    return _gcm_open(key, header.nonce, view[HEADER_SIZE:], view[:HEADER_SIZE])


def _decompress(codec: Codec, body: bytes, plaintext_length: int) -> bytes:
    """Decompress an authenticated body; output is capped at ``plaintext_length + 1`` bytes.

    The ``+ 1`` lets a length of 0 be capped too (0 means "unlimited" to both libraries) and lets
    an over-long stream be told from an exact one. Anything but exactly ``plaintext_length``
    bytes from exactly one complete stream is a :class:`FormatError`.
    """
    if codec == Codec.RAW:
        return body
    cap = plaintext_length + 1
    if codec == Codec.ZLIB:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(body, cap)
        except zlib.error:
            raise FormatError("record body is not a valid zlib stream") from None
        complete = inflater.eof and not inflater.unused_data and not inflater.unconsumed_tail
    else:
        try:
            declared = zstandard.frame_content_size(body)
            if declared not in (-1, plaintext_length):  # -1: the frame does not say
                raise FormatError("zstd frame size differs from the record's plaintext length")
            out = zstandard.ZstdDecompressor().decompress(
                body, max_output_size=cap, allow_extra_data=False
            )
        except zstandard.ZstdError:
            raise FormatError("record body is not a valid zstd frame") from None
        complete = True
    if not complete or len(out) != plaintext_length:
        raise FormatError("decompressed size differs from the record's plaintext length")
    return out


def open_record(secret: bytes, session_id: bytes, index: int, record: Buffer) -> bytes:
    """Authenticate and decrypt the DATA record stored as chunk ``index``; return its plaintext.

    Rejects (IntegrityError) a record of another session or index, whatever its tag: a record
    moved elsewhere must not open. Malformed framing is FormatError. Decompression happens only
    after authentication and is capped at the authenticated plaintext length.
    """
    _check_session_id(session_id)
    header = _check_record_frame(record, RecordType.DATA, session_id, index)
    key = derive_chunk_key(secret, session_id, index)
    body = _authenticate(key, header, record)
    return _decompress(header.codec, body, header.plaintext_length)


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
    _check_u64("size", size)
    _check_u64("total_plaintext_bytes", total_plaintext_bytes)
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
    _check_session_id(session_id)
    header = _check_record_frame(record, RecordType.FINAL, session_id, None)
    if header.codec != Codec.RAW or header.plaintext_length != FINAL_PLAINTEXT_SIZE:
        raise FormatError("FINAL record must be raw with a 48-byte plaintext")
    body = _authenticate(derive_final_key(secret, session_id), header, record)
    size, total, root = _FINAL_STRUCT.unpack(body)
    if size != header.index:
        raise IntegrityError(AUTH_FAILED)
    return FinalInfo(size, total, root)


# --- keyring and session-secret wrapping -------------------------------------------------------
KEY_ID_MAX: Final = U32_MAX
KEYRING_MAGIC_LINE: Final = "lucidd-keyring v1"
KEYRING_MAX_KEYS: Final = 1024
"""A bound on parsing work; rotation once a day for almost three years fits."""
_KEY_LINE = re.compile(r"key (0|[1-9][0-9]{0,9}) ([0-9a-f]{64})")
_CURRENT_LINE = re.compile(r"current (0|[1-9][0-9]{0,9})")

# Passphrase-locked keyring: Argon2id, RFC 9106 §4 second recommended option.
LOCKED_MAGIC_LINE: Final = "lucidd-keyring-locked v1"
ARGON2_MEMORY_KIB: Final = 64 * 1024
ARGON2_ITERATIONS: Final = 3
ARGON2_LANES: Final = 4
ARGON2_SALT_SIZE: Final = 16
_LOCKED_KDF_LINE = re.compile(
    rf"argon2id m={ARGON2_MEMORY_KIB} t={ARGON2_ITERATIONS} p={ARGON2_LANES} "
    rf"salt=([0-9a-f]{{{2 * ARGON2_SALT_SIZE}}})"
)
_LOCKED_NONCE_LINE = re.compile(rf"nonce ([0-9a-f]{{{2 * NONCE_SIZE}}})")
_LOCKED_SEALED_LINE = re.compile(r"sealed ((?:[0-9a-f]{2})+)")
_LOCKED_LINES: Final = 4

_KEY_ID_STRUCT: Final = struct.Struct(">I")
WRAPPED_SECRET_SIZE: Final = _KEY_ID_STRUCT.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
assert WRAPPED_SECRET_SIZE == 64


class Keyring:
    """Master keys by u32 key id, and which one wraps new session secrets.

    Immutable: :meth:`rotated` returns a new keyring. Key bytes never appear in ``repr``,
    ``str`` or error messages. (Python cannot zero memory; keys live as long as the object.)
    """

    __slots__ = ("_current_id", "_keys")

    def __init__(self, keys: Mapping[int, bytes], current_id: int) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for key_id, key in keys.items():
            if not 0 <= key_id <= KEY_ID_MAX:
                raise ValueError("key id must be a u32")
            if len(key) != KEY_SIZE:
                raise ValueError(f"master keys must be {KEY_SIZE} bytes")
        if current_id not in keys:
            raise ValueError("current key id is not in the keyring")
        self._keys: Mapping[int, bytes] = types.MappingProxyType(dict(keys))
        self._current_id = current_id

    @classmethod
    def generate(cls) -> Keyring:
        """A new keyring with one random master key under a random key id."""
        key_id = _KEY_ID_STRUCT.unpack(os.urandom(_KEY_ID_STRUCT.size))[0]
        return cls({key_id: os.urandom(KEY_SIZE)}, key_id)

    def rotated(self) -> Keyring:
        """A copy with a new random current key; old keys stay so old wraps still open."""
        while True:
            key_id = _KEY_ID_STRUCT.unpack(os.urandom(_KEY_ID_STRUCT.size))[0]
            if key_id not in self._keys:
                break
        keys = dict(self._keys)
        keys[key_id] = os.urandom(KEY_SIZE)
        return Keyring(keys, key_id)

    @property
    def current_id(self) -> int:
        """Key id of the key that wraps new session secrets."""
        return self._current_id

    @property
    def current_key(self) -> bytes:
        """The current master key."""
        return self._keys[self._current_id]

    @property
    def key_ids(self) -> tuple[int, ...]:
        """All key ids, sorted."""
        return tuple(sorted(self._keys))

    def key(self, key_id: int) -> bytes:
        """The master key with ``key_id``; :class:`KeyringError` if the keyring lacks it."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyringError("no master key with that id in the keyring", key_id=key_id) from None

    def __repr__(self) -> str:
        return f"Keyring(current_id={self._current_id}, keys={len(self._keys)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keyring):
            return NotImplemented
        return self._current_id == other._current_id and dict(self._keys) == dict(other._keys)

    __hash__ = None  # type: ignore[assignment]  # equal by contents, and mutable-looking

    def serialize(self) -> bytes:
        """The keyring file text (docs/format.md): magic line, ``key`` lines, ``current`` line."""
        lines = [KEYRING_MAGIC_LINE]
        lines += [f"key {key_id} {self._keys[key_id].hex()}" for key_id in sorted(self._keys)]
        lines.append(f"current {self._current_id}")
        return ("\n".join(lines) + "\n").encode("ascii")

    @classmethod
    def parse(cls, data: bytes) -> Keyring:
        """Parse keyring file text; :class:`KeyringError` naming the line, never its content."""
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyringError("keyring is not ASCII text") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline
        if not lines or lines[0] != KEYRING_MAGIC_LINE:
            raise KeyringError(f"keyring does not start with {KEYRING_MAGIC_LINE!r}")
        keys: dict[int, bytes] = {}
        current: int | None = None
        for number, line in enumerate(lines[1:], start=2):
            if match := _KEY_LINE.fullmatch(line):
                key_id = int(match[1])
                if key_id > KEY_ID_MAX or key_id in keys:
                    raise KeyringError(f"keyring line {number}: bad or duplicate key id")
                if len(keys) >= KEYRING_MAX_KEYS:
                    raise KeyringError(f"keyring has more than {KEYRING_MAX_KEYS} keys")
                keys[key_id] = bytes.fromhex(match[2])
            elif match := _CURRENT_LINE.fullmatch(line):
                if current is not None:
                    raise KeyringError(f"keyring line {number}: second 'current' line")
                current = int(match[1])
            else:
                raise KeyringError(
                    f"keyring line {number}: expected 'key <id> <64 lowercase hex>' "
                    "or 'current <id>'"
                )
        if current is None:
            raise KeyringError("keyring has no 'current <id>' line")
        if current not in keys:
            raise KeyringError("keyring 'current' names a key id it does not hold")
        return cls(keys, current)

    def lock(self, passphrase: str | bytes) -> bytes:
        """This keyring sealed under a passphrase (text, docs/format.md §5).

        Key: Argon2id(passphrase, random 16-byte salt, m = 64 MiB, t = 3, p = 4, 32 bytes)
        (RFC 9106 second recommended option; ~0.1-0.5 s and 64 MiB, once at start). The keyring
        text is AES-256-GCM encrypted under it with the first two lines as associated data.
        """
        salt = os.urandom(ARGON2_SALT_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        header = _locked_header(salt)
        sealed = AESGCM(_passphrase_key(passphrase, salt)).encrypt(nonce, self.serialize(), header)
        return header + f"nonce {nonce.hex()}\nsealed {sealed.hex()}\n".encode("ascii")

    @classmethod
    def unlock(cls, data: bytes, passphrase: str | bytes) -> Keyring:
        """Open a :meth:`lock` ed keyring; :class:`KeyringError` if malformed or the passphrase
        is wrong (the two cannot be told apart once the format parses)."""
        try:
            lines = data.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise KeyringError("locked keyring is not ASCII text") from None
        if lines[-1:] == [""]:
            lines.pop()
        if len(lines) != _LOCKED_LINES or lines[0] != LOCKED_MAGIC_LINE:
            raise KeyringError(f"locked keyring does not have the {LOCKED_MAGIC_LINE!r} layout")
        kdf = _LOCKED_KDF_LINE.fullmatch(lines[1])
        nonce = _LOCKED_NONCE_LINE.fullmatch(lines[2])
        sealed = _LOCKED_SEALED_LINE.fullmatch(lines[3])
        if kdf is None or nonce is None or sealed is None:
            raise KeyringError("locked keyring has malformed or unsupported parameter lines")
        salt = bytes.fromhex(kdf[1])
        try:
            text = AESGCM(_passphrase_key(passphrase, salt)).decrypt(
                bytes.fromhex(nonce[1]), bytes.fromhex(sealed[1]), _locked_header(salt)
            )
        except InvalidTag:
            raise KeyringError("wrong passphrase, or the locked keyring is damaged") from None
        return cls.parse(text)


def _locked_header(salt: bytes) -> bytes:
    return (
        f"{LOCKED_MAGIC_LINE}\nargon2id m={ARGON2_MEMORY_KIB} t={ARGON2_ITERATIONS} "
        f"p={ARGON2_LANES} salt={salt.hex()}\n"
    ).encode("ascii")


def _passphrase_key(passphrase: str | bytes, salt: bytes) -> bytes:
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not secret:
        raise ValueError("the passphrase must not be empty")
    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive(secret)


def _wrap_aad(key_id: int, session_id: bytes) -> bytes:
    return WRAP_LABEL + _KEY_ID_STRUCT.pack(key_id) + session_id


def wrap_secret(
    keyring: Keyring, session_id: bytes, secret: bytes, nonce: bytes | None = None
) -> bytes:
    """Wrap a session secret under the keyring's current master key (64 bytes).

    Layout: ``u32be(key_id) || nonce(12) || AES-256-GCM(secret) (32) || tag (16)``, with
    AAD ``"lucidd/v1/wrap\\0" || u32be(key_id) || session_id``, so a wrapped secret cannot be
    moved to another session or relabelled with another key id. ``nonce`` is for tests only.
    """
    _check_secret(secret)
    _check_session_id(session_id)
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    key_id = keyring.current_id
    sealed = AESGCM(keyring.current_key).encrypt(nonce, secret, _wrap_aad(key_id, session_id))
    return _KEY_ID_STRUCT.pack(key_id) + nonce + sealed


def unwrap_secret(keyring: Keyring, session_id: bytes, wrapped: bytes) -> bytes:
    """Recover a session secret: FormatError if malformed, KeyringError if the key id is not in
    the keyring, IntegrityError if it fails authentication (wrong session, wrong key, tampered)."""
    _check_session_id(session_id)
    if len(wrapped) != WRAPPED_SECRET_SIZE:
        raise FormatError("wrapped session secret has the wrong length", length=len(wrapped))
    (key_id,) = _KEY_ID_STRUCT.unpack_from(wrapped)
    nonce_end = _KEY_ID_STRUCT.size + NONCE_SIZE
    master = keyring.key(key_id)
    return _gcm_open(
        master,
        wrapped[_KEY_ID_STRUCT.size : nonce_end],
        wrapped[nonce_end:],
        _wrap_aad(key_id, session_id),
    )


def rewrap_secret(keyring: Keyring, session_id: bytes, wrapped: bytes) -> bytes:
    """Re-wrap a session secret under the current master key (after :meth:`Keyring.rotated`).

    Always produces a fresh wrap (new nonce), even if ``wrapped`` already uses the current key.
    """
    return wrap_secret(keyring, session_id, unwrap_secret(keyring, session_id, wrapped))
