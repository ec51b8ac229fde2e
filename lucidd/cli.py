"""``lucidctl``: the command line of lucidd (layer 4).

Every subcommand but ``verify`` talks to a running daemon through :mod:`lucidd.client`;
``verify`` checks a record, an inclusion proof and a checkpoint offline, with no keys.

Output contract (scripts and tests rely on it):

- ``--json``: exactly one JSON object on stdout, also on failure
  (``{"error": {"code", "message", "exit_code"}}``); hashes are lowercase hex, session ids
  canonical UUID strings. ``get`` and ``record`` write binary data to stdout unless ``-o FILE``
  is given, so with ``--json`` they require ``-o``.
- Without ``--json``: human-readable lines on stdout.
- Exit status 0 on success; on failure the error's ``sysexits`` code (:mod:`lucidd.errors`;
  64 for usage errors; ``verify`` exits 65 when the proof does not hold) and one line on stderr,
  ``lucidctl: <code>: <message>``; never a traceback for a :class:`LucidError`.

:func:`main` takes ``argv`` and returns the exit status, writing to ``sys.stdout`` and
``sys.stderr`` as they are at call time, so tests can drive it in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import os
import pwd
import shlex
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, NoReturn

from lucidd import __version__, crypto, merkle
from lucidd.client import (
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    Ack,
    ControlClient,
    DataClient,
    SessionIdError,
    SessionSummary,
    format_session_id,
    parse_session_id,
)
from lucidd.errors import (
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_OK,
    EX_USAGE,
    BadRequestError,
    ForbiddenError,
    FormatError,
    IncompleteSessionError,
    InternalError,
    LucidError,
    SessionFinalizedError,
    TooLargeError,
    UnknownSessionError,
)
from lucidd.units import MiB, format_size, parse_size
from lucidd.vocabulary import Compression

PROG: Final = "lucidctl"
DEFAULT_CHUNK_SIZE: Final = 1 * MiB
#: The checkpoint origin of a session: ``lucidd/<session id>`` (DESIGN §5).
ORIGIN_PREFIX: Final = "lucidd/"
#: Seconds between progress-bar redraws.
PROGRESS_INTERVAL: Final = 0.1
#: Exit status after SIGINT (128 + 2), as shells report it.
EX_INTERRUPTED: Final = 130


class _UsageError(Exception):
    """A command line argparse refused; the usage text is already formatted."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so :func:`main` chooses the output."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self.format_usage())


# --- argument types -----------------------------------------------------------------------


def _session_arg(text: str) -> bytes:
    try:
        return parse_session_id(text)
    except SessionIdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return value


def _positive_arg(text: str) -> int:
    value = _count_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _size_arg(text: str) -> int:
    try:
        value = parse_size(text)
    except LucidError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return value


