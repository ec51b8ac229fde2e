"""The JSON files lucidctl writes and reads back (layer 4): an inclusion proof
(``lucidctl --json proof``) and a checkpoint (``lucidctl --json finalize``), both inputs of
``lucidctl verify``.

Each format is one msgspec Struct: the command that prints it encodes the Struct, ``verify``
decodes the file into it, so the field names and types are written down once. Field order is
the order of the printed JSON object. Hashes are lowercase hex, session ids canonical UUID
strings (checked by :func:`lucidd.client.parse_session_id` after decoding).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from lucidd import merkle

#: Characters of a hash in lowercase hex.
HASH_HEX_LENGTH: Final = 2 * merkle.HASH_SIZE

HashHex = Annotated[str, msgspec.Meta(pattern=f"^[0-9a-f]{{{HASH_HEX_LENGTH}}}$")]
Count = Annotated[int, msgspec.Meta(ge=0)]


class InclusionProofFile(msgspec.Struct, frozen=True, kw_only=True):
    """``lucidctl --json proof SESSION INDEX [--size N]``: chunk ``index`` is a leaf of the
    session's tree of ``size`` leaves.

    ``root`` is the root the daemon computed; ``verify`` does not rely on it (the checkpoint's
    root is the one that counts), so it may be absent and is not checked.
    """

    session: str
    index: Count
    size: Count
    leaf_hash: HashHex
    path: list[HashHex]
    root: str = ""


class CheckpointFile(msgspec.Struct, frozen=True, kw_only=True):
    """``lucidctl --json finalize SESSION``: the session's final tree and its checkpoint.

    ``verify`` needs only ``checkpoint`` (the C2SP text), so the other fields may be absent: it
    also takes the output of ``put --finalize`` or a hand-written ``{"checkpoint": ...}``.
    """

    session: str = ""
    size: Count = 0
    root: str = ""
    checkpoint: str
    already_finalized: bool = False


class ConsistencyFile(msgspec.Struct, frozen=True, kw_only=True):
    """``lucidctl --json consistency SESSION SIZE1 SIZE2``: the proof and both signed
    checkpoints (what ``verify-consistency`` reads)."""

    session: str
    size1: int
    size2: int
    path: list[str]
    root1: str
    root2: str
    checkpoint1: str = ""
    checkpoint2: str = ""
