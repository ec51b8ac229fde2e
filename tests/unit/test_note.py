"""Tests of lucidd.note: C2SP signed notes with Ed25519, and signed checkpoints.

Known answers: /work/shared/vectors/c2sp_signed_note.json, and the keys, signatures and
rejection cases of Go's golang.org/x/mod/sumdb/note/note_test.go (TestNewVerifier, TestNewSigner,
TestSign, TestOpen), ported here. Signing with Go's test key must give Go's note byte for byte.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lucidd.errors import FormatError, IntegrityError, LucidError
from lucidd.merkle import HASH_SIZE, Checkpoint
from lucidd.note import (
    ED25519_ALG,
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Note,
    NoteSignature,
    Signer,
    Verifier,
    is_valid_key_name,
    key_id,
    open_checkpoint,
    open_note,
    parse_note,
    sign_checkpoint,
    sign_note,
)

VECTORS_PATH = Path("/work/shared/vectors/c2sp_signed_note.json")
VECTOR: dict[str, Any] = json.loads(VECTORS_PATH.read_text())

# Public test keys of Go's golang.org/x/mod/sumdb/note/note_test.go (TestNewSigner, TestSign,
# TestOpen). The private key is Go's published test key, not a secret.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZ"
    "b6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33W"
    "Wd1RvMc+QQ=\n"
).encode()

PETER = Verifier.from_vkey(PETER_VKEY)
ENOCH = Verifier.from_vkey(ENOCH_VKEY)
PETER_SIGNER = Signer.from_skey(PETER_SKEY)
OTHER_SIGNER = Signer("Other", Ed25519PrivateKey.generate())

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- known answers ---------------------------------------------------------------------------


def test_the_c2sp_vector_verifies() -> None:
    verifier = Verifier.from_vkey(VECTOR["vkey"])
    assert verifier.name == VECTOR["key_name"]
    assert verifier.key_id.hex() == VECTOR["key_id_hex"]
    note, signed = open_note(VECTOR["signed_note"].encode(), [verifier])
    assert note.text == VECTOR["text"].encode()
    assert signed == (verifier,)
    assert [(s.name, s.key_id.hex()) for s in note.signatures] == [("PeterNeumann", "c74f20a3")]


def test_the_c2sp_vector_fails_when_one_text_byte_changes() -> None:
    data = bytearray(VECTOR["signed_note"].encode())
    data[0] ^= 0x20  # "I" -> "i": still a well-formed note
    with pytest.raises(IntegrityError, match=r"PeterNeumann\+c74f20a3"):
        open_note(bytes(data), [Verifier.from_vkey(VECTOR["vkey"])])


def test_signing_with_gos_test_key_gives_gos_note_byte_for_byte() -> None:
    # Go's TestSign: the "want" literal, which is also the vector's signed note.
    want = GO_TEXT + b"\n" + PETER_SIG
    assert sign_note(GO_TEXT, [PETER_SIGNER]) == want
    assert want == VECTOR["signed_note"].encode()


def test_gos_test_signer_matches_its_verifier_key() -> None:
    assert PETER_SIGNER.verifier == PETER
    assert PETER_SIGNER.verifier.vkey == PETER_VKEY
    assert PETER.key_id == bytes.fromhex("c74f20a3") == key_id("PeterNeumann", PETER.public_key)


def test_the_key_id_is_the_sha256_of_name_newline_alg_and_key() -> None:
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + PETER.public_key).digest()[:4]
    assert key_id("PeterNeumann", PETER.public_key) == expected
    assert key_id("PeterNeumanN", PETER.public_key) != expected


def test_verify_refuses_a_corrupt_signature_or_message() -> None:
    # Go's testSignerAndVerifier.
    sig = bytearray(PETER_SIGNER.sign(b"hi"))
    assert len(sig) == 64
    assert PETER.verify(b"hi", bytes(sig))
    assert not PETER.verify(b"hj", bytes(sig))
    sig[0] ^= 1
    assert not PETER.verify(b"hi", bytes(sig))
    assert not PETER.verify(b"hi", b"short")


# --- verifier and signer keys ----------------------------------------------------------------


def _manglings(key: str) -> list[str]:
    """Go's TestNewVerifier/TestNewSigner: every proper substring, every byte incremented."""
    found = [key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)]
    found.remove(key)
    found += [key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))]
    return found


def test_every_mangling_of_a_verifier_key_is_refused() -> None:
    for mangled in _manglings(PETER_VKEY):
        with pytest.raises(FormatError):
            Verifier.from_vkey(mangled)


