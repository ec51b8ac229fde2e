"""``lucidd keys``: list, rotate, rewrap, retire, export master keys; add one to a keyring
file; lock them with a passphrase (``passwd``) (layer 3, docs/keys.md).

When a daemon serves the state folder (it holds the folder's lock), ``list``, ``rotate``,
``rewrap`` and ``retire`` are requests on its control socket (:mod:`lucidd.daemon.keys_online`):
the daemon rotates online. Otherwise they work on the files of the stopped folder:
``rotate``, ``rewrap``, ``retire`` and ``passwd`` take the state folder's lock
(:func:`~lucidd.daemon.folders.lock_state_folder`) for their whole run, so no daemon can start
on it while they write; ``list``, ``export`` and ``add`` only read the sessions (``add`` writes
just the keyring file it is given, for the systemd credential recipe).

Rotation is crash-safe by order: the keyring holding the new *and* the old keys is durable
before any session is re-wrapped, each session's metadata is then replaced atomically (temp
file, fsync, rename, folder fsync), and no key leaves the keyring until ``retire`` has seen
that no session names it. A session is therefore always wrapped under a key the keyring holds.
``rotate`` adds a key only when every session already uses the current one; otherwise a
previous rotation was cut short and it finishes that one instead (as ``rewrap`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import msgspec

from lucidd.crypto import Keyring, is_locked, rewrap_secret
from lucidd.daemon import keys_online
from lucidd.daemon.config_load import load_config
from lucidd.daemon.default_dirs import resolve_dirs
from lucidd.daemon.folders import lock_state_folder
from lucidd.daemon.key_usage import KeyUsage, check_retirable, key_usage
from lucidd.daemon.keyfile import (
    Unlock,
    load_keyring,
    open_keyring,
    read_keyring_file,
    remove_keyring_temps,
    replace_keyring,
    state_keyring_path,
    write_keyring,
)
from lucidd.daemon.passphrase import current_passphrase, new_passphrase
from lucidd.daemon.store import list_session_dirs, read_meta, session_dir_name, write_meta
from lucidd.errors import BusyError, KeyringError, LucidError

#: Test-only fault injection (tests/integration/test_keys.py): ``rotate``/``rewrap`` SIGKILL
#: themselves after re-wrapping this many sessions, to show a crash mid-rewrap is harmless.
KILL_AFTER_ENV: Final = "LUCIDD_TEST_KEYS_KILL_AFTER"
#: What a running daemon does itself (through its control socket) instead of the files.
ONLINE_COMMANDS: Final = frozenset({"list", "rotate", "rewrap", "retire", "load"})


def describe_keys(keyring: Keyring, usage: KeyUsage) -> dict[str, object]:
    """``keys list``'s result (``created``: null for keys made before keyrings recorded it)."""
    keys = [
        {
            "id": key_id,
            "current": key_id == keyring.current_id,
            "created": keys_online.created_text(keyring.created_ns(key_id)),
            "sessions": usage.count(key_id),
        }
        for key_id in keyring.key_ids
    ]
    missing = {
        session_dir_name(sid): kid
        for sid, kid in usage.by_session.items()
        if kid not in keyring.key_ids
    }
    return {
        "current": keyring.current_id,
        "keys": keys,
        "sessions_missing_key": missing,
        "unreadable": sorted(session_dir_name(sid) for sid in usage.unreadable),
    }


def rewrap_all(
    state_dir: Path, keyring: Keyring, usage: KeyUsage, kill_after: int | None = None
) -> tuple[int, list[str]]:
    """Re-wrap every session not under the current key; (how many, the ones that failed).

    Each new metadata is durable (temp file, fsync, rename, folder fsync: store.write_meta)
    before the next session is touched. ``kill_after`` is the test-only fault injection.
    """
    done = 0
    failed: list[str] = []
    for session_id, paths in list_session_dirs(state_dir):
        if usage.by_session.get(session_id, keyring.current_id) == keyring.current_id:
            continue
        if kill_after is not None and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            meta = read_meta(paths)
            wrapped = rewrap_secret(keyring, session_id, meta.wrapped_secret)
            write_meta(paths, msgspec.structs.replace(meta, wrapped_secret=wrapped))
        except (OSError, LucidError) as exc:
            failed.append(f"{session_dir_name(session_id)} ({exc})")
            continue
        done += 1
    return done, failed


