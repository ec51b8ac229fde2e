"""``lucidd keys`` through a running daemon's control socket (layer 3, docs/keys.md).

When a daemon serves the state folder (it holds ``<state>/lucidd.lock``), ``list``, ``rotate``,
``rewrap`` and ``retire`` are requests to it: the aggregator, which owns the sessions'
metadata, does the work while clients keep streaming. One blocking connection, one request,
one reply, built with the sans-IO codec. The socket must be served by the state folder's
owner (``SO_PEERCRED``): a socket that someone else bound in the runtime folder is refused
before anything is sent. The results have the shapes of the offline commands'.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Final

from lucidd import protocol as p
from lucidd.daemon.folders import lock_state_folder
from lucidd.daemon.keyfile import CREDENTIAL_NAME, Unlock, open_keyring, read_keyring_file
from lucidd.errors import BusyError, InternalError, KeyringError, LucidError, error_from_wire

CONTROL_SOCKET: Final = "control.sock"
CONNECT_TIMEOUT_S: Final = 5.0
#: A rotation re-wraps every session before it answers: minutes for a very large folder.
REPLY_TIMEOUT_S: Final = 3600.0
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_READ_SIZE: Final = 64 * 1024
#: A keyring's text is a few dozen bytes per key; this bounds what ``keys load`` reads.
MAX_KEYRING_TEXT: Final = 1024 * 1024


def created_text(created_ns: int | None) -> str | None:
    """A key's creation time as ``keys list`` shows it: UTC, ISO 8601, to the second (None:
    the keyring does not say; keys made before keyrings recorded it)."""
    if created_ns is None:
        return None
    moment = datetime.datetime.fromtimestamp(created_ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(session_id: bytes) -> str:
    return str(uuid.UUID(bytes=session_id))


def ask(runtime_dir: Path, owner_uid: int, request: p.Message) -> p.Message:
    """Send ``request`` to the daemon at ``runtime_dir`` and return its reply; the daemon's
    typed error is raised as its LucidError. BusyError (75) if the socket cannot be reached:
    the folder is in use by a daemon this command cannot talk to."""
    path = runtime_dir / CONTROL_SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise BusyError(
                f"a daemon serves this state folder but its control socket {path} cannot be "
                f"reached ({exc.strerror}): pass its --runtime-dir, or stop it to change keys "
                "offline",
                path=str(path),
            ) from None
        _, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid != owner_uid:
            raise KeyringError(
                f"control socket {path} is served by uid {uid}, not by the state folder's "
                f"owner (uid {owner_uid}); refusing to talk to it",
                path=str(path),
            )
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.sendall(p.encode_frame(request))
        return _reply(sock, request.req)
    finally:
        sock.close()


def _reply(sock: socket.socket, req: int) -> p.Message:
    decoder = p.control_reply_decoder(_READ_SIZE * 16)  # a long list of sessions fits
    while True:
        event = decoder.next_event()
        if event is None:
            data = sock.recv(_READ_SIZE)
            if not data:
                raise BusyError("the daemon closed the control connection before it answered")
            decoder.receive_data(data)
            continue
        if not isinstance(event, p.FrameMessage):
            raise InternalError("unexpected frame on the control socket")
        message = event.message
        if isinstance(message, p.Error):
            raise _error(message)
        if message.req == req:
            return message


def _error(message: p.Error) -> LucidError:
    return error_from_wire(message.code, message.message)


def describe(reply: p.Message, runtime_dir: Path) -> dict[str, object]:
    """``keys list``'s result from a :class:`~lucidd.protocol.KeysReply`."""
    assert isinstance(reply, p.KeysReply)
    return {
        "keyring": f"the running daemon's (via {runtime_dir / CONTROL_SOCKET})",
        "current": reply.current,
        "keys": [
            {
                "id": k.id,
                "current": k.current,
                "created": created_text(k.created_ns),
                "sessions": k.sessions,
            }
            for k in reply.keys
        ],
        "sessions_missing_key": {_name(m.session): m.key_id for m in reply.missing},
        "unreadable": sorted(_name(s) for s in reply.unreadable),
        "online": True,
    }


def changed(reply: p.Message) -> dict[str, object]:
    """``rotate``/``rewrap``/``retire``'s result from a :class:`~lucidd.protocol.KeysChanged`."""
    assert isinstance(reply, p.KeysChanged)
    if reply.retired is not None:
        return {"retired": reply.retired, "current": reply.current, "keys": reply.keys}
    return {"added": reply.added, "current": reply.current, "rewrapped": reply.rewrapped}


