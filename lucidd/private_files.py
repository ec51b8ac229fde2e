"""Reading a small file of secrets that only its owner may read (layer 2).

The credentials files of the anchoring and replication backends (a JSON object with an RPC
key, an S3 secret) are read the same way: opened without following a symlink, checked on the
open descriptor (a regular file, no group or other permission bit), read up to a bound. Every
refusal is a :class:`~lucidd.errors.ConfigError` naming the file and the fix, never its bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from lucidd.errors import ConfigError

MAX_PRIVATE_FILE_BYTES: Final = 64 * 1024
FORBIDDEN_BITS: Final = 0o077  # no group or other access


def read_private_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, a private file described as ``what`` ("S3 credentials")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        why = "is a symlink" if err.errno == errno.ELOOP else f"cannot be opened ({err.strerror})"
        raise ConfigError(f"{what} {path} {why}", path=str(path)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{what} {path} is not a regular file", path=str(path))
        if mode & FORBIDDEN_BITS:
            raise ConfigError(
                f"{what} {path} have mode {stat.S_IMODE(mode):04o}: group and "
                f"others must have no access (chmod 600 {path})",
                path=str(path),
            )
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_PRIVATE_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PRIVATE_FILE_BYTES:
        raise ConfigError(f"{what} {path} are over {MAX_PRIVATE_FILE_BYTES} bytes")
    return data
