"""C2SP ``tlog-proof@v1`` (layer 1, pure): an index, its inclusion proof and a signed checkpoint.

https://c2sp.org/tlog-proof. The text is::

    c2sp.org/tlog-proof@v1
    extra <base64>          (optional, unauthenticated)
    index <decimal>
    <base64 hash>           (zero or more: the RFC 9162 path, leaf side first)

    <the signed checkpoint, verbatim>

This module builds and parses the text; checking the signature (:mod:`lucidd.note`) and the
path (:func:`lucidd.merkle.verify_inclusion`) is the caller's, because which keys to trust is.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from lucidd.errors import FormatError
from lucidd.merkle import HASH_SIZE

HEADER: Final = b"c2sp.org/tlog-proof@v1"
#: More path hashes than a tree of 2**64 leaves needs is malformed.
MAX_PATH: Final = 64
#: Bound on the text accepted (a proof plus a signed note is well under this).
MAX_PROOF_SIZE: Final = 1 << 20


@dataclass(frozen=True)
class TlogProof:
    index: int
    path: tuple[bytes, ...]
    #: The signed checkpoint (a C2SP signed note), byte for byte.
    checkpoint: bytes
    extra: bytes | None = None

    def encode(self) -> bytes:
        lines = [HEADER]
        if self.extra is not None:
            lines.append(b"extra " + base64.b64encode(self.extra))
        lines.append(b"index %d" % self.index)
        lines += [base64.b64encode(node) for node in self.path]
        return b"\n".join(lines) + b"\n\n" + self.checkpoint


def _b64(text: bytes, what: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"tlog-proof: {what} is not base64") from None
    if base64.b64encode(value) != text:
        raise FormatError(f"tlog-proof: {what} is not canonical base64")
    return value


def parse_tlog_proof(data: bytes) -> TlogProof:
    """Parse a tlog-proof; raise FormatError on anything else.

    Refused: a missing or different first line, an index that is not canonical decimal, path
    lines that are not canonical base64 of 32 bytes, more than MAX_PATH of them, no blank line
    before the checkpoint, and more than MAX_PROOF_SIZE bytes. The checkpoint is returned
    unparsed.
    """
    if len(data) > MAX_PROOF_SIZE:
        raise FormatError(f"tlog-proof is over {MAX_PROOF_SIZE} bytes")
    head, sep, checkpoint = bytes(data).partition(b"\n\n")
    if not sep or not checkpoint:
        raise FormatError("tlog-proof: no blank line and checkpoint after the proof")
    lines = head.split(b"\n")
    if lines[0] != HEADER:
        raise FormatError(f"tlog-proof: the first line is not {HEADER.decode()}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith(b"extra "):
        extra = _b64(rest[0][len(b"extra ") :], "extra")
        rest = rest[1:]
    if not rest or not rest[0].startswith(b"index "):
        raise FormatError("tlog-proof: no index line")
    digits = rest[0][len(b"index ") :]
    if not digits.isdigit() or (digits.startswith(b"0") and digits != b"0") or len(digits) > 20:
        raise FormatError("tlog-proof: the index is not a canonical decimal number")
    index = int(digits)
    path_lines = rest[1:]
    if len(path_lines) > MAX_PATH:
        raise FormatError(f"tlog-proof: more than {MAX_PATH} path hashes")
    path = []
    for position, line in enumerate(path_lines):
        node = _b64(line, f"path hash {position}")
        if len(node) != HASH_SIZE:
            raise FormatError(f"tlog-proof: path hash {position} is not {HASH_SIZE} bytes")
        path.append(node)
    return TlogProof(index, tuple(path), checkpoint, extra)
