"""Folders of signed checkpoints, one file per tree size, written once (layer 2).

A session keeps its signed checkpoints in ``<session>/checkpoints/`` and the anchor log its own
in ``<state>/anchor/checkpoints/``; attestations of anchor checkpoints sit beside them. A file is
named after the tree size it covers (zero-padded decimal, so names sort by size) and is never
replaced: the first note written for a size stays, which is what makes any two of them provably
consistent. A write goes to a temporary name, is fsynced, and is then linked to its final name
(``link(2)`` fails if that exists), so a crash leaves either the whole note or none.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Final

from lucidd.daemon.store import fsync_dir, write_all

_NAME: Final = re.compile(r"^(\d{20})(?:\.([a-z0-9_-]+))?$")
#: Bound on one stored note or attestation read back (a signed checkpoint is ~200 bytes).
MAX_FILE_SIZE: Final = 1 << 20


def _name(size: int, kind: str | None) -> str:
    return f"{size:020d}" if kind is None else f"{size:020d}.{kind}"


class NoteFolder:
    """Create-only files keyed by tree size (and, for attestations, a backend name)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, size: int, data: bytes, kind: str | None = None) -> bool:
        """Store ``data`` for ``size`` unless something is stored there already.

        Durable (file and folder fsynced) when it returns. True if this call wrote it; False
        if the size already had a file, which is kept.
        """
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.path / _name(size, kind)
        if os.path.lexists(final):
            return False
        tmp = self.path / f".{final.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(self.path)
        return True

    def read(self, size: int, kind: str | None = None) -> bytes | None:
        """The file stored for ``size`` (and ``kind``), or None."""
        try:
            with open(self.path / _name(size, kind), "rb") as f:
                return f.read(MAX_FILE_SIZE)
        except FileNotFoundError:
            return None

    def sizes(self, kind: str | None = None) -> list[int]:
        """The sizes that have a file of ``kind``, ascending."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _NAME.match(name)
            if match is not None and match.group(2) == kind:
                found.append(int(match.group(1)))
        return sorted(found)

    def index(self) -> dict[int, set[str]]:
        """Every stored size and the kinds stored beside it (one listing)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return {}
        found: dict[int, set[str]] = {}
        for name in names:
            match = _NAME.match(name)
            if match is not None:
                kinds = found.setdefault(int(match.group(1)), set())
                if match.group(2) is not None:
                    kinds.add(match.group(2))
        return found

    def kinds(self, size: int) -> list[str]:
        """The kinds (backend names) stored for ``size``, sorted."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        prefix = _name(size, None)
        found = []
        for name in names:
            match = _NAME.match(name)
            if match is not None and match.group(1) == prefix and match.group(2) is not None:
                found.append(match.group(2))
        return sorted(found)