def rotate(
    state_dir: Path,
    keyring_path: Path,
    *,
    force_new: bool,
    kill_after: int | None = None,
    unlock: Unlock | None = None,
) -> dict[str, object]:
    """Add a key if every session uses the current one (or ``force_new``), then re-wrap.

    The daemon must be stopped (the caller holds the state lock). A locked keyring is opened
    with ``unlock`` and locked again under the same passphrase. KeyringError (exit 78) at
    the end naming any session that could not be re-wrapped; the others are done.
    """
    opened = open_keyring(keyring_path, unlock)
    keyring = opened.keyring
    usage = key_usage(state_dir)
    stale = [
        sid
        for sid, kid in usage.by_session.items()
        if kid != keyring.current_id and kid in keyring.key_ids
    ]
    added: int | None = None
    if force_new or not stale:
        keyring = keyring.rotated(time.time_ns())
        opened.store(keyring, keyring_path)  # durable before any session names the new key
        added = keyring.current_id
    rewrapped, failed = rewrap_all(state_dir, keyring, usage, kill_after)
    _raise_failed(failed, usage)
    return {"added": added, "current": keyring.current_id, "rewrapped": rewrapped}


def rewrap(
    state_dir: Path,
    keyring_path: Path,
    kill_after: int | None = None,
    unlock: Unlock | None = None,
) -> dict[str, object]:
    """Re-wrap every session under the current key; adds no key."""
    keyring = open_keyring(keyring_path, unlock).keyring
    usage = key_usage(state_dir)
    rewrapped, failed = rewrap_all(state_dir, keyring, usage, kill_after)
    _raise_failed(failed, usage)
    return {"added": None, "current": keyring.current_id, "rewrapped": rewrapped}


def _raise_failed(failed: list[str], usage: KeyUsage) -> None:
    bad = failed + [f"{session_dir_name(s)} ({why})" for s, why in usage.unreadable.items()]
    if bad:
        raise KeyringError(
            f"{len(bad)} session(s) could not be re-wrapped: {'; '.join(sorted(bad))}",
            sessions=len(bad),
        )


def retire(
    state_dir: Path, keyring_path: Path, key_id: int, unlock: Unlock | None = None
) -> dict[str, object]:
    """Remove ``key_id`` once no session's metadata names it; KeyringError (78) otherwise."""
    opened = open_keyring(keyring_path, unlock)
    keyring = opened.keyring
    if key_id not in keyring.key_ids:
        raise KeyringError(f"the keyring has no key {key_id}", key_id=key_id)
    if key_id == keyring.current_id:
        raise KeyringError(
            f"key {key_id} is the current key; rotate first, then retire it", key_id=key_id
        )
    check_retirable(key_id, key_usage(state_dir))
    opened.store(keyring.without(key_id), keyring_path)
    return {"retired": key_id, "current": keyring.current_id, "keys": len(keyring.key_ids) - 1}


def passwd(
    keyring_path: Path, new: Callable[[], bytes] | None, old: Callable[[Path], bytes]
) -> dict[str, object]:
    """Lock the keyring with the passphrase ``new()``, or store it unlocked (``new`` None).

    A locked keyring is first opened with ``old(path)``. The file is replaced atomically
    (:func:`~lucidd.daemon.keyfile.replace_keyring`); the keys are the same, so sessions are
    untouched. Costs one Argon2id derivation per lock and unlock. KeyringError (78) if
    removing a passphrase from a keyring that has none.
    """
    was_locked = is_locked(read_keyring_file(keyring_path))
    keyring = load_keyring(keyring_path, old)
    if new is None:
        if not was_locked:
            raise KeyringError(
                f"keyring {keyring_path} has no passphrase to remove", path=str(keyring_path)
            )
        replace_keyring(keyring, keyring_path)
    else:
        replace_keyring(keyring.lock(new()), keyring_path)
    return {"keyring": str(keyring_path), "locked": new is not None, "was_locked": was_locked}