def test_every_mangling_of_a_signer_key_is_refused() -> None:
    for mangled in _manglings(PETER_SKEY):
        with pytest.raises(FormatError):
            Signer.from_skey(mangled)


def _vkey_with_matching_id(name: str, encoded_key: bytes) -> str:
    kid = hashlib.sha256(name.encode() + b"\n" + encoded_key).digest()[:4]
    return f"{name}+{kid.hex()}+{base64.b64encode(encoded_key).decode()}"


def test_a_key_of_the_wrong_length_is_refused_even_with_a_matching_id() -> None:
    longer = bytes([ED25519_ALG]) + PETER.public_key + b"\0"
    with pytest.raises(FormatError, match="32 bytes"):
        Verifier.from_vkey(_vkey_with_matching_id("PeterNeumann", longer))


def test_an_unknown_algorithm_is_refused_even_with_a_matching_id() -> None:
    with pytest.raises(FormatError, match="algorithm 0x65"):
        Verifier.from_vkey(_vkey_with_matching_id("PeterNeumann", b"\x65" + PETER.public_key))


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # Go takes upper
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+",
        "PeterNeumann+c74f20a3",
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(FormatError):
        Verifier.from_vkey(vkey)


def test_a_verifier_built_with_a_wrong_key_id_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="key id"):
        Verifier("PeterNeumann", b"\0\0\0\0", PETER.public_key)
    with pytest.raises(ValueError, match="32 bytes"):
        Verifier("PeterNeumann", PETER.key_id, PETER.public_key[:31])
    with pytest.raises(ValueError, match="name"):
        Signer("has space", Ed25519PrivateKey.generate())


def test_the_signer_repr_shows_no_key_material() -> None:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    text = repr(PETER_SIGNER)
    assert "PeterNeumann" in text
    assert "c74f20a3" in text
    for spelling in (seed.hex(), base64.b64encode(seed).decode(), repr(seed)):
        assert spelling[:12] not in text
    assert not hasattr(PETER_SIGNER, "__dict__")


