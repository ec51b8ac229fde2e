"""tlog-proof text, receipts and their offline verification, built from the real pieces.

A chain is made as the daemon makes it: sealed records in a MerkleLog, a signed session
checkpoint, its note hash as a leaf of an anchor log, a signed anchor checkpoint. Then every
link is broken in turn.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from lucidd import crypto, merkle
from lucidd.daemon.aggregator.merkle_log import MerkleLog
from lucidd.errors import FormatError
from lucidd.note import Signer, sign_checkpoint
from lucidd.receipt import (
    RECEIPT_FORMAT,
    ReceiptAttestation,
    ReceiptError,
    ReceiptFile,
    decode_receipt,
    note_hash,
    verify_checkpoint_consistency,
    verify_receipt,
)
from lucidd.tlog_proof import HEADER, TlogProof, parse_tlog_proof

HOST = "rec.example/lucidd"
SIGNER = Signer(HOST, Ed25519PrivateKey.generate())
STRANGER = Signer(HOST, Ed25519PrivateKey.generate())


@dataclass
class Chain:
    session: bytes
    records: list[bytes]
    log: MerkleLog
    session_note: bytes
    anchor_log: MerkleLog
    anchor_index: int
    anchor_note: bytes


def build_chain(chunks: int = 6, other_checkpoints: int = 3, signer: Signer = SIGNER) -> Chain:
    secret = os.urandom(crypto.KEY_SIZE)
    session = uuid.uuid4().bytes
    records = [crypto.seal_chunk(secret, session, i, b"data %d" % i, "off") for i in range(chunks)]
    log = MerkleLog()
    for record in records:
        log.append(merkle.leaf_hash(record))
    origin = f"{signer.name}/{uuid.UUID(bytes=session)}"
    session_note = sign_checkpoint(merkle.Checkpoint(origin, chunks, log.root()), signer)
    anchor_log = MerkleLog()
    for _ in range(other_checkpoints):  # other sessions' checkpoints before this one
        anchor_log.append(merkle.leaf_hash(os.urandom(32)))
    anchor_index = anchor_log.append(merkle.leaf_hash(note_hash(session_note)))
    anchor_log.append(merkle.leaf_hash(os.urandom(32)))
    anchor = merkle.Checkpoint(f"{signer.name}/anchor", anchor_log.size, anchor_log.root())
    return Chain(
        session,
        records,
        log,
        session_note,
        anchor_log,
        anchor_index,
        sign_checkpoint(anchor, signer),
    )


def receipt_of(
    chain: Chain, index: int, attestations: list[ReceiptAttestation] | None = None
) -> ReceiptFile:
    chunk = TlogProof(index, tuple(chain.log.inclusion_proof(index)), chain.session_note)
    anchored = TlogProof(
        chain.anchor_index,
        tuple(chain.anchor_log.inclusion_proof(chain.anchor_index)),
        chain.anchor_note,
    )
    return ReceiptFile(
        format=RECEIPT_FORMAT,
        session=str(uuid.UUID(bytes=chain.session)),
        index=index,
        leaf_hash=chain.log.leaf(index).hex(),
        chunk_proof=chunk.encode().decode(),
        checkpoint_proof=anchored.encode().decode(),
        attestations=attestations or [],
    )


def encoded(receipt: ReceiptFile) -> bytes:
    return msgspec.json.encode(receipt)


# --- tlog-proof ---------------------------------------------------------------------------


def test_tlog_proof_text_has_the_c2sp_shape() -> None:
    proof = TlogProof(5, (b"\x01" * 32, b"\x02" * 32), b"origin\n1\nroot\n\n\xe2\x80\x94 k sig\n")
    lines = proof.encode().split(b"\n")
    assert lines[0] == HEADER and lines[1] == b"index 5"
    assert lines[4] == b""  # the blank line before the checkpoint
    assert parse_tlog_proof(proof.encode()) == proof


def test_tlog_proof_extra_round_trips() -> None:
    proof = TlogProof(0, (), b"c\n0\nr\n", extra=b"context")
    assert parse_tlog_proof(proof.encode()) == proof


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"c2sp.org/tlog-proof@v2\nindex 0\n\ncp\n",
        b"c2sp.org/tlog-proof@v1\nindex 01\n\ncp\n",
        b"c2sp.org/tlog-proof@v1\nindex -1\n\ncp\n",
        b"c2sp.org/tlog-proof@v1\n\ncp\n",
        b"c2sp.org/tlog-proof@v1\nindex 0\nAAAA\n\ncp\n",
        b"c2sp.org/tlog-proof@v1\nindex 0\n" + b"A" * 42 + b"B=\n\ncp\n",  # not canonical
        b"c2sp.org/tlog-proof@v1\nindex 0\n",
        b"c2sp.org/tlog-proof@v1\nindex 0\n\n",
    ],
)
def test_malformed_tlog_proofs_are_refused(text: bytes) -> None:
    with pytest.raises(FormatError):
        parse_tlog_proof(text)


@given(st.binary(max_size=300))
def test_parse_tlog_proof_never_raises_anything_but_format_error(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_tlog_proof(data)


# --- receipts -----------------------------------------------------------------------------


def test_a_receipt_proves_the_chunk_its_checkpoints_and_the_anchor() -> None:
    chain = build_chain()
    receipt = decode_receipt(encoded(receipt_of(chain, 4)))
    facts = verify_receipt(receipt, chain.records[4], [SIGNER.verifier])
    assert (facts.session, facts.index, facts.session_size) == (chain.session, 4, 6)
    assert (facts.anchor_index, facts.anchor_size) == (3, 5)
    assert facts.key == SIGNER.verifier.vkey and facts.host_origin == HOST
    assert facts.anchor_note_hash == note_hash(chain.anchor_note)


@pytest.mark.parametrize("index", range(6))
def test_every_chunk_of_the_session_has_a_receipt(index: int) -> None:
    chain = build_chain()
    verify_receipt(receipt_of(chain, index), chain.records[index], [SIGNER.verifier])


def test_another_hosts_key_and_a_forged_chain_are_refused() -> None:
    chain = build_chain()
    with pytest.raises(ReceiptError, match="no signature from a known key"):
        verify_receipt(receipt_of(chain, 1), chain.records[1], [STRANGER.verifier])
    forged = build_chain(signer=STRANGER)  # same name, another key: a fake daemon
    with pytest.raises(ReceiptError, match="known key"):
        verify_receipt(receipt_of(forged, 1), forged.records[1], [SIGNER.verifier])


def test_the_anchor_must_be_signed_by_the_same_host() -> None:
    chain = build_chain()
    anchor = merkle.Checkpoint(f"{HOST}/anchor", chain.anchor_log.size, chain.anchor_log.root())
    chain.anchor_note = sign_checkpoint(anchor, STRANGER)
    with pytest.raises(ReceiptError, match="anchor checkpoint"):
        verify_receipt(receipt_of(chain, 0), chain.records[0], [SIGNER.verifier, STRANGER.verifier])


def test_a_record_of_another_chunk_or_session_is_refused() -> None:
    chain = build_chain()
    with pytest.raises(ReceiptError, match="chunk 2"):
        verify_receipt(receipt_of(chain, 1), chain.records[2], [SIGNER.verifier])
    other = build_chain()
    with pytest.raises(ReceiptError, match="session"):
        verify_receipt(receipt_of(chain, 1), other.records[1], [SIGNER.verifier])


def test_an_unknown_field_or_format_is_refused() -> None:
    raw = json.loads(encoded(receipt_of(build_chain(), 0)))
    with pytest.raises(ReceiptError):
        decode_receipt(json.dumps({**raw, "extra": 1}).encode())
    with pytest.raises(ReceiptError, match="format"):
        decode_receipt(json.dumps({**raw, "format": "lucidd-receipt/9"}).encode())


def _ethereum(chain: Chain, **changes: object) -> ReceiptAttestation:
    anchor = merkle.Checkpoint.parse(chain.anchor_note.split(b"\n\n")[0] + b"\n")
    claim = {
        "type": "ethereum",
        "chain_id": 31337,
        "contract": "0x" + "ab" * 20,
        "tx_hash": "0x" + "cd" * 32,
        "block_number": 7,
        "block_hash": "0x" + "ef" * 32,
        "log_index": 0,
        "origin": anchor.origin,
        "size": anchor.size,
        "root": anchor.root.hex(),
        "note_hash": note_hash(chain.anchor_note).hex(),
        **changes,
    }
    return ReceiptAttestation("ethereum", json.dumps(claim).encode())


def test_an_ethereum_attestation_must_claim_this_anchor_checkpoint() -> None:
    chain = build_chain()
    good = receipt_of(chain, 0, [_ethereum(chain)])
    facts = verify_receipt(good, chain.records[0], [SIGNER.verifier])
    assert facts.attestations[0][0] == "ethereum"
    for field, value in (("size", 99), ("root", "00" * 32), ("note_hash", "11" * 32)):
        bad = receipt_of(chain, 0, [_ethereum(chain, **{field: value})])
        with pytest.raises(ReceiptError, match=field):
            verify_receipt(bad, chain.records[0], [SIGNER.verifier])


def test_every_byte_flip_of_a_receipt_is_refused_outside_json_layout() -> None:
    chain = build_chain()
    raw = encoded(receipt_of(chain, 2))
    for position in range(len(raw)):
        flipped = bytearray(raw)
        flipped[position] ^= 0x20
        try:
            verify_receipt(decode_receipt(bytes(flipped)), chain.records[2], [SIGNER.verifier])
        except ReceiptError:
            continue
        # msgspec's compact JSON has no layout bytes: nothing may flip unnoticed.
        pytest.fail(f"flipping byte {position} ({raw[position : position + 1]!r}) went unnoticed")


# --- consistency --------------------------------------------------------------------------


def test_two_signed_checkpoints_of_a_growing_log_are_consistent() -> None:
    log = MerkleLog()
    for i in range(9):
        log.append(merkle.leaf_hash(b"%d" % i))
    old = sign_checkpoint(merkle.Checkpoint(f"{HOST}/s", 4, log.root(4)), SIGNER)
    new = sign_checkpoint(merkle.Checkpoint(f"{HOST}/s", 9, log.root(9)), SIGNER)
    path = log.consistency_proof(4, 9)
    facts = verify_checkpoint_consistency(old, new, path, [SIGNER.verifier])
    assert (facts.size1, facts.size2) == (4, 9)
    with pytest.raises(ReceiptError, match="prefix"):
        verify_checkpoint_consistency(old, new, path[1:], [SIGNER.verifier])
    forked = sign_checkpoint(merkle.Checkpoint(f"{HOST}/s", 9, os.urandom(32)), SIGNER)
    with pytest.raises(ReceiptError, match="prefix"):
        verify_checkpoint_consistency(old, forked, path, [SIGNER.verifier])
    stranger = sign_checkpoint(merkle.Checkpoint(f"{HOST}/s", 9, log.root(9)), STRANGER)
    with pytest.raises(ReceiptError, match="new checkpoint"):
        verify_checkpoint_consistency(old, stranger, path, [SIGNER.verifier, STRANGER.verifier])