def daemon_serves(state_dir: Path, runtime_dir: Path) -> bool:
    """Whether a daemon holds the state folder's lock: then ``lucidd keys`` asks that daemon.
    For a folder of another user's (whose lock we cannot open), whether its control socket is
    there: an admin asks the daemon; without one, the offline path says whose folder it is."""
    if not state_dir.is_dir():
        return False  # the offline path says what is wrong
    if state_dir.stat().st_uid != os.geteuid():
        return (runtime_dir / CONTROL_SOCKET).exists()
    try:
        fd = lock_state_folder(state_dir)
    except BusyError:
        return True
    os.close(fd)
    return False


def run_online(
    args: argparse.Namespace,
    state_dir: Path,
    runtime_dir: Path,
    keyring_path: Path,
    unlock: Unlock,
) -> dict[str, object]:
    """``list``/``rotate``/``rewrap``/``retire``/``load`` through the daemon serving
    ``state_dir``."""
    owner = state_dir.stat().st_uid
    command: str = args.keys_command

    def request(message: p.Message) -> p.Message:
        return ask(runtime_dir, owner, message)

    if command == "list":
        return describe(request(p.ListKeys(req=1)), runtime_dir)
    if command == "load":
        if args.credential is not None:
            text = decrypt_credential(args.credential)
        else:
            text = read_keyring_text(args.source)
        reply = request(p.LoadKeyring(req=1, keyring=text))
        assert isinstance(reply, p.KeysChanged)
        return {"loaded": True, "current": reply.current, "keys": reply.keys}
    if command == "retire" and args.keyring is not None:
        return retire_in_copy(keyring_path, args.key_id, request(p.ListKeys(req=1)), unlock)
    if args.keyring is not None:
        raise KeyringError(
            f"a daemon serves {state_dir}: '{command}' uses the daemon's keyring, not "
            f"{keyring_path}; to add a key to a file use 'lucidd keys add --keyring FILE'",
            path=str(keyring_path),
        )
    if command == "rotate":
        return changed(request(p.RotateKeys(req=1, new=args.new)))
    if command == "rewrap":
        return changed(request(p.RewrapKeys(req=1)))
    return changed(request(p.RetireKey(req=1, key_id=args.key_id)))


def read_keyring_text(source: str) -> bytes:
    """A keyring's text from a file (checked like the daemon's own keyring file) or from
    stdin (``-``: what ``systemd-creds decrypt ... -`` writes), bounded."""
    if source != "-":
        return read_keyring_file(Path(source))
    data = sys.stdin.buffer.read(MAX_KEYRING_TEXT + 1)
    if len(data) > MAX_KEYRING_TEXT:
        raise KeyringError(f"the keyring on stdin exceeds {MAX_KEYRING_TEXT} bytes")
    return data


def decrypt_credential(path: Path) -> bytes:
    """The keyring in an encrypted systemd credential (``systemd-creds decrypt``, which needs
    the host's credential key: root), through a pipe: never a file, argv or the environment."""
    # --name: systemd-creds checks that the credential was encrypted under this name.
    argv = ["systemd-creds", "decrypt", f"--name={CREDENTIAL_NAME}", str(path), "-"]
    try:
        done = subprocess.run(argv, capture_output=True, check=False, timeout=CONNECT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyringError(f"cannot run systemd-creds decrypt: {exc}", path=str(path)) from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        raise KeyringError(f"systemd-creds decrypt {path}: {reason[0]}", path=str(path))
    return done.stdout


def retire_in_copy(
    keyring_path: Path, key_id: int, listing: p.Message, unlock: Unlock
) -> dict[str, object]:
    """Remove ``key_id`` from a keyring file the daemon does not write (a decrypted credential)
    once the running daemon says no session needs it and it is not the daemon's current key:
    a daemon wraps only under its current key, so no session can come to need it later."""
    assert isinstance(listing, p.KeysReply)
    opened = open_keyring(keyring_path, unlock)
    keyring = opened.keyring
    if key_id not in keyring.key_ids:
        raise KeyringError(f"keyring {keyring_path} has no key {key_id}", key_id=key_id)
    if key_id in (keyring.current_id, listing.current):
        raise KeyringError(
            f"key {key_id} is the current key (of {keyring_path} or of the running daemon); "
            "rotate first, then retire it",
            key_id=key_id,
        )
    needing = sum(k.sessions for k in listing.keys if k.id == key_id)
    needing += sum(1 for m in listing.missing if m.key_id == key_id)
    if needing:
        raise KeyringError(
            f"key {key_id} still wraps {needing} session(s) of the running daemon; run "
            "'lucidd keys rewrap' first",
            key_id=key_id,
            sessions=needing,
        )
    if listing.unreadable:
        raise KeyringError(
            f"the daemon cannot tell which key {len(listing.unreadable)} session(s) need "
            "(unreadable metadata)",
            key_id=key_id,
        )
    opened.store(keyring.without(key_id), keyring_path)
    return {"retired": key_id, "current": keyring.current_id, "keys": len(keyring.key_ids) - 1}
