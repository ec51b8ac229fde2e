"""Who an HTTP request is from (layer 4): a Unix peer's uid, or a bearer token's user.

On a Unix socket the kernel says who connected (``SO_PEERCRED``), as on the daemon's own
sockets. On TCP a request carries ``Authorization: Bearer TOKEN``; the tokens file
(``http_tokens``, mode 0600) has one ``USER TOKEN`` line per token, USER a name or a uid.
Tokens are kept only as SHA-256 digests, so a lookup compares digests, and a token is never
logged, echoed or put in an error.
"""

from __future__ import annotations

import hashlib
import pwd
from pathlib import Path
from typing import Final

from lucidd.errors import ConfigError
from lucidd.http.asgi import Request
from lucidd.http.problems import HttpError
from lucidd.private_files import read_private_file

#: A token shorter than this is refused when the file is read (``openssl rand -hex 32``).
MIN_TOKEN_CHARS: Final = 32


class Tokens:
    """The bearer tokens of ``http_tokens``: digest -> uid."""

    def __init__(self, by_digest: dict[bytes, int]) -> None:
        self._by_digest = by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read the tokens file (ConfigError naming the line, never the token, when wrong)."""
        text = read_private_file(path, "HTTP tokens").decode("utf-8", errors="replace")
        by_digest: dict[bytes, int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"HTTP tokens {path} line {number}"
            if len(fields) != 2:
                raise ConfigError(f"{where}: expected USER TOKEN")
            user, token = fields
            if len(token) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters "
                    "(make one with: openssl rand -hex 32)"
                )
            digest = _digest(token)
            if digest in by_digest:
                raise ConfigError(f"{where}: the same token is given twice")
            by_digest[digest] = _uid_of(user, where)
        return cls(by_digest)

    def uid_of(self, token: str) -> int | None:
        return self._by_digest.get(_digest(token))


def caller_uid(request: Request, tokens: Tokens | None) -> int:
    """The uid the request acts as; ``unauthorized`` (401) without valid credentials."""
    if request.peer_uid is not None:
        return request.peer_uid
    scheme, _, token = (request.header(b"authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError("unauthorized", "this endpoint needs Authorization: Bearer TOKEN")
    uid = tokens.uid_of(token.strip()) if tokens is not None else None
    if uid is None:
        raise HttpError("unauthorized", "the bearer token is not known")
    return uid


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _uid_of(user: str, where: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"{where}: no user {user!r} on this host") from None
