"""Open files are a cache: sessions over a host's lifetime never exhaust descriptors (issue 11).

Before, the aggregator kept about three descriptors per session it had seen and each worker
one per session it had touched: with ``RLIMIT_NOFILE`` 1024, some 330 sessions made every new
session fail with ``EMFILE``, and then the daemon could not restart at all. Here a daemon
whose limit is 1024 (soft and hard) sees many more sessions than that, is restarted, and
serves every one of them, while its processes' descriptor counts stay bounded.

``MANY_SESSIONS`` sets the count (CI: 1500; the issue's goal of 100 000 is the same test run
with ``MANY_SESSIONS=100000``, see docs/durability.md).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import psutil

from lucidd.client import ControlClient, DataClient
from tests.conftest import Daemon

SESSIONS = int(os.environ.get("MANY_SESSIONS", "1500"))
NOFILE = 1024
#: What each daemon process may hold: well under the limit, whatever the session count.
FD_BOUND = 512


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def descriptors(d: Daemon) -> dict[str, int]:
    """Open descriptors of the supervisor and of each child, by pid."""
    procs = [psutil.Process(d.pid), *d.children()]
    return {f"{p.name()}[{p.pid}]": p.num_fds() for p in procs if p.is_running()}


def session_id(n: int) -> bytes:
    return b"many" + n.to_bytes(12, "big")


def test_more_sessions_than_descriptors_are_created_restarted_and_all_readable(
    short_tmp: Path,
) -> None:
    # Loading a session's files at start takes about a millisecond (docs/bench.md): allow it.
    ready = max(60.0, SESSIONS / 500)
    d = Daemon(short_tmp, workers=2, preexec_fn=low_nofile, ready_timeout=ready).start()
    try:
        with DataClient(d.runtime_dir) as data:
            for n in range(SESSIONS):
                data.put(session_id(n), 0, b"chunk of session %d" % n)
                if n % 500 == 499:
                    counts = descriptors(d)
                    assert max(counts.values()) < FD_BOUND, counts
        counts = descriptors(d)
        assert max(counts.values()) < FD_BOUND, counts
        # The first session's files were closed long ago: it grows and finalizes all the same.
        with DataClient(d.runtime_dir) as data:
            data.put(session_id(0), 1, b"second chunk")
        with ControlClient(d.runtime_dir) as control:
            final = control.finalize(session_id(0))
        assert final.size == 2
        assert d.stop() == 0, d.log()

        d.start()
        with ControlClient(d.runtime_dir) as control:
            assert control.health().status == "ok"
            for n in range(SESSIONS):
                assert control.read_chunk(session_id(n), 0).data == b"chunk of session %d" % n
            assert len(control.sessions()) == SESSIONS
            assert control.read_chunk(session_id(0), 1).data == b"second chunk"
            assert control.root(session_id(0)).root == final.root
        counts = descriptors(d)
        assert max(counts.values()) < FD_BOUND, counts
        # And new sessions still open after all that.
        with DataClient(d.runtime_dir) as data:
            data.put(session_id(SESSIONS), 0, b"one more")
        assert "EMFILE" not in d.log() and "Too many open files" not in d.log()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
