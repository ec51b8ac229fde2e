"""Session ids, where the daemon's sockets are, and whether to trust them (layer 4).

Nothing here sends a byte: the checks run before a front end connects (the socket's folder)
and right after, before its first write (the peer's uid), so that a socket another user planted
never sees what the client would send (issue 10, ``docs/security.md``).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import struct
import uuid
from pathlib import Path
from typing import Final, TypeAlias

from lucidd.errors import BadRequestError, UnavailableError, UntrustedSocketError
from lucidd.protocol import SESSION_ID_SIZE

SessionRef: TypeAlias = bytes | str
"""A session id: its 16 bytes, or the canonical UUID string ``lucidctl`` prints."""

DATA_SOCKET_NAME: Final = "data.sock"
CONTROL_SOCKET_NAME: Final = "control.sock"
#: Overrides the runtime folder for clients and the daemon alike.
RUNTIME_DIR_ENV: Final = "LUCIDD_RUNTIME_DIR"
#: Whoever may write a folder could have put a socket of theirs in it.
GROUP_OTHER_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH
ROOT_UID: Final = 0
#: ``struct ucred`` as ``SO_PEERCRED`` returns it: pid, uid, gid.
UCRED: Final = struct.Struct("3i")
#: What every "cannot reach the daemon" message ends with.
START_HINT: Final = "is lucidd running? start it with `lucidd serve`"

_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)


# --- session ids --------------------------------------------------------------------------


class SessionIdError(BadRequestError, ValueError):
    """Text that is not a canonical UUID session id (a ``BadRequestError``, exit status 64)."""


def parse_session_id(text: str) -> bytes:
    """The 16 bytes of a session id written as a canonical UUID (``8-4-4-4-12`` hex digits).

    Either case is accepted; surrounding whitespace is ignored. Anything else (braces, a
    ``urn:uuid:`` prefix, missing hyphens) raises :class:`SessionIdError`.
    """
    stripped = text.strip()
    if not _CANONICAL_UUID.fullmatch(stripped):
        shown = stripped if len(stripped) <= 64 else stripped[:61] + "..."
        raise SessionIdError(f"not a session id (a canonical UUID): {shown!r}")
    return uuid.UUID(stripped).bytes


def format_session_id(session: bytes) -> str:
    """The canonical lowercase UUID string of a 16-byte session id (ValueError otherwise)."""
    if len(session) != SESSION_ID_SIZE:
        raise ValueError(f"a session id is {SESSION_ID_SIZE} bytes, got {len(session)}")
    return str(uuid.UUID(bytes=bytes(session)))


def new_session_id() -> bytes:
    """A fresh random session id (UUIDv4); sending to it on the data socket opens it."""
    return uuid.uuid4().bytes


def session_bytes(session: SessionRef) -> bytes:
    """A session id as its 16 bytes, given as those bytes or as the UUID text lucidctl prints.

    ValueError (a :class:`SessionIdError` for bad text) otherwise: a caller bug, raised before
    anything is registered or sent.
    """
    if isinstance(session, str):
        return parse_session_id(session)
    if not isinstance(session, bytes) or len(session) != SESSION_ID_SIZE:
        raise ValueError(
            f"session must be {SESSION_ID_SIZE} bytes or a UUID string (see parse_session_id)"
        )
    return session


# --- where the sockets are ----------------------------------------------------------------


def _absolute_env(name: str) -> str | None:
    value = os.environ.get(name, "")
    return value if value.startswith("/") else None


def default_runtime_dir() -> Path:
    """The daemon's runtime folder when none is given (the same rule as the daemon's).

    ``$LUCIDD_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/lucidd``, else
    ``/tmp/lucidd-<uid>``. Empty or relative values are ignored, as the XDG spec says.
    """
    explicit = _absolute_env(RUNTIME_DIR_ENV)
    if explicit is not None:
        return Path(explicit)
    xdg = _absolute_env("XDG_RUNTIME_DIR")
    if xdg is not None:
        return Path(xdg) / "lucidd"
    return Path(f"/tmp/lucidd-{os.getuid()}")


def resolve_socket_path(
    name: str, runtime_dir: str | os.PathLike[str] | None, path: object
) -> Path:
    """The socket a front end connects to: ``path`` wins over ``runtime_dir / name``, which
    wins over the default runtime folder (TypeError for a ``path`` that is not a path)."""
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError("path must be a str or a path")
        return Path(path)
    return Path(runtime_dir) / name if runtime_dir is not None else default_runtime_dir() / name


def named_explicitly(runtime_dir: object, path: object) -> bool:
    """Did the caller say where the daemon is (an argument, or ``$LUCIDD_RUNTIME_DIR``)?"""
    return path is not None or runtime_dir is not None or _absolute_env(RUNTIME_DIR_ENV) is not None


# --- whether to trust them ----------------------------------------------------------------


def trusted_peer_uids(socket_path: Path, explicit: bool) -> frozenset[int]:
    """Check the socket's folder before connecting; return the uids the daemon may run as.

    The daemon should run as this client's uid or as root; and, when the folder was named
    explicitly (``explicit``: a ``runtime_dir``/``path`` argument or ``$LUCIDD_RUNTIME_DIR``),
    as that folder's owner (a system daemon's ``/run/lucidd``). The folder must be owned by
    one of them and be writable by no one else: otherwise another user may have created it
    (``/tmp/lucidd-<uid>`` before the daemon did) and put a socket of theirs in it, to collect
    what the client sends. Raises :class:`UntrustedSocketError` (exit 77) then, and
    :class:`UnavailableError` when the folder cannot be inspected. Sends nothing.
    """
    folder = socket_path.parent
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise unavailable_error(socket_path, exc) from None
    trusted = {os.getuid(), ROOT_UID}
    if explicit:
        trusted.add(st.st_uid)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in trusted or mode & GROUP_OTHER_WRITE:
        why = "is writable by group or others" if st.st_uid in trusted else "is not ours"
        raise UntrustedSocketError(
            f"refusing {socket_path}: its folder {folder} (owner uid {st.st_uid}, mode "
            f"{mode:04o}) {why}; expected a folder of uid {sorted(trusted)} that only its "
            "owner can write: someone else may have created it (remove it, or pass the "
            "daemon's --runtime-dir)",
            path=str(folder),
            uid=st.st_uid,
            mode=mode,
        )
    return frozenset(trusted)


def check_peer(sock: socket.socket, socket_path: Path, trusted: frozenset[int]) -> None:
    """After connecting and before sending: the process behind the socket (``SO_PEERCRED``,
    the uid that listened) must run as one of ``trusted``; else UntrustedSocketError."""
    _pid, uid, _gid = UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    )
    if uid not in trusted:
        raise UntrustedSocketError(
            f"refusing {socket_path}: the process serving it runs as uid {uid}, not as "
            f"uid {sorted(trusted)} the daemon should run as; nothing was sent",
            path=str(socket_path),
            uid=uid,
        )


def unavailable_error(path: Path, exc: OSError) -> UnavailableError:
    """The error of a socket that cannot be reached, with the hint to start the daemon."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return UnavailableError(
        f"cannot connect to lucidd at {path}: {reason}; {START_HINT}", path=str(path)
    )
