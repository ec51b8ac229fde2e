"""The aggregator process: results in index order, the Merkle logs, the control socket."""