@contextmanager
def stopped_state_folder(state_dir: Path) -> Iterator[None]:
    """Hold the state folder's lock: refuse (BusyError, 75) if a daemon is running on it."""
    if not state_dir.is_dir():
        raise KeyringError(f"state folder {state_dir} does not exist", path=str(state_dir))
    owner = state_dir.stat().st_uid
    if owner != os.geteuid():  # new metadata would be ours, and unreadable to the daemon
        raise KeyringError(
            f"state folder {state_dir} belongs to uid {owner}: run lucidd keys as the "
            f"daemon's user (for example: runuser -u lucidd -- lucidd keys ...)",
            path=str(state_dir),
        )
    try:
        fd = lock_state_folder(state_dir)
    except BusyError as err:
        raise BusyError(
            f"{err.message}; stop it first: lucidd keys changes keys only on a stopped "
            "state folder",
            path=str(state_dir),
        ) from None
    try:
        yield
    finally:
        os.close(fd)


def add_key(keyring_path: Path, unlock: Unlock) -> dict[str, object]:
    """Add a random master key to the keyring file and make it current; no session is touched
    (a daemon starts using it on reload or restart). A locked keyring is locked again under
    the same passphrase. For a decrypted copy of a systemd credential (docs/keys.md)."""
    opened = open_keyring(keyring_path, unlock)
    keyring = opened.keyring.rotated(time.time_ns())
    opened.store(keyring, keyring_path)
    return {
        "keyring": str(keyring_path),
        "added": keyring.current_id,
        "current": keyring.current_id,
        "keys": len(keyring.key_ids),
    }


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``lucidd keys`` subcommands."""
    keys = sub.add_parser("keys", help="list, rotate, retire or export master keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML config file")
    common.add_argument("--state-dir", help="folder for sessions and keys")
    common.add_argument("--keyring", type=Path, help="keyring file (default: as configured)")
    common.add_argument(
        "--runtime-dir", help="a running daemon's runtime folder (its control socket)"
    )
    common.add_argument("--json", action="store_true", help="print one JSON object")
    unlocking = argparse.ArgumentParser(add_help=False)
    unlocking.add_argument(
        "--old-passphrase-file",
        type=Path,
        help="a locked keyring's passphrase from this file (0600; default: a terminal prompt)",
    )
    changing = [common, unlocking]
    rot = keys_sub.add_parser("rotate", parents=changing, help="new current key; re-wrap all")
    rot.add_argument("--new", action="store_true", help="add a key even to finish a rotation")
    keys_sub.add_parser("rewrap", parents=changing, help="re-wrap sessions under the current key")
    keys_sub.add_parser(
        "add", parents=changing, help="add a current key to a keyring file; no session is touched"
    )
    load = keys_sub.add_parser(
        "load",
        parents=[common],
        help="give the running daemon this keyring (a decrypted credential; systemctl reload)",
    )
    load.add_argument("source", nargs="?", default="-", help="keyring file, or - for stdin")
    load.add_argument(
        "--credential",
        type=Path,
        help="decrypt this systemd credential (systemd-creds decrypt; root) and load it",
    )
    ret = keys_sub.add_parser("retire", parents=changing, help="remove a key no session needs")
    ret.add_argument("key_id", type=int, metavar="ID")
    new_passphrase_file = argparse.ArgumentParser(add_help=False)
    new_passphrase_file.add_argument(
        "--passphrase-file",
        type=Path,
        help="the new passphrase from this file (0600; default: typed twice on a terminal)",
    )
    keys_sub.add_parser(
        "list", parents=[common, unlocking], help="key ids, current, sessions wrapped"
    )
    exp = keys_sub.add_parser(
        "export",
        parents=[common, unlocking, new_passphrase_file],
        help="copy the keyring for backup",
    )
    exp.add_argument("-o", "--output", type=Path, required=True, help="file to create (0600)")
    exp.add_argument("--lock", action="store_true", help="lock the copy with a new passphrase")
    pw = keys_sub.add_parser(
        "passwd",
        parents=[common, unlocking, new_passphrase_file],
        help="lock the keyring with a passphrase, change it, or remove it",
    )
    pw.add_argument("--remove", action="store_true", help="store the keyring unlocked")


def run_keys(args: argparse.Namespace, config_file: Path | None) -> int:
    """Run one ``lucidd keys`` subcommand; LucidError for the caller to report."""
    toml_text = config_file.read_bytes() if config_file is not None else None
    env = dict(os.environ)
    overrides = {"state_dir": args.state_dir, "runtime_dir": args.runtime_dir}
    config = load_config(toml_text, env, overrides)
    config = resolve_dirs(config, env, str(Path.home()), os.getuid())
    state_dir = Path(config.state_dir)
    keyring_path: Path = args.keyring or (
        Path(config.keyring) if config.keyring else state_keyring_path(state_dir)
    )
    kill = env.get(KILL_AFTER_ENV)
    kill_after = int(kill) if kill else None
    command: str = args.keys_command
    result: dict[str, object]

    def unlock(_: Path) -> bytes:  # list, export, passwd: a locked keyring's passphrase
        return current_passphrase(args.old_passphrase_file)

    runtime_dir = Path(config.runtime_dir)
    # "list --keyring FILE" reads that file beside the daemon (a decrypted credential's copy).
    listing_a_file = command == "list" and args.keyring is not None
    if (
        command in ONLINE_COMMANDS
        and not listing_a_file
        and keys_online.daemon_serves(state_dir, runtime_dir)
    ):
        result = keys_online.run_online(args, state_dir, runtime_dir, keyring_path, unlock)
    elif command == "load":
        raise BusyError(
            f"no daemon serves {state_dir}: 'lucidd keys load' gives a keyring to a running "
            "one (a stopped daemon reads its keyring when it starts)",
            path=str(state_dir),
        )
    elif command == "add":
        result = add_key(keyring_path, unlock)
    elif command == "list":
        result = {"keyring": str(keyring_path)}
        keyring = load_keyring(keyring_path, unlock)
        result |= describe_keys(keyring, key_usage(state_dir))
    elif command == "export":
        keyring = load_keyring(keyring_path, unlock)
        locked = keyring.lock(new_passphrase(args.passphrase_file)) if args.lock else keyring
        write_keyring(locked, args.output)
        result = {"exported": str(args.output)} | ({"locked": True} if args.lock else {})
    else:
        with stopped_state_folder(state_dir):
            remove_keyring_temps(keyring_path)  # a killed run's copies of the keys
            if command == "passwd":
                result = passwd(
                    keyring_path,
                    None if args.remove else lambda: new_passphrase(args.passphrase_file),
                    unlock,
                )
            elif command == "rotate":
                result = rotate(
                    state_dir,
                    keyring_path,
                    force_new=args.new,
                    kill_after=kill_after,
                    unlock=unlock,
                )
            elif command == "rewrap":
                result = rewrap(state_dir, keyring_path, kill_after, unlock)
            else:
                result = retire(state_dir, keyring_path, args.key_id, unlock)
    _print(result, as_json=args.json)
    return 0


def _print(result: dict[str, object], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    keys = result.get("keys")
    if isinstance(keys, list):
        print(f"keyring {result['keyring']}")
        for key in keys:
            mark = " (current)" if key["current"] else ""
            created = key["created"] or "unknown"
            print(f"key {key['id']}{mark}: created {created}, wraps {key['sessions']} session(s)")
        for name, kid in dict(result["sessions_missing_key"]).items():  # type: ignore[call-overload]
            print(f"session {name} needs key {kid}, which the keyring lacks")
        for name in list(result["unreadable"]):  # type: ignore[call-overload]
            print(f"session {name}: metadata unreadable")
        return
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    sys.stdout.flush()
