"""The daemon's own folders: create them with an exact mode, refuse one that is not ours (layer 2).

On a shared host another user can create ``/tmp/lucidd-<uid>`` (or any folder the daemon will
use) before the daemon starts, and then replace the sockets or the state inside it. So a folder
is never trusted because it exists: :func:`ensure_own_folder` creates a missing one with the
exact mode asked for (whatever the umask) and checks every one, new or old, with ``lstat``:

- it is a directory, not a symlink (a link could point anywhere, and be swapped later);
- it is owned by the effective uid (root's folders are not ours either: a daemon that runs as
  a user must not adopt a folder root made for someone else);
- neither group nor others can write it (they could replace what is inside).

Anything else is a :class:`~lucidd.errors.ConfigError` (``lucidd serve`` exits 78) naming the
folder, its owner and its mode, and what to do. An existing folder's mode is never changed: a
folder the administrator made 0755 stays so.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Final

from lucidd.errors import BusyError, ConfigError

__all__ = [
    "PRIVATE_RUNTIME_DIR_MODE",
    "RUNTIME_DIR_MODE",
    "STATE_DIR_MODE",
    "check_own_folder",
    "ensure_own_folder",
    "lock_state_folder",
]

#: The state folder holds the sessions and the keyring: the daemon's alone.
STATE_DIR_MODE: Final = 0o700
#: The runtime folder holds the sockets: the daemon's group may enter it to reach them (the
#: sockets' own mode, 0660, says who may connect).
RUNTIME_DIR_MODE: Final = 0o750
#: ``/tmp/lucidd-<uid>`` serves one user's own daemon: no group has business there.
PRIVATE_RUNTIME_DIR_MODE: Final = 0o700
#: Write permission for group or others: whoever has it can replace a folder's entries.
GROUP_OTHER_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH


def ensure_own_folder(path: Path, mode: int, what: str) -> None:
    """Create ``path`` (mode exactly ``mode``) if it is missing, then check it is ours.

    Missing parents are created as ``mkdir -p`` would. ``what`` names the folder's role in
    messages ("runtime folder"). Raises :class:`ConfigError` when the folder cannot be created
    or fails :func:`check_own_folder`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, mode)
    except FileExistsError:
        pass  # checked below like any other
    except OSError as exc:
        raise ConfigError(
            f"cannot create the {what} {path}: {exc.strerror or exc}", path=str(path)
        ) from None
    else:
        # mkdir applies the umask; the mode must be exact. Checked first: never chmod a
        # folder that someone else slipped in between mkdir and here.
        check_own_folder(path, what)
        os.chmod(path, mode, follow_symlinks=False)
    check_own_folder(path, what)


def check_own_folder(path: Path, what: str) -> os.stat_result:
    """Raise :class:`ConfigError` unless ``path`` is a real directory of ours that neither
    group nor others can write; return its ``lstat``."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot inspect the {what} {path}: {exc.strerror or exc}", path=str(path)
        ) from None
    mode = stat.S_IMODE(st.st_mode)
    facts = f"(owner uid {st.st_uid}, mode {mode:04o})"
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink; give the real folder"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder"
    elif st.st_uid != os.geteuid():
        problem = (
            f"is not owned by lucidd's uid {os.geteuid()}; someone else may have created "
            "it: remove it, or choose another folder"
        )
    elif mode & GROUP_OTHER_WRITE:
        problem = f"is writable by group or others; fix with: chmod go-w {path}"
    else:
        return st
    raise ConfigError(
        f"refusing the {what} {path} {facts}: it {problem}",
        path=str(path),
        uid=st.st_uid,
        mode=mode,
    )


#: The lock file of a state folder (DESIGN §10: one daemon per state folder).
STATE_LOCK_FILE: Final = "lucidd.lock"


def lock_state_folder(state_dir: Path) -> int:
    """Take the state folder for this process; returns the descriptor that holds the lock.

    An exclusive ``flock`` on ``<state>/lucidd.lock``, held for the process's lifetime (the
    kernel drops it when the process dies, ``kill -9`` included, so no stale lock survives a
    crash). The file holds the holder's pid, for the message a second daemon prints: it exits
    75 (:class:`~lucidd.errors.BusyError`) naming the folder and that pid, before it touches
    anything else. Two daemons on one folder would append to the same sessions' files.
    """
    path = state_dir / STATE_LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BusyError(
            f"state folder {state_dir} is in use by another lucidd (pid {holder}); "
            "one daemon per state folder",
            path=str(state_dir),
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
