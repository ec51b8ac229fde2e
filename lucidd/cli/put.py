"""``lucidctl put`` (layer 4): store a file as the chunks of a session, resume one after a
crash, and, when a put is interrupted, say how to finish it (the session, what was
acknowledged, the resume command).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import stat
import sys
from dataclasses import dataclass
from typing import IO, Any, Final, cast

from lucidd.cli.commands import control_client
from lucidd.cli.output import PROG, Output, Progress, input_file, to_hex
from lucidd.client import Ack, DataClient, Readable, SessionSummary, format_session_id
from lucidd.errors import (
    EX_OK,
    BadRequestError,
    ForbiddenError,
    IncompleteSessionError,
    LucidError,
    SessionFinalizedError,
    TooLargeError,
    UnknownSessionError,
)
from lucidd.units import MiB, format_size
from lucidd.vocabulary import SessionState

DEFAULT_CHUNK_SIZE: Final = 1 * MiB


@dataclass(frozen=True)
class _PutPlan:
    """Where a put goes: the session, its first index, and whether this put created it."""

    session: bytes
    start: int
    created: bool
    chunk_size: int


def _plan_put(args: argparse.Namespace) -> _PutPlan:
    """Check the arguments against the daemon, then find or open the session.

    Nothing is opened before every check passed, so a put that cannot run leaves no empty
    session behind.
    """
    with control_client(args) as control:
        max_chunk = int(control.config().get("max_chunk_size", 0))
        if args.session is None:
            if args.resume:
                raise BadRequestError("put --resume needs --session ID (the session to resume)")
            chunk_size = _chosen_chunk_size(args, 0, max_chunk)
            session = control.open_session(
                args.compression, label=args.label, chunk_size=chunk_size
            )
            return _PutPlan(session, 0, True, chunk_size)
        try:
            summary = control.info(args.session)
        except (UnknownSessionError, ForbiddenError) as err:
            # An ordinary user is told forbidden for an id that does not exist, as for one of
            # another user's (nothing leaks); --create then opens it, or is refused in turn.
            if not args.create:
                raise type(err)(
                    f"{err.message}; add --create to open a new session with this id",
                    session=args.session,
                ) from None
            chunk_size = _chosen_chunk_size(args, 0, max_chunk)
            session = control.open_session(
                args.compression, args.session, label=args.label, chunk_size=chunk_size
            )
            return _PutPlan(session, 0, True, chunk_size)
        chunk_size = _chosen_chunk_size(args, summary.chunk_size, max_chunk)
        _check_existing(args, summary)
        if not summary.chunk_size:
            control.open_session(session=args.session, chunk_size=chunk_size)  # record it
    return _PutPlan(args.session, 0 if args.resume else summary.chunks, False, chunk_size)


def _chosen_chunk_size(args: argparse.Namespace, recorded: int, max_chunk: int) -> int:
    """--chunk-size, else the session's recorded one, else the default; checked first."""
    if args.chunk_size is not None and recorded and args.chunk_size != recorded:
        raise BadRequestError(
            f"session {format_session_id(args.session)} was written with --chunk-size "
            f"{recorded}, not {args.chunk_size}: leave --chunk-size out to use {recorded}"
        )
    chunk_size = int(args.chunk_size or recorded or DEFAULT_CHUNK_SIZE)
    if max_chunk and chunk_size > max_chunk:
        raise TooLargeError(
            f"--chunk-size {chunk_size} ({format_size(chunk_size)}) exceeds the daemon's "
            f"max_chunk_size of {max_chunk} ({format_size(max_chunk)})"
        )
    return chunk_size


def _check_existing(args: argparse.Namespace, summary: SessionSummary) -> None:
    name = format_session_id(args.session)
    if args.compression is not None and args.compression != summary.compression:
        raise BadRequestError(
            f"session {name} exists with compression {summary.compression}; "
            "--compression applies to new sessions only"
        )
    if summary.state != SessionState.OPEN:
        raise SessionFinalizedError(f"session {name} is {summary.state}: it takes no chunks")
    if not args.resume and summary.chunks != summary.size:
        # Chunks stored past a gap (or still in flight): counting them gives an index that
        # collides with one of them, after storing some of the input at wrong indices.
        raise IncompleteSessionError(
            f"session {name} has {summary.chunks} chunks but a contiguous log of "
            f"{summary.size}: resend the whole input with --resume to fill the gaps"
        )


