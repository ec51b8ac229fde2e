"""Anchoring checkpoints on Ethereum with the LucidAnchor contract (layer 2).

The contract (``contracts/LucidAnchor.sol``, compiled into the ``LucidAnchor.json`` shipped
beside this module) records the block that first anchored each note hash and emits
``Anchored(submitter, noteHash, origin, size, root)`` for every anchoring. :func:`deploy`
creates one; :func:`anchor` sends one transaction and returns the
:class:`EthereumAttestation` read out of its receipt; :func:`check_attestation` asks a node
for that block and receipt again and compares every field.

web3.py is an optional extra (``pip install 'lucidd[ethereum]'``), imported on first use;
without it these functions raise :class:`~lucidd.errors.ConfigError`. Transactions are signed
here with the credentials' key (anchoring.ethereum_credentials reads them) and sent raw, so
the node never sees the key. Failures to reach
or use the node raise :class:`~lucidd.errors.UnavailableError` (retryable: callers back off and
try again); no message names the key or the RPC URL (hosted nodes put API tokens in it).

Hashes of lucidd (``root``, ``note_hash``) are lowercase hex, as in lucidd's JSON; Ethereum's
own (``tx_hash``, ``block_hash``) keep their ``0x``, as explorers and wallets print them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import msgspec

from lucidd.anchoring.ethereum_credentials import PRIVATE_KEY, EthereumCredentials
from lucidd.errors import ConfigError, IntegrityError, UnavailableError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from hexbytes import HexBytes
    from web3 import Web3
    from web3.contract import Contract
    from web3.types import EventData, LogReceipt, TxReceipt

__all__ = [
    "ARTIFACT_NAME",
    "INSTALL_HINT",
    "EthereumAttestation",
    "anchor",
    "anchored_at",
    "check_attestation",
    "deploy",
]

INSTALL_HINT: Final = "pip install 'lucidd[ethereum]'"
ARTIFACT_NAME: Final = "LucidAnchor.json"
EVENT_NAME: Final = "Anchored"
HASH_SIZE: Final = 32  # bytes of a root, a note hash, a block or transaction hash
MAX_TREE_SIZE: Final = 2**64 - 1  # the contract's uint64
REQUEST_TIMEOUT_S: Final = 30.0  # one JSON-RPC request
RECEIPT_POLL_FIRST_S: Final = 0.05  # first pause between receipt look-ups, then doubling
RECEIPT_POLL_MAX_S: Final = 2.0

_ETH_HASH: Final = re.compile(r"0x[0-9a-f]{64}")
_LUCID_HASH: Final = re.compile(r"[0-9a-f]{64}")


class EthereumAttestation(msgspec.Struct, frozen=True, tag="ethereum"):
    """Where a checkpoint was anchored: the ``Anchored`` log at ``log_index`` of block
    ``block_number`` (hash ``block_hash``) of chain ``chain_id``, emitted by ``contract``
    (checksummed) in transaction ``tx_hash``; and the checkpoint it names."""

    chain_id: int
    contract: str
    tx_hash: str
    block_number: int
    block_hash: str
    log_index: int
    origin: str
    size: int
    root: str
    note_hash: str


class _Artifact(msgspec.Struct, frozen=True):
    """The part of ``LucidAnchor.json`` (written by contracts/build.py) used here."""

    abi: list[dict[str, Any]]
    bytecode: str
    solc_version: str


@functools.cache
def _artifact() -> _Artifact:
    data = importlib.resources.files(__package__).joinpath(ARTIFACT_NAME).read_bytes()
    return msgspec.json.decode(data, type=_Artifact)


# --- web3 ---------------------------------------------------------------------------------


def _import_web3() -> ModuleType:
    """``import web3``, keeping this process's recursion limit.

    py_ecc (a web3 dependency) raises the limit to 100 000 when imported. The daemon's
    decoders rely on the default limit to refuse deeply nested input from clients with a
    typed error; at 100 000 such input would overflow the C stack and kill the process.
    """
    limit = sys.getrecursionlimit()
    try:
        import web3  # noqa: PLC0415 - optional extra, imported on first use
    except ImportError:
        raise ConfigError(f"Ethereum anchoring needs web3.py: {INSTALL_HINT}") from None
    finally:
        sys.setrecursionlimit(limit)
    return web3


def _connect(rpc_url: str) -> Web3:
    """A Web3 on ``rpc_url`` that does not retry by itself (callers back off instead)."""
    web3 = _import_web3()
    provider = web3.HTTPProvider(
        rpc_url,
        request_kwargs={"timeout": REQUEST_TIMEOUT_S},
        exception_retry_configuration=None,
    )
    w3: Web3 = web3.Web3(provider)
    return w3


def _account(creds: EthereumCredentials) -> LocalAccount:
    _import_web3()  # first, for the recursion limit
    from eth_account import Account  # noqa: PLC0415 - comes with web3

    try:
        if not PRIVATE_KEY.fullmatch(creds.private_key):
            raise ValueError
        account: LocalAccount = Account.from_key(bytes.fromhex(creds.private_key[2:]))
    except ValueError:
        raise ConfigError("private_key is not a valid secp256k1 private key") from None
    return account


@contextlib.contextmanager
def _rpc(action: str) -> Iterator[None]:
    """Turn a failure to reach or use the node into :class:`UnavailableError`.

    The original exception is dropped (``from None``): requests' messages carry the URL.
    """
    from web3 import exceptions  # noqa: PLC0415 - optional extra

    try:
        yield
    except (
        OSError,  # requests' errors are OSErrors: refused, reset, DNS, timeouts
        exceptions.ProviderConnectionError,
        exceptions.RequestTimedOut,
        exceptions.TooManyRequests,
        exceptions.BadResponseFormat,
    ) as err:
        raise UnavailableError(
            f"Ethereum node unreachable while {action} ({type(err).__name__})"
        ) from None
    except exceptions.Web3RPCError as err:
        raise UnavailableError(f"Ethereum node refused {action}: {_rpc_message(err)}") from None


def _rpc_message(err: Exception) -> str:
    """The node's own error message (it never saw the key: transactions are signed here)."""
    response = getattr(err, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        return str(response["error"].get("message", "?"))[:200]
    return type(err).__name__


def _lucid_anchor(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=_artifact().abi)


def _checksummed(w3: Web3, address: str) -> str:
    if not w3.is_address(address):
        raise ConfigError("contract is not an Ethereum address", contract=address)
    return str(w3.to_checksum_address(address))


def _transact(w3: Web3, account: LocalAccount, call: Any, action: str, timeout: float) -> TxReceipt:
    """Sign and send ``call`` (a contract function or constructor), then wait for its receipt.

    Raises :class:`UnavailableError` (with ``tx_hash`` once sent) if the node fails or the
    receipt takes longer than ``timeout``: the transaction may still be mined, and a retry
    sends another one (for :func:`anchor`, harmless: the first anchoring stays recorded).
    """
    with _rpc(action):
        params = call.build_transaction(
            {
                "from": account.address,
                "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": w3.eth.chain_id,
            }
        )
        signed = account.sign_transaction(params)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    tx = _hex0x(tx_hash)
    with _rpc(f"waiting for transaction {tx}"):
        receipt = _wait_for_receipt(w3, tx_hash, timeout)
    if receipt is None:
        raise UnavailableError(
            f"no receipt for transaction {tx} after {timeout:g} s (it may still be mined)",
            tx_hash=tx,
        )
    if receipt["status"] != 1:
        raise ConfigError(f"transaction {tx} ({action}) reverted", tx_hash=tx)
    return receipt


def _wait_for_receipt(w3: Web3, tx_hash: HexBytes, timeout: float) -> TxReceipt | None:
    """The receipt once mined, else None after ``timeout``. Polls with a doubling pause: a
    dev chain answers in milliseconds, a real one in blocks of seconds."""
    from web3.exceptions import (  # noqa: PLC0415 - optional extra
        TransactionIndexingInProgress,
        TransactionNotFound,
    )

    deadline = time.monotonic() + timeout
    pause = RECEIPT_POLL_FIRST_S
    while True:
        with contextlib.suppress(TransactionNotFound, TransactionIndexingInProgress):
            return w3.eth.get_transaction_receipt(tx_hash)
        if time.monotonic() + pause > deadline:
            return None
        time.sleep(pause)
        pause = min(2 * pause, RECEIPT_POLL_MAX_S)


def _hex0x(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValueError(f"{name} must be {HASH_SIZE} bytes")


def _check_checkpoint(origin: str, size: int, root: bytes, note_hash: bytes) -> None:
    if not isinstance(origin, str):
        raise TypeError("origin must be a str")
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError(f"size must be in 0..{MAX_TREE_SIZE}")
    _check_hash("root", root)
    _check_hash("note_hash", note_hash)


# --- the operations -----------------------------------------------------------------------


def deploy(creds: EthereumCredentials, timeout: float = 60) -> str:
    """Deploy a LucidAnchor contract; its checksummed address once the receipt is in."""
    w3 = _connect(creds.rpc_url)
    account = _account(creds)
    factory = w3.eth.contract(abi=_artifact().abi, bytecode=_artifact().bytecode)
    receipt = _transact(w3, account, factory.constructor(), "deploying LucidAnchor", timeout)
    address = receipt["contractAddress"]
    if address is None:  # a successful creation always has one
        raise UnavailableError("the node's deploy receipt has no contract address")
    return str(w3.to_checksum_address(address))


def anchor(  # noqa: PLR0917 - the checkpoint's fields in the contract's order
    creds: EthereumCredentials,
    contract: str,
    origin: str,
    size: int,
    root: bytes,
    note_hash: bytes,
    timeout: float = 60,
) -> EthereumAttestation:
    """Anchor one checkpoint with one transaction; its attestation once the receipt is in.

    Anchoring a note hash again sends a new transaction and returns its own attestation; the
    contract keeps the first block (:func:`anchored_at`). Raises :class:`ConfigError` when
    ``contract`` holds no code or is not a LucidAnchor (no ``Anchored`` log in the receipt).
    """
    _check_checkpoint(origin, size, root, note_hash)
    w3 = _connect(creds.rpc_url)
    account = _account(creds)
    address = _checksummed(w3, contract)
    with _rpc("reading the contract's code"):
        chain_id = w3.eth.chain_id
        code = w3.eth.get_code(w3.to_checksum_address(address))
    if not code:
        raise ConfigError(f"no contract at {address} on chain {chain_id}", contract=address)
    lucid = _lucid_anchor(w3, address)
    call = lucid.functions.anchor(origin, size, root, note_hash)
    receipt = _transact(w3, account, call, "anchoring a checkpoint", timeout)
    expected = {"origin": origin, "size": size, "root": root, "noteHash": note_hash}
    for log in receipt["logs"]:
        event = _anchored_event(lucid, log)
        if event is not None and _first_mismatch(event, expected) is None:
            return EthereumAttestation(
                chain_id=chain_id,
                contract=address,
                tx_hash=_hex0x(receipt["transactionHash"]),
                block_number=receipt["blockNumber"],
                block_hash=_hex0x(receipt["blockHash"]),
                log_index=log["logIndex"],
                origin=origin,
                size=size,
                root=root.hex(),
                note_hash=note_hash.hex(),
            )
    tx = _hex0x(receipt["transactionHash"])
    raise ConfigError(
        f"transaction {tx} emitted no Anchored event: is {address} a LucidAnchor contract?",
        contract=address,
        tx_hash=tx,
    )


def anchored_at(rpc_url: str, contract: str, note_hash: bytes) -> int:
    """The block that first anchored ``note_hash`` in ``contract`` (0: never)."""
    _check_hash("note_hash", note_hash)
    w3 = _connect(rpc_url)
    lucid = _lucid_anchor(w3, _checksummed(w3, contract))
    with _rpc("reading anchoredAt"):
        block: int = lucid.functions.anchoredAt(note_hash).call()
    return block


def _anchored_event(lucid: Contract, log: LogReceipt) -> EventData | None:
    """The decoded ``Anchored`` event of ``log`` if ``lucid`` emitted it, else None."""
    from web3.exceptions import MismatchedABI  # noqa: PLC0415 - optional extra

    if str(log["address"]).lower() != str(lucid.address).lower():
        return None
    try:
        event: EventData = lucid.events[EVENT_NAME]().process_log(log)
    except MismatchedABI:
        return None
    return event


def _first_mismatch(event: EventData, expected: dict[str, object]) -> str | None:
    args = event["args"]
    for name, value in expected.items():
        if args[name] != value:
            return name
    return None


def _check_attestation_fields(
    attestation: EthereumAttestation, origin: str, size: int, root: bytes, note_hash: bytes
) -> None:
    """The attestation names this checkpoint, and its hashes are well formed."""
    for name, value, pattern in (
        ("tx_hash", attestation.tx_hash, _ETH_HASH),
        ("block_hash", attestation.block_hash, _ETH_HASH),
        ("root", attestation.root, _LUCID_HASH),
        ("note_hash", attestation.note_hash, _LUCID_HASH),
    ):
        if not pattern.fullmatch(value):
            raise IntegrityError(f"the attestation's {name} is not a well-formed hash")
    for name, attested, wanted in (
        ("origin", attestation.origin, origin),
        ("size", attestation.size, size),
        ("root", attestation.root, root.hex()),
        ("note_hash", attestation.note_hash, note_hash.hex()),
    ):
        if attested != wanted:
            raise IntegrityError(f"the attestation's {name} is not the checkpoint's")


def check_attestation(  # noqa: PLR0917 - the checkpoint's fields as in anchor()
    rpc_url: str,
    attestation: EthereumAttestation,
    origin: str,
    size: int,
    root: bytes,
    note_hash: bytes,
) -> str:
    """Check on the chain at ``rpc_url`` that ``attestation`` anchors this checkpoint.

    Asks the node for the chain id, block ``block_number`` (its hash must be ``block_hash``:
    still canonical), the receipt of ``tx_hash`` (successful, in that block) and its log at
    ``log_index`` (an ``Anchored`` event of ``contract`` with exactly these origin, size, root
    and note hash). Returns one line, ``anchored in block N (0x…) of chain C at <UTC time>``.
    Raises :class:`IntegrityError` naming the first mismatch, :class:`UnavailableError` when
    the node cannot be reached. How deep the block is (finality) is the caller's policy.
    """
    from eth_typing import HexStr  # noqa: PLC0415 - comes with web3
    from web3.exceptions import BlockNotFound, TransactionNotFound  # noqa: PLC0415

    _check_checkpoint(origin, size, root, note_hash)
    _check_attestation_fields(attestation, origin, size, root, note_hash)
    w3 = _connect(rpc_url)
    at = f"block {attestation.block_number}"
    with _rpc("checking an attestation"):
        chain_id = w3.eth.chain_id
        if chain_id != attestation.chain_id:
            raise IntegrityError(f"the node is on chain {chain_id}, not {attestation.chain_id}")
        try:
            block = w3.eth.get_block(attestation.block_number)
        except BlockNotFound:
            raise IntegrityError(f"chain {chain_id} has no {at}") from None
        if _hex0x(block["hash"]) != attestation.block_hash:
            raise IntegrityError(
                f"{at} of chain {chain_id} has hash {_hex0x(block['hash'])}, not the "
                "attestation's block_hash (not canonical, or never was)"
            )
        try:
            receipt = w3.eth.get_transaction_receipt(HexStr(attestation.tx_hash))
        except TransactionNotFound:
            raise IntegrityError(f"transaction {attestation.tx_hash} is not on the chain") from None
    if _hex0x(receipt["blockHash"]) != attestation.block_hash:
        raise IntegrityError(f"transaction {attestation.tx_hash} is not in {at}")
    if receipt["status"] != 1:
        raise IntegrityError(f"transaction {attestation.tx_hash} reverted")
    logs = [log for log in receipt["logs"] if log["logIndex"] == attestation.log_index]
    if not logs:
        raise IntegrityError(
            f"transaction {attestation.tx_hash} has no log {attestation.log_index}"
        )
    if str(logs[0]["address"]).lower() != attestation.contract.lower():
        raise IntegrityError(f"log {attestation.log_index} was not emitted by the contract")
    event = _anchored_event(_lucid_anchor(w3, attestation.contract), logs[0])
    if event is None:
        raise IntegrityError(f"log {attestation.log_index} is not an Anchored event")
    mismatch = _first_mismatch(
        event, {"origin": origin, "size": size, "root": root, "noteHash": note_hash}
    )
    if mismatch is not None:
        raise IntegrityError(f"the Anchored event's {mismatch} is not the checkpoint's")
    when = datetime.fromtimestamp(block["timestamp"], UTC)
    return (
        f"anchored in block {attestation.block_number} ({attestation.block_hash}) of chain "
        f"{chain_id} at {when:%Y-%m-%d %H:%M:%S} UTC"
    )
