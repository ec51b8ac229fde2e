"""The v1 record format: named sizes, the header's layout, parse and build (layer 1: pure).

Everything here is the byte layout of ``docs/format.md`` (DESIGN §4) and nothing else: the
84-byte header that is also the AES-GCM associated data, the record types and body codecs,
the domain-separation labels every key derivation uses, and the decompression of an
authenticated body. No key is derived and nothing is encrypted here (that is
:mod:`lucidd.crypto.seal`), and nothing calls the operating system.

Untrusted bytes raise :class:`~lucidd.errors.FormatError`; caller bugs raise ``ValueError``.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import zstandard

from lucidd import vocabulary
from lucidd.errors import FormatError

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
U64_MAX: Final = 2**64 - 1
U32_MAX: Final = 2**32 - 1
MAX_PLAINTEXT_SIZE: Final = U32_MAX
"""The header stores plaintext and body lengths as u32."""

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


AUTH_FAILED: Final = "record failed authentication"
"""The one message of every authentication failure: it says nothing about why."""

# --- compression ---------------------------------------------------------------------------------
#: The static type of a compression name; its values are vocabulary.Compression's (one list).
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


def build_header(
    commitment: bytes,
    *,
    record_type: RecordType,
    codec: Codec,
    session_id: bytes,
    index: int,
    plaintext_length: int,
    body_length: int,
    nonce: bytes,
) -> bytes:
    """The packed :data:`HEADER_SIZE`-byte header (suite 1), the inverse of :func:`parse_header`.

    ``commitment`` is the key commitment of the record's key
    (:func:`lucidd.crypto.seal.key_commitment`). The caller has checked the sizes; ``struct``
    refuses a field that does not fit.
    """
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
        commitment,
    )


# --- checks shared by sealing and wrapping -------------------------------------------------------
def check_secret(secret: bytes) -> None:
    """``ValueError`` unless ``secret`` is :data:`KEY_SIZE` bytes (a caller bug, not data)."""
    if len(secret) != KEY_SIZE:
        raise ValueError(f"session secret must be {KEY_SIZE} bytes")


def check_session_id(session_id: bytes) -> None:
    """``ValueError`` unless ``session_id`` is :data:`SESSION_ID_SIZE` bytes."""
    if len(session_id) != SESSION_ID_SIZE:
        raise ValueError(f"session id must be {SESSION_ID_SIZE} bytes")


def check_u64(name: str, value: int) -> None:
    """``ValueError`` unless ``value`` fits a u64 field."""
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{name} must be in 0..2**64-1")


# --- body codecs ---------------------------------------------------------------------------------
def decompress_body(codec: Codec, body: bytes, plaintext_length: int) -> bytes:
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
