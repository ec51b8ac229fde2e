"""The host's Ed25519 signing key for checkpoints: find, load and create it (layer 2).

Where it comes from follows the keyring (DESIGN §4): ``$CREDENTIALS_DIRECTORY/lucidd.signing``
(systemd ``LoadCredentialEncrypted=``) if that entry exists, else ``<state>/keys/signing.key``,
created on first start. It is never read from the environment or argv; the caller passes the
credentials folder it took from the environment at the edge.

The file is one line: the 32-byte Ed25519 private seed (RFC 8032's private key) in standard
padded base64, then ``\\n`` (45 bytes in all). Make one for a credential with::

    lucidd keygen --signing | systemd-creds encrypt --name=lucidd.signing - FILE

The key's name in signed notes is passed in (the daemon uses its configured origin), so the
file holds no name: renaming the log renames the key (and changes its key id).

A key file is refused as a keyring file is (:mod:`lucidd.daemon.keyfile`, whose checks are
shared): a symlink, not a regular file, not owned by the effective uid, any group/other mode
bit, more than one hard link, a folder not ours (nor root's) or writable by group or others.
Errors are :class:`~lucidd.errors.KeyringError` naming the path, the problem and the fix; they
never contain key material.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lucidd.daemon.keyfile import (
    KEYRING_DIR_MODE,
    _check_parent,
    _lexists,
    _write_new_file,
    open_key_file,
)
from lucidd.errors import KeyringError
from lucidd.note import ED25519_SEED_SIZE, Signer, is_valid_key_name

__all__ = [
    "CREDENTIAL_NAME",
    "create_signing_key",
    "load_signing_key",
    "resolve_signing_key",
    "state_signing_key_path",
]

CREDENTIAL_NAME: Final = "lucidd.signing"
"""File name of the signing key inside ``$CREDENTIALS_DIRECTORY``."""
WHAT: Final = "signing key"
MAX_SIGNING_KEY_FILE_SIZE: Final = 1024
"""The file is 45 bytes; a bound on what a wrong path can make us read."""
_FORMAT_HINT: Final = (
    f"it must be one line: base64 of a {ED25519_SEED_SIZE}-byte Ed25519 seed; "
    "restore it from a backup (a new key cannot verify the checkpoints already signed)"
)


def state_signing_key_path(state_dir: Path) -> Path:
    """Default signing key location under the state folder: ``<state>/keys/signing.key``."""
    return state_dir / "keys" / "signing.key"


def _encode_seed(seed: bytes) -> bytes:
    return base64.b64encode(seed) + b"\n"


def signing_key_file(key: Ed25519PrivateKey) -> bytes:
    """The file content of ``key`` (``lucidd keygen --signing`` writes it for systemd-creds)."""
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return _encode_seed(seed)


def _decode_seed(data: bytes, path: Path) -> bytes:
    """The seed of a key file's bytes; the error says what is wrong, never what is there."""
    line = data[:-1] if data.endswith(b"\n") else None
    try:
        seed = base64.b64decode(line, validate=True) if line is not None else b""
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != ED25519_SEED_SIZE or _encode_seed(seed) != data:
        raise KeyringError(f"{WHAT} {path} is malformed: {_FORMAT_HINT}", path=str(path))
    return seed


def _read_file(path: Path) -> bytes:
    """Open ``path`` without following a symlink, check the open file, read it whole."""
    fd = open_key_file(
        path,
        WHAT,
        symlink_fix="lucidd refuses symlinked keys: put the real file there",
        missing_fix=f"lucidd creates {path.name} under its state folder on first start, "
        "or give it as the lucidd.signing credential",
    )
    try:
        data = b""
        while len(data) <= MAX_SIGNING_KEY_FILE_SIZE and (
            chunk := os.read(fd, MAX_SIGNING_KEY_FILE_SIZE + 1 - len(data))
        ):
            data += chunk
    except OSError as exc:
        raise KeyringError(f"cannot read {WHAT} {path}: {exc.strerror}", path=str(path)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_SIGNING_KEY_FILE_SIZE:
        raise KeyringError(f"{WHAT} {path} is malformed: {_FORMAT_HINT}", path=str(path))
    return data


def _check_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise ValueError("signing key name must be non-empty, with no space, '+' or control code")


def load_signing_key(path: Path, name: str) -> Signer:
    """Open, check and parse the signing key file at ``path``; the key is called ``name``.

    Raises :class:`KeyringError` for every refusal listed in the module docstring, a missing
    file, and content other than one canonical base64 line of a 32-byte seed. An invalid
    ``name`` is a caller bug (``ValueError``).
    """
    _check_name(name)
    seed = _decode_seed(_read_file(path), path)
    return Signer(name, Ed25519PrivateKey.from_private_bytes(seed))


def create_signing_key(path: Path, name: str) -> Signer:
    """Generate a key and store it at ``path`` (0600; a missing folder is made 0700).

    Durable when it returns: the file is written through an ``O_EXCL`` temp file, fsynced,
    linked to ``path`` (which never replaces an existing file: :class:`KeyringError` "already
    exists") and the folder fsynced. Refuses a folder that is not ours or that group or others
    can write.
    """
    _check_name(name)
    folder = path.parent
    if not folder.exists():
        try:
            folder.mkdir(mode=KEYRING_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(folder, KEYRING_DIR_MODE)  # exact mode, whatever the umask
        except OSError as exc:
            raise KeyringError(
                f"cannot create {WHAT} folder {folder}: {exc.strerror}", path=str(folder)
            ) from None
    _check_parent(path, WHAT)
    private_key = Ed25519PrivateKey.generate()
    try:
        _write_new_file(path, _encode_seed(private_key.private_bytes_raw()))
    except FileExistsError:
        raise KeyringError(
            f"{WHAT} {path} already exists; lucidd never overwrites a key", path=str(path)
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot write {WHAT} {path}: {exc.strerror}", path=str(path)) from None
    return Signer(name, private_key)


def resolve_signing_key(state_dir: Path, credentials_dir: Path | None, name: str) -> Signer:
    """Find and load the host's signing key, named ``name`` in the notes it signs.

    1. ``<credentials_dir>/lucidd.signing`` if that entry exists (a systemd credential,
       mode 0400, owned by us);
    2. else ``<state_dir>/keys/signing.key``, created on first start (a start that races
       another to create it loads the winner's key).

    Costs a few ``stat`` calls and one small read; the first start also an fsync of the file
    and of its folder.
    """
    _check_name(name)
    if credentials_dir is not None:
        credential = credentials_dir / CREDENTIAL_NAME
        if _lexists(credential):
            return load_signing_key(credential, name)
    default = state_signing_key_path(state_dir)
    if _lexists(default):
        return load_signing_key(default, name)
    try:
        return create_signing_key(default, name)
    except KeyringError:
        if _lexists(default):  # another process created it between our check and our link
            return load_signing_key(default, name)
        raise
