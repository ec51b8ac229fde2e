"""Small process-level facilities shared by the children (layer 2)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from typing import Final

_PR_SET_PDEATHSIG: Final = 1
#: prctl option: whether the process may dump core and be ptrace-attached by its own uid.
_PR_SET_DUMPABLE: Final = 4
_NOT_DUMPABLE: Final = 0


def _libc() -> ctypes.CDLL:
    # CDLL(None) is the running program, which links libc; ctypes.util.find_library would
    # spawn ldconfig/gcc subprocesses in every child.
    return ctypes.CDLL(None, use_errno=True)


def keep_keys_out_of_dumps() -> None:
    """Make this process undumpable and its core size 0: it holds keys (DESIGN §4).

    ``PR_SET_DUMPABLE`` 0 also makes ``/proc/<pid>/`` root's and refuses ``ptrace`` by other
    processes of the same uid, so another process of the daemon's user cannot read its memory;
    ``RLIMIT_CORE`` 0 keeps a crash from writing the keys to disk (and is inherited). Both are
    reset by nothing we do later (``execve`` of a non-setuid program would reset the first:
    every process calls this itself). Raises OSError if the kernel refuses and the limit is
    not 0 already (the unit's ``SystemCallFilter=~@resources`` forbids setrlimit: there
    ``LimitCORE=0`` sets it).
    """
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except OSError:
        if resource.getrlimit(resource.RLIMIT_CORE)[0] != 0:
            raise
    if _libc().prctl(_PR_SET_DUMPABLE, _NOT_DUMPABLE, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux prctl).

    Children are forked by the forkserver, which exits as soon as the supervisor is gone; so a
    supervisor killed with ``kill -9`` leaves no orphans. Pipe EOF is the second line of defence.
    """
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
