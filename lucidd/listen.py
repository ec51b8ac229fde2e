"""Where an HTTP endpoint listens: ``127.0.0.1:PORT``, ``[::1]:PORT`` or ``unix:PATH`` (layer 1).

Shared by the daemon's config (``metrics_listen``, ``http_listen``), which checks the spelling
when it loads, and by the HTTP servers, which bind it. Only loopback and Unix sockets are
accepted: lucidd is a host daemon, and a wider audience belongs behind a reverse proxy that
terminates TLS.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

#: ``sun_path`` holds 108 bytes with the terminating NUL.
MAX_UNIX_PATH_BYTES: Final = 107
UNIX_PREFIX: Final = "unix:"


@dataclass(frozen=True)
class ListenAddress:
    """A parsed listen address: ``path`` for a Unix socket, else ``host`` and ``port``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"{UNIX_PREFIX}{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """The address spelled ``text``; ValueError with the accepted spellings otherwise.

    Port 0 is accepted (the kernel picks one; the server logs which)."""
    usage = f"{text!r} is not 127.0.0.1:PORT, [::1]:PORT or unix:/ABSOLUTE/PATH"
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX) :]
        if not path.startswith("/") or "\0" in path:
            raise ValueError(usage)
        if len(path.encode(errors="surrogateescape")) > MAX_UNIX_PATH_BYTES:
            raise ValueError(f"{text!r}: a Unix socket path allows {MAX_UNIX_PATH_BYTES} bytes")
        return ListenAddress(path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65_535:
        raise ValueError(usage)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(usage) from None
    if not address.is_loopback:
        raise ValueError(
            f"{text!r}: only loopback addresses (127.0.0.0/8, ::1) or unix:PATH; "
            "put a TLS-terminating proxy in front for other clients"
        )
    return ListenAddress(host=str(address), port=int(port_text))
