"""lucidctl's command line (layer 4): the subcommands, their arguments, and the global options
accepted before or after the subcommand. Parsing never exits: a refused command line raises
:class:`UsageError`, so :func:`lucidd.cli.main` chooses how to report it.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from typing import NoReturn

from lucidd import __version__
from lucidd.cli.commands import (
    cmd_check,
    cmd_config,
    cmd_consistency,
    cmd_finalize,
    cmd_get,
    cmd_health,
    cmd_info,
    cmd_metrics,
    cmd_open,
    cmd_proof,
    cmd_record,
    cmd_root,
    cmd_sessions,
    cmd_shred,
)
from lucidd.cli.output import PROG, Output
from lucidd.cli.put import cmd_put
from lucidd.client import DEFAULT_TIMEOUT, DEFAULT_WINDOW, SessionIdError, parse_session_id
from lucidd.errors import LucidError
from lucidd.units import parse_size
from lucidd.vocabulary import Compression

#: What a subcommand runs: its parsed arguments and where results go; returns the exit status.
Handler = Callable[[argparse.Namespace, Output], int]


def _lazy(module: str, name: str) -> Handler:
    """A handler imported only when its command runs: the trust and verify commands load
    the note, receipt and crypto modules, a quarter of every other command's start-up."""

    def run(args: argparse.Namespace, out: Output) -> int:
        handler: Handler = getattr(importlib.import_module(f"lucidd.cli.{module}"), name)
        return handler(args, out)

    return run


cmd_anchor = _lazy("trust", "cmd_anchor")
cmd_checkpoint = _lazy("trust", "cmd_checkpoint")
cmd_receipt = _lazy("trust", "cmd_receipt")
cmd_signing_key = _lazy("trust", "cmd_signing_key")
cmd_verify_consistency = _lazy("trust", "cmd_verify_consistency")
cmd_verify = _lazy("verify", "cmd_verify")


class UsageError(Exception):
    """A command line argparse refused; the usage text is already formatted."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so :func:`main` chooses the output."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


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


# --- the parser ---------------------------------------------------------------------------


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


def build_parser() -> Parser:
    parser = Parser(
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

    def vkey(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--vkey",
            action="append",
            metavar="VKEY",
            help="a verifier key to trust (name+id+key, or a file of them); repeatable",
        )

    def output(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    command("health", cmd_health, "the daemon's status and processes")
    command("metrics", cmd_metrics, "the daemon's counters and gauges")
    command("config", cmd_config, "the daemon's effective configuration")
    sub = command("sessions", cmd_sessions, "list sessions")
    sub.add_argument(
        "--remote",
        action="store_true",
        help="the object store's sessions, by host (root or the admin group)",
    )

    sub = command("info", cmd_info, "one session's state, size and chunk count")
    session(sub)

    sub = command("open", cmd_open, "open a new session and print its id")
    sub.add_argument("--compression", choices=[c.value for c in Compression])
    sub.add_argument("--label", metavar="TEXT", help="a note shown by sessions and info")

    sub = command("put", cmd_put, "store a file as the chunks of a session")
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

    sub = command("root", cmd_root, "the Merkle root of a session")
    session(sub)
    sub.add_argument("--size", type=_count_arg, metavar="N", help="of the first N leaves")

    sub = command("proof", cmd_proof, "the inclusion proof of one chunk")
    session(sub)
    sub.add_argument("index", type=_count_arg, metavar="INDEX")
    sub.add_argument("--size", type=_count_arg, metavar="N", help="in the tree of N leaves")

    sub = command("consistency", cmd_consistency, "a consistency proof between tree sizes")
    session(sub)
    sub.add_argument("size1", type=_count_arg, metavar="SIZE1")
    sub.add_argument("size2", type=_count_arg, metavar="SIZE2", nargs="?")

    sub = command("finalize", cmd_finalize, "finalize a session and print its checkpoint")
    session(sub)

    sub = command("get", cmd_get, "the plaintext of a session's chunks, in order")
    session(sub)
    output(sub)

    sub = command("record", cmd_record, "the sealed record of one chunk")
    session(sub)
    sub.add_argument("index", type=_count_arg, metavar="INDEX")
    output(sub)

    sub = command(
        "verify",
        cmd_verify,
        "check an inclusion proof against a checkpoint, offline (no daemon, no keys)",
    )
    sub.add_argument(
        "--receipt", metavar="FILE", help="a receipt (lucidctl receipt): check the whole chain"
    )
    sub.add_argument("--proof", metavar="PROOF.json", help="output of lucidctl --json proof")
    sub.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a signed checkpoint, or JSON with a 'checkpoint' string (lucidctl --json finalize)",
    )
    vkey(sub)
    sub.add_argument(
        "--rpc",
        metavar="URL",
        help="with --receipt: also check ethereum attestations on that chain's RPC endpoint",
    )
    leaf = sub.add_mutually_exclusive_group()
    leaf.add_argument("--record", metavar="FILE", help="the sealed record (lucidctl record)")
    leaf.add_argument("--leaf-hash", metavar="HEX", help="the leaf hash to expect")

    sub = command(
        "verify-consistency",
        cmd_verify_consistency,
        "check offline that a signed checkpoint extends an earlier one",
    )
    sub.add_argument("proof", metavar="PROOF.json", help="output of lucidctl --json consistency")
    sub.add_argument(
        "--old",
        metavar="FILE",
        help="the earlier signed checkpoint (default: the proof file's checkpoint1)",
    )
    sub.add_argument(
        "--new",
        metavar="FILE",
        help="the later signed checkpoint (default: the proof file's checkpoint2)",
    )
    vkey(sub)

    command("signing-key", cmd_signing_key, "the host's checkpoint-signing key (name, vkey)")

    sub = command("checkpoint", cmd_checkpoint, "a signed checkpoint of a session")
    session(sub)
    sub.add_argument("--size", type=_count_arg, metavar="N", help="of the first N leaves")
    output(sub)

    command(
        "anchor",
        cmd_anchor,
        "checkpoint the anchor log now and start anchoring it (root or the admin group)",
    )

    sub = command(
        "receipt", cmd_receipt, "a receipt that proves one chunk offline, up to its anchor"
    )
    session(sub)
    sub.add_argument("index", type=_count_arg, metavar="INDEX")
    output(sub)

    sub = command(
        "check",
        cmd_check,
        "scrub a session: read and authenticate every chunk, compare with the log "
        "(exit 65 and the bad chunks when any fails)",
    )
    session(sub)

    sub = command("shred", cmd_shred, "crypto-shred a session (irreversible)")
    session(sub)
    sub.add_argument(
        "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)"
    )
    return parser
