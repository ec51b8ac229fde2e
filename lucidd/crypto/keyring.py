"""The keyring of master keys, its passphrase lock, and wrapping of session secrets (layer 1).

A :class:`Keyring` holds the host's master keys by u32 key id and says which one wraps new
session secrets; :meth:`Keyring.serialize` and :meth:`Keyring.parse` are its file text, and
:meth:`Keyring.lock` / :meth:`Keyring.unlock` seal that text under a passphrase with Argon2id
(RFC 9106). A session secret is stored only wrapped (AES-256-GCM under the current master key,
bound to the key id and the session id), see :func:`wrap_secret` (DESIGN §4, docs/format.md).

Pure like the rest of :mod:`lucidd.crypto`: reading and writing the keyring file is
:mod:`lucidd.daemon.keyfile`'s job. ``os.urandom`` (key ids, keys, salts, nonces) is the only
call into the operating system. Key bytes never appear in ``repr``, ``str`` or error messages.
"""

from __future__ import annotations

import os
import re
import struct
import types
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from lucidd.crypto.record import (
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    U32_MAX,
    WRAP_LABEL,
    check_secret,
    check_session_id,
)
from lucidd.crypto.seal import gcm_open
from lucidd.errors import FormatError, KeyringError, PassphraseError

KEY_ID_MAX: Final = U32_MAX
KEYRING_MAGIC_LINE: Final = "lucidd-keyring v1"
KEYRING_MAX_KEYS: Final = 1024
"""A bound on parsing work; rotation once a day for almost three years fits."""
_KEY_LINE = re.compile(r"key (0|[1-9][0-9]{0,9}) ([0-9a-f]{64})")
_CURRENT_LINE = re.compile(r"current (0|[1-9][0-9]{0,9})")
#: When a key was made (nanoseconds since the epoch); optional, one per key at most. A keyring
#: with such lines cannot be read by lucidd before they existed (docs/format.md §5).
_CREATED_LINE = re.compile(r"created (0|[1-9][0-9]{0,9}) (0|[1-9][0-9]{0,19})")
CREATED_NS_MAX: Final = 2**63 - 1

# Passphrase-locked keyring: Argon2id, RFC 9106 §4 second recommended option.
LOCKED_MAGIC_LINE: Final = "lucidd-keyring-locked v1"
ARGON2_MEMORY_KIB: Final = 64 * 1024
ARGON2_ITERATIONS: Final = 3
ARGON2_LANES: Final = 4
ARGON2_SALT_SIZE: Final = 16
_LOCKED_KDF_LINE = re.compile(
    rf"argon2id m={ARGON2_MEMORY_KIB} t={ARGON2_ITERATIONS} p={ARGON2_LANES} "
    rf"salt=([0-9a-f]{{{2 * ARGON2_SALT_SIZE}}})"
)
_LOCKED_NONCE_LINE = re.compile(rf"nonce ([0-9a-f]{{{2 * NONCE_SIZE}}})")
_LOCKED_SEALED_LINE = re.compile(r"sealed ((?:[0-9a-f]{2})+)")
_LOCKED_LINES: Final = 4

_KEY_ID_STRUCT: Final = struct.Struct(">I")
WRAPPED_SECRET_SIZE: Final = _KEY_ID_STRUCT.size + NONCE_SIZE + KEY_SIZE + TAG_SIZE
assert WRAPPED_SECRET_SIZE == 64