@dataclass
class _PutState:
    """How far a put got (what an interrupted put reports)."""

    acked: int = 0


def cmd_put(args: argparse.Namespace, out: Output) -> int:
    with input_file(args.file) as source:
        plan = _plan_put(args)  # after the input opened: no session for a missing file
        state = _PutState()
        try:
            return _put(args, out, source, plan, state)
        except LucidError as err:
            return _put_interrupted(args, out, plan, state, err)


def _put(
    args: argparse.Namespace, out: Output, source: IO[bytes], plan: _PutPlan, state: _PutState
) -> int:
    """Send ``source`` as chunks ``start, start+1, ...`` of the session; print the result.

    With --resume every chunk is sent from index 0: the daemon compares a resent chunk with
    the stored one and acknowledges it again (never storing it twice), stores what is
    missing, and refuses a chunk that differs (``duplicate_index`` naming it).
    """
    progress = Progress(sys.stderr.isatty(), "put", _input_size(source, args.resume))
    lengths: dict[int, int] = {}

    def on_chunk(index: int, length: int) -> None:
        lengths[index] = length

    def on_ack(ack: Ack) -> None:
        progress.add(lengths.pop(ack.index, 0))

    try:
        with DataClient(args.runtime_dir, timeout=args.timeout) as data:
            transport = data.transport
            # Read straight into the shared region when there is one (one copy per byte).
            acks = data.put_file(
                plan.session,
                cast(Readable, source),  # input_file's: a BufferedReader (typing's IO lacks it)
                plan.chunk_size,
                start=plan.start,
                window=args.window,
                on_chunk=on_chunk,
                on_ack=on_ack,
            )
    finally:
        progress.done()
        state.acked = progress.chunks
    sent = len(acks)
    with control_client(args) as control:
        if args.resume:
            held = control.info(plan.session).chunks
            if held != plan.start + sent:
                raise IncompleteSessionError(
                    f"session {format_session_id(plan.session)} holds {held} chunks but the "
                    f"input has {sent}: it is not this input (or more was appended to it)"
                )
        root = control.root(plan.session)
        result: dict[str, Any] = {
            "session": format_session_id(plan.session),
            "chunks": len(acks),
            "bytes": progress.nbytes,
            "size": root.size,
            "root": to_hex(root.root),
            "transport": transport,
        }
        if args.finalize:
            final = control.finalize(plan.session)
            result.update(
                size=final.size, root=to_hex(final.root), checkpoint=final.checkpoint.decode()
            )
    out.result(result)
    return EX_OK


def _input_size(source: IO[bytes], resume: bool) -> int | None:
    """The bytes a put will send, when the input is a regular file (for the progress bar)."""
    try:
        st = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size - (0 if resume else source.tell())


def _put_interrupted(
    args: argparse.Namespace, out: Output, plan: _PutPlan, state: _PutState, err: LucidError
) -> int:
    """Say how to finish the job: the session, what was acknowledged, the resume command."""
    acked = state.acked
    if plan.created and acked == 0 and not err.retryable:
        # Nothing of this put is stored and the same put cannot succeed: leave no empty
        # session behind (a retryable failure keeps it, for the resume command below).
        with contextlib.suppress(LucidError), control_client(args) as control:
            control.shred(plan.session)
        return out.failure(err.code, err.message, err.exit_code)
    if not plan.created and acked == 0:
        # Nothing of this put was stored (another writer, a refused first chunk): the same
        # command is the way to try again, not a resume.
        return out.failure(err.code, err.message, err.exit_code)
    name = format_session_id(plan.session)
    source = "-" if args.file == "-" else shlex.quote(args.file)
    command = f"{PROG} put {source} --session {name} --resume --chunk-size {plan.chunk_size}"
    if args.runtime_dir is not None:
        command += f" --runtime-dir {shlex.quote(str(args.runtime_dir))}"
    note = (
        f"{PROG}: put interrupted: session {name}, {plan.start + acked} chunks acknowledged"
        f" ({acked} by this put); resume with: {command}"
    )
    if args.file == "-":
        note += " (with the same bytes on stdin again, from the start)"
    sys.stderr.write(note + "\n")
    context = {"session": name, "acked": plan.start + acked, "resume": command}
    return out.failure(err.code, err.message, err.exit_code, context)
