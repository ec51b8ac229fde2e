"""Anchoring: publishing signed checkpoints of the host's anchor log where anyone can date them.

A backend takes a checkpoint (origin, tree size, root and the hash of the signed note), puts
it on a public ledger, and returns an *attestation*: where it landed, enough to look it up
again. Checking an attestation fetches that place again from the ledger itself and compares
every field; nothing in the attestation is trusted. :mod:`lucidd.anchoring.ethereum` is the
first backend (the LucidAnchor contract, through web3.py, an optional extra).
"""
