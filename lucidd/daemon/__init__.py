"""The daemon: everything that runs in lucidd serve (supervisor, workers, aggregator) and
what they share. Nothing outside this package imports it except ``lucidd.__main__``, the
harness in ``lucidd.testing`` and the tests; ``lucidd.client`` and ``lucidd.cli`` never do."""
