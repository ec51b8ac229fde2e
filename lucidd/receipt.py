"""Receipts (layer 1, pure): the file that proves a chunk offline, and its verification.

A receipt (docs/receipts.md) chains a chunk to an anchor::

    record --leaf hash--> chunk_proof (tlog-proof: path to a signed session checkpoint)
           --SHA-256 of that signed note--> checkpoint_proof (tlog-proof: path to the signed
           checkpoint of the host's anchor log) --SHA-256 of that note--> attestations

:func:`verify_receipt` checks every link with nothing but the receipt, the record and the
verifier keys the caller pins: no daemon, no keys of the host, no network. Checking an
attestation against its chain (``--rpc``) is the caller's (it needs the network).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from lucidd import crypto, merkle
from lucidd.errors import FormatError, IntegrityError
from lucidd.note import Verifier, open_checkpoint
from lucidd.tlog_proof import parse_tlog_proof

RECEIPT_FORMAT: Final = "lucidd-receipt/1"
ANCHOR_ORIGIN_SUFFIX: Final = "/anchor"
HashHex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class ReceiptAttestation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an anchoring backend returned, base64 of its bytes (ethereum: JSON)."""

    backend: str
    data: bytes


class ReceiptFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``lucidctl --json receipt SESSION INDEX -o FILE`` (docs/receipts.md). Decoded strictly:
    an unknown or missing field is refused, so no byte of the file is silently ignored."""

    format: str
    session: str
    index: int
    leaf_hash: HashHex
    #: C2SP tlog-proof: the chunk's path to the signed session checkpoint.
    chunk_proof: str
    #: C2SP tlog-proof: that checkpoint's leaf in the anchor log, to its signed checkpoint.
    checkpoint_proof: str
    attestations: list[ReceiptAttestation] = []


class EthereumClaim(msgspec.Struct, frozen=True):
    """The fields of an ethereum attestation a receipt can check offline (the rest, chain id,
    block and transaction, are only checkable against the chain: ``--rpc``)."""

    chain_id: int
    contract: str
    tx_hash: str
    block_number: int
    block_hash: str
    log_index: int
    origin: str
    size: int
    root: str
    note_hash: str


class ReceiptError(Exception):
    """The receipt does not prove what it claims; the message is the first failure."""


@dataclass(frozen=True)
class ReceiptFacts:
    """What a verified receipt proves."""

    key: str  # the vkey that signed both checkpoints
    host_origin: str
    session: bytes
    index: int
    leaf_hash: bytes
    session_size: int
    session_root: bytes
    anchor_index: int
    anchor_size: int
    anchor_root: bytes
    anchor_note_hash: bytes
    #: (backend, what was checked offline: an EthereumClaim or the opaque bytes, the bytes)
    attestations: list[tuple[str, Any, bytes]]


def note_hash(note: bytes) -> bytes:
    """The leaf input of a signed checkpoint in the anchor log (and what gets anchored)."""
    return hashlib.sha256(note).digest()


def decode_receipt(raw: bytes) -> ReceiptFile:
    try:
        receipt = msgspec.json.decode(raw, type=ReceiptFile)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ReceiptError(f"receipt file: {exc}") from None
    if receipt.format != RECEIPT_FORMAT:
        raise ReceiptError(f"receipt file: format {receipt.format!r} is not {RECEIPT_FORMAT}")
    return receipt


def record_leaf(record: bytes, session: bytes, index: int) -> bytes:
    """The leaf hash of a sealed record, after checking it is chunk ``index`` of ``session``."""
    try:
        header = crypto.parse_header(record)
    except FormatError as exc:
        raise ReceiptError(f"record: {exc}") from None
    if header.record_type != crypto.RecordType.DATA:
        raise ReceiptError(f"record is a {header.record_type.name} record, not a chunk")
    if len(record) != header.record_length:
        raise ReceiptError(
            f"record is {len(record)} bytes but its header announces {header.record_length}"
        )
    if header.session_id != session:
        raise ReceiptError(f"record belongs to session {uuid.UUID(bytes=header.session_id)}")
    if header.index != index:
        raise ReceiptError(f"record is chunk {header.index}, the receipt is for chunk {index}")
    return merkle.leaf_hash(record)


def _open(note: bytes, verifiers: list[Verifier], what: str) -> tuple[merkle.Checkpoint, Verifier]:
    try:
        checkpoint, signers = open_checkpoint(note, verifiers)
    except (FormatError, IntegrityError) as exc:
        raise ReceiptError(f"{what}: {exc}") from None
    return checkpoint, signers[0]


def verify_receipt(
    receipt: ReceiptFile, record: bytes | None, verifiers: list[Verifier]
) -> ReceiptFacts:
    """Check every link of ``receipt``; what it proves, or :class:`ReceiptError` (why).

    ``record`` (the sealed chunk) is required for the chunk to be proven; without it only the
    receipt's own leaf hash is. Costs two Ed25519 verifications and about 2·log2(n) hashes.
    """
    try:
        session = uuid.UUID(receipt.session).bytes
    except ValueError:
        session = b""
    if not session or str(uuid.UUID(bytes=session)) != receipt.session:
        raise ReceiptError(f"receipt: session {receipt.session!r} is not a canonical UUID")
    leaf = bytes.fromhex(receipt.leaf_hash)
    if record is not None and record_leaf(record, session, receipt.index) != leaf:
        raise ReceiptError("the record's leaf hash is not the receipt's leaf_hash")
    try:
        chunk_proof = parse_tlog_proof(receipt.chunk_proof.encode())
        anchor_proof = parse_tlog_proof(receipt.checkpoint_proof.encode())
    except FormatError as exc:
        raise ReceiptError(str(exc)) from None
    if chunk_proof.index != receipt.index:
        raise ReceiptError(f"chunk_proof is for index {chunk_proof.index}, not {receipt.index}")
    checkpoint, signer = _open(chunk_proof.checkpoint, verifiers, "session checkpoint")
    expected = f"{signer.name}/{uuid.UUID(bytes=session)}"
    if checkpoint.origin != expected:
        raise ReceiptError(f"session checkpoint origin {checkpoint.origin!r} is not {expected!r}")
    if not merkle.verify_inclusion(
        leaf, receipt.index, checkpoint.size, chunk_proof.path, checkpoint.root
    ):
        raise ReceiptError("chunk_proof does not lead to the session checkpoint's root")
    anchor, anchor_signer = _open(anchor_proof.checkpoint, [signer], "anchor checkpoint")
    if anchor.origin != signer.name + ANCHOR_ORIGIN_SUFFIX:
        raise ReceiptError(
            f"anchor checkpoint origin {anchor.origin!r} is not {signer.name}{ANCHOR_ORIGIN_SUFFIX}"
        )
    anchored_leaf = merkle.leaf_hash(note_hash(chunk_proof.checkpoint))
    if not merkle.verify_inclusion(
        anchored_leaf, anchor_proof.index, anchor.size, anchor_proof.path, anchor.root
    ):
        raise ReceiptError("checkpoint_proof does not lead to the anchor checkpoint's root")
    anchor_hash = note_hash(anchor_proof.checkpoint)
    attestations = [
        (a.backend, _check_attestation(a, anchor, anchor_hash), a.data)
        for a in receipt.attestations
    ]
    return ReceiptFacts(
        key=anchor_signer.vkey,
        host_origin=signer.name,
        session=session,
        index=receipt.index,
        leaf_hash=leaf,
        session_size=checkpoint.size,
        session_root=checkpoint.root,
        anchor_index=anchor_proof.index,
        anchor_size=anchor.size,
        anchor_root=anchor.root,
        anchor_note_hash=anchor_hash,
        attestations=attestations,
    )


def _check_attestation(
    attestation: ReceiptAttestation, anchor: merkle.Checkpoint, anchor_hash: bytes
) -> Any:
    """An ethereum attestation must claim exactly this anchor checkpoint; others are opaque."""
    if attestation.backend != "ethereum":
        return attestation.data
    try:
        claim = msgspec.json.decode(attestation.data, type=EthereumClaim)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ReceiptError(f"ethereum attestation: {exc}") from None
    mismatches = [
        name
        for name, ok in (
            ("origin", claim.origin == anchor.origin),
            ("size", claim.size == anchor.size),
            ("root", claim.root.removeprefix("0x").lower() == anchor.root.hex()),
            ("note_hash", claim.note_hash.removeprefix("0x").lower() == anchor_hash.hex()),
        )
        if not ok
    ]
    if mismatches:
        raise ReceiptError(
            f"ethereum attestation: its {', '.join(mismatches)} differ from the anchor checkpoint"
        )
    return claim


@dataclass(frozen=True)
class ConsistencyFacts:
    key: str
    origin: str
    size1: int
    size2: int
    root1: bytes
    root2: bytes


def verify_checkpoint_consistency(
    old_note: bytes, new_note: bytes, path: list[bytes], verifiers: list[Verifier]
) -> ConsistencyFacts:
    """Both notes are signed by a pinned key, of the same log, and ``path`` proves the new
    tree extends the old one; else :class:`ReceiptError`. Costs two Ed25519 verifications."""
    old, signer = _open(old_note, verifiers, "old checkpoint")
    new, _ = _open(new_note, [signer], "new checkpoint")
    if old.origin != new.origin:
        raise ReceiptError(f"the checkpoints are of different logs: {old.origin!r}, {new.origin!r}")
    if old.size > new.size:
        raise ReceiptError(f"the old checkpoint ({old.size}) is larger than the new ({new.size})")
    if not merkle.verify_consistency(old.size, new.size, path, old.root, new.root):
        raise ReceiptError(
            f"the consistency proof does not show size {old.size} is a prefix of size {new.size}"
        )
    return ConsistencyFacts(signer.vkey, old.origin, old.size, new.size, old.root, new.root)
