"""``lucidctl verify`` (layer 4): check a record, an inclusion proof and a signed checkpoint
offline, with no daemon and none of the host's keys (only its pinned verifier keys); or, with
``--receipt``, a whole receipt (:mod:`lucidd.cli.trust`).

The proof and checkpoint files are decoded into their Structs (:mod:`lucidd.cli.formats`);
a file that does not fit is reported in the words of the field that failed. Every reason the
inputs do not verify is one line, shown as ``INVALID: <reason>`` with exit status 65.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from lucidd import crypto, merkle
from lucidd.cli.formats import CheckpointFile, InclusionProofFile
from lucidd.cli.output import Output, to_hex
from lucidd.cli.trust import load_verifiers, verify_receipt_file
from lucidd.client import SessionIdError, format_session_id, parse_session_id
from lucidd.errors import EX_DATAERR, EX_OK, BadRequestError, FormatError, IntegrityError
from lucidd.note import Verifier, open_checkpoint
from lucidd.receipt import ReceiptError

_PROOF_DECODER: Final = msgspec.json.Decoder(InclusionProofFile)
_CHECKPOINT_DECODER: Final = msgspec.json.Decoder(CheckpointFile)
#: Where msgspec says a value failed: "... - at `$.path[2]`" or "missing required field `x`".
_FAILED_AT: Final = re.compile(r"at `\$\.(\w+)(?:\[(\d+)\])?`$|missing required field `(\w+)`")


class _InvalidError(Exception):
    """The inputs do not verify; the message is the reason shown to the user."""


@dataclass(frozen=True)
class _Proof:
    """A decoded proof file, its hex turned into bytes."""

    session: bytes
    index: int
    size: int
    leaf_hash: bytes
    path: list[bytes]


def _hash_arg(text: str) -> bytes:
    """``--leaf-hash HEX`` (any case)."""
    value = text.lower()
    if len(value) == 2 * merkle.HASH_SIZE:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(value)
    raise _InvalidError(f"--leaf-hash is not {merkle.HASH_SIZE} bytes of lowercase hex")


def _failed_field(exc: msgspec.ValidationError) -> tuple[str | None, str | None]:
    """The top-level field msgspec refused, and the list position inside it (if any)."""
    match = _FAILED_AT.search(str(exc))
    if match is None:
        return None, None
    return match.group(1) or match.group(3), match.group(2)


def _proof_problem(exc: msgspec.ValidationError) -> str:
    """Why a proof file does not fit :class:`InclusionProofFile`, in lucidctl's words."""
    key, position = _failed_field(exc)
    not_hex = f"is not {merkle.HASH_SIZE} bytes of lowercase hex"
    if key is None:
        return "proof file is not a JSON object"
    if key == "session":
        return "proof file: 'session' is missing"
    if key == "path" and position is not None:
        return f"proof file: path[{position}] {not_hex}"
    if key == "path":
        return "proof file: 'path' is not a list"
    if key in ("index", "size"):
        return f"proof file: {key!r} is not a non-negative integer"
    if key == "leaf_hash":
        return f"proof file: 'leaf_hash' {not_hex}"
    return f"proof file: {exc}"


def _load_proof(path: str) -> _Proof:
    """The proof JSON that ``lucidctl --json proof`` prints."""
    try:
        file = _PROOF_DECODER.decode(Path(path).read_bytes())
    except msgspec.ValidationError as exc:
        raise _InvalidError(_proof_problem(exc)) from None
    except msgspec.DecodeError as exc:
        raise _InvalidError(f"proof file is not JSON: {exc}") from None
    try:
        session = parse_session_id(file.session)
    except SessionIdError as exc:
        raise _InvalidError(f"proof file: {exc}") from None
    return _Proof(
        session=session,
        index=file.index,
        size=file.size,
        leaf_hash=bytes.fromhex(file.leaf_hash),
        path=[bytes.fromhex(node) for node in file.path],
    )


