"""The trust-chain commands (layer 4): signing-key, checkpoint, anchor, receipt, and the
offline checks of a receipt and of two checkpoints' consistency.

Offline checks need no daemon and none of the host's keys: only the verifier keys (``--vkey``)
the user pins. Every reason a check fails is one line, ``INVALID: <reason>``, exit 65.
"""

from __future__ import annotations

import argparse
import base64
import datetime
from pathlib import Path
from typing import Any

import msgspec

from lucidd.cli.commands import control_client
from lucidd.cli.formats import ConsistencyFile
from lucidd.cli.output import Output, output_file, to_hex
from lucidd.client import format_session_id
from lucidd.errors import EX_DATAERR, EX_OK, BadRequestError, FormatError, LucidError
from lucidd.note import Verifier
from lucidd.receipt import (
    RECEIPT_FORMAT,
    EthereumClaim,
    ReceiptAttestation,
    ReceiptError,
    ReceiptFacts,
    ReceiptFile,
    decode_receipt,
    verify_checkpoint_consistency,
    verify_receipt,
)
from lucidd.tlog_proof import TlogProof


def cmd_signing_key(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        key = control.signing_key()
    out.result({"name": key.name, "key_id": key.key_id.hex(), "vkey": key.vkey})
    return EX_OK


def cmd_checkpoint(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        reply = control.checkpoint(args.session, args.size)
    note = reply.checkpoint.decode()
    if args.output is not None:
        with output_file(args.output) as sink:
            sink.write(reply.checkpoint)
    result = {"session": format_session_id(reply.session), "size": reply.size, "checkpoint": note}
    out.result(result, None if args.output is None or args.json else [note.rstrip("\n")])
    return EX_OK


def cmd_anchor(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        reply = control.anchor()
    out.result(
        {"size": reply.size, "checkpoint": reply.checkpoint.decode(), "backends": reply.backends}
    )
    return EX_OK


def cmd_receipt(args: argparse.Namespace, out: Output) -> int:
    if args.json and args.output in (None, "-"):
        raise BadRequestError("receipt --json needs -o FILE: stdout carries the summary")
    with control_client(args) as control:
        reply = control.receipt(args.session, args.index)
    chunk_proof = TlogProof(reply.index, tuple(reply.path), reply.session_checkpoint)
    checkpoint_proof = TlogProof(
        reply.anchor_index, tuple(reply.anchor_path), reply.anchor_checkpoint
    )
    receipt = ReceiptFile(
        format=RECEIPT_FORMAT,
        session=format_session_id(reply.session),
        index=reply.index,
        leaf_hash=to_hex(reply.leaf_hash),
        chunk_proof=chunk_proof.encode().decode(),
        checkpoint_proof=checkpoint_proof.encode().decode(),
        attestations=[ReceiptAttestation(a.backend, a.data) for a in reply.attestations],
    )
    data = msgspec.json.format(msgspec.json.encode(receipt), indent=2) + b"\n"
    with output_file(args.output) as sink:
        sink.write(data)
    if args.output not in (None, "-"):
        out.result(
            {
                "session": receipt.session,
                "index": reply.index,
                "session_size": reply.session_size,
                "anchor_size": reply.anchor_size,
                "attestations": [a.backend for a in reply.attestations],
                "file": args.output,
            }
        )
    return EX_OK


def load_verifiers(values: list[str] | None) -> list[Verifier]:
    """``--vkey`` values: a vkey, or a file holding one per line."""
    if not values:
        raise ReceiptError(
            "no --vkey given: pin the host's verifier key (lucidctl --json signing-key on "
            "that host prints it)"
        )
    verifiers = []
    for value in values:
        texts = [value]
        if "+" not in value and Path(value).is_file():
            texts = [t.strip() for t in Path(value).read_text().splitlines() if t.strip()]
        for text in texts:
            try:
                verifiers.append(Verifier.from_vkey(text))
            except FormatError as exc:
                raise ReceiptError(f"--vkey {text!r}: {exc}") from None
    return verifiers


def _check_on_chain(rpc_url: str, data: bytes, anchor: ReceiptFacts) -> str:
    """Ask the chain whether the attestation holds (lucidd[ethereum])."""
    from lucidd.anchoring import ethereum  # noqa: PLC0415 (web3 is loaded only here)

    on_chain = msgspec.json.decode(data, type=ethereum.EthereumAttestation)
    try:
        return ethereum.check_attestation(
            rpc_url,
            on_chain,
            anchor.host_origin + "/anchor",
            anchor.anchor_size,
            anchor.anchor_root,
            anchor.anchor_note_hash,
        )
    except LucidError as exc:
        if exc.code == "integrity":
            raise ReceiptError(f"on chain: {exc.message}") from None
        raise


def _attestation_lines(facts: ReceiptFacts, rpc_url: str | None) -> tuple[list[Any], list[str]]:
    described: list[Any] = []
    lines = []
    for backend, value, data in facts.attestations:
        if isinstance(value, EthereumClaim):
            entry = {
                "backend": backend,
                "chain_id": value.chain_id,
                "contract": value.contract,
                "block_number": value.block_number,
                "block_hash": value.block_hash,
                "tx_hash": value.tx_hash,
                "checked_on_chain": False,
            }
            if rpc_url is not None:
                entry["on_chain"] = _check_on_chain(rpc_url, data, facts)
                entry["checked_on_chain"] = True
                lines.append(f"ethereum: {entry['on_chain']}")
            else:
                lines.append(
                    f"ethereum: claims block {value.block_number} of chain {value.chain_id}, "
                    f"tx {value.tx_hash} (not checked on chain: give --rpc URL)"
                )
            described.append(entry)
        else:
            text = data.decode("utf-8", "replace").strip()
            described.append({"backend": backend, "data": base64.b64encode(data).decode()})
            lines.append(f"{backend}: {text[:200]!r} (opaque; not checked)")
    return described, lines


def verify_receipt_file(args: argparse.Namespace, out: Output) -> int:
    """``lucidctl verify --receipt FILE [--record CHUNK.rec] --vkey VKEY [--rpc URL]``."""
    try:
        verifiers = load_verifiers(args.vkey)
        receipt = decode_receipt(Path(args.receipt).read_bytes())
        record = Path(args.record).read_bytes() if args.record else None
        facts = verify_receipt(receipt, record, verifiers)
        attestations, lines = _attestation_lines(facts, args.rpc)
    except ReceiptError as exc:
        out.result({"valid": False, "reason": str(exc)}, [f"INVALID: {exc}"])
        return EX_DATAERR
    session = format_session_id(facts.session)
    what = "record" if record is not None else "the receipt's leaf hash (no --record given)"
    reason = (
        f"{what} of chunk {facts.index} of session {session} is in its checkpoint of size "
        f"{facts.session_size}, signed by {facts.key}, which is leaf {facts.anchor_index} of "
        f"the anchor log's checkpoint of size {facts.anchor_size}"
    )
    out.result(
        {
            "valid": True,
            "reason": reason,
            "key": facts.key,
            "session": session,
            "index": facts.index,
            "leaf_hash": to_hex(facts.leaf_hash),
            "record_checked": record is not None,
            "session_size": facts.session_size,
            "session_root": to_hex(facts.session_root),
            "anchor_index": facts.anchor_index,
            "anchor_size": facts.anchor_size,
            "anchor_root": to_hex(facts.anchor_root),
            "anchor_note_hash": to_hex(facts.anchor_note_hash),
            "attestations": attestations,
            "verified_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        [f"valid: {reason}", *lines] if lines else [f"valid: {reason}", "no attestation"],
    )
    return EX_OK


def cmd_verify_consistency(args: argparse.Namespace, out: Output) -> int:
    """``lucidctl verify-consistency PROOF.json --vkey V [--old FILE] [--new FILE]``."""
    try:
        verifiers = load_verifiers(args.vkey)
        try:
            proof = msgspec.json.decode(Path(args.proof).read_bytes(), type=ConsistencyFile)
            path = [bytes.fromhex(node) for node in proof.path]
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            raise ReceiptError(f"proof file: {exc}") from None
        old = Path(args.old).read_bytes() if args.old else proof.checkpoint1.encode()
        new = Path(args.new).read_bytes() if args.new else proof.checkpoint2.encode()
        if not old or not new:
            raise ReceiptError(
                "no signed checkpoints: give --old and --new, or a proof file "
                "from lucidctl --json consistency"
            )
        facts = verify_checkpoint_consistency(old, new, path, verifiers)
        if (facts.size1, facts.size2) != (proof.size1, proof.size2):
            raise ReceiptError(
                f"the proof is for sizes {proof.size1}..{proof.size2}, the checkpoints for "
                f"{facts.size1}..{facts.size2}"
            )
    except ReceiptError as exc:
        out.result({"valid": False, "reason": str(exc)}, [f"INVALID: {exc}"])
        return EX_DATAERR
    reason = (
        f"{facts.origin} at size {facts.size2} extends its checkpoint of size {facts.size1} "
        f"(both signed by {facts.key})"
    )
    out.result(
        {
            "valid": True,
            "reason": reason,
            "origin": facts.origin,
            "key": facts.key,
            "size1": facts.size1,
            "size2": facts.size2,
            "root1": to_hex(facts.root1),
            "root2": to_hex(facts.root2),
        },
        [f"valid: {reason}"],
    )
    return EX_OK
