"""What lucidd keeps in an object store, and the pack format (layer 1, pure).

Every object is written once (create-only) and never changed, like restic's packs and
Tessera's tiles; a host's objects live under ``PREFIX/<host id>/``::

    <host id>/host                               HostRecord (JSON): origin, vkey
    <host id>/sessions/<session id>/meta         the session's metadata (msgpack, as on disk:
                                                 the secret is wrapped under the master key)
    <host id>/sessions/<session id>/packs/<first index, 20 digits>-<pack digest>.pack
                                                 sealed records, then a footer indexing them
    <host id>/sessions/<session id>/checkpoints/<size, 20 digits>
                                                 the session's signed checkpoints
    <host id>/sessions/<session id>/final        the FINAL record (after finalize)
    <host id>/anchor/entries/<first>-<count>     the anchor log's leaves (what they are)
    <host id>/anchor/checkpoints/<size>[.<backend>]
                                                 anchor checkpoints and their attestations

A pack holds records of one session, concatenated, then the footer (one :data:`_ENTRY` per
record: index, offset, length, leaf hash), then the footer's length (8 bytes, big-endian) and
:data:`PACK_MAGIC`. Records are self-describing and authenticated, and the leaf hash of each
is ``SHA-256(0x00 || record)``, so a pack needs no trust: a reader checks every record against
the footer and the footer against the signed checkpoints. Its name carries the digest of its
bytes, so two hosts never write different bytes under one name, and a conflict on create is
either the same pack again (success) or tampering (an alarm).
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from lucidd.crypto import parse_header
from lucidd.errors import FormatError
from lucidd.merkle import HASH_SIZE, leaf_hash

PACK_MAGIC: Final = b"LUCIDPK1"
_ENTRY: Final = struct.Struct(">QQQ32s")
_TRAILER: Final = struct.Struct(">Q8s")
#: Hex digits of the pack digest in its name (128 bits: collisions are not a concern).
DIGEST_HEX: Final = 32
_PACK_NAME: Final = re.compile(r"^(\d{20})-([0-9a-f]{32})\.pack$")
_ENTRIES_NAME: Final = re.compile(r"^(\d{20})-(\d{20})$")
_SIZE_NAME: Final = re.compile(r"^(\d{20})(?:\.([a-z0-9_-]+))?$")


class HostRecord(msgspec.Struct, frozen=True):
    """``<host id>/host``: whose objects these are, and the key its checkpoints verify with."""

    host_id: str
    origin: str
    vkey: str


@dataclass(frozen=True)
class PackEntry:
    index: int
    offset: int
    length: int
    leaf_hash: bytes


def host_prefix(prefix: str, host_id: str) -> str:
    return f"{prefix.strip('/')}/{host_id}/" if prefix.strip("/") else f"{host_id}/"


def session_prefix(prefix: str, host_id: str, session: bytes) -> str:
    return f"{host_prefix(prefix, host_id)}sessions/{uuid.UUID(bytes=session)}/"


def meta_key(prefix: str, host_id: str, session: bytes) -> str:
    return session_prefix(prefix, host_id, session) + "meta"


def final_key(prefix: str, host_id: str, session: bytes) -> str:
    return session_prefix(prefix, host_id, session) + "final"


def checkpoint_key(prefix: str, host_id: str, session: bytes, size: int) -> str:
    return f"{session_prefix(prefix, host_id, session)}checkpoints/{size:020d}"


def anchor_key(prefix: str, host_id: str, size: int, kind: str | None = None) -> str:
    name = f"{size:020d}" if kind is None else f"{size:020d}.{kind}"
    return f"{host_prefix(prefix, host_id)}anchor/checkpoints/{name}"


def anchor_entries_key(prefix: str, host_id: str, first: int, count: int) -> str:
    """Entries ``first..first+count-1`` of the anchor log (``entries.bin``'s 56-byte records)."""
    return f"{host_prefix(prefix, host_id)}anchor/entries/{first:020d}-{count:020d}"


def parse_entries_name(name: str) -> tuple[int, int] | None:
    """(first, count) of an anchor entries object's last path element, or None."""
    match = _ENTRIES_NAME.match(name.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def pack_key(
    prefix: str, host_id: str, session: bytes, first_index: int, pack: bytes | bytearray
) -> str:
    """The pack's name: its first index and the digest of its footer, which commits to every
    record through their leaf hashes (hashing the footer, not the megabytes, is the point)."""
    footer_size, _ = _TRAILER.unpack_from(pack, len(pack) - _TRAILER.size)
    tail = memoryview(pack)[len(pack) - _TRAILER.size - footer_size :]
    digest = hashlib.sha256(tail).hexdigest()[:DIGEST_HEX]
    return f"{session_prefix(prefix, host_id, session)}packs/{first_index:020d}-{digest}.pack"


def parse_pack_name(name: str) -> tuple[int, str] | None:
    """(first index, digest) of a pack object's last path element, or None."""
    match = _PACK_NAME.match(name.rsplit("/", 1)[-1])
    return (int(match.group(1)), match.group(2)) if match else None


def parse_size_name(name: str) -> tuple[int, str | None] | None:
    """(size, kind) of a checkpoint object's last path element, or None."""
    match = _SIZE_NAME.match(name.rsplit("/", 1)[-1])
    return (int(match.group(1)), match.group(2)) if match else None


def pack_frame(records: Sequence[tuple[int, int]], leaves: Sequence[bytes]) -> bytearray:
    """The buffer of a pack of ``(index, length)`` records with ``leaves`` their leaf hashes:
    footer and trailer written, the body (the records back to back from offset 0, in the
    order given) left for the caller to fill, so records can be read straight into it."""
    if not records:
        raise ValueError("a pack holds at least one record")
    body_size = sum(length for _, length in records)
    footer_size = _ENTRY.size * len(records)
    pack = bytearray(body_size + footer_size + _TRAILER.size)
    offset = 0
    at = body_size
    for (index, length), leaf in zip(records, leaves, strict=True):
        _ENTRY.pack_into(pack, at, index, offset, length, leaf)
        offset += length
        at += _ENTRY.size
    _TRAILER.pack_into(pack, at, footer_size, PACK_MAGIC)
    return pack


def pack_entries(pack: bytes) -> list[PackEntry]:
    """The footer of a pack; FormatError if it is not one (nothing here is trusted yet)."""
    if len(pack) < _TRAILER.size:
        raise FormatError("pack is shorter than its trailer")
    footer_size, magic = _TRAILER.unpack_from(pack, len(pack) - _TRAILER.size)
    if magic != PACK_MAGIC:
        raise FormatError("not a lucidd pack (bad magic)")
    body_size = len(pack) - _TRAILER.size - footer_size
    if footer_size % _ENTRY.size or body_size < 0:
        raise FormatError("pack footer has a bad length")
    entries = []
    end = 0
    for at in range(body_size, body_size + footer_size, _ENTRY.size):
        index, offset, length, leaf = _ENTRY.unpack_from(pack, at)
        if offset != end or offset + length > body_size:
            raise FormatError("pack footer does not tile the records")
        end = offset + length
        entries.append(PackEntry(index, offset, length, leaf))
    if end != body_size:
        raise FormatError("pack footer does not cover every byte of the records")
    return entries


def pack_records(pack: bytes, session: bytes | None = None) -> list[tuple[PackEntry, bytes]]:
    """Every record of a pack with its entry, each checked against its leaf hash and its own
    header (the chunk index, and the session when given: the footer is not trusted).

    FormatError if the pack is malformed, a record does not hash to its footer's leaf, or its
    header names another chunk or session (a flipped byte). The caller still checks the
    leaves against a signed checkpoint.
    """
    found = []
    for entry in pack_entries(pack):
        record = pack[entry.offset : entry.offset + entry.length]
        if leaf_hash(record) != entry.leaf_hash:
            raise FormatError(f"pack record of chunk {entry.index} does not match its leaf hash")
        header = parse_header(record)
        if header.index != entry.index or header.record_length != len(record):
            raise FormatError(f"pack footer says chunk {entry.index}, the record is another")
        if session is not None and header.session_id != session:
            raise FormatError(f"pack record of chunk {entry.index} belongs to another session")
        found.append((entry, record))
    return found


assert _ENTRY.size == 24 + HASH_SIZE
