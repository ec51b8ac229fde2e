"""lucidd benchmarks, run as scripts (``python bench/bench.py``); helpers importable by tests."""
