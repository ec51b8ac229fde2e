"""What the forkserver loads before it forks any child (layer 3).

Importing the child modules here makes their code and data shared pages of every child.
``gc.freeze()`` then moves everything that exists so far out of the collector's sight: a
collection in a child would otherwise write to the GC headers of those shared objects and
copy the pages (CPython's copy-on-write problem, cf. Instagram's gc.freeze work).

Only the forkserver imports this module. It also makes the forkserver ignore SIGTERM: a
signal to the whole process group (``timeout``, ``kill -TERM -<pgid>``) must not end it,
since its children die with it (parent-death signal) before the supervisor drained them.
"""

from __future__ import annotations

import gc
import os
import signal

import lucidd.daemon.aggregator.main
import lucidd.daemon.supervisor.children  # holds the children's entry point, _run_child
import lucidd.daemon.worker
from lucidd.crypto import STREAM_PIECE, ChunkSealer
from lucidd.daemon.procutil import keep_keys_out_of_dumps

__all__ = ["lucidd"]


def _warm_up_crypto() -> None:
    """Seal a throwaway chunk both ways (whole and streamed, raw and zstd) so OpenSSL's and
    zstd's lazily built tables exist before the fork and are shared by every child, instead
    of being built again in each (less private memory per worker: docs/bench.md)."""
    sealer = ChunkSealer(1024)
    secret, session = os.urandom(32), os.urandom(16)
    for compression in ("off", "zstd"):
        sealer.seal(secret, session, 0, bytes(512), compression)
        sealer.seal_streamed(
            secret, session, 0, bytes(STREAM_PIECE + 1), compression, sink=lambda _: None
        )


signal.signal(signal.SIGTERM, signal.SIG_IGN)
# The forkserver holds no key, but it was exec'd (dumpable again) and its children start as
# its copies: undumpable from their first instruction, before their own call makes sure.
keep_keys_out_of_dumps()
_warm_up_crypto()
gc.freeze()
