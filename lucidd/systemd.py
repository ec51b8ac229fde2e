"""Talking to systemd without libsystemd (layer 2): sd_notify(3) and socket activation.

``notify`` sends one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and is a no-op when the variable is unset, so the same code runs under systemd, under
a test that owns a notify socket, and by hand.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

LISTEN_FDS_START: Final = 3


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1\\nSTATUS=...``); False if there is no notify socket."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def listen_fds(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Sockets passed by systemd socket activation, by ``FileDescriptorName=`` (sd_listen_fds).

    Only honoured when ``$LISTEN_PID`` is this process; unnamed fds are called ``unknown``.
    """
    env = env if env is not None else os.environ
    if env.get("LISTEN_PID", "") != str(os.getpid()):
        return {}
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    fds: dict[str, int] = {}
    for i in range(count):
        name = names[i] if i < len(names) and names[i] else "unknown"
        fds[name] = LISTEN_FDS_START + i
    return fds


class Watchdog:
    """The service watchdog (``WatchdogSec=``): ping at half the interval systemd expects."""

    def __init__(self, usec: int) -> None:
        self.usec = usec

    @property
    def interval_s(self) -> float:
        return self.usec / 2 / 1e6

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Watchdog | None:
        """The watchdog systemd asked for, or None (``$WATCHDOG_PID`` must be us if set)."""
        env = env if env is not None else os.environ
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            return None
        return cls(usec) if usec > 0 else None
