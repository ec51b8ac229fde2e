"""The Ethereum anchoring backend against a real chain (anvil, tests/anvil.py).

One anvil node serves the whole file; each test that needs a contract gets a fresh one, so
anchorings of one test are never seen by another.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from lucidd.anchoring import ethereum
from lucidd.anchoring.ethereum import (
    EthereumAttestation,
    anchor,
    anchored_at,
    check_attestation,
    deploy,
)
from lucidd.anchoring.ethereum_credentials import EthereumCredentials, load_credentials
from lucidd.errors import ConfigError, IntegrityError, UnavailableError
from tests.anvil import (
    ANVIL_CHAIN_ID,
    DEV_PRIVATE_KEY,
    REPO,
    AnvilNode,
    run_anvil,
    tool_or_skip,
)

ORIGIN = "host.example/lucidd/anchor"
SIZE = 7
ROOT = hashlib.sha256(b"root of the anchor log at size 7").digest()
NOTE_HASH = hashlib.sha256(b"the signed checkpoint note").digest()
ARTIFACT = REPO / "lucidd" / "anchoring" / "LucidAnchor.json"


@pytest.fixture
def creds(anvil: AnvilNode) -> EthereumCredentials:
    return EthereumCredentials(rpc_url=anvil.rpc_url, private_key=anvil.private_key)


@pytest.fixture
def contract(creds: EthereumCredentials) -> str:
    return deploy(creds)


@pytest.fixture
def attestation(creds: EthereumCredentials, contract: str) -> EthereumAttestation:
    return anchor(creds, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)


def _check(rpc_url: str, attestation: EthereumAttestation) -> str:
    return check_attestation(rpc_url, attestation, ORIGIN, SIZE, ROOT, NOTE_HASH)


def _closed_port_url() -> str:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v3/secret-token"  # nothing listens there now


# --- deploy, anchor, check ----------------------------------------------------------------


def test_deploy_returns_a_checksummed_address_holding_the_contract(
    creds: EthereumCredentials, contract: str
) -> None:
    from web3 import Web3  # noqa: PLC0415

    w3 = Web3(Web3.HTTPProvider(creds.rpc_url))
    assert Web3.is_checksum_address(contract)
    shipped = json.loads(ARTIFACT.read_text())["deployed_bytecode"]
    assert "0x" + w3.eth.get_code(Web3.to_checksum_address(contract)).hex() == shipped


def test_anchor_returns_the_attestation_of_its_event(
    anvil: AnvilNode, contract: str, attestation: EthereumAttestation
) -> None:
    assert attestation.chain_id == ANVIL_CHAIN_ID
    assert attestation.contract == contract
    assert (attestation.origin, attestation.size) == (ORIGIN, SIZE)
    assert (attestation.root, attestation.note_hash) == (ROOT.hex(), NOTE_HASH.hex())
    assert anchored_at(anvil.rpc_url, contract, NOTE_HASH) == attestation.block_number


def test_the_event_read_back_from_the_chain_has_the_checkpoint(
    anvil: AnvilNode, attestation: EthereumAttestation
) -> None:
    from eth_account import Account  # noqa: PLC0415
    from web3 import Web3  # noqa: PLC0415

    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    abi = json.loads(ARTIFACT.read_text())["abi"]
    lucid = w3.eth.contract(address=Web3.to_checksum_address(attestation.contract), abi=abi)
    events = lucid.events.Anchored().get_logs(
        from_block=attestation.block_number, to_block=attestation.block_number
    )
    assert len(events) == 1
    event = events[0]
    assert _hex(event["transactionHash"]) == attestation.tx_hash
    assert event["logIndex"] == attestation.log_index
    assert event["args"]["submitter"] == Account.from_key(DEV_PRIVATE_KEY).address
    assert event["args"]["noteHash"] == NOTE_HASH
    assert event["args"]["origin"] == ORIGIN
    assert event["args"]["size"] == SIZE
    assert event["args"]["root"] == ROOT


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def test_check_attestation_describes_the_block(
    anvil: AnvilNode, attestation: EthereumAttestation
) -> None:
    line = _check(anvil.rpc_url, attestation)
    assert line.startswith(
        f"anchored in block {attestation.block_number} ({attestation.block_hash}) of chain "
        f"{ANVIL_CHAIN_ID} at "
    )
    assert line.endswith(" UTC")


def test_an_attestation_survives_a_json_round_trip(
    anvil: AnvilNode, attestation: EthereumAttestation
) -> None:
    data = msgspec.json.encode(attestation)
    assert json.loads(data)["type"] == "ethereum"
    again = msgspec.json.decode(data, type=EthereumAttestation)
    assert again == attestation
    _check(anvil.rpc_url, again)


# --- tampering ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("block_hash", "0x" + "ab" * 32, "hash"),
        ("block_number", 1, "hash"),  # the deploy's block: another hash
        ("log_index", 1, "no log 1"),
        ("root", "cd" * 32, "root"),
        ("note_hash", "ef" * 32, "note_hash"),
        ("origin", "other.example/log", "origin"),
        ("size", SIZE + 1, "size"),
        ("contract", "0x" + "12" * 20, "not emitted by the contract"),
        ("chain_id", 1, "chain"),
        ("tx_hash", "0x" + "34" * 32, "not on the chain"),
    ],
)
def test_a_tampered_attestation_is_refused(
    anvil: AnvilNode, attestation: EthereumAttestation, field: str, value: object, fragment: str
) -> None:
    tampered = msgspec.structs.replace(attestation, **{field: value})
    with pytest.raises(IntegrityError, match=fragment):
        _check(anvil.rpc_url, tampered)


@pytest.mark.parametrize(
    ("argument", "value", "fragment"),
    [
        ("root", hashlib.sha256(b"another root").digest(), "root"),
        ("note_hash", hashlib.sha256(b"another note").digest(), "note_hash"),
        ("origin", "other.example/log", "origin"),
        ("size", SIZE - 1, "size"),
    ],
)
def test_an_attestation_of_another_checkpoint_is_refused(
    anvil: AnvilNode, attestation: EthereumAttestation, argument: str, value: object, fragment: str
) -> None:
    checkpoint: dict[str, object] = {
        "origin": ORIGIN,
        "size": SIZE,
        "root": ROOT,
        "note_hash": NOTE_HASH,
        argument: value,
    }
    with pytest.raises(IntegrityError, match=fragment):
        check_attestation(anvil.rpc_url, attestation, **checkpoint)  # type: ignore[arg-type]


def test_an_event_with_other_fields_is_refused_even_if_the_attestation_agrees(
    anvil: AnvilNode, creds: EthereumCredentials, contract: str
) -> None:
    # Rewrite the attestation *and* the checkpoint consistently: only the chain can tell.
    real = anchor(creds, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)
    other_root = hashlib.sha256(b"a forged root").digest()
    forged = msgspec.structs.replace(real, root=other_root.hex())
    with pytest.raises(IntegrityError, match="Anchored event's root"):
        check_attestation(anvil.rpc_url, forged, ORIGIN, SIZE, other_root, NOTE_HASH)


def test_a_log_of_another_transaction_in_the_chain_is_refused(
    anvil: AnvilNode, creds: EthereumCredentials, contract: str
) -> None:
    first = anchor(creds, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)
    second = anchor(creds, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)
    # The first transaction, but claimed to sit in the second's block.
    mixed = msgspec.structs.replace(
        first, block_number=second.block_number, block_hash=second.block_hash
    )
    with pytest.raises(IntegrityError, match="is not in block"):
        _check(anvil.rpc_url, mixed)


# --- the contract's record ----------------------------------------------------------------


def test_anchoring_a_note_hash_twice_keeps_the_first_block(
    anvil: AnvilNode, creds: EthereumCredentials, contract: str
) -> None:
    first = anchor(creds, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)
    second = anchor(creds, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)
    assert second.block_number > first.block_number
    assert anchored_at(anvil.rpc_url, contract, NOTE_HASH) == first.block_number
    # Both transactions are true statements, so both attestations check.
    _check(anvil.rpc_url, first)
    _check(anvil.rpc_url, second)


def test_a_note_hash_never_anchored_reads_block_zero(anvil: AnvilNode, contract: str) -> None:
    assert anchored_at(anvil.rpc_url, contract, NOTE_HASH) == 0


def test_anchoring_to_an_address_without_code_is_a_config_error(
    creds: EthereumCredentials,
) -> None:
    with pytest.raises(ConfigError, match="no contract at"):
        anchor(creds, "0x" + "56" * 20, ORIGIN, SIZE, ROOT, NOTE_HASH)


# --- failures -----------------------------------------------------------------------------


def test_rpc_down_is_unavailable_and_names_neither_key_nor_url() -> None:
    url = _closed_port_url()
    creds = EthereumCredentials(rpc_url=url, private_key=DEV_PRIVATE_KEY)
    attestation = EthereumAttestation(
        chain_id=ANVIL_CHAIN_ID,
        contract="0x" + "12" * 20,
        tx_hash="0x" + "34" * 32,
        block_number=1,
        block_hash="0x" + "ab" * 32,
        log_index=0,
        origin=ORIGIN,
        size=SIZE,
        root=ROOT.hex(),
        note_hash=NOTE_HASH.hex(),
    )
    failures: list[UnavailableError] = []
    for call in (
        lambda: deploy(creds),
        lambda: anchor(creds, "0x" + "12" * 20, ORIGIN, SIZE, ROOT, NOTE_HASH),
        lambda: _check(url, attestation),
    ):
        with pytest.raises(UnavailableError) as caught:
            call()
        failures.append(caught.value)
    for err in failures:
        assert err.retryable
        assert err.__cause__ is None and err.__suppress_context__
        for secret in (DEV_PRIVATE_KEY, DEV_PRIVATE_KEY[2:], "secret-token"):
            assert secret not in str(err)
            assert secret not in repr(err.context)


def test_a_transaction_never_mined_is_unavailable_and_names_it() -> None:
    with run_anvil(tool_or_skip("anvil"), "--no-mining") as node:
        creds = EthereumCredentials(rpc_url=node.rpc_url, private_key=node.private_key)
        with pytest.raises(UnavailableError, match="no receipt for transaction 0x") as caught:
            deploy(creds, timeout=0.5)
    tx_hash = caught.value.context["tx_hash"]
    assert isinstance(tx_hash, str) and tx_hash in str(caught.value)


def test_without_web3_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, creds: EthereumCredentials
) -> None:
    for name in [m for m in sys.modules if m == "web3" or m.startswith("web3.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "web3", None)  # makes "import web3" fail
    with pytest.raises(ConfigError, match=r"pip install 'lucidd\[ethereum\]'"):
        deploy(creds)


# --- credentials --------------------------------------------------------------------------


def _write_creds(path: Path, mode: int, **fields: object) -> Path:
    body = {"rpc_url": "https://node.example/v3/secret-token", "private_key": DEV_PRIVATE_KEY}
    body.update({k: str(v) for k, v in fields.items()})
    path.write_text(json.dumps(body))
    os.chmod(path, mode)
    return path


def test_credentials_are_loaded_from_a_private_file(tmp_path: Path) -> None:
    creds = load_credentials(_write_creds(tmp_path / "eth.json", 0o600))
    assert creds.private_key == DEV_PRIVATE_KEY
    assert creds.rpc_url == "https://node.example/v3/secret-token"
    assert repr(creds) == "EthereumCredentials(rpc_url='https://node.example/…', private_key=...)"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_readable_by_others_are_refused(tmp_path: Path, mode: int) -> None:
    path = _write_creds(tmp_path / "eth.json", mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}") as caught:
        load_credentials(path)
    assert DEV_PRIVATE_KEY[2:] not in str(caught.value)


def test_credentials_behind_a_symlink_or_not_a_file_are_refused(tmp_path: Path) -> None:
    real = _write_creds(tmp_path / "eth.json", 0o600)
    (tmp_path / "link.json").symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        load_credentials(tmp_path / "link.json")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_credentials(tmp_path / "dir")


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"private_key": DEV_PRIVATE_KEY[:-2]}, "private_key must be"),
        ({"private_key": DEV_PRIVATE_KEY[2:]}, "private_key must be"),
        ({"rpc_url": "ftp://node.example/"}, "rpc_url must be"),
    ],
)
def test_malformed_credentials_are_refused_without_echoing_the_key(
    tmp_path: Path, fields: dict[str, object], fragment: str
) -> None:
    path = _write_creds(tmp_path / "eth.json", 0o600, **fields)
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_credentials(path)
    assert DEV_PRIVATE_KEY[4:-4] not in str(caught.value)


def test_the_deploy_command_prints_the_contract_address(anvil: AnvilNode, tmp_path: Path) -> None:
    path = _write_creds(tmp_path / "eth.json", 0o600, rpc_url=anvil.rpc_url)
    done = subprocess.run(
        [sys.executable, "-m", "lucidd", "anchor", "deploy", "--credentials", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    address = json.loads(done.stdout)["contract"]
    assert anchored_at(anvil.rpc_url, address, NOTE_HASH) == 0  # a LucidAnchor answers


def test_the_deploy_command_refuses_open_credentials(tmp_path: Path) -> None:
    path = _write_creds(tmp_path / "eth.json", 0o644)
    done = subprocess.run(
        [sys.executable, "-m", "lucidd", "anchor", "deploy", "--credentials", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == ConfigError.exit_code
    assert "chmod 600" in done.stderr
    assert DEV_PRIVATE_KEY[2:] not in done.stderr + done.stdout


# --- the shipped artifact -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    solcjs = tool_or_skip("solcjs")
    out = tmp_path_factory.mktemp("artifact") / "LucidAnchor.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "contracts" / "build.py"),
            *("--solcjs", str(solcjs), "--output", str(out)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    yield json.loads(out.read_text())


def test_the_shipped_artifact_is_what_the_pinned_solc_makes_of_the_source(
    rebuilt: dict[str, object],
) -> None:
    shipped = json.loads(ARTIFACT.read_text())
    source = (REPO / "contracts" / "LucidAnchor.sol").read_bytes()
    assert shipped["source_sha256"] == hashlib.sha256(source).hexdigest(), (
        "contracts/LucidAnchor.sol changed: run python contracts/build.py"
    )
    for field in ("solc_version", "evm_version", "optimizer", "abi"):
        assert rebuilt[field] == shipped[field], field
    assert rebuilt["bytecode"] == shipped["bytecode"]
    assert rebuilt["deployed_bytecode"] == shipped["deployed_bytecode"]


def test_the_module_uses_the_shipped_artifact() -> None:
    shipped = json.loads(ARTIFACT.read_text())
    artifact = ethereum._artifact()
    assert artifact.bytecode == shipped["bytecode"]
    assert artifact.solc_version.startswith("0.8.37+")
    assert [e["name"] for e in artifact.abi if e["type"] == "event"] == ["Anchored"]


def test_an_account_without_gas_is_unavailable_with_the_nodes_reason(
    anvil: AnvilNode, contract: str
) -> None:
    broke = EthereumCredentials(rpc_url=anvil.rpc_url, private_key="0x" + "42" * 32)
    with pytest.raises(UnavailableError, match="refused") as caught:
        anchor(broke, contract, ORIGIN, SIZE, ROOT, NOTE_HASH)
    assert "42" * 32 not in str(caught.value)
    assert "fund" in str(caught.value).lower()


def test_loading_web3_keeps_the_processes_recursion_limit() -> None:
    """py_ecc raises it to 100 000 on import; the daemon's decoders need the default bound."""
    pytest.importorskip("web3")
    code = (
        "import sys; from lucidd.anchoring import ethereum; before = sys.getrecursionlimit(); "
        "ethereum._import_web3(); import py_ecc; print(before, sys.getrecursionlimit())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    before, after = done.stdout.split()
    assert before == after
