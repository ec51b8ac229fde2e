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
import signal

import lucidd.aggregator
import lucidd.children  # holds the children's entry point, _run_child
import lucidd.worker

__all__ = ["lucidd"]

signal.signal(signal.SIGTERM, signal.SIG_IGN)
gc.freeze()
