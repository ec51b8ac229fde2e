"""Where a keyring's passphrase comes from (layer 2, docs/keys.md "Passphrase").

The daemon asks for it once, in the supervisor, before any child starts, and tries in order:

1. ``$CREDENTIALS_DIRECTORY/lucidd.passphrase`` (systemd ``LoadCredentialEncrypted=``), checked
   as a keyring file is (ours, no group/other bits, one link, a safe folder);
2. ``systemd-ask-password`` when running under systemd (``$INVOCATION_ID``) with no terminal
   on stdin, if it is on ``PATH`` (it asks on the console or a password agent);
3. a terminal prompt (``getpass``) when stdin is a terminal.

Never argv, never the environment: those are readable by other processes (``/proc``) and end up
in logs and shell history. With none of them, :class:`~lucidd.errors.PassphraseError` says where
to put it. ``lucidd keys passwd`` reads new passphrases from a terminal (twice) or from a 0600
file (``--passphrase-file``, for scripts). Errors never contain a passphrase.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from lucidd.crypto import Keyring
from lucidd.daemon.keyfile import (
    CREDENTIAL_NAME,
    open_key_file,
    resolve_keyring,
    state_keyring_path,
)
from lucidd.errors import PassphraseError

PASSPHRASE_CREDENTIAL: Final = "lucidd.passphrase"
"""File name of the passphrase inside ``$CREDENTIALS_DIRECTORY``."""
MAX_PASSPHRASE_SIZE: Final = 4096
"""Far above any passphrase; a bound on what a bad file can make us read."""
ASK_PASSWORD: Final = "systemd-ask-password"
ASK_PASSWORD_ID: Final = "lucidd:keyring"
ASK_TIMEOUT_S: Final = 90  # systemd-ask-password's own default


def _strip_newline(secret: bytes) -> bytes:
    """``echo pass > file`` and ``systemd-ask-password`` end the passphrase with a newline."""
    if secret.endswith(b"\r\n"):
        return secret[:-2]
    return secret.removesuffix(b"\n")


def read_passphrase_file(path: Path, what: str = "passphrase file") -> bytes:
    """The passphrase in ``path``: one line (a final newline is not part of it).

    The file is checked as a keyring file is (:func:`~lucidd.daemon.keyfile.open_key_file`:
    ours, mode 0600 or 0400, one link, a safe folder: KeyringError naming the fix);
    PassphraseError if it is empty or larger than :data:`MAX_PASSPHRASE_SIZE`.
    """
    fd = open_key_file(
        path,
        what,
        symlink_fix="point at the real file",
        missing_fix="create it (mode 0600) holding the passphrase",
    )
    try:
        data = os.read(fd, MAX_PASSPHRASE_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PASSPHRASE_SIZE:
        raise PassphraseError(
            f"{what} {path} is larger than {MAX_PASSPHRASE_SIZE} bytes", path=str(path)
        )
    secret = _strip_newline(data)
    if not secret:
        raise PassphraseError(f"{what} {path} is empty", path=str(path))
    return secret


def _ask_password(keyring: Path) -> bytes:
    argv = [
        ASK_PASSWORD,
        f"--id={ASK_PASSWORD_ID}",
        f"--timeout={ASK_TIMEOUT_S}",
        f"Passphrase for lucidd keyring {keyring}:",
    ]
    try:
        done = subprocess.run(  # fixed argv, no shell
            argv, capture_output=True, check=False, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise PassphraseError(f"cannot run {ASK_PASSWORD}: {exc.strerror}") from None
    secret = _strip_newline(done.stdout)
    if done.returncode != 0 or not secret:
        raise PassphraseError(
            f"{ASK_PASSWORD} gave no passphrase for keyring {keyring} (status {done.returncode})",
            path=str(keyring),
        )
    return secret


def _prompt(keyring: Path) -> bytes:
    try:
        secret = getpass.getpass(f"Passphrase for lucidd keyring {keyring}: ")
    except EOFError:
        secret = ""
    if not secret:
        raise PassphraseError("no passphrase was typed", path=str(keyring))
    return secret.encode("utf-8")


class PassphraseSource:
    """The daemon's passphrase, from the first source of the module's order that exists.

    Called (by :func:`~lucidd.daemon.keyfile.resolve_keyring`) only if the keyring is locked;
    ``used`` then says so, and the supervisor hands the unlocked keyring to its children in
    memory rather than by path.
    """

    def __init__(self, credentials_directory: str | None, under_systemd: bool) -> None:
        self.credentials_directory = credentials_directory
        self.under_systemd = under_systemd
        self.used = False

    def __call__(self, keyring: Path) -> bytes:
        self.used = True
        if self.credentials_directory:
            credential = Path(self.credentials_directory) / PASSPHRASE_CREDENTIAL
            if os.path.lexists(credential):
                return read_passphrase_file(credential, "passphrase credential")
        interactive = sys.stdin is not None and sys.stdin.isatty()
        if self.under_systemd and not interactive and shutil.which(ASK_PASSWORD):
            return _ask_password(keyring)
        if interactive:
            return _prompt(keyring)
        raise PassphraseError(
            f"keyring {keyring} is passphrase-locked and no passphrase can be had: put it in "
            f"$CREDENTIALS_DIRECTORY/{PASSPHRASE_CREDENTIAL} (systemd LoadCredentialEncrypted="
            f"{PASSPHRASE_CREDENTIAL}), or start lucidd serve on a terminal",
            path=str(keyring),
        )


def daemon_keyring(
    state_dir: str, configured: str, credentials: str | None, env: Mapping[str, str]
) -> tuple[Path, Keyring | None]:
    """Load (or create) the daemon's keyring (:func:`~lucidd.daemon.keyfile.resolve_keyring`):
    the file the children should load, and, if that file is passphrase-locked, the keyring
    unlocked here (once: one Argon2id derivation), which the supervisor hands the children in
    their spec since they cannot unlock it. ``env`` only says whether systemd started us
    (``$INVOCATION_ID``). PassphraseError (exit 78) if the passphrase is wrong or none can be
    had."""
    configured_path = Path(configured) if configured else None
    passphrase = PassphraseSource(credentials, under_systemd=bool(env.get("INVOCATION_ID")))
    keyring = resolve_keyring(Path(state_dir), configured_path, credentials, passphrase)
    unlocked = keyring if passphrase.used else None
    if credentials and os.path.lexists(Path(credentials) / CREDENTIAL_NAME):
        return Path(credentials) / CREDENTIAL_NAME, unlocked
    if configured_path is not None:
        return configured_path, unlocked
    return state_keyring_path(Path(state_dir)), unlocked


def new_passphrase(passphrase_file: Path | None) -> bytes:
    """A new passphrase for ``lucidd keys passwd``: from ``passphrase_file`` (0600), else typed
    twice on the terminal; PassphraseError if they differ, it is empty or there is no terminal.
    """
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if sys.stdin is None or not sys.stdin.isatty():
        raise PassphraseError("no terminal to type the new passphrase: use --passphrase-file")
    first = getpass.getpass("New passphrase: ")
    if not first:
        raise PassphraseError("the passphrase must not be empty")
    if getpass.getpass("Repeat the new passphrase: ") != first:
        raise PassphraseError("the two passphrases differ; nothing was changed")
    return first.encode("utf-8")


def current_passphrase(passphrase_file: Path | None) -> bytes:
    """The passphrase a keyring is locked with now, for ``lucidd keys passwd``: from
    ``passphrase_file`` (``--old-passphrase-file``), else typed on the terminal."""
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if sys.stdin is None or not sys.stdin.isatty():
        raise PassphraseError(
            "the keyring is locked and there is no terminal to type its passphrase: "
            "use --old-passphrase-file"
        )
    secret = getpass.getpass("Current passphrase: ")
    if not secret:
        raise PassphraseError("no passphrase was typed")
    return secret.encode("utf-8")
