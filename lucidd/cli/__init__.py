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

The package, by job: :mod:`~lucidd.cli.parser` (the command line), :mod:`~lucidd.cli.output`
(results, failures, progress, files), :mod:`~lucidd.cli.commands` (the daemon commands),
:mod:`~lucidd.cli.put` (put and resume), :mod:`~lucidd.cli.verify` (offline verification) and
:mod:`~lucidd.cli.formats` (the proof and checkpoint JSON that verify reads back).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from typing import Final

from lucidd.cli.output import PROG, Output
from lucidd.cli.parser import Handler, UsageError, build_parser
from lucidd.errors import EX_IOERR, EX_NOINPUT, EX_NOPERM, EX_USAGE, LucidError

__all__ = ["main"]

#: Exit status after SIGINT (128 + 2), as shells report it.
EX_INTERRUPTED: Final = 130


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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"{exc.usage}")
        out = Output(json_mode=_asks_for_json(sys.argv[1:] if argv is None else argv))
        return out.failure("usage", str(exc), EX_USAGE)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    out = Output(json_mode=args.json)
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
