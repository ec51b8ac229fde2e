"""Keyring files: find, load (with ownership and permission checks) and create (layer 2).

Where the keyring comes from is DESIGN §4: ``$CREDENTIALS_DIRECTORY/lucidd.keyring`` (systemd
``LoadCredentialEncrypted=``), else the configured path, else ``<state>/keys/keyring``, created
on first start. Keys are never read from the environment or argv; the caller passes the
credentials directory it took from the environment at the edge.

A keyring file is refused unless it is a regular file (not a symlink) owned by the effective
uid with no group or other permission bits and a single hard link, in a folder owned by the
effective uid (or root: systemd's credentials folder, ``/etc/lucidd``) that neither group nor
others can write. A second link would be a name for the keys outside that folder (made before
the file was ours to guard, or in a folder someone else controls); a folder of another user's
could have its keyring swapped. Errors are :class:`~lucidd.errors.KeyringError` naming the
path, the problem and the fix; they never contain key material. The text format itself
belongs to :mod:`lucidd.crypto`.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from lucidd.crypto import Keyring, is_locked
from lucidd.errors import KeyringError, PassphraseError

__all__ = [
    "CREDENTIAL_NAME",
    "KEYRING_DIR_MODE",
    "KEYRING_FILE_MODE",
    "OpenedKeyring",
    "Unlock",
    "create_keyring",
    "load_keyring",
    "open_keyring",
    "read_keyring_file",
    "remove_keyring_temps",
    "replace_keyring",
    "resolve_keyring",
    "state_keyring_path",
    "write_keyring",
]

CREDENTIAL_NAME: Final = "lucidd.keyring"
"""File name of the keyring inside ``$CREDENTIALS_DIRECTORY``."""
KEYRING_FILE_MODE: Final = 0o600
KEYRING_DIR_MODE: Final = 0o700
_GROUP_OTHER_BITS: Final = 0o077
_GROUP_OTHER_WRITE: Final = 0o022
_ROOT_UID: Final = 0
MAX_KEYRING_FILE_SIZE: Final = 256 * 1024
"""Far above 1024 keys (~80 bytes a line); a bound on what a bad path can make us read."""
_TEMP_SUFFIX_BYTES: Final = 8


def state_keyring_path(state_dir: Path) -> Path:
    """Default keyring location under the state folder: ``<state>/keys/keyring``."""
    return state_dir / "keys" / "keyring"


def _check_parent(path: Path, what: str = "keyring") -> None:
    """Refuse a folder of ``path`` that is not ours (nor root's) or that group/others can write.

    ``what`` names the file in messages (:mod:`lucidd.daemon.signing_key` shares the checks).
    """
    parent = path.parent
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise KeyringError(
            f"cannot inspect {what} folder {parent}: {exc.strerror}", path=str(parent)
        ) from None
    euid = os.geteuid()
    if st.st_uid not in (euid, _ROOT_UID):
        raise KeyringError(
            f"{what} folder {parent} is owned by uid {st.st_uid}, not by lucidd's uid {euid} "
            f"(or root); fix with: chown {euid} {parent}, or move the {what}",
            path=str(parent),
        )
    if st.st_mode & _GROUP_OTHER_WRITE:
        raise KeyringError(
            f"{what} folder {parent} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); fix with: chmod 700 {parent}",
            path=str(parent),
        )


def _check_file(path: Path, st: os.stat_result, what: str = "keyring") -> None:
    """Refuse what ``st`` (of the open ``path``) shows unsafe; ``what`` names the file."""
    if not stat.S_ISREG(st.st_mode):
        raise KeyringError(f"{what} {path} is not a regular file", path=str(path))
    euid = os.geteuid()
    if st.st_uid != euid:
        raise KeyringError(
            f"{what} {path} is owned by uid {st.st_uid}, not by lucidd's uid {euid}; "
            f"fix with: chown {euid} {path}",
            path=str(path),
        )
    if st.st_nlink > 1:
        raise KeyringError(
            f"{what} {path} has {st.st_nlink} hard links; another name for it may be "
            f"readable elsewhere: fix with: cp -p {path} {path}.new && mv {path}.new {path} "
            "(then remove the other names)",
            path=str(path),
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & _GROUP_OTHER_BITS:
        raise KeyringError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); "
            f"fix with: chmod 600 {path}",
            path=str(path),
        )


def _read_all(fd: int, path: Path) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, MAX_KEYRING_FILE_SIZE + 1 - total):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_KEYRING_FILE_SIZE:
            raise KeyringError(
                f"keyring {path} is larger than {MAX_KEYRING_FILE_SIZE} bytes", path=str(path)
            )
    return b"".join(chunks)


def open_key_file(path: Path, what: str, *, symlink_fix: str, missing_fix: str) -> int:
    """Open a key file (``what``: "keyring", "signing key") without following a symlink and
    check its folder and the open descriptor (``fstat``: a file swapped after a check cannot
    be read); the descriptor, for the caller to read and close. KeyringError naming the path,
    the problem and the fix (``symlink_fix``, ``missing_fix``) otherwise."""
    _check_parent(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyringError(
                f"{what} {path} is a symlink; {symlink_fix}", path=str(path)
            ) from None
        if exc.errno == errno.ENOENT:
            raise KeyringError(
                f"{what} {path} does not exist; {missing_fix}", path=str(path)
            ) from None
        raise KeyringError(f"cannot open {what} {path}: {exc.strerror}", path=str(path)) from None
    try:
        _check_file(path, os.fstat(fd), what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_keyring_file(path: Path) -> bytes:
    """Open and check the keyring file at ``path`` and return its text, plain or locked.

    Opens with ``O_NOFOLLOW`` and checks the open descriptor (``fstat``), so a symlink or a file
    swapped after a check cannot be read. Raises :class:`KeyringError` if the file is missing, a
    symlink, not regular, not owned by the effective uid, has any group/other mode bit or more
    than one hard link, or lies in a folder not ours (nor root's) or group/other-writable.
    """
    fd = open_key_file(
        path,
        "keyring",
        symlink_fix="lucidd refuses symlinked keyrings: point the configuration at the real file",
        missing_fix="create one with 'lucidd keygen'",
    )
    try:
        return _read_all(fd, path)
    finally:
        os.close(fd)


def load_keyring(path: Path, passphrase: Callable[[Path], bytes] | None = None) -> Keyring:
    """Open, check (as :func:`read_keyring_file`) and parse the keyring at ``path``.

    A passphrase-locked keyring is unlocked with ``passphrase(path)`` (one Argon2id derivation,
    docs/keys.md); without ``passphrase`` it is refused. :class:`KeyringError` if malformed,
    :class:`~lucidd.errors.PassphraseError` if the passphrase is wrong or cannot be had.
    """
    data = read_keyring_file(path)
    try:
        if not is_locked(data):
            return Keyring.parse(data)
        if passphrase is None:
            raise KeyringError(
                "it is passphrase-locked, and this command cannot unlock it: remove the "
                "passphrase with 'lucidd keys passwd --remove' first"
            )
        return Keyring.unlock(data, passphrase(path))
    except PassphraseError as exc:
        raise PassphraseError(f"keyring {path}: {exc.message}", path=str(path)) from None
    except KeyringError as exc:
        raise KeyringError(f"keyring {path}: {exc.message}", path=str(path)) from None


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_file(path: Path, data: bytes) -> None:
    """Durably create ``path`` (mode 0600) holding ``data``; FileExistsError if it exists.

    The data goes to an ``O_EXCL`` temp file in the same folder, is fsynced, then *linked* to
    ``path``: ``link`` fails on an existing target, so unlike ``rename`` it never replaces a
    keyring, not even one created concurrently. The temp name is then removed and the folder
    fsynced, so the new name is durable when this returns.
    """
    _publish(path, data, os.link)


def _publish(path: Path, data: bytes, put: Callable[[Path, Path], None]) -> None:
    """``data`` in a fsynced ``O_EXCL`` temp file (0600) beside ``path``, given ``path``'s name
    by ``put(temp, path)`` (``os.link``: create only; ``os.replace``: atomic replace); the temp
    name is removed and the folder fsynced."""
    folder = path.parent
    temp = folder / f".{path.name}.tmp-{os.urandom(_TEMP_SUFFIX_BYTES).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, KEYRING_FILE_MODE)
    try:
        try:
            os.fchmod(fd, KEYRING_FILE_MODE)  # the umask may only have removed bits; be exact
            _write_fd(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        put(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(folder)


def write_keyring(keyring: Keyring | bytes, dest: Path | BinaryIO) -> None:
    """Write ``keyring`` as keyring file text (or write that text: a locked keyring's).

    ``dest`` is a path (created 0600, atomically and durably; an existing file is never
    overwritten: :class:`KeyringError`) or a binary file object such as ``sys.stdout.buffer``
    for ``lucidd keygen | systemd-creds encrypt - ...`` (the caller owns flushing it).
    """
    data = keyring.serialize() if isinstance(keyring, Keyring) else keyring
    if not isinstance(dest, Path):
        dest.write(data)
        return
    try:
        _write_new_file(dest, data)
    except FileExistsError:
        raise KeyringError(
            f"keyring {dest} already exists; lucidd never overwrites a keyring", path=str(dest)
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot write keyring {dest}: {exc.strerror}", path=str(dest)) from None


def replace_keyring(keyring: Keyring | bytes, path: Path) -> None:
    """Atomically and durably replace the keyring at ``path`` (``lucidd keys rotate``/``retire``,
    ``passwd``): ``keyring`` is a :class:`Keyring` or keyring file text (a locked one).

    The new text goes to an ``O_EXCL`` temp file (0600) in the same folder, is fsynced, renamed
    over ``path`` and the folder fsynced: when this returns the new keyring is durable, and a
    crash at any point leaves either the old keyring or the new one, whole. The folder gets
    the same checks as a load.
    """
    data = keyring.serialize() if isinstance(keyring, Keyring) else keyring
    _check_parent(path)
    try:
        _publish(path, data, os.replace)
    except OSError as exc:
        raise KeyringError(
            f"cannot replace keyring {path}: {exc.strerror}", path=str(path)
        ) from None


def remove_keyring_temps(path: Path) -> int:
    """Remove temp files a killed writer of ``path`` left (``.<name>.tmp-<hex>``); how many.

    They hold key material (0600) that ``lucidd keys retire`` would otherwise not remove. Only
    for a caller that knows no writer is running (``lucidd keys`` holds the state lock).
    """
    removed = 0
    for temp in path.parent.glob(f".{path.name}.tmp-*"):
        temp.unlink(missing_ok=True)
        removed += 1
    if removed:
        _fsync_dir(path.parent)
    return removed


def create_keyring(path: Path) -> Keyring:
    """Generate a keyring and store it at ``path`` (0600; a missing folder is made 0700).

    Refuses (KeyringError) to overwrite an existing file or to write into a folder that group or
    others can write.
    """
    folder = path.parent
    if not folder.exists():
        try:
            folder.mkdir(mode=KEYRING_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(folder, KEYRING_DIR_MODE)  # exact mode, whatever the umask
        except OSError as exc:
            raise KeyringError(
                f"cannot create keyring folder {folder}: {exc.strerror}", path=str(folder)
            ) from None
    _check_parent(path)
    keyring = Keyring.generate(time.time_ns())
    write_keyring(keyring, path)
    return keyring


def _lexists(path: Path) -> bool:
    """True for any directory entry, a dangling symlink included (so load can refuse it)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def resolve_keyring(
    state_dir: Path,
    configured_path: Path | None,
    credentials_directory: str | None,
    passphrase: Callable[[Path], bytes] | None = None,
) -> Keyring:
    """Find and load the daemon's keyring in the order of DESIGN §4.

    1. ``<credentials_directory>/lucidd.keyring`` if that entry exists (systemd credential,
       mode 0400, owned by us);
    2. else ``configured_path``, which must exist;
    3. else ``<state_dir>/keys/keyring``, created on first start.

    A passphrase-locked one is unlocked with ``passphrase`` (see :func:`load_keyring`).
    """
    if credentials_directory:
        credential = Path(credentials_directory) / CREDENTIAL_NAME
        if _lexists(credential):
            return load_keyring(credential, passphrase)
    if configured_path is not None:
        return load_keyring(configured_path, passphrase)
    default = state_keyring_path(state_dir)
    if _lexists(default):
        return load_keyring(default, passphrase)
    try:
        return create_keyring(default)
    except KeyringError:
        if _lexists(default):  # another process created it between our check and our link
            return load_keyring(default, passphrase)
        raise


Unlock = Callable[[Path], bytes]
"""How a command gets a locked keyring's passphrase (a prompt, a file)."""


@dataclass(frozen=True)
class OpenedKeyring:
    """A keyring file's keys, and the passphrase it was locked with (None: plain)."""

    keyring: Keyring
    passphrase: bytes | None

    def store(self, keyring: Keyring, path: Path) -> None:
        """Replace the file with ``keyring``, locked again under the same passphrase (one
        Argon2id derivation) if the file was locked."""
        replace_keyring(keyring if self.passphrase is None else keyring.lock(self.passphrase), path)


def open_keyring(path: Path, unlock: Unlock | None) -> OpenedKeyring:
    """Load the keyring at ``path``; a locked one with ``unlock(path)`` (refused without)."""
    seen: list[bytes] = []

    def remember(locked: Path) -> bytes:
        assert unlock is not None
        seen.append(unlock(locked))
        return seen[-1]

    keyring = load_keyring(path, remember if unlock is not None else None)
    return OpenedKeyring(keyring, seen[0] if seen else None)
