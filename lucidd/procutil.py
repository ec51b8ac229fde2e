"""Small process-level facilities shared by the children (layer 2)."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux prctl).

    Children are forked by the forkserver, which exits as soon as the supervisor is gone; so a
    supervisor killed with ``kill -9`` leaves no orphans. Pipe EOF is the second line of defence.
    """
    # CDLL(None) is the running program, which links libc; ctypes.util.find_library would
    # spawn ldconfig/gcc subprocesses in every child.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent already died before prctl took effect
        os._exit(1)


def leave_shutdown_to_the_supervisor() -> None:
    """Ignore SIGINT and SIGTERM in a child.

    Ctrl-C in a terminal, ``timeout``, or ``kill -TERM -<pgid>`` signal the whole process
    group; a child that died of it would be "replaced" mid-shutdown. The supervisor alone
    decides: workers end on pipe EOF, the aggregator on ``Shutdown``, and every child dies
    with the supervisor (parent-death signal). SIGKILL still works, as systemd's
    ``KillMode=mixed`` final step expects.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
