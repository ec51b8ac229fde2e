"""The Ethereum backend's credentials (layer 2): an RPC URL and the key that signs.

:func:`load_credentials` reads them from a file only the daemon's user may read, and refuses
anything else with a :class:`~lucidd.errors.ConfigError` that names the path and the fix,
never the contents. Neither field is ever printed (``repr`` shows the RPC host only: hosted
nodes put API tokens in the URL). Shared by the daemon and ``lucidd anchor deploy``; web3 is
not needed here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from lucidd.errors import ConfigError
from lucidd.private_files import read_private_file

#: A secp256k1 private key as the credentials file spells it: 0x and 64 hex digits.
PRIVATE_KEY: Final = re.compile(r"0x[0-9a-fA-F]{64}")


class EthereumCredentials(msgspec.Struct, frozen=True):
    """Where to send transactions and the key that signs them (an account holding gas).

    Neither field is ever printed: ``repr`` shows the RPC host only.
    """

    rpc_url: str
    private_key: str

    def __repr__(self) -> str:
        return f"EthereumCredentials(rpc_url={_redacted_url(self.rpc_url)!r}, private_key=...)"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("rpc_url", _redacted_url(self.rpc_url)), ("private_key", "...")]


def _redacted_url(url: str) -> str:
    """``https://host:port/…``: the scheme and host of an RPC URL, never its path or user."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port is not None else ""
    more = "/…" if parts.path.strip("/") or parts.query or parts.username else ""
    return f"{parts.scheme}://{host}{port}{more}"


def load_credentials(path: Path) -> EthereumCredentials:
    """Read ``{"rpc_url": "https://…", "private_key": "0x…"}`` from ``path``.

    Refused (:class:`ConfigError`, naming the path and the fix, never the contents) unless
    ``path`` is a regular file (not a symlink) that neither group nor others may access, and
    its fields are an http(s) URL and a 32-byte hex key.
    """
    data = read_private_file(path, "Ethereum credentials")
    try:
        # msgspec's messages name the field and the expected type, never the value.
        creds = msgspec.json.decode(data, type=EthereumCredentials)
    except msgspec.DecodeError as err:
        raise ConfigError(f"Ethereum credentials {path}: {err}", path=str(path)) from None
    if not PRIVATE_KEY.fullmatch(creds.private_key):
        raise ConfigError(
            f"Ethereum credentials {path}: private_key must be 0x and 64 hex digits",
            path=str(path),
        )
    if urlsplit(creds.rpc_url).scheme not in ("http", "https"):
        raise ConfigError(
            f"Ethereum credentials {path}: rpc_url must be an http:// or https:// URL",
            path=str(path),
        )
    return creds
