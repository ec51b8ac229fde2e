"""lucidctl's output (layer 4): results as one JSON object or human lines, failures as one
stderr line (and the JSON error object), the progress bar, and the binary input and output
files of ``put``, ``get`` and ``record``.

Everything here writes to ``sys.stdout`` and ``sys.stderr`` as they are at call time, so tests
can drive :func:`lucidd.cli.main` in-process.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import pwd
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

import msgspec

from lucidd.errors import InternalError
from lucidd.units import MiB

PROG: Final = "lucidctl"
#: Seconds between progress-bar redraws.
PROGRESS_INTERVAL: Final = 0.1


def to_hex(data: bytes) -> str:
    return data.hex()


def number_text(value: float) -> str:
    """A metric as people read it: integral values without a fraction."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def iso_time(ns: int) -> str | None:
    if not ns:
        return None
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat(timespec="seconds")


def user_name(uid: int) -> str:
    """The owner as people read it (the uid where the host has no such user)."""
    if uid < 0:
        return "(daemon)"  # recorded before sessions had owners: the privileged only
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def human_lines(obj: dict[str, Any], indent: str = "") -> Iterator[str]:
    """``key: value`` lines; lists and nested objects indented below their key."""
    for key, value in obj.items():
        if isinstance(value, dict):
            yield f"{indent}{key}:"
            yield from human_lines(value, indent + "  ")
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
class Output:
    """Where results go: one JSON object, or human lines, on the current ``sys.stdout``."""

    json_mode: bool

    def result(
        self, obj: dict[str, Any] | msgspec.Struct, human: Sequence[str] | None = None
    ) -> None:
        """Print one result; a Struct (a file format that verify reads back) is written as
        the same JSON object its fields name, in their order."""
        fields: dict[str, Any] = (
            msgspec.to_builtins(obj) if isinstance(obj, msgspec.Struct) else obj
        )
        if self.json_mode:
            sys.stdout.write(json.dumps(fields) + "\n")
        else:
            for line in human if human is not None else human_lines(fields):
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
class Progress:
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


def binary_stdout() -> BinaryIO:
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        raise InternalError("stdout has no binary buffer; use -o FILE")
    return buffer  # type: ignore[no-any-return]


@contextlib.contextmanager
def output_file(name: str | None) -> Iterator[BinaryIO]:
    """Binary sink: stdout for None or ``-``; else a temporary file renamed into place on
    success (so a failed ``get`` never leaves a truncated FILE behind)."""
    if name is None or name == "-":
        stream = binary_stdout()
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
def input_file(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as source:
        yield source
