"""Compile LucidAnchor.sol into the artifact lucidd ships (lucidd/anchoring/LucidAnchor.json).

Usage: ``python contracts/build.py [--solcjs PATH] [--output FILE]``. Without ``--solcjs`` it
uses the pinned solcjs of the tests (tests/anvil.py: on PATH at that version, else
``.tools``, installed from npm on first use). The compile is Standard JSON with fixed settings
(:data:`SETTINGS`), so the same source and solc give the same bytecode byte for byte:
tests/integration/test_ethereum.py recompiles and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent
SOURCE: Final = HERE / "LucidAnchor.sol"
SOURCE_NAME: Final = "LucidAnchor.sol"  # the name in the metadata (and so in the bytecode hash)
CONTRACT: Final = "LucidAnchor"
ARTIFACT: Final = REPO / "lucidd" / "anchoring" / "LucidAnchor.json"

#: Fixed compiler settings. Cancun is the oldest EVM every mainstream chain runs now (it has
#: PUSH0 and MCOPY), so the code deploys on mainnet and the L2s alike.
SETTINGS: Final[dict[str, Any]] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {
        SOURCE_NAME: {CONTRACT: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
    },
}


def compile_artifact(solcjs: Path, source: Path = SOURCE) -> dict[str, Any]:
    """The artifact of ``source`` as compiled by ``solcjs`` (raises RuntimeError on errors)."""
    text = source.read_text()
    standard_input = {
        "language": "Solidity",
        "sources": {SOURCE_NAME: {"content": text}},
        "settings": SETTINGS,
    }
    version = subprocess.run(
        [str(solcjs), "--version"], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    done = subprocess.run(
        [str(solcjs), "--standard-json"],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    # solcjs prints a notice line (no SMT solver) before the JSON.
    output = json.loads(done.stdout[done.stdout.find("{") :])
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("\n".join(e.get("formattedMessage", str(e)) for e in errors))
    contract = output["contracts"][SOURCE_NAME][CONTRACT]
    return {
        "contract": CONTRACT,
        "source": f"contracts/{SOURCE_NAME}",
        "source_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "solc_version": version,
        "evm_version": SETTINGS["evmVersion"],
        "optimizer": SETTINGS["optimizer"],
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployed_bytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }


def write_artifact(artifact: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(artifact, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solcjs", type=Path, help="solcjs to use (default: the pinned one)")
    parser.add_argument("--output", type=Path, default=ARTIFACT, help="artifact to write")
    args = parser.parse_args(argv)
    solcjs: Path | None = args.solcjs
    if solcjs is None:
        sys.path.insert(0, str(REPO))
        from tests.anvil import tool_path  # noqa: PLC0415 - the tests own the tool pins

        solcjs = tool_path("solcjs")
    write_artifact(compile_artifact(solcjs), args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
