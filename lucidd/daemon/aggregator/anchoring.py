"""Anchoring backends and their retry loop (layer 3): never on the chunk path.

Each configured backend is given the newest signed anchor checkpoint and returns an
*attestation* (bytes), stored create-only beside that checkpoint (``<size>.<backend>``). Only
the newest checkpoint is anchored: it covers every earlier one by consistency, so a backend
that was down for an hour sends one transaction when it is back, not sixty. A failure is
logged and retried with a delay that doubles from RETRY_BASE_S up to RETRY_MAX_S. The
backends block (a subprocess, an RPC round trip), so they run in a worker thread while the
loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import subprocess
import time
from pathlib import Path
from typing import Final, Protocol

import msgspec

from lucidd.daemon.aggregator.notary import Notary
from lucidd.daemon.config import Config
from lucidd.errors import ConfigError, LucidError, UnavailableError
from lucidd.merkle import Checkpoint
from lucidd.note import parse_note
from lucidd.receipt import note_hash

log = logging.getLogger("lucidd.daemon.aggregator.anchoring")

RETRY_BASE_S: Final = 1.0
RETRY_MAX_S: Final = 300.0
COMMAND_TIMEOUT_S: Final = 60.0
#: Bound on what a command may print as its attestation.
MAX_ATTESTATION_SIZE: Final = 64 * 1024
BACKEND_NAMES: Final = ("ethereum", "command")

#: Where the ethereum backend's credentials are looked for when ``ethereum_credentials`` is empty.
ETHEREUM_CREDENTIAL_NAME: Final = "lucidd.ethereum"


class AnchorBackend(Protocol):
    name: str

    def attest(self, note: bytes, checkpoint: Checkpoint) -> bytes:
        """Anchor ``note`` (blocking); the attestation, or raise LucidError/OSError."""


class CommandBackend:
    """Runs a program with the signed anchor checkpoint on stdin; its stdout is the
    attestation. A non-zero exit, a timeout or too much output is a failure (retried)."""

    name = "command"

    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ConfigError("anchor_command is empty but the command backend is configured")

    def attest(self, note: bytes, checkpoint: Checkpoint) -> bytes:
        try:
            done = subprocess.run(
                self.argv,
                input=note,
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise UnavailableError(
                f"anchor command timed out after {COMMAND_TIMEOUT_S} s"
            ) from None
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise UnavailableError(f"anchor command exited {done.returncode}: {why[0][:200]}")
        if len(done.stdout) > MAX_ATTESTATION_SIZE:
            raise UnavailableError(f"anchor command printed over {MAX_ATTESTATION_SIZE} bytes")
        return done.stdout


class EthereumBackend:
    """One transaction to the LucidAnchor contract per anchor checkpoint (lucidd[ethereum])."""

    name = "ethereum"

    def __init__(self, credentials: Path, contract: str) -> None:
        from lucidd.anchoring import ethereum  # noqa: PLC0415 (an optional extra)
        from lucidd.anchoring.ethereum_credentials import load_credentials  # noqa: PLC0415

        if not contract:
            raise ConfigError("ethereum_contract is not set (deploy one: lucidd anchor deploy)")
        self._ethereum = ethereum
        self._credentials = load_credentials(credentials)
        self._contract = contract

    def attest(self, note: bytes, checkpoint: Checkpoint) -> bytes:
        attestation = self._ethereum.anchor(
            self._credentials,
            self._contract,
            checkpoint.origin,
            checkpoint.size,
            checkpoint.root,
            note_hash(note),
        )
        return msgspec.json.encode(attestation)


class Anchorer:
    """Keeps the newest anchor checkpoint attested by every backend."""

    def __init__(self, notary: Notary, backends: list[AnchorBackend]) -> None:
        self.notary = notary
        self.backends = backends
        self._wake = asyncio.Event()
        self._delay = dict.fromkeys((b.name for b in backends), 0.0)
        self._next_try = dict.fromkeys((b.name for b in backends), 0.0)
        self.anchored = 0
        self.failures = 0

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            retries = [self._next_try[b.name] for b in self.backends if self._delay[b.name] > 0]
            timeout = max(0.0, min(retries) - time.monotonic()) if retries else None
            with contextlib.suppress(TimeoutError):  # a retry is due
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self.attest_newest()

    async def attest_newest(self) -> None:
        sizes = self.notary.anchor_sizes()
        if not sizes or not self.backends:
            return
        size = sizes[-1]
        done = self.notary.attestations(size)
        note = self.notary.anchor_log.checkpoints.read(size)
        if note is None:
            return
        checkpoint = Checkpoint.parse(parse_note(note).text)
        for backend in self.backends:
            if backend.name in done or time.monotonic() < self._next_try[backend.name]:
                continue
            try:
                data = await asyncio.to_thread(backend.attest, note, checkpoint)
                self.notary.store_attestation(size, backend.name, data)
            except (LucidError, OSError) as exc:
                self._failed(backend.name, size, exc)
                continue
            self._delay[backend.name] = 0.0
            self._next_try[backend.name] = 0.0
            self.anchored += 1
            log.info("event=anchored backend=%s size=%d", backend.name, size)

    def _failed(self, name: str, size: int, exc: Exception) -> None:
        self.failures += 1
        delay = min(RETRY_MAX_S, max(RETRY_BASE_S, self._delay[name] * 2))
        self._delay[name] = delay
        self._next_try[name] = time.monotonic() + delay
        log.warning(
            "event=anchor_failed backend=%s size=%d retry_in=%.0f error=%s", name, size, delay, exc
        )


def build_backends(
    names: str, command: str, ethereum_credentials: Path, ethereum_contract: str
) -> list[AnchorBackend]:
    """The backends named in the ``anchors`` setting (comma-separated), configured."""
    backends: list[AnchorBackend] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name == "command":
            backends.append(CommandBackend(command))
        elif name == "ethereum":
            backends.append(EthereumBackend(ethereum_credentials, ethereum_contract))
        else:
            raise ConfigError(f"anchors: unknown backend {name!r} (known: {BACKEND_NAMES})")
    return backends


def configured_backends(
    config: Config, state_dir: Path, credentials: Path | None
) -> list[AnchorBackend]:
    """The configured anchoring backends (an unusable one stops the start: exit 78).

    The ethereum backend's credentials: ``ethereum_credentials``, else
    ``<credentials>/lucidd.ethereum`` when systemd passed it, else ``<state>/keys/ethereum.json``.
    """
    if config.ethereum_credentials:
        ethereum = Path(config.ethereum_credentials)
    elif credentials is not None and (credentials / ETHEREUM_CREDENTIAL_NAME).exists():
        ethereum = credentials / ETHEREUM_CREDENTIAL_NAME
    else:
        ethereum = state_dir / "keys" / "ethereum.json"
    return build_backends(config.anchors, config.anchor_command, ethereum, config.ethereum_contract)
