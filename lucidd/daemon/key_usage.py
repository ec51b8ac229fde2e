"""Which master key each session needs, and what that allows (layer 2, docs/keys.md).

Shared by ``lucidd keys`` on a stopped folder (:mod:`~lucidd.daemon.keys_cli`, which reads
every session's metadata) and the running daemon's online rotation
(:mod:`~lucidd.daemon.aggregator.key_rotation`, which asks its ledger): the same record, and
the same two rules — a keyring may replace the one in use only if it keeps every key a session
names, and a key may be retired only once no session names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lucidd.crypto import Keyring, wrapped_key_id
from lucidd.daemon.store import list_session_dirs, read_meta, session_dir_name
from lucidd.errors import KeyringError, LucidError


@dataclass
class KeyUsage:
    """Which master key each session's metadata names."""

    by_session: dict[bytes, int] = field(default_factory=dict)
    #: Sessions whose metadata cannot be read or decoded: what is wrong.
    unreadable: dict[bytes, str] = field(default_factory=dict)

    def sessions_of(self, key_id: int) -> list[bytes]:
        return [sid for sid, kid in self.by_session.items() if kid == key_id]

    def count(self, key_id: int) -> int:
        return len(self.sessions_of(key_id))


def key_usage(state_dir: Path) -> KeyUsage:
    """Read every session's metadata in ``state_dir``; never raises for one bad session."""
    usage = KeyUsage()
    for session_id, paths in list_session_dirs(state_dir):
        try:
            usage.by_session[session_id] = wrapped_key_id(read_meta(paths).wrapped_secret)
        except (OSError, LucidError) as exc:
            usage.unreadable[session_id] = str(exc)
    return usage


def lacking_keys(candidate: Keyring, held: Keyring, usage: KeyUsage) -> list[int]:
    """Key ids some session names that ``held`` has and ``candidate`` lacks or holds with
    other bytes: installing ``candidate`` would make those sessions unreadable."""
    lacking = set()
    for key_id in set(usage.by_session.values()):
        if key_id not in held.key_ids:
            continue  # already unreadable: not the new keyring's doing
        if key_id not in candidate.key_ids or candidate.key(key_id) != held.key(key_id):
            lacking.add(key_id)
    return sorted(lacking)


def check_retirable(key_id: int, usage: KeyUsage) -> None:
    """KeyringError naming the sessions while any needs ``key_id``, or while some session's
    metadata cannot be read (which key it needs is unknown)."""
    needing = sorted(session_dir_name(sid) for sid in usage.sessions_of(key_id))
    if needing:
        raise KeyringError(
            f"key {key_id} still wraps {len(needing)} session(s): {', '.join(needing)}; "
            "run 'lucidd keys rewrap' first",
            key_id=key_id,
            sessions=len(needing),
        )
    if usage.unreadable:
        names = ", ".join(sorted(session_dir_name(sid) for sid in usage.unreadable))
        raise KeyringError(
            f"cannot tell which key these sessions need (unreadable metadata): {names}",
            key_id=key_id,
        )
