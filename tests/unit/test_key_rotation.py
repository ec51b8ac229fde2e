"""Unit tests for the pure parts of online rotation: which keys a keyring would take away from
sessions (aggregator.key_rotation.lacking_keys), and the CLI's view of the daemon's replies."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lucidd import protocol as p
from lucidd.crypto import Keyring
from lucidd.daemon.key_usage import KeyUsage, lacking_keys
from lucidd.daemon.keys_online import changed, created_text, describe
from lucidd.errors import KeyringError

S1, S2, S3 = (bytes([n]) * 16 for n in (1, 2, 3))


def test_a_superset_keyring_lacks_nothing() -> None:
    held = Keyring.generate()
    rotated = held.rotated()
    usage = KeyUsage({S1: held.current_id})
    assert lacking_keys(rotated, held, usage) == []


def test_a_keyring_without_a_key_in_use_or_with_other_bytes_under_its_id_lacks_it() -> None:
    held = Keyring.generate().rotated()
    spare = next(k for k in held.key_ids if k != held.current_id)
    usage = KeyUsage({S1: spare, S2: held.current_id})
    assert lacking_keys(held.without(spare), held, usage) == [spare]
    impostor = Keyring({held.current_id: bytes(32)}, held.current_id)
    assert lacking_keys(impostor, held, usage) == sorted({spare, held.current_id})


def test_a_key_no_session_uses_or_that_was_already_missing_is_not_counted() -> None:
    held = Keyring.generate().rotated()
    usage = KeyUsage({S1: held.current_id, S3: 424242})  # S3's key was never held
    spare = next(k for k in held.key_ids if k != held.current_id)
    assert lacking_keys(held.without(spare), held, usage) == []


def test_the_cli_shows_the_daemons_replies_in_the_offline_shapes() -> None:
    reply = p.KeysReply(
        req=1,
        current=7,
        keys=[
            p.KeyInfo(id=3, current=False, sessions=0),
            p.KeyInfo(id=7, current=True, sessions=2),
        ],
        missing=[p.MissingKey(session=S1, key_id=9)],
        unreadable=[S2],
    )
    listed = describe(reply, Path("/run/lucidd"))
    assert listed["current"] == 7 and listed["online"] is True
    assert listed["keys"] == [
        {"id": 3, "current": False, "created": None, "sessions": 0},
        {"id": 7, "current": True, "created": None, "sessions": 2},
    ]
    assert listed["sessions_missing_key"] == {str(uuid.UUID(bytes=S1)): 9}
    assert listed["unreadable"] == [str(uuid.UUID(bytes=S2))]
    rotated = p.KeysChanged(req=1, current=7, keys=2, rewrapped=5, added=7)
    assert changed(rotated) == {"added": 7, "current": 7, "rewrapped": 5}
    retired = p.KeysChanged(req=1, current=7, keys=1, retired=3)
    assert changed(retired) == {"retired": 3, "current": 7, "keys": 1}


def test_keys_record_when_they_were_made_and_old_keyrings_still_parse() -> None:
    made = Keyring.generate(1_700_000_000_123_456_789)
    rotated = made.rotated(1_800_000_000_000_000_000)
    text = rotated.serialize()
    assert Keyring.parse(text) == rotated
    assert Keyring.parse(text).created_ns(made.current_id) == 1_700_000_000_123_456_789
    assert created_text(rotated.created_ns(rotated.current_id)) == "2027-01-15T08:00:00Z"
    untimed = Keyring.generate()
    assert b"created" not in untimed.serialize()  # the text older lucidd reads, unchanged
    assert Keyring.parse(untimed.serialize()).created_ns(untimed.current_id) is None
    assert created_text(None) is None
    assert rotated.without(made.current_id).created_ns(made.current_id) is None


@pytest.mark.parametrize(
    "line",
    [
        "created 1 5",
        "created {id} 5\ncreated {id} 6",
        "created {id} 99999999999999999999",
        "created {id} -1",
    ],
)
def test_bad_created_lines_are_refused(line: str) -> None:
    keyring = Keyring.generate()
    lines = keyring.serialize().decode().split("\n")
    lines.insert(2, line.format(id=keyring.current_id))
    with pytest.raises(KeyringError):
        Keyring.parse("\n".join(lines).encode())