def _checkpoint_text(raw: bytes) -> bytes:
    """The checkpoint text of a JSON checkpoint file (:class:`CheckpointFile`)."""
    try:
        return _CHECKPOINT_DECODER.decode(raw).checkpoint.encode()
    except msgspec.ValidationError as exc:
        key, _ = _failed_field(exc)
        if key in (None, "checkpoint"):
            raise _InvalidError(
                "checkpoint file: no 'checkpoint' string in the JSON object"
            ) from None
        raise _InvalidError(f"checkpoint file: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _InvalidError(f"checkpoint file is not JSON: {exc}") from None


def _load_checkpoint(path: str, verifiers: list[Verifier]) -> tuple[merkle.Checkpoint, bytes]:
    """The signed checkpoint (a note, or JSON with a "checkpoint" string) and its session id.

    Only a checkpoint signed by a pinned key counts: an unsigned one proves nothing (anyone
    can write one), so it is refused.
    """
    raw = Path(path).read_bytes()
    if raw.lstrip().startswith(b"{"):
        raw = _checkpoint_text(raw)
    if b"\n\n" not in raw:
        raise _InvalidError(
            "the checkpoint is not signed: only a signed checkpoint proves anything "
            "(lucidctl checkpoint SESSION, lucidctl finalize SESSION)"
        )
    try:
        checkpoint, signers = open_checkpoint(raw, verifiers)
    except (FormatError, IntegrityError) as exc:
        raise _InvalidError(f"checkpoint: {exc}") from None
    prefix = signers[0].name + "/"
    origin = checkpoint.origin
    session: bytes | None = None
    if origin.startswith(prefix):
        with contextlib.suppress(SessionIdError):
            session = parse_session_id(origin.removeprefix(prefix))
    if session is None or origin != prefix + format_session_id(session):
        raise _InvalidError(f"checkpoint origin {origin!r} is not {prefix}<session id>")
    return checkpoint, session


def _record_leaf_hash(path: str, proof: _Proof) -> bytes:
    """The leaf hash of a sealed record file, after checking it names the proof's chunk."""
    record = Path(path).read_bytes()
    try:
        header = crypto.parse_header(record)
    except FormatError as exc:
        raise _InvalidError(f"record: {exc}") from None
    if header.record_type != crypto.RecordType.DATA:
        raise _InvalidError(f"record is a {header.record_type.name} record, not a chunk")
    if len(record) != header.record_length:
        raise _InvalidError(
            f"record is {len(record)} bytes but its header announces {header.record_length}"
        )
    if header.session_id != proof.session:
        raise _InvalidError(
            f"record belongs to session {format_session_id(header.session_id)}, "
            f"the proof to {format_session_id(proof.session)}"
        )
    if header.index != proof.index:
        raise _InvalidError(f"record is chunk {header.index}, the proof is for chunk {proof.index}")
    return merkle.leaf_hash(record)


def _verify(args: argparse.Namespace) -> tuple[_Proof, merkle.Checkpoint, str]:
    """Run every check; return what was verified, or raise :class:`_InvalidError` (why)."""
    proof = _load_proof(args.proof)
    try:
        verifiers = load_verifiers(args.vkey)
    except ReceiptError as exc:
        raise _InvalidError(str(exc)) from None
    checkpoint, origin_session = _load_checkpoint(args.checkpoint, verifiers)
    if origin_session != proof.session:
        raise _InvalidError(
            f"the proof is for session {format_session_id(proof.session)}, the checkpoint "
            f"for {format_session_id(origin_session)}"
        )
    if args.record is not None:
        leaf = _record_leaf_hash(args.record, proof)
        if leaf != proof.leaf_hash:
            raise _InvalidError("the record's leaf hash differs from the proof's leaf_hash")
    elif args.leaf_hash is not None and _hash_arg(args.leaf_hash) != proof.leaf_hash:
        raise _InvalidError("--leaf-hash differs from the proof's leaf_hash")
    if proof.size < checkpoint.size:
        raise _InvalidError(
            f"the proof is for tree size {proof.size} but the checkpoint is for size "
            f"{checkpoint.size}: get a proof at that size (lucidctl proof SESSION "
            f"{proof.index} --size {checkpoint.size}) or prove consistency "
            f"(lucidctl consistency SESSION {proof.size} {checkpoint.size})"
        )
    if proof.size > checkpoint.size:
        raise _InvalidError(
            f"the proof is for tree size {proof.size}, larger than the checkpoint's "
            f"{checkpoint.size}: get a proof at the checkpoint's size"
        )
    if not merkle.verify_inclusion(
        proof.leaf_hash, proof.index, proof.size, proof.path, checkpoint.root
    ):
        raise _InvalidError("the inclusion proof does not lead to the checkpoint's root")
    tree = (
        f"leaf {proof.index} of the checkpointed tree of size {checkpoint.size} of session "
        f"{format_session_id(proof.session)}"
    )
    if args.record is None and args.leaf_hash is None:
        reason = (
            f"the proof's own leaf hash is {tree}; no data was checked (give --record FILE "
            "or --leaf-hash HEX to check a chunk)"
        )
    else:
        source = "record" if args.record is not None else "leaf hash"
        reason = f"{source} of chunk {proof.index} is {tree}"
    return proof, checkpoint, reason


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    if args.receipt is not None:
        return verify_receipt_file(args, out)
    if args.proof is None or args.checkpoint is None:
        raise BadRequestError("verify needs --receipt FILE, or --proof FILE and --checkpoint FILE")
    try:
        proof, checkpoint, reason = _verify(args)
    except _InvalidError as exc:
        out.result({"valid": False, "reason": str(exc)}, [f"INVALID: {exc}"])
        return EX_DATAERR
    out.result(
        {
            "valid": True,
            "reason": reason,
            "session": format_session_id(proof.session),
            "index": proof.index,
            "size": checkpoint.size,
            "leaf_hash": to_hex(proof.leaf_hash),
            "root": to_hex(checkpoint.root),
        },
        [f"valid: {reason}"],
    )
    return EX_OK
