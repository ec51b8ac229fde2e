"""Keys stay out of core dumps and out of reach of ptrace (issue 10): every process of the
daemon is undumpable (``PR_SET_DUMPABLE`` 0) with a core size limit of 0.

``prctl(PR_GET_DUMPABLE)`` only answers for the calling process, so the tests read what the
kernel shows from outside: a non-dumpable process's files in ``/proc/<pid>/`` belong to root even
when the process runs as another user (``task_dump_owner``), and ``/proc/<pid>/limits`` states
the core size limit. A plain process of the same user is the control.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Daemon
from tests.users import HostUsers


def real_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid: line for {pid}")


def core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])  # soft and hard
    raise AssertionError(f"no core limit for {pid}")


def test_every_process_of_the_daemon_is_undumpable_with_no_core(
    user_daemon: Callable[..., Daemon], host_users: HostUsers
) -> None:
    daemon = user_daemon()
    pids = [daemon.pid, *(child.pid for child in daemon.children())]
    assert len(pids) >= 2 + 1 + 2  # supervisor, forkserver, aggregator, two workers
    uid = host_users.daemon.uid
    for pid in pids:
        assert real_uid(pid) == uid
        # (The /proc/<pid> folder itself keeps the user's uid; the files in it do not.)
        assert os.stat(f"/proc/{pid}/environ").st_uid == 0, f"pid {pid} is dumpable"
        assert os.stat(f"/proc/{pid}/status").st_uid == 0
        assert core_limit(pid) == "0 0", pid


def test_a_plain_process_of_the_same_user_is_dumpable(host_users: HostUsers) -> None:
    """The control: without lucidd's prctl the same user's /proc files are its own."""
    user = host_users.daemon
    proc = subprocess.Popen(
        user.command([sys.executable, "-c", "import sys; sys.stdin.read()"]),
        stdin=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        # setpriv execs python, so the pid is python's once its uid is the user's.
        while real_uid(proc.pid) != user.uid:
            time.sleep(0.01)
        assert os.stat(f"/proc/{proc.pid}/environ").st_uid == user.uid
        assert os.stat(f"/proc/{proc.pid}/status").st_uid == user.uid
    finally:
        proc.kill()
        proc.wait()
