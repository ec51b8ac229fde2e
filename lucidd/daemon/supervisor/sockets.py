"""The supervisor's two listening sockets: bound here, or passed by systemd (layer 2).

A socket file left by a crashed run is replaced; one that still accepts connections belongs to
a running daemon, and the start is refused. A socket bound here is mode 0660 (the daemon's
group reaches it) and is unlinked at exit by the supervisor (the paths are returned for that).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Final

from lucidd.errors import ConfigError

DATA_SOCKET: Final = "data.sock"
CONTROL_SOCKET: Final = "control.sock"
SOCKET_MODE: Final = 0o660


def bind_socket(path: Path) -> socket.socket:
    """Bind a listening Unix socket at ``path`` (mode 0660), replacing a stale socket file.

    A socket file that still accepts connections belongs to a running daemon: refuse to start.
    """
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left behind by a crashed run
        else:
            raise ConfigError(f"another lucidd is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def listening_sockets(
    runtime: Path, activated: dict[str, int], bound: list[Path]
) -> tuple[socket.socket, socket.socket]:
    """The data and the control socket: systemd's (``activated``, by name) or bound in
    ``runtime``. Each path bound here is appended to ``bound`` as soon as it exists, so that a
    start that fails on the second still removes the first."""
    socks: list[socket.socket] = []
    for name, filename in (("data", DATA_SOCKET), ("control", CONTROL_SOCKET)):
        if name in activated:
            sock = socket.socket(fileno=activated[name])
            sock.setblocking(False)
        else:
            sock = bind_socket(runtime / filename)
            bound.append(runtime / filename)
        socks.append(sock)
    return socks[0], socks[1]
