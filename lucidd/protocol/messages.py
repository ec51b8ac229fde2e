"""The frames' base, the limits, and the data socket's messages (layer 1, DESIGN §6).

The control socket's messages are in :mod:`~lucidd.protocol.control_messages`. A frame is
``u32 big-endian length || msgpack body``; the body is one of these Structs. On the
data socket a :class:`Chunk` (or :class:`Batch`) header frame is followed by exactly ``length``
(or ``sum(lengths)``) raw payload bytes, outside the msgpack. The limits that frames and
settings must agree on are defined here once (``MAX_DATA_HEADER_SIZE``, ``MAX_BATCH_ITEMS``).
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from lucidd.errors import LucidError

LENGTH_PREFIX: Final = struct.Struct(">I")
LENGTH_PREFIX_SIZE: Final = LENGTH_PREFIX.size
SESSION_ID_SIZE: Final = 16
HASH_SIZE: Final = 32
MAX_INDEX: Final = 2**63 - 1
#: Bound on a msgpack header frame on the data socket.
MAX_DATA_HEADER_SIZE: Final = 64 * 1024
#: A Batch item's worst case in msgpack: a u64 index (9 bytes) and a u32 length (5 bytes).
BATCH_ITEM_MAX_BYTES: Final = 14
#: The rest of a Batch frame at worst: length prefix, tag, req, session, two array headers.
BATCH_FRAME_OVERHEAD: Final = 128
#: The most items a Batch frame can carry within MAX_DATA_HEADER_SIZE (``batch_size``'s
#: ceiling: a larger batch would be refused as bad_frame, closing the connection).
MAX_BATCH_ITEMS: Final = (MAX_DATA_HEADER_SIZE - BATCH_FRAME_OVERHEAD) // BATCH_ITEM_MAX_BYTES
#: Extra room on the control socket above one chunk (a ReadChunk reply carries the plaintext).
CONTROL_FRAME_OVERHEAD: Final = 64 * 1024
#: The largest uid an ActAs may name: ``uid_t`` is 32 bits and ``(uid_t)-1`` means "no uid".
MAX_UID: Final = 2**32 - 2


class Message(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of every frame body; ``req`` is chosen by the client and echoed in replies."""

    req: int


# --- both sockets: delegation (docs/protocol.md §3.1, docs/security.md *Delegation*) ----


class ActAs(Message, tag="act_as", frozen=True):
    """From now on this connection acts as user ``uid``: its sessions, their rules.

    Only as the first frame of a connection, and only from root or the daemon's own uid
    (to root or the daemon's uid: from root only). Answered with :class:`ActingAs`; any
    refusal is one typed ``Error`` (``bad_frame``: not the first frame, ``bad_request``: a
    uid outside ``0..MAX_UID``, ``forbidden``: not allowed, or a uid with no user) after
    which the daemon closes the connection, so nothing sent behind it runs as the sender.
    """

    uid: int


# --- data socket: client -> daemon -------------------------------------------------------


class Chunk(Message, tag="chunk", frozen=True):
    """One chunk; ``length`` raw payload bytes follow this frame."""

    session: bytes
    index: int
    length: int


class Batch(Message, tag="batch", frozen=True):
    """Up to ``batch_size`` chunks at once; ``sum(lengths)`` payload bytes follow, in order.

    Each item is acknowledged (or refused) on its own, with this frame's ``req``.
    """

    session: bytes
    indices: list[int]
    lengths: list[int]


class ShareMemory(Message, tag="share_memory", frozen=True):
    """Ask for a shared-memory region of ``size`` bytes for this connection's payloads.

    Only before the connection's first chunk (after an ``ActAs``, if any). Answered with
    :class:`MemoryShared`, whose frame carries the region's file descriptor (a sealed memfd,
    ``SCM_RIGHTS``), or with a typed ``Error`` after which the connection stays usable on the
    socket path (``too_large``: over the daemon's ``shared_memory_max``, ``busy``: none free,
    ``bad_frame``: after a chunk). docs/protocol.md *Shared memory*.
    """

    size: int


class SharedChunk(Message, tag="shared_chunk", frozen=True):
    """One chunk whose ``length`` payload bytes lie at ``offset`` of this connection's shared
    region; no payload follows the frame. The client must not change those bytes until the
    chunk is answered (if it does, only this chunk's content changes)."""

    session: bytes
    index: int
    offset: int
    length: int


# --- data socket: daemon -> client ------------------------------------------------------


class Ack(Message, tag="ack", frozen=True):
    """The chunk's sealed record is durable (fdatasync'd); ``leaf_hash`` is its Merkle leaf."""

    session: bytes
    index: int
    leaf_hash: bytes


class Error(Message, tag="error", frozen=True):
    """A typed failure (``code`` is a :mod:`lucidd.errors` wire code)."""

    code: str
    message: str
    session: bytes | None = None
    index: int | None = None


class ActingAs(Message, tag="acting_as", frozen=True):
    """The answer to :class:`ActAs` (on either socket): the connection now acts as ``uid``,
    with that user's primary group and groups from the host's user database."""

    uid: int


class MemoryShared(Message, tag="memory_shared", frozen=True):
    """The answer to :class:`ShareMemory`: the frame's ancillary data holds the region's file
    descriptor, ``size`` bytes, sealed against shrinking and growing."""

    size: int


DataRequest = Chunk | Batch | SharedChunk | ShareMemory | ActAs
DataReply = Ack | Error | ActingAs | MemoryShared


def error_reply(req: int, err: LucidError) -> Error:
    """The wire ``Error`` for an exception (its message is already secret-free)."""
    session = err.context.get("session")
    index = err.context.get("index")
    return Error(
        req=req,
        code=err.code,
        message=err.message,
        session=session if isinstance(session, bytes) else None,
        index=index if isinstance(index, int) else None,
    )
