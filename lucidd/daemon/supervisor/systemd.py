"""Talking to systemd without libsystemd (layer 2): sd_notify(3), socket activation, watchdog.

``notify`` sends one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and is a no-op when the variable is unset, so the same code runs under systemd, under
a test that owns a notify socket, and by hand.

``listen_fds`` is sd_listen_fds_with_names(3): the sockets systemd (or ``systemd-socket-activate``)
passed, by their ``FileDescriptorName=``. lucidd's units name them ``data`` and ``control``
(``systemd/lucidd.socket``, ``systemd/lucidd-control.socket``); the supervisor binds its own
socket for any name that is missing.

The messages the supervisor sends, and when (the contract ``systemd/lucidd.service`` relies on):

- ``STATUS=recovering`` + ``EXTEND_TIMEOUT_USEC=`` every few seconds while the aggregator
  rebuilds its state at start, so a long recovery does not trip ``TimeoutStartSec=``;
- ``READY=1`` (with ``MAINPID=`` and a ``STATUS=``) once the data socket is served and the
  aggregator, which serves the control socket, has reported its recovered state;
- ``STATUS=`` with live figures (in flight, acked, sessions) every second, and ``WATCHDOG=1``
  with it, at least every half ``$WATCHDOG_USEC``, only while every child process is alive;
- ``STOPPING=1`` as soon as SIGTERM/SIGINT starts the drain.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

LISTEN_FDS_START: Final = 3
"""The first passed descriptor (``SD_LISTEN_FDS_START``)."""
UNKNOWN_FD_NAME: Final = "unknown"
"""The name systemd gives a passed descriptor without ``FileDescriptorName=``."""
USEC_PER_S: Final = 1_000_000


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1\\nSTATUS=...``); False if there is no notify socket.

    Never raises for a missing or unreachable socket: systemd talk must not stop the daemon.
    """
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    # Non-blocking: a notify socket whose reader stopped reading (a harness after READY=1, a
    # stuck manager) fills up after a few hundred datagrams, and a blocking send would then
    # freeze the supervisor's event loop, data path included. Such a message is dropped.
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with socket.socket(socket.AF_UNIX, kind) as sock:
        try:
            sock.connect(address)
            sock.send(message.encode())  # one datagram: all or nothing
        except OSError:  # BlockingIOError too: the reader is not keeping up
            return False
    return True


def listen_fds(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Sockets passed by systemd socket activation, by ``FileDescriptorName=`` (sd_listen_fds).

    Only honoured when ``$LISTEN_PID`` is this process (the variables are inherited by children,
    which must not take the sockets). Unnamed fds are called ``unknown``; when two fds share a
    name the first wins. Each returned fd is made close-on-exec, as sd_listen_fds(3) does, so
    no process started later inherits a listening socket.
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
    for i in range(max(count, 0)):
        fd = LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else UNKNOWN_FD_NAME
        try:
            os.set_inheritable(fd, False)
        except OSError:  # not open after all: $LISTEN_FDS lied
            continue
        fds.setdefault(name, fd)
    return fds


class Watchdog:
    """The service watchdog (``WatchdogSec=``): ping at half the interval systemd expects."""

    def __init__(self, usec: int) -> None:
        if usec <= 0:
            raise ValueError(f"watchdog interval must be positive, not {usec} usec")
        self.usec = usec

    @property
    def interval_s(self) -> float:
        """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled
        advises, so one late tick never trips the watchdog."""
        return self.usec / 2 / USEC_PER_S

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
