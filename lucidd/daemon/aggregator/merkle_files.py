"""The files of one session's Merkle log and its ``state`` record (layer 2: I/O part, DESIGN §5).

The on-disk layout of ``docs/merkle.md``: ``leaves.bin`` (level 0, the truth), one
``level-<k>.bin`` per level of completed perfect subtrees, and ``state``, the atomically replaced
record of the last completed sync. :class:`LevelFiles` reads, appends, truncates and syncs those
files and knows nothing about trees; :class:`LogState` is the pure codec of ``state``. What to
write and how to recover is :class:`lucidd.daemon.aggregator.merkle_log.MerkleLog`'s business.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from lucidd.errors import StorageError
from lucidd.merkle import EMPTY_ROOT, HASH_SIZE, Buffer, fold_subtrees

_sha256 = hashlib.sha256

# --------------------------------------------------------------------------------------------
# The ``state`` record (pure codec)
# --------------------------------------------------------------------------------------------

STATE_MAGIC: Final = b"LMKS"
STATE_VERSION: Final = 1
_STATE_HEADER = struct.Struct(">4sHHQ")  # magic, version, frontier count, size
MAX_LEVELS: Final = 64


@dataclass(frozen=True)
class LogState:
    """What the last completed :meth:`MerkleLog.sync` made durable: size, root and frontier."""

    size: int
    root: bytes
    frontier: tuple[bytes, ...]

    def encode(self) -> bytes:
        body = b"".join(
            (
                _STATE_HEADER.pack(STATE_MAGIC, STATE_VERSION, len(self.frontier), self.size),
                self.root,
                *self.frontier,
            )
        )
        return body + _sha256(body).digest()

    @classmethod
    def decode(cls, data: bytes) -> LogState | None:
        """The state in ``data``, or None unless every length, the digest and the root check."""
        if len(data) < _STATE_HEADER.size + 2 * HASH_SIZE:
            return None
        magic, version, count, size = _STATE_HEADER.unpack_from(data)
        if magic != STATE_MAGIC or version != STATE_VERSION or count != size.bit_count():
            return None
        if len(data) != _STATE_HEADER.size + (count + 2) * HASH_SIZE:
            return None
        body, digest = data[:-HASH_SIZE], data[-HASH_SIZE:]
        if not hmac.compare_digest(_sha256(body).digest(), digest):
            return None
        hashes = [body[i : i + HASH_SIZE] for i in range(_STATE_HEADER.size, len(body), HASH_SIZE)]
        root, frontier = hashes[0], tuple(hashes[1:])
        if root != (fold_subtrees(frontier) if frontier else EMPTY_ROOT):
            return None
        return cls(size, root, frontier)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

LEAVES_FILE: Final = "leaves.bin"
STATE_FILE: Final = "state"
_STATE_TMP: Final = "state.tmp"
_LEVEL_FILE = re.compile(r"level-([1-9][0-9]?)\.bin")
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_OPEN_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def _level_file(level: int) -> str:
    return LEAVES_FILE if level == 0 else f"level-{level}.bin"


class LevelFiles:
    """The files of one on-disk log: level 0 is ``leaves.bin``, level k is ``level-<k>.bin``.

    Node ``j`` of level ``k`` sits at byte ``32 * j``. Files are only appended to, except that
    recovery truncates them. Knows nothing about trees; :class:`MerkleLog` decides what to write.
    Descriptors are a cache: :meth:`release` closes them all and the next use reopens what it
    needs, so a host with many sessions holds files open only for the ones in use.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(self.path, mode=_DIR_MODE, exist_ok=True)
        self._dir_fd = -1
        self._fds: list[int] = []  # per level; -1 while released
        self.counts: list[int] = []
        """Whole nodes in each level file, as far as this object has written or truncated."""
        try:
            levels = [0]
            for name in os.listdir(self.path):
                match = _LEVEL_FILE.fullmatch(name)
                if match:
                    levels.append(int(match.group(1)))
            for level in range(max(levels) + 1):
                self._open_level(level)
        except BaseException:
            self.close()
            raise

    def _dir(self) -> int:
        if self._dir_fd < 0:
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._dir_fd

    def _open_level(self, level: int) -> None:
        while len(self._fds) <= level:
            k = len(self._fds)
            fd = os.open(_level_file(k), _OPEN_FLAGS, _FILE_MODE, dir_fd=self._dir())
            self._fds.append(fd)
            self.counts.append(os.fstat(fd).st_size // HASH_SIZE)

    def _fd(self, level: int) -> int:
        fd = self._fds[level]
        if fd < 0:
            fd = os.open(_level_file(level), _OPEN_FLAGS, _FILE_MODE, dir_fd=self._dir())
            self._fds[level] = fd
        return fd

    def levels(self) -> int:
        return len(self._fds)

    def raw_size(self, level: int) -> int:
        return os.fstat(self._fd(level)).st_size

    def read(self, level: int, index: int) -> bytes:
        data = os.pread(self._fd(level), HASH_SIZE, index * HASH_SIZE)
        if len(data) != HASH_SIZE:
            raise StorageError(f"{_level_file(level)} is shorter than node {index}")
        return data

    def read_range(self, level: int, start: int, stop: int) -> bytes:
        want = (stop - start) * HASH_SIZE
        data = os.pread(self._fd(level), want, start * HASH_SIZE)
        if len(data) != want:
            raise StorageError(f"{_level_file(level)} is shorter than node {stop - 1}")
        return data

    def append(self, level: int, data: Buffer) -> None:
        """Append whole nodes with ``os.write`` (page cache only: durable after ``datasync``)."""
        self._open_level(level)
        fd = self._fd(level)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self.counts[level] += len(data) // HASH_SIZE

    def truncate(self, level: int, count: int) -> None:
        """Cut level ``level`` to ``count`` whole nodes (also drops a torn partial node)."""
        if self.raw_size(level) != count * HASH_SIZE:
            os.ftruncate(self._fd(level), count * HASH_SIZE)
        self.counts[level] = count

    def datasync(self, levels: Iterable[int]) -> None:
        for level in levels:
            os.fdatasync(self._fd(level))

    def read_state(self) -> bytes | None:
        try:
            fd = os.open(STATE_FILE, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir())
        except FileNotFoundError:
            return None
        try:
            limit = _STATE_HEADER.size + (MAX_LEVELS + 3) * HASH_SIZE
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def replace_state(self, data: bytes) -> None:
        """Atomically replace ``state``: write a temp file, fsync it, rename, fsync the folder.

        The folder fsync also makes durable the entries of level files created since.
        """
        dir_fd = self._dir()
        fd = os.open(
            _STATE_TMP,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            _FILE_MODE,
            dir_fd=dir_fd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(_STATE_TMP, STATE_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)

    def open_count(self) -> int:
        """Descriptors open now (the level files in use and the folder)."""
        return sum(1 for fd in self._fds if fd >= 0) + (self._dir_fd >= 0)

    def release(self) -> None:
        """Close every descriptor; the next use reopens what it needs.

        Only after a successful ``datasync``: a write-back error is reported to descriptors
        open when it happened, so one reopened later would not see it.
        """
        for level, fd in enumerate(self._fds):
            if fd >= 0:
                os.close(fd)
                self._fds[level] = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def close(self) -> None:
        self.release()
        self._fds = []
