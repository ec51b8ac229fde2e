"""What the replicator has uploaded, durably (layer 2): resume where it stopped.

One append-only text file per session, ``<state>/replication/<session id>``, each line made
durable (fdatasync) before the upload it records is reported:

    r <start> <stop>      records start..stop-1 are in packs in the object store
    o <name>              the object <name> (meta, final, checkpoints/<size>) is there

A torn last line (a crash mid-append) is ignored and cut. The file is the replicator's alone;
losing it costs re-uploading, never data: a create-only put of an identical object succeeds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from lucidd.daemon.store import write_all

REPLICATION_DIR: Final = "replication"


class SessionProgress:
    """The uploaded records (as a prefix and the indices above it) and objects of a session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prefix = 0
        self.above: set[int] = set()
        self.objects: set[str] = set()
        self._fd = -1
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        end = raw.rfind(b"\n") + 1
        for line in raw[:end].decode("utf-8", "replace").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "r":
                start, _, stop = rest.partition(" ")
                if start.isdigit() and stop.isdigit():
                    self._add(range(int(start), int(stop)))
            elif kind == "o" and rest:
                self.objects.add(rest)
        if end != len(raw):
            os.truncate(self.path, end)

    def _add(self, indices: Iterable[int]) -> None:
        self.above.update(i for i in indices if i >= self.prefix)
        while self.prefix in self.above:
            self.above.discard(self.prefix)
            self.prefix += 1

    def has_record(self, index: int) -> bool:
        return index < self.prefix or index in self.above

    def _append(self, lines: list[str]) -> None:
        if self._fd < 0:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        write_all(self._fd, "".join(f"{line}\n" for line in lines).encode())
        os.fdatasync(self._fd)

    def add_records(self, indices: list[int]) -> None:
        """Record these as uploaded (durable when it returns)."""
        ordered = sorted(set(indices))
        lines = []
        start = prev = ordered[0]
        for index in ordered[1:]:
            if index != prev + 1:
                lines.append(f"r {start} {prev + 1}")
                start = index
            prev = index
        lines.append(f"r {start} {prev + 1}")
        self._append(lines)
        self._add(ordered)

    def add_object(self, name: str) -> None:
        """Record an object as uploaded (durable when it returns)."""
        self._append([f"o {name}"])
        self.objects.add(name)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
