"""lucidctl's daemon commands (layer 4): each asks the running daemon through
:class:`lucidd.client.ControlClient` and prints the answer (``put`` is in
:mod:`lucidd.cli.put`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec

from lucidd import merkle
from lucidd.cli.formats import CheckpointFile, ConsistencyFile, InclusionProofFile
from lucidd.cli.output import (
    PROG,
    Output,
    Progress,
    human_lines,
    iso_time,
    number_text,
    output_file,
    to_hex,
    user_name,
)
from lucidd.client import ControlClient, SessionSummary, format_session_id
from lucidd.errors import EX_DATAERR, EX_OK, BadRequestError, InternalError
from lucidd.units import format_size


def control_client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.runtime_dir, timeout=args.timeout)


def cmd_health(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        health = control.health()
    processes = [
        {
            "role": p.role,
            "pid": p.pid,
            "alive": p.alive,
            "rss_bytes": p.rss_bytes,
            "restarts": p.restarts,
        }
        for p in health.processes
    ]
    human = [
        f"status: {health.status}",
        f"sessions: {health.sessions}",
        f"damaged sessions: {health.damaged_sessions}",
    ]
    human += [f"degraded: {reason}" for reason in health.reasons]
    human += [
        f"{p.role:<12} pid {p.pid:<8} {'alive' if p.alive else 'DEAD':<5} "
        f"rss {format_size(p.rss_bytes):>10}  restarts {p.restarts}"
        for p in health.processes
    ]
    out.result(
        {
            "status": health.status,
            "sessions": health.sessions,
            "reasons": health.reasons,
            "damaged_sessions": health.damaged_sessions,
            "processes": processes,
        },
        human,
    )
    return EX_OK


def cmd_metrics(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        metrics = control.metrics()
    human = [f"{name} {number_text(value)}" for name, value in sorted(metrics.items())]
    out.result({"metrics": metrics}, human)
    return EX_OK


def cmd_config(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        config = control.config()
    human = [f"{name} = {json.dumps(value)}" for name, value in sorted(config.items())]
    out.result({"config": config}, human)
    return EX_OK


def cmd_sessions(args: argparse.Namespace, out: Output) -> int:
    if args.remote:
        return _remote_sessions(args, out)
    with control_client(args) as control:
        sessions = control.sessions()
    header = (
        f"{'SESSION':<36}  {'CREATED':<25} {'STATE':<10} {'CHUNKS':>8} {'BYTES':>14} "
        f"{'STORED':>14} {'OWNER':<12} {'LABEL':<16} DAMAGED"
    )
    human = [header] + [
        f"{format_session_id(s.session):<36}  {iso_time(s.created_ns) or '-':<25} "
        f"{s.state:<10} {s.chunks:>8} {s.plaintext_bytes:>14} {s.stored_bytes:>14} "
        f"{user_name(s.owner_uid):<12} {s.label:<16} {_damage_cell(s)}"
        for s in sessions
    ]
    out.result({"sessions": [_summary_json(s) for s in sessions]}, human)
    return EX_OK


def _remote_sessions(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        hosts = control.remote_sessions()
    human = []
    for host in hosts:
        human.append(f"host {host.host_id} ({host.origin}), {len(host.sessions)} session(s)")
        human += [f"  {format_session_id(s)}" for s in host.sessions]
    result = {
        "hosts": [
            {
                "host_id": h.host_id,
                "origin": h.origin,
                "vkey": h.vkey,
                "sessions": [format_session_id(s) for s in h.sessions],
            }
            for h in hosts
        ]
    }
    out.result(result, human or ["no host in the object store yet"])
    return EX_OK


def _damage_cell(summary: SessionSummary) -> str:
    if not summary.damaged:
        return "no"
    return f"YES: {summary.problem}" if summary.problem else "YES"


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    """Scrub a session; exit 0 only when every chunk is present and authentic, else 65."""
    with control_client(args) as control:
        reply = control.check(args.session)
    result = {
        "session": format_session_id(reply.session),
        "size": reply.size,
        "checked": reply.checked,
        "bad": list(reply.bad),
        "ok": not reply.bad,
    }
    human = [
        f"session: {result['session']}",
        f"checked: {reply.checked} chunk(s) (log size {reply.size})",
        "result: ok" if not reply.bad else f"result: DAMAGED, {len(reply.bad)} bad chunk(s)",
    ]
    if reply.bad:
        human.append("bad chunks: " + " ".join(str(i) for i in reply.bad))
    out.result(result, human)
    return EX_OK if not reply.bad else EX_DATAERR


def cmd_info(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        summary = control.info(args.session)
    out.result(_summary_json(summary))
    return EX_OK


def cmd_open(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        session = control.open_session(args.compression, label=args.label)
    text = format_session_id(session)
    out.result({"session": text}, [text])
    return EX_OK


def _summary_json(summary: SessionSummary) -> dict[str, Any]:
    return {
        "session": format_session_id(summary.session),
        "state": summary.state,
        "size": summary.size,
        "chunks": summary.chunks,
        "plaintext_bytes": summary.plaintext_bytes,
        "compression": summary.compression,
        "owner_uid": summary.owner_uid,
        "owner": user_name(summary.owner_uid),
        "created": iso_time(summary.created_ns),
        "label": summary.label,
        "chunk_size": summary.chunk_size,
        "stored_bytes": summary.stored_bytes,
        # plaintext / stored: above 1 when compression saved space (headers and tags cost).
        "compression_ratio": (
            round(summary.plaintext_bytes / summary.stored_bytes, 3)
            if summary.stored_bytes
            else None
        ),
        "damaged": summary.damaged,
        "missing": list(summary.missing),
        "quarantined": summary.quarantined,
        "problem": summary.problem,
    }


def cmd_root(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        root = control.root(args.session, args.size)
    out.result(
        {"session": format_session_id(root.session), "size": root.size, "root": to_hex(root.root)}
    )
    return EX_OK


def cmd_proof(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        proof = control.inclusion_proof(args.session, args.index, args.size)
    out.result(
        InclusionProofFile(
            session=format_session_id(proof.session),
            index=proof.index,
            size=proof.size,
            leaf_hash=to_hex(proof.leaf_hash),
            path=[to_hex(node) for node in proof.path],
            root=to_hex(proof.root),
        )
    )
    return EX_OK


def cmd_consistency(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        proof = control.consistency_proof(args.session, args.size1, args.size2)
    out.result(
        ConsistencyFile(
            session=format_session_id(proof.session),
            size1=proof.size1,
            size2=proof.size2,
            path=[to_hex(node) for node in proof.path],
            root1=to_hex(proof.root1),
            root2=to_hex(proof.root2),
            checkpoint1=proof.checkpoint1.decode(),
            checkpoint2=proof.checkpoint2.decode(),
        )
    )
    return EX_OK


def cmd_finalize(args: argparse.Namespace, out: Output) -> int:
    with control_client(args) as control:
        final = control.finalize(args.session)
    result = CheckpointFile(
        session=format_session_id(final.session),
        size=final.size,
        root=to_hex(final.root),
        checkpoint=final.checkpoint.decode(),
        already_finalized=final.already_finalized,
    )
    human = list(human_lines(msgspec.to_builtins(result)))
    if final.already_finalized:
        human.append("note: the session was already finalized; this is its checkpoint")
    out.result(result, human)
    return EX_OK


def _require_output_for_json(args: argparse.Namespace) -> None:
    if args.json and args.output in (None, "-"):
        raise BadRequestError(f"{args.command} --json needs -o FILE: stdout carries the data")


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    _require_output_for_json(args)
    nbytes = 0
    with control_client(args) as control:
        info = control.info(args.session)
        size = info.size
        # Drawn only on a terminal that is not also the data's destination.
        to_terminal = args.output in (None, "-") and sys.stdout.isatty()
        progress = Progress(sys.stderr.isatty() and not to_terminal, "get", info.plaintext_bytes)
        try:
            with output_file(args.output) as sink:
                for index in range(size):
                    data = control.read_chunk(args.session, index).data
                    sink.write(data)
                    nbytes += len(data)
                    progress.add(len(data))
        finally:
            progress.done()
    if args.output not in (None, "-"):
        out.result({"session": format_session_id(args.session), "chunks": size, "bytes": nbytes})
    return EX_OK


def cmd_record(args: argparse.Namespace, out: Output) -> int:
    _require_output_for_json(args)
    with control_client(args) as control:
        record = control.read_chunk(args.session, args.index).record
    if not record:
        raise InternalError("lucidd returned no sealed record for this chunk")
    with output_file(args.output) as sink:
        sink.write(record)
    if args.output not in (None, "-"):
        out.result(
            {
                "session": format_session_id(args.session),
                "index": args.index,
                "bytes": len(record),
                "leaf_hash": to_hex(merkle.leaf_hash(record)),
            }
        )
    return EX_OK


def cmd_shred(args: argparse.Namespace, out: Output) -> int:
    name = format_session_id(args.session)
    if not args.yes:
        if not sys.stdin.isatty():
            raise BadRequestError(
                f"shred destroys session {name} for good; confirm with --yes (no terminal to ask)"
            )
        sys.stderr.write(f"{PROG}: shred session {name}? Its chunks can never be read again. ")
        sys.stderr.write("Type the session id to confirm: ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() != name:
            raise BadRequestError(f"not confirmed; session {name} was left as it is")
    with control_client(args) as control:
        control.shred(args.session)
    out.result({"session": format_session_id(args.session), "shredded": True})
    return EX_OK
