"""A local Ethereum chain for tests: `anvil` (Foundry's dev node) and the pinned `solcjs`.

Both come from npm, pinned (:data:`ANVIL_VERSION`, :data:`SOLC_VERSION`). :func:`tool_path`
finds a tool on ``PATH`` (``anvil`` of any version; ``solcjs`` only at the pinned version,
because the artifact test compares bytecode), else in ``<repo>/.tools``, else installs both
there once with ``npm install --prefix <repo>/.tools`` under a file lock (parallel test
processes wait for the first). Without npm the tests that need them skip. ``.tools`` is
ignored by git; delete it to reinstall.

The :func:`anvil` fixture starts one node for the whole run on 127.0.0.1 (a free port,
automining: every transaction is in a block when its receipt is asked for) and yields its
RPC URL and the private key of anvil's first well-known dev account (funded, public
knowledge: never use it on a real chain).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

import pytest

REPO: Final = Path(__file__).resolve().parents[1]
TOOLS_DIR: Final = REPO / ".tools"
ANVIL_VERSION: Final = "1.7.1"  # @foundry-rs/anvil on npm
SOLC_VERSION: Final = "0.8.37"  # solc (solcjs) on npm; the version in LucidAnchor.sol's pragma
NPM_PACKAGES: Final = (f"@foundry-rs/anvil@{ANVIL_VERSION}", f"solc@{SOLC_VERSION}")
NPM_INSTALL_TIMEOUT_S: Final = 600

#: The first account of anvil's default mnemonic ("test test ... junk"), funded with 10 000 ETH.
DEV_PRIVATE_KEY: Final = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS: Final = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ANVIL_CHAIN_ID: Final = 31337
ANVIL_READY_TIMEOUT_S: Final = 30.0
ANVIL_STOP_TIMEOUT_S: Final = 10.0

#: Where npm puts each tool under TOOLS_DIR, and the package whose version must match the pin.
_NPM_BIN: Final = {"anvil": "anvil", "solcjs": "solcjs"}
_NPM_PACKAGE_DIR: Final = {
    "anvil": ("@foundry-rs/anvil", ANVIL_VERSION),
    "solcjs": ("solc", SOLC_VERSION),
}


class ToolMissingError(Exception):
    """The tool is not on PATH or in .tools, and npm is not there to install it."""


class AnvilNode(NamedTuple):
    rpc_url: str
    private_key: str


def _installed_version(package: str) -> str | None:
    manifest = TOOLS_DIR / "node_modules" / package / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def _tools_are_installed() -> bool:
    return all(
        _installed_version(package) == version
        and (TOOLS_DIR / "node_modules" / ".bin" / _NPM_BIN[tool]).exists()
        for tool, (package, version) in _NPM_PACKAGE_DIR.items()
    )


def _solcjs_on_path_is_pinned(path: str) -> bool:
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return False
    return done.stdout.strip().startswith(f"{SOLC_VERSION}+")


def install_tools() -> None:
    """``npm install`` the pinned packages into TOOLS_DIR unless they are there (locked)."""
    if _tools_are_installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ToolMissingError("npm is not installed: cannot install anvil and solcjs into .tools")
    TOOLS_DIR.mkdir(exist_ok=True)
    with open(TOOLS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second test process waits for the first install
        if _tools_are_installed():
            return
        done = subprocess.run(
            [npm, "install", "--prefix", str(TOOLS_DIR), "--no-audit", "--no-fund", *NPM_PACKAGES],
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not _tools_are_installed():
            raise RuntimeError(f"npm install {' '.join(NPM_PACKAGES)} failed:\n{done.stderr}")


def tool_path(tool: str) -> Path:
    """The executable of ``anvil`` or ``solcjs``, installing the pinned ones if need be.

    Raises :class:`ToolMissingError` when it is nowhere and npm is missing too.
    """
    on_path = shutil.which(tool)
    if on_path is not None and (tool == "anvil" or _solcjs_on_path_is_pinned(on_path)):
        return Path(on_path)
    install_tools()
    if tool == "anvil":
        # .bin/anvil is a node wrapper around this binary; running the binary itself spares a
        # process and makes stopping the node a plain SIGTERM to it.
        native = TOOLS_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
        if native.is_file() and os.access(native, os.X_OK):
            return native
    return TOOLS_DIR / "node_modules" / ".bin" / _NPM_BIN[tool]


def tool_or_skip(tool: str) -> Path:
    try:
        return tool_path(tool)
    except ToolMissingError as err:
        pytest.skip(str(err))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_chain_id(rpc_url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        rpc_url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return bool(json.loads(reply.read()).get("result"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def run_anvil(anvil: Path, *extra_args: str) -> Iterator[AnvilNode]:
    """Run anvil on a free port until the block ends; it is killed (SIGTERM, then SIGKILL)."""
    port = _free_port()
    rpc_url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(anvil), "--host", "127.0.0.1", "--port", str(port), "--silent", *extra_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ANVIL_READY_TIMEOUT_S
        while not _answers_chain_id(rpc_url):
            if proc.poll() is not None:
                stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"anvil exited with {proc.returncode}: {stderr}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"anvil did not answer eth_chainId on {rpc_url}")
            time.sleep(0.05)
        yield AnvilNode(rpc_url, DEV_PRIVATE_KEY)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(ANVIL_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilNode]:
    """One anvil node for the run: ``(rpc_url, private_key)`` of a funded dev account."""
    with run_anvil(tool_or_skip("anvil")) as node:
        yield node