class Keyring:
    """Master keys by u32 key id, and which one wraps new session secrets.

    Immutable: :meth:`rotated` returns a new keyring. Key bytes never appear in ``repr``,
    ``str`` or error messages. (Python cannot zero memory; keys live as long as the object.)
    """

    __slots__ = ("_created", "_current_id", "_keys")

    def __init__(
        self,
        keys: Mapping[int, bytes],
        current_id: int,
        created: Mapping[int, int] | None = None,
    ) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for key_id, key in keys.items():
            if not 0 <= key_id <= KEY_ID_MAX:
                raise ValueError("key id must be a u32")
            if len(key) != KEY_SIZE:
                raise ValueError(f"master keys must be {KEY_SIZE} bytes")
        if current_id not in keys:
            raise ValueError("current key id is not in the keyring")
        created = dict(created or {})
        if not set(created) <= set(keys) or not all(
            0 <= ns <= CREATED_NS_MAX for ns in created.values()
        ):
            raise ValueError("creation times must be u63 nanoseconds of keys in the keyring")
        self._keys: Mapping[int, bytes] = types.MappingProxyType(dict(keys))
        self._current_id = current_id
        self._created: Mapping[int, int] = types.MappingProxyType(created)

    @classmethod
    def generate(cls, created_ns: int | None = None) -> Keyring:
        """A new keyring with one random master key under a random key id, made at
        ``created_ns`` (the caller's clock: this layer reads none) if given."""
        key_id = _KEY_ID_STRUCT.unpack(os.urandom(_KEY_ID_STRUCT.size))[0]
        created = {key_id: created_ns} if created_ns is not None else {}
        return cls({key_id: os.urandom(KEY_SIZE)}, key_id, created)

    def rotated(self, created_ns: int | None = None) -> Keyring:
        """A copy with a new random current key (made at ``created_ns``, if given); old keys
        stay so old wraps still open."""
        while True:
            key_id = _KEY_ID_STRUCT.unpack(os.urandom(_KEY_ID_STRUCT.size))[0]
            if key_id not in self._keys:
                break
        keys = dict(self._keys)
        keys[key_id] = os.urandom(KEY_SIZE)
        created = dict(self._created)
        if created_ns is not None:
            created[key_id] = created_ns
        return Keyring(keys, key_id, created)

    def without(self, key_id: int) -> Keyring:
        """A copy without ``key_id`` (``lucidd keys retire``); ValueError for the current key,
        :class:`KeyringError` if the keyring lacks it. Whether no session still needs the key
        is the caller's to check."""
        if key_id == self._current_id:
            raise ValueError("the current key cannot be removed")
        self.key(key_id)
        keys = {k: v for k, v in self._keys.items() if k != key_id}
        created = {k: ns for k, ns in self._created.items() if k != key_id}
        return Keyring(keys, self._current_id, created)

    @property
    def current_id(self) -> int:
        """Key id of the key that wraps new session secrets."""
        return self._current_id

    @property
    def current_key(self) -> bytes:
        """The current master key."""
        return self._keys[self._current_id]

    @property
    def key_ids(self) -> tuple[int, ...]:
        """All key ids, sorted."""
        return tuple(sorted(self._keys))

    def created_ns(self, key_id: int) -> int | None:
        """When key ``key_id`` was made (ns since the epoch); None if the keyring does not say
        (keys made before keyrings recorded it)."""
        return self._created.get(key_id)

    def key(self, key_id: int) -> bytes:
        """The master key with ``key_id``; :class:`KeyringError` if the keyring lacks it."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyringError("no master key with that id in the keyring", key_id=key_id) from None

    def __repr__(self) -> str:
        return f"Keyring(current_id={self._current_id}, keys={len(self._keys)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keyring):
            return NotImplemented
        return (
            self._current_id == other._current_id
            and dict(self._keys) == dict(other._keys)
            and dict(self._created) == dict(other._created)
        )

    __hash__ = None  # type: ignore[assignment]  # equal by contents, and mutable-looking

    def __reduce__(self) -> tuple[type[Keyring], tuple[dict[int, bytes], int, dict[int, int]]]:
        """Pickle support: the supervisor hands an unlocked keyring to its children in memory
        (the forkserver's pipe), never through a file."""
        return (Keyring, (dict(self._keys), self._current_id, dict(self._created)))

    def serialize(self) -> bytes:
        """The keyring file text (docs/format.md): magic line, ``key`` lines, ``created`` lines
        (only for keys whose creation time is known), ``current`` line."""
        lines = [KEYRING_MAGIC_LINE]
        lines += [f"key {key_id} {self._keys[key_id].hex()}" for key_id in sorted(self._keys)]
        lines += [f"created {key_id} {self._created[key_id]}" for key_id in sorted(self._created)]
        lines.append(f"current {self._current_id}")
        return ("\n".join(lines) + "\n").encode("ascii")

    @classmethod
    def parse(cls, data: bytes) -> Keyring:
        """Parse keyring file text; :class:`KeyringError` naming the line, never its content."""
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyringError("keyring is not ASCII text") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline
        if not lines or lines[0] != KEYRING_MAGIC_LINE:
            raise KeyringError(f"keyring does not start with {KEYRING_MAGIC_LINE!r}")
        keys: dict[int, bytes] = {}
        created: dict[int, int] = {}
        current: int | None = None
        for number, line in enumerate(lines[1:], start=2):
            if match := _KEY_LINE.fullmatch(line):
                key_id = int(match[1])
                if key_id > KEY_ID_MAX or key_id in keys:
                    raise KeyringError(f"keyring line {number}: bad or duplicate key id")
                if len(keys) >= KEYRING_MAX_KEYS:
                    raise KeyringError(f"keyring has more than {KEYRING_MAX_KEYS} keys")
                keys[key_id] = bytes.fromhex(match[2])
            elif match := _CREATED_LINE.fullmatch(line):
                key_id, ns = int(match[1]), int(match[2])
                if key_id in created or ns > CREATED_NS_MAX:
                    raise KeyringError(f"keyring line {number}: bad or second 'created' line")
                created[key_id] = ns
            elif match := _CURRENT_LINE.fullmatch(line):
                if current is not None:
                    raise KeyringError(f"keyring line {number}: second 'current' line")
                current = int(match[1])
            else:
                raise KeyringError(
                    f"keyring line {number}: expected 'key <id> <64 lowercase hex>', "
                    "'created <id> <ns>' or 'current <id>'"
                )
        if current is None:
            raise KeyringError("keyring has no 'current <id>' line")
        if current not in keys:
            raise KeyringError("keyring 'current' names a key id it does not hold")
        if not set(created) <= set(keys):
            raise KeyringError("keyring 'created' names a key id it does not hold")
        return cls(keys, current, created)

    def lock(self, passphrase: str | bytes) -> bytes:
        """This keyring sealed under a passphrase (text, docs/format.md §5).

        Key: Argon2id(passphrase, random 16-byte salt, m = 64 MiB, t = 3, p = 4, 32 bytes)
        (RFC 9106 second recommended option): deliberately costly in time and memory, so that
        guessing passphrases is, and paid once at start (docs/bench.md gives the time). The
        keyring text is AES-256-GCM encrypted under it with the first two lines as associated
        data.
        """
        salt = os.urandom(ARGON2_SALT_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        header = _locked_header(salt)
        sealed = AESGCM(_passphrase_key(passphrase, salt)).encrypt(nonce, self.serialize(), header)
        return header + f"nonce {nonce.hex()}\nsealed {sealed.hex()}\n".encode("ascii")

    @classmethod
    def unlock(cls, data: bytes, passphrase: str | bytes) -> Keyring:
        """Open a :meth:`lock` ed keyring; :class:`KeyringError` if malformed or the passphrase
        is wrong (the two cannot be told apart once the format parses)."""
        try:
            lines = data.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise KeyringError("locked keyring is not ASCII text") from None
        if lines[-1:] == [""]:
            lines.pop()
        if len(lines) != _LOCKED_LINES or lines[0] != LOCKED_MAGIC_LINE:
            raise KeyringError(f"locked keyring does not have the {LOCKED_MAGIC_LINE!r} layout")
        kdf = _LOCKED_KDF_LINE.fullmatch(lines[1])
        nonce = _LOCKED_NONCE_LINE.fullmatch(lines[2])
        sealed = _LOCKED_SEALED_LINE.fullmatch(lines[3])
        if kdf is None or nonce is None or sealed is None:
            raise KeyringError("locked keyring has malformed or unsupported parameter lines")
        salt = bytes.fromhex(kdf[1])
        try:
            text = AESGCM(_passphrase_key(passphrase, salt)).decrypt(
                bytes.fromhex(nonce[1]), bytes.fromhex(sealed[1]), _locked_header(salt)
            )
        except InvalidTag:
            raise PassphraseError("wrong passphrase, or the locked keyring is damaged") from None
        return cls.parse(text)


def is_locked(data: bytes) -> bool:
    """Whether keyring file text is a :meth:`Keyring.lock` ed keyring (its first line)."""
    return data.startswith(LOCKED_MAGIC_LINE.encode("ascii") + b"\n")


def _locked_header(salt: bytes) -> bytes:
    return (
        f"{LOCKED_MAGIC_LINE}\nargon2id m={ARGON2_MEMORY_KIB} t={ARGON2_ITERATIONS} "
        f"p={ARGON2_LANES} salt={salt.hex()}\n"
    ).encode("ascii")


def _passphrase_key(passphrase: str | bytes, salt: bytes) -> bytes:
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not secret:
        raise ValueError("the passphrase must not be empty")
    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive(secret)


def _wrap_aad(key_id: int, session_id: bytes) -> bytes:
    return WRAP_LABEL + _KEY_ID_STRUCT.pack(key_id) + session_id


def wrap_secret(
    keyring: Keyring, session_id: bytes, secret: bytes, nonce: bytes | None = None
) -> bytes:
    """Wrap a session secret under the keyring's current master key (64 bytes).

    Layout: ``u32be(key_id) || nonce(12) || AES-256-GCM(secret) (32) || tag (16)``, with
    AAD ``"lucidd/v1/wrap\\0" || u32be(key_id) || session_id``, so a wrapped secret cannot be
    moved to another session or relabelled with another key id. ``nonce`` is for tests only.
    """
    check_secret(secret)
    check_session_id(session_id)
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    key_id = keyring.current_id
    sealed = AESGCM(keyring.current_key).encrypt(nonce, secret, _wrap_aad(key_id, session_id))
    return _KEY_ID_STRUCT.pack(key_id) + nonce + sealed


def unwrap_secret(keyring: Keyring, session_id: bytes, wrapped: bytes) -> bytes:
    """Recover a session secret: FormatError if malformed, KeyringError if the key id is not in
    the keyring, IntegrityError if it fails authentication (wrong session, wrong key, tampered)."""
    check_session_id(session_id)
    if len(wrapped) != WRAPPED_SECRET_SIZE:
        raise FormatError("wrapped session secret has the wrong length", length=len(wrapped))
    (key_id,) = _KEY_ID_STRUCT.unpack_from(wrapped)
    nonce_end = _KEY_ID_STRUCT.size + NONCE_SIZE
    master = keyring.key(key_id)
    return gcm_open(
        master,
        wrapped[_KEY_ID_STRUCT.size : nonce_end],
        wrapped[nonce_end:],
        _wrap_aad(key_id, session_id),
    )


def wrapped_key_id(wrapped: bytes) -> int:
    """The key id a wrapped session secret names (its first four bytes); FormatError if
    malformed. Says which master key it needs, not that it opens under it."""
    if len(wrapped) != WRAPPED_SECRET_SIZE:
        raise FormatError("wrapped session secret has the wrong length", length=len(wrapped))
    key_id: int = _KEY_ID_STRUCT.unpack_from(wrapped)[0]
    return key_id


def rewrap_secret(keyring: Keyring, session_id: bytes, wrapped: bytes) -> bytes:
    """Re-wrap a session secret under the current master key (after :meth:`Keyring.rotated`).

    Always produces a fresh wrap (new nonce), even if ``wrapped`` already uses the current key.
    """
    return wrap_secret(keyring, session_id, unwrap_secret(keyring, session_id, wrapped))
