"""lucidd against what a user would otherwise use: per-chunk latency, throughput, scaling, memory.

Starts real daemons (``lucidd serve`` on short temporary folders, readiness by ``NOTIFY_SOCKET``;
compression off) — or measures a running one with ``--runtime-dir`` — and, in the same run, on
the same data (one random blob, the same chunks for every design), with the same durability:

1. per-chunk latency, client send to durable ack (HDR-style histogram): p50/p90/p99/p99.9/max
   per chunk size, with 1 chunk in flight, a pipeline of ``--window`` (32), and ``--clients``
   (16) concurrent clients; with durability ``fsync`` (the default) and ``os`` (no fsync);
2. throughput (MiB/s, chunks/s) per chunk size, and scaling with the number of workers;
3. the stage breakdown from the daemon's own ``stage_*_seconds_total`` metrics;
4. the baselines ``inprocess``, ``threads10``, ``procpool10`` and, when installed, ``restic``
   (see ``bench/_baselines.py``), and the compute and disk limits;
5. peak RSS and PSS of all daemon processes (psutil);
6. end to end: ``lucidctl put`` of one ``--end-to-end`` file (256 MiB) against ``restic
   backup`` of the same file (``bench/_end_to_end.py``);

and prints Markdown tables and the issue's goals, met or not. ``docs/bench.md`` documents the
JSON (``--json FILE``) and how to read the plot (``--plot FILE.png``, needs matplotlib: the
``bench`` extra)::

    python bench/bench.py --quick                        # under a minute on 2 cores
    python bench/bench.py --json out.json --plot out.png # the full run: several minutes
    python bench/bench.py --runtime-dir /run/lucidd      # a running daemon (no scaling)

This file is the entry point; the work is in ``_settings`` (what to measure, the command line),
``_measure`` (the phases), ``_end_to_end``, ``_results`` (the JSON), ``_goals``, ``_report``
(Markdown) and ``_plot``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._measure import Target, run
from bench._plot import plot
from bench._report import markdown
from bench._results import log
from bench._settings import parser, settings_from


def main(argv: list[str] | None = None) -> int:
    args = parser((__doc__ or "").split("\n\n")[0]).parse_args(argv)
    settings = settings_from(args)
    if args.runtime_dir is not None:  # that daemon's workers and durability, no other daemon
        target = Target.of(args.runtime_dir)
        settings = replace(
            settings, workers=target.workers, durabilities=(target.durability,), scaling_workers=()
        )
    started = time.monotonic()
    results = run(settings, args.runtime_dir)
    results.machine["bench_seconds"] = time.monotonic() - started
    results.machine["load_average_end"] = list(os.getloadavg())
    print(markdown(results, settings))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results.as_json(), indent=2) + "\n")
    if args.plot is not None:
        plot(results, settings, args.plot)
    log(f"done in {results.machine['bench_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