names = st.text(
    alphabet=st.characters(min_codepoint=0x21, blacklist_categories=("Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=30,
).filter(is_valid_key_name)


@PROPERTY
@given(name=names, public_key=st.binary(min_size=32, max_size=32))
def test_vkey_round_trip(name: str, public_key: bytes) -> None:
    verifier = Verifier(name, key_id(name, public_key), public_key)
    assert Verifier.from_vkey(verifier.vkey) == verifier
    assert verifier.vkey.startswith(f"{name}+{verifier.key_id.hex()}+")


# --- signing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [b"", b"abc", b"a\tb\n", b"a\rb\n", b"\x00\n", b"\xff\n", b"caf\xc3\n"],
    ids=["empty", "no-newline", "tab", "cr", "nul", "not-utf8", "cut-utf8"],
)
def test_sign_note_refuses_text_that_no_reader_would_accept(text: bytes) -> None:
    with pytest.raises(ValueError):
        sign_note(text, [PETER_SIGNER])


def test_sign_note_needs_one_to_a_hundred_signers() -> None:
    with pytest.raises(ValueError, match="signers"):
        sign_note(GO_TEXT, [])
    with pytest.raises(ValueError, match="signers"):
        sign_note(GO_TEXT, [PETER_SIGNER] * (MAX_SIGNATURES + 1))
    note = sign_note(GO_TEXT, [PETER_SIGNER] * MAX_SIGNATURES)
    assert len(parse_note(note).signatures) == MAX_SIGNATURES


def test_sign_note_refuses_a_note_over_the_size_limit() -> None:
    with pytest.raises(ValueError, match="exceed"):
        sign_note(b"x" * (MAX_NOTE_SIZE - 10) + b"\n", [PETER_SIGNER])


def test_signers_sign_in_order_and_each_one_verifies() -> None:
    data = sign_note(GO_TEXT, [PETER_SIGNER, OTHER_SIGNER])
    assert data.startswith(GO_TEXT + b"\n" + PETER_SIG + "— Other ".encode())
    note, signed = open_note(data, [OTHER_SIGNER.verifier, PETER])
    assert signed == (PETER, OTHER_SIGNER.verifier)
    assert [s.name for s in note.signatures] == ["PeterNeumann", "Other"]


# --- Go's TestOpen ---------------------------------------------------------------------------


def test_open_checks_the_known_key_and_keeps_the_unknown_signature() -> None:
    note, signed = open_note(GO_TEXT + b"\n" + PETER_SIG + ENOCH_SIG, [PETER])
    assert note.text == GO_TEXT
    assert signed == (PETER,)
    assert [(s.name, s.key_id.hex()) for s in note.signatures] == [
        ("PeterNeumann", "c74f20a3"),
        ("EnochRoot", "af0cfe78"),
    ]


def test_open_checks_both_known_keys() -> None:
    _, signed = open_note(GO_TEXT + b"\n" + PETER_SIG + ENOCH_SIG, [PETER, ENOCH])
    assert signed == (PETER, ENOCH)


def test_open_without_a_known_key_names_the_keys_seen() -> None:
    with pytest.raises(IntegrityError) as err:
        open_note(GO_TEXT + b"\n" + PETER_SIG + ENOCH_SIG, [])
    assert str(err.value) == (
        "no signature from a known key: PeterNeumann+c74f20a3, EnochRoot+af0cfe78"
    )


def test_open_accepts_a_verifier_listed_twice() -> None:
    _, signed = open_note(GO_TEXT + b"\n" + ENOCH_SIG, [ENOCH, PETER, ENOCH])
    assert signed == (ENOCH,)


def test_open_refuses_more_than_a_hundred_signatures() -> None:
    data = GO_TEXT + b"\n" + PETER_SIG * (MAX_SIGNATURES + 1)
    for known in ([PETER], []):
        with pytest.raises(FormatError, match="more than 100"):
            open_note(data, known)
    assert open_note(GO_TEXT + b"\n" + PETER_SIG * MAX_SIGNATURES, [PETER])[1] == (PETER,)


def test_open_refuses_an_invalid_signature_by_a_known_key() -> None:
    bad = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(IntegrityError) as err:
        open_note(GO_TEXT + b"\n" + bad, [PETER])
    assert "PeterNeumann+c74f20a3" in str(err.value)
    assert err.value.context == {"key": "PeterNeumann+c74f20a3"}


def test_open_accepts_repeats_and_an_invalid_signature_by_an_unknown_key() -> None:
    enoch_bad = ENOCH_SIG[:60] + b"ABCD" + ENOCH_SIG[60:]
    data = GO_TEXT + b"\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_bad
    note, signed = open_note(data, [PETER])
    assert signed == (PETER,)
    assert len(note.signatures) == 5


def test_open_checks_every_signature_of_a_known_key_not_just_the_first() -> None:
    # Stricter than Go, which skips a known key's repeated signatures unchecked.
    bad = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(IntegrityError, match=r"PeterNeumann\+c74f20a3"):
        open_note(GO_TEXT + b"\n" + PETER_SIG + bad, [PETER])


@pytest.mark.parametrize(
    "data",
    [
        GO_TEXT,
        GO_TEXT + b"\n",
        GO_TEXT + b"\n" + PETER_SIG[:-1],
        b"\x01" + GO_TEXT + b"\n" + PETER_SIG,
        b"\xff" + GO_TEXT + b"\n" + PETER_SIG,
        GO_TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", b"Bad Name")[:-1],
        GO_TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", b"Bad Name"),
        GO_TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n",
        # Beyond Go's list:
        GO_TEXT + b"\n" + PETER_SIG + b"\n",  # an empty signature line
        GO_TEXT + b"\n" + PETER_SIG.replace("—".encode(), b"-"),
        GO_TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", b"Peter+Neumann"),
        GO_TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann ", b"PeterNeumann"),
        GO_TEXT + b"\n" + "— PeterNeumann AAAAAA==\n".encode(),  # key id, no signature
        GO_TEXT + b"\n" + PETER_SIG.replace(b"AM=", b"AN="),  # non-canonical padding bits
        GO_TEXT + b"\n" + PETER_SIG.replace(b"AM=", b"AM"),  # no padding
        GO_TEXT + b"\n" + PETER_SIG.replace(b"\n", b"\r\n"),
        b"\x1b[2J" + GO_TEXT + b"\n" + PETER_SIG,
    ],
)
def test_malformed_notes_are_refused(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_note(data)
    with pytest.raises(FormatError):
        open_note(data, [PETER])


def test_a_note_over_the_size_limit_is_refused_before_it_is_scanned() -> None:
    text = b"x" * MAX_NOTE_SIZE + b"\n"
    with pytest.raises(FormatError, match="larger than"):
        parse_note(text + b"\n" + PETER_SIG)


def test_parse_note_refuses_what_is_not_bytes() -> None:
    with pytest.raises(FormatError):
        parse_note(VECTOR["signed_note"])


def test_parse_note_splits_at_the_last_blank_line() -> None:
    text = b"one\n\ntwo\n\n"
    note = parse_note(sign_note(text, [PETER_SIGNER]))
    assert note == Note(
        text, (NoteSignature("PeterNeumann", PETER.key_id, note.signatures[0].signature),)
    )
    assert open_note(sign_note(text, [PETER_SIGNER]), [PETER])[0].text == text


def test_two_keys_with_one_name_and_id_are_a_caller_bug() -> None:
    twin = Verifier(PETER.name, PETER.key_id, PETER.public_key)
    object.__setattr__(twin, "public_key", ENOCH.public_key)  # a 32-bit id collision
    with pytest.raises(ValueError, match="share"):
        open_note(VECTOR["signed_note"].encode(), [PETER, twin])


# --- properties ------------------------------------------------------------------------------

text_chars = st.one_of(
    st.just("\n"),
    st.characters(min_codepoint=0x20, codec="utf-8"),
)
texts = st.text(alphabet=text_chars, max_size=80).map(lambda t: (t + "\n").encode())


@PROPERTY
@given(text=texts)
def test_sign_then_open_round_trips(text: bytes) -> None:
    note, signed = open_note(sign_note(text, [PETER_SIGNER, OTHER_SIGNER]), [PETER])
    assert note.text == text
    assert signed == (PETER,)


@PROPERTY
@given(text=texts, cosigned=st.booleans(), data=st.data())
def test_flipping_any_byte_of_a_signed_note_is_refused(
    text: bytes, cosigned: bool, data: st.DataObject
) -> None:
    # With a cosignature by a key the reader does not know, a flip inside that line may leave
    # a well-formed note: then what the reader gets is still exactly the signed text.
    signed_part = sign_note(text, [PETER_SIGNER])
    note = sign_note(text, [PETER_SIGNER, OTHER_SIGNER]) if cosigned else signed_part
    position = data.draw(st.integers(0, len(note) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    mutated = bytearray(note)
    mutated[position] ^= mask
    try:
        opened, signed = open_note(bytes(mutated), [PETER])
    except LucidError as exc:
        assert isinstance(exc, (FormatError, IntegrityError))
        return
    assert cosigned
    assert position >= len(signed_part)
    assert opened.text == text
    assert signed == (PETER,)


@PROPERTY
@given(text=texts)
def test_a_signature_by_another_key_is_refused(text: bytes) -> None:
    impostor = Signer("PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError, match="no signature from a known key"):
        open_note(sign_note(text, [impostor]), [PETER])
    # The impostor's signature under Peter's key id: checked against Peter's key, and refused.
    forged_blob = base64.b64encode(PETER.key_id + impostor.sign(text))
    forged = text + b"\n" + "— PeterNeumann ".encode() + forged_blob + b"\n"
    with pytest.raises(IntegrityError, match=r"invalid note signature for key PeterNeumann"):
        open_note(forged, [PETER])


# --- checkpoints -----------------------------------------------------------------------------

CHECKPOINT = Checkpoint("example.com/lucidd/session-7", 42, bytes(range(HASH_SIZE)))


def test_a_signed_checkpoint_is_a_note_of_the_checkpoint_text() -> None:
    data = sign_checkpoint(CHECKPOINT, PETER_SIGNER)
    assert data == sign_note(CHECKPOINT.encode(), [PETER_SIGNER])
    assert data.startswith(CHECKPOINT.encode() + b"\n" + "— PeterNeumann x08go".encode())
    assert open_checkpoint(data, [PETER]) == (CHECKPOINT, (PETER,))


def test_open_checkpoint_refuses_a_note_that_is_not_a_checkpoint() -> None:
    with pytest.raises(FormatError, match="checkpoint"):
        open_checkpoint(VECTOR["signed_note"].encode(), [PETER])
    extended = sign_note(CHECKPOINT.encode() + b"extension line\n", [PETER_SIGNER])
    with pytest.raises(FormatError, match="checkpoint"):
        open_checkpoint(extended, [PETER])


def test_open_checkpoint_refuses_an_unsigned_or_altered_checkpoint() -> None:
    with pytest.raises(IntegrityError):
        open_checkpoint(sign_checkpoint(CHECKPOINT, OTHER_SIGNER), [PETER])
    altered = sign_checkpoint(CHECKPOINT, PETER_SIGNER).replace(b"\n42\n", b"\n43\n")
    with pytest.raises(IntegrityError):
        open_checkpoint(altered, [PETER])


def test_signature_fields_are_values() -> None:
    sig = parse_note(VECTOR["signed_note"].encode()).signatures[0]
    assert dataclasses.replace(sig) == sig
    assert len(sig.signature) == 64