def _timeout_arg(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < math.inf:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value or None


# --- output -------------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex()


def _number(value: float) -> str:
    """A metric as people read it: integral values without a fraction."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _summary_json(summary: SessionSummary) -> dict[str, Any]:
    return {
        "session": format_session_id(summary.session),
        "state": summary.state,
        "size": summary.size,
        "chunks": summary.chunks,
        "plaintext_bytes": summary.plaintext_bytes,
        "compression": summary.compression,
        "owner_uid": summary.owner_uid,
        "owner": _user_name(summary.owner_uid),
        "created": _iso_time(summary.created_ns),
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


def _iso_time(ns: int) -> str | None:
    if not ns:
        return None
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat(timespec="seconds")


def _user_name(uid: int) -> str:
    """The owner as people read it (the uid where the host has no such user)."""
    if uid < 0:
        return "(daemon)"  # recorded before sessions had owners: the privileged only
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _human_lines(obj: dict[str, Any], indent: str = "") -> Iterator[str]:
    """``key: value`` lines; lists and nested objects indented below their key."""
    for key, value in obj.items():
        if isinstance(value, dict):
            yield f"{indent}{key}:"
            yield from _human_lines(value, indent + "  ")
        elif isinstance(value, list):
            yield f"{indent}{key}:" + ("" if value else " (none)")
            for item in value:
                yield f"{indent}  {item}"
        elif isinstance(value, bool):
            yield f"{indent}{key}: {'yes' if value else 'no'}"
        elif isinstance(value, str) and "\n" in value:
            yield f"{indent}{key}:"
            for line in value.splitlines():
                yield f"{indent}  {line}"
        else:
            yield f"{indent}{key}: {value}"


@dataclass
class _Output:
    """Where results go: one JSON object, or human lines, on the current ``sys.stdout``."""

    json_mode: bool

    def result(self, obj: dict[str, Any], human: Sequence[str] | None = None) -> None:
        if self.json_mode:
            sys.stdout.write(json.dumps(obj) + "\n")
        else:
            for line in human if human is not None else _human_lines(obj):
                sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def failure(
        self, code: str, message: str, exit_code: int, context: dict[str, Any] | None = None
    ) -> int:
        """Report a failure (stderr line, and the JSON error object); return ``exit_code``.

        ``context`` adds fields to the JSON error object (an interrupted put's resume command).
        """
        one_line = " ".join(message.split())
        sys.stderr.write(f"{PROG}: {code}: {one_line}\n")
        sys.stderr.flush()
        if self.json_mode:
            error = {"code": code, "message": one_line, "exit_code": exit_code, **(context or {})}
            with contextlib.suppress(OSError, ValueError):
                self.result({"error": error})
        return exit_code


@dataclass
class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    With ``total`` (bytes, when known) it shows the percentage, the rate and the time left.
    """

    enabled: bool
    verb: str = "put"
    total: int | None = None
    chunks: int = 0
    nbytes: int = 0
    _drawn: float = field(default=0.0)
    _started: float = field(default_factory=time.monotonic)

    def add(self, nbytes: int) -> None:
        self.chunks += 1
        self.nbytes += nbytes
        now = time.monotonic()
        if self.enabled and now - self._drawn >= PROGRESS_INTERVAL:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        sys.stderr.write(f"\r{PROG} {self.verb}: {self.line()}\x1b[K")
        sys.stderr.flush()

    def line(self) -> str:
        done = f"{self.chunks} chunks, {self.nbytes / MiB:.1f}"
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = self.nbytes / elapsed
        if not self.total:
            return f"{done} MiB, {rate / MiB:.1f} MiB/s"
        percent = 100.0 * self.nbytes / self.total
        left = (self.total - self.nbytes) / rate if rate else math.inf
        eta = f"{left:.0f} s left" if math.isfinite(left) else "time left unknown"
        return (
            f"{done} of {self.total / MiB:.1f} MiB ({percent:.0f} %), {rate / MiB:.1f} MiB/s, {eta}"
        )

    def done(self) -> None:
        if self.enabled and self.chunks:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


def _binary_stdout() -> BinaryIO:
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        raise InternalError("stdout has no binary buffer; use -o FILE")
    return buffer  # type: ignore[no-any-return]


@contextlib.contextmanager
def _output_file(name: str | None) -> Iterator[BinaryIO]:
    """Binary sink: stdout for None or ``-``; else a temporary file renamed into place on
    success (so a failed ``get`` never leaves a truncated FILE behind)."""
    if name is None or name == "-":
        stream = _binary_stdout()
        yield stream
        stream.flush()
        return
    target = Path(name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, name) from None
    try:
        with os.fdopen(fd, "wb") as sink:
            yield sink
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _input_file(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as source:
        yield source


# --- daemon commands ----------------------------------------------------------------------


def _control(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.runtime_dir, timeout=args.timeout)


def _cmd_health(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
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


def _cmd_metrics(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        metrics = control.metrics()
    human = [f"{name} {_number(value)}" for name, value in sorted(metrics.items())]
    out.result({"metrics": metrics}, human)
    return EX_OK


def _cmd_config(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        config = control.config()
    human = [f"{name} = {json.dumps(value)}" for name, value in sorted(config.items())]
    out.result({"config": config}, human)
    return EX_OK


def _cmd_sessions(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        sessions = control.sessions()
    header = (
        f"{'SESSION':<36}  {'CREATED':<25} {'STATE':<10} {'CHUNKS':>8} {'BYTES':>14} "
        f"{'STORED':>14} {'OWNER':<12} {'LABEL':<16} DAMAGED"
    )
    human = [header] + [
        f"{format_session_id(s.session):<36}  {_iso_time(s.created_ns) or '-':<25} "
        f"{s.state:<10} {s.chunks:>8} {s.plaintext_bytes:>14} {s.stored_bytes:>14} "
        f"{_user_name(s.owner_uid):<12} {s.label:<16} {_damage_cell(s)}"
        for s in sessions
    ]
    out.result({"sessions": [_summary_json(s) for s in sessions]}, human)
    return EX_OK


def _damage_cell(summary: SessionSummary) -> str:
    if not summary.damaged:
        return "no"
    return f"YES: {summary.problem}" if summary.problem else "YES"


def _cmd_check(args: argparse.Namespace, out: _Output) -> int:
    """Scrub a session; exit 0 only when every chunk is present and authentic, else 65."""
    with _control(args) as control:
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


def _cmd_info(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        summary = control.info(args.session)
    out.result(_summary_json(summary))
    return EX_OK


def _cmd_open(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        session = control.open_session(args.compression, label=args.label)
    text = format_session_id(session)
    out.result({"session": text}, [text])
    return EX_OK


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
    with _control(args) as control:
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
    if summary.state != "open":
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


def _cmd_put(args: argparse.Namespace, out: _Output) -> int:
    with _input_file(args.file) as source:
        plan = _plan_put(args)  # after the input opened: no session for a missing file
        state = _PutState()
        try:
            return _put(args, out, source, plan, state)
        except LucidError as err:
            return _put_interrupted(args, out, plan, state, err)


def _put(
    args: argparse.Namespace, out: _Output, source: IO[bytes], plan: _PutPlan, state: _PutState
) -> int:
    """Send ``source`` as chunks ``start, start+1, ...`` of the session; print the result.

    With --resume every chunk is sent from index 0: the daemon compares a resent chunk with
    the stored one and acknowledges it again (never storing it twice), stores what is
    missing, and refuses a chunk that differs (``duplicate_index`` naming it).
    """
    progress = _Progress(sys.stderr.isatty(), "put", _input_size(source, args.resume))
    lengths: dict[int, int] = {}
    sent = 0

    def pieces() -> Iterator[tuple[int, bytes]]:
        nonlocal sent
        index = plan.start
        while piece := source.read(plan.chunk_size):
            lengths[index] = len(piece)
            yield index, piece
            index += 1
            sent += 1

    def on_ack(ack: Ack) -> None:
        progress.add(lengths.pop(ack.index, 0))

    try:
        with DataClient(args.runtime_dir, timeout=args.timeout) as data:
            acks = data.put_many(plan.session, pieces(), window=args.window, on_ack=on_ack)
    finally:
        progress.done()
        state.acked = progress.chunks
    with _control(args) as control:
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
            "root": _hex(root.root),
        }
        if args.finalize:
            final = control.finalize(plan.session)
            result.update(
                size=final.size, root=_hex(final.root), checkpoint=final.checkpoint.decode()
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
    args: argparse.Namespace, out: _Output, plan: _PutPlan, state: _PutState, err: LucidError
) -> int:
    """Say how to finish the job: the session, what was acknowledged, the resume command."""
    acked = state.acked
    if plan.created and acked == 0 and not err.retryable:
        # Nothing of this put is stored and the same put cannot succeed: leave no empty
        # session behind (a retryable failure keeps it, for the resume command below).
        with contextlib.suppress(LucidError), _control(args) as control:
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


def _cmd_root(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        root = control.root(args.session, args.size)
    out.result(
        {"session": format_session_id(root.session), "size": root.size, "root": _hex(root.root)}
    )
    return EX_OK


def _cmd_proof(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        proof = control.inclusion_proof(args.session, args.index, args.size)
    out.result(
        {
            "session": format_session_id(proof.session),
            "index": proof.index,
            "size": proof.size,
            "leaf_hash": _hex(proof.leaf_hash),
            "path": [_hex(node) for node in proof.path],
            "root": _hex(proof.root),
        }
    )
    return EX_OK


def _cmd_consistency(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        proof = control.consistency_proof(args.session, args.size1, args.size2)
    out.result(
        {
            "session": format_session_id(proof.session),
            "size1": proof.size1,
            "size2": proof.size2,
            "path": [_hex(node) for node in proof.path],
            "root1": _hex(proof.root1),
            "root2": _hex(proof.root2),
        }
    )
    return EX_OK


def _cmd_finalize(args: argparse.Namespace, out: _Output) -> int:
    with _control(args) as control:
        final = control.finalize(args.session)
    result = {
        "session": format_session_id(final.session),
        "size": final.size,
        "root": _hex(final.root),
        "checkpoint": final.checkpoint.decode(),
        "already_finalized": final.already_finalized,
    }
    human = list(_human_lines(result))
    if final.already_finalized:
        human.append("note: the session was already finalized; this is its checkpoint")
    out.result(result, human)
    return EX_OK


def _require_output_for_json(args: argparse.Namespace) -> None:
    if args.json and args.output in (None, "-"):
        raise BadRequestError(f"{args.command} --json needs -o FILE: stdout carries the data")


def _cmd_get(args: argparse.Namespace, out: _Output) -> int:
    _require_output_for_json(args)
    nbytes = 0
    with _control(args) as control:
        info = control.info(args.session)
        size = info.size
        # Drawn only on a terminal that is not also the data's destination.
        to_terminal = args.output in (None, "-") and sys.stdout.isatty()
        progress = _Progress(sys.stderr.isatty() and not to_terminal, "get", info.plaintext_bytes)
        try:
            with _output_file(args.output) as sink:
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


def _cmd_record(args: argparse.Namespace, out: _Output) -> int:
    _require_output_for_json(args)
    with _control(args) as control:
        record = control.read_chunk(args.session, args.index).record
    if not record:
        raise InternalError("lucidd returned no sealed record for this chunk")
    with _output_file(args.output) as sink:
        sink.write(record)
    if args.output not in (None, "-"):
        out.result(
            {
                "session": format_session_id(args.session),
                "index": args.index,
                "bytes": len(record),
                "leaf_hash": _hex(merkle.leaf_hash(record)),
            }
        )
    return EX_OK


def _cmd_shred(args: argparse.Namespace, out: _Output) -> int:
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
    with _control(args) as control:
        control.shred(args.session)
    out.result({"session": format_session_id(args.session), "shredded": True})
    return EX_OK


# --- verify (offline) ---------------------------------------------------------------------


class _InvalidError(Exception):
    """The inputs do not verify; the message is the reason shown to the user."""


@dataclass(frozen=True)
class _Proof:
    session: bytes
    index: int
    size: int
    leaf_hash: bytes
    path: list[bytes]


def _json_hash(value: object, what: str) -> bytes:
    if isinstance(value, str) and len(value) == 2 * merkle.HASH_SIZE:
        with contextlib.suppress(ValueError):
            if value == value.lower():
                return bytes.fromhex(value)
    raise _InvalidError(f"{what} is not {merkle.HASH_SIZE} bytes of lowercase hex")


def _json_count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _InvalidError(f"proof file: {key!r} is not a non-negative integer")
    return value


def _load_proof(path: str) -> _Proof:
    """The proof JSON that ``lucidctl --json proof`` prints."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _InvalidError(f"proof file is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _InvalidError("proof file is not a JSON object")
    session_text = obj.get("session")
    if not isinstance(session_text, str):
        raise _InvalidError("proof file: 'session' is missing")
    try:
        session = parse_session_id(session_text)
    except SessionIdError as exc:
        raise _InvalidError(f"proof file: {exc}") from None
    path_list = obj.get("path")
    if not isinstance(path_list, list):
        raise _InvalidError("proof file: 'path' is not a list")
    return _Proof(
        session=session,
        index=_json_count(obj, "index"),
        size=_json_count(obj, "size"),
        leaf_hash=_json_hash(obj.get("leaf_hash"), "proof file: 'leaf_hash'"),
        path=[_json_hash(node, f"proof file: path[{i}]") for i, node in enumerate(path_list)],
    )


def _load_checkpoint(path: str) -> tuple[merkle.Checkpoint, bytes]:
    """The checkpoint (C2SP text, or JSON with a "checkpoint" string) and its session id."""
    raw = Path(path).read_bytes()
    if raw.lstrip().startswith(b"{"):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _InvalidError(f"checkpoint file is not JSON: {exc}") from None
        text = obj.get("checkpoint") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise _InvalidError("checkpoint file: no 'checkpoint' string in the JSON object")
        raw = text.encode()
    try:
        checkpoint = merkle.Checkpoint.parse(raw)
    except FormatError as exc:
        raise _InvalidError(f"checkpoint: {exc}") from None
    origin = checkpoint.origin
    session: bytes | None = None
    if origin.startswith(ORIGIN_PREFIX):
        with contextlib.suppress(SessionIdError):
            session = parse_session_id(origin.removeprefix(ORIGIN_PREFIX))
    if session is None or origin != ORIGIN_PREFIX + format_session_id(session):
        raise _InvalidError(f"checkpoint origin {origin!r} is not {ORIGIN_PREFIX}<session id>")
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
    checkpoint, origin_session = _load_checkpoint(args.checkpoint)
    if origin_session != proof.session:
        raise _InvalidError(
            f"the proof is for session {format_session_id(proof.session)}, the checkpoint "
            f"for {format_session_id(origin_session)}"
        )
    if args.record is not None:
        leaf = _record_leaf_hash(args.record, proof)
        if leaf != proof.leaf_hash:
            raise _InvalidError("the record's leaf hash differs from the proof's leaf_hash")
    elif (
        args.leaf_hash is not None
        and _json_hash(args.leaf_hash.lower(), "--leaf-hash") != proof.leaf_hash
    ):
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


def _cmd_verify(args: argparse.Namespace, out: _Output) -> int:
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
            "leaf_hash": _hex(proof.leaf_hash),
            "root": _hex(checkpoint.root),
        },
        [f"valid: {reason}"],
    )
    return EX_OK


# --- the parser ---------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, _Output], int]


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options, accepted before or after the subcommand.

    On subcommands their defaults are SUPPRESS, so one not repeated there keeps the value
    given (or defaulted) before the subcommand.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--runtime-dir",
        metavar="DIR",
        default=default(None),
        help="the daemon's runtime folder (default: $LUCIDD_RUNTIME_DIR, "
        "else $XDG_RUNTIME_DIR/lucidd, else /tmp/lucidd-UID)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print exactly one JSON object on stdout",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout_arg,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help=f"give up after this long without progress (0: never; default {DEFAULT_TIMEOUT:g})",
    )


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Control and query lucidd; verify proofs offline.",
    )
    _add_global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_global_options(sub, top=False)
        sub.set_defaults(handler=handler)
        return sub

    def session(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("session", type=_session_arg, metavar="SESSION", help="session id")

    def output(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    command("health", _cmd_health, "the daemon's status and processes")
    command("metrics", _cmd_metrics, "the daemon's counters and gauges")
    command("config", _cmd_config, "the daemon's effective configuration")
    command("sessions", _cmd_sessions, "list sessions")

    sub = command("info", _cmd_info, "one session's state, size and chunk count")
    session(sub)

    sub = command("open", _cmd_open, "open a new session and print its id")
    sub.add_argument("--compression", choices=[c.value for c in Compression])
    sub.add_argument("--label", metavar="TEXT", help="a note shown by sessions and info")

    sub = command("put", _cmd_put, "store a file as the chunks of a session")
    sub.add_argument("file", metavar="FILE", help="the file to send, or - for stdin")
    sub.add_argument(
        "--session",
        type=_session_arg,
        metavar="ID",
        help="append to this session (after its stored chunks); it must exist unless --create",
    )
    sub.add_argument(
        "--create",
        action="store_true",
        help="with --session: open the session with that id if there is none",
    )
    sub.add_argument(
        "--resume",
        action="store_true",
        help="with --session: send the whole input again; stored chunks are compared and "
        "acknowledged again, missing ones stored (after any crash)",
    )
    sub.add_argument(
        "--chunk-size",
        type=_size_arg,
        default=None,
        metavar="BYTES",
        help="bytes per chunk, e.g. 65536 or 64KiB (default: the session's recorded size, "
        "else 1MiB)",
    )
    sub.add_argument("--label", metavar="TEXT", help="a note for a new session (sessions, info)")
    sub.add_argument(
        "--compression",
        choices=[c.value for c in Compression],
        help="compression of a newly opened session (default: the daemon's)",
    )
    sub.add_argument("--finalize", action="store_true", help="finalize the session afterwards")
    sub.add_argument(
        "--window",
        type=_positive_arg,
        default=DEFAULT_WINDOW,
        metavar="N",
        help=f"chunks in flight at once (default {DEFAULT_WINDOW})",
    )

    sub = command("root", _cmd_root, "the Merkle root of a session")
    session(sub)
    sub.add_argument("--size", type=_count_arg, metavar="N", help="of the first N leaves")

    sub = command("proof", _cmd_proof, "the inclusion proof of one chunk")
    session(sub)
    sub.add_argument("index", type=_count_arg, metavar="INDEX")
    sub.add_argument("--size", type=_count_arg, metavar="N", help="in the tree of N leaves")

    sub = command("consistency", _cmd_consistency, "a consistency proof between tree sizes")
    session(sub)
    sub.add_argument("size1", type=_count_arg, metavar="SIZE1")
    sub.add_argument("size2", type=_count_arg, metavar="SIZE2", nargs="?")

    sub = command("finalize", _cmd_finalize, "finalize a session and print its checkpoint")
    session(sub)

    sub = command("get", _cmd_get, "the plaintext of a session's chunks, in order")
    session(sub)
    output(sub)

    sub = command("record", _cmd_record, "the sealed record of one chunk")
    session(sub)
    sub.add_argument("index", type=_count_arg, metavar="INDEX")
    output(sub)

    sub = command(
        "verify",
        _cmd_verify,
        "check an inclusion proof against a checkpoint, offline (no daemon, no keys)",
    )
    sub.add_argument(
        "--proof", required=True, metavar="PROOF.json", help="output of lucidctl --json proof"
    )
    sub.add_argument(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="checkpoint text, or JSON with a 'checkpoint' string (lucidctl --json finalize)",
    )
    leaf = sub.add_mutually_exclusive_group()
    leaf.add_argument("--record", metavar="FILE", help="the sealed record (lucidctl record)")
    leaf.add_argument("--leaf-hash", metavar="HEX", help="the leaf hash to expect")

    sub = command(
        "check",
        _cmd_check,
        "scrub a session: read and authenticate every chunk, compare with the log "
        "(exit 65 and the bad chunks when any fails)",
    )
    session(sub)

    sub = command("shred", _cmd_shred, "crypto-shred a session (irreversible)")
    session(sub)
    sub.add_argument(
        "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)"
    )
    return parser


# --- main ---------------------------------------------------------------------------------


def _os_error_exit(exc: OSError) -> tuple[str, int]:
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return "noinput", EX_NOINPUT
    if isinstance(exc, PermissionError):
        return "noperm", EX_NOPERM
    return "io", EX_IOERR


def _silence_stdout() -> None:
    # After EPIPE on stdout, point it at /dev/null so the interpreter's final flush is quiet.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _asks_for_json(argv: list[str]) -> bool:
    """Whether a command line argparse refused has ``--json`` among its options."""
    return "--json" in itertools.takewhile(lambda word: word != "--", argv)


def main(argv: list[str] | None = None) -> int:
    """Run ``lucidctl`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        sys.stderr.write(f"{exc.usage}")
        out = _Output(json_mode=_asks_for_json(sys.argv[1:] if argv is None else argv))
        return out.failure("usage", str(exc), EX_USAGE)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    out = _Output(json_mode=args.json)
    handler: Handler = args.handler
    try:
        return handler(args, out)
    except LucidError as exc:
        return out.failure(exc.code, exc.message, exc.exit_code)
    except BrokenPipeError:
        _silence_stdout()
        return EX_IOERR
    except OSError as exc:
        code, exit_code = _os_error_exit(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        return out.failure(code, f"{where}{exc.strerror or exc}", exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EX_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
