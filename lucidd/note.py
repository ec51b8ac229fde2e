"""C2SP signed notes with Ed25519 keys, and signed checkpoints (layer 1).

A signed note (https://c2sp.org/signed-note, Go's ``golang.org/x/mod/sumdb/note``) is a UTF-8
text ending in ``\\n``, a blank line, then one line per signature::

    <text>\\n
    — <key name> base64(<4-byte key id> || <signature>)\\n

The key id is the first 4 bytes of ``SHA-256(name || "\\n" || 0x01 || public key)``; a verifier
key is written ``name+<8 hex digits of the key id>+base64(0x01 || public key)``. The signature
covers the text exactly (its final ``\\n`` included, the blank line not). A checkpoint is signed
as the note whose text is :meth:`lucidd.merkle.Checkpoint.encode`, which makes the signed object
a C2SP ``tlog-checkpoint``: any tlog tool (Go's ``note.Open``, a witness) can check it.

Pure: bytes in, values or an exception out. Untrusted bytes raise :class:`FormatError`
(malformed) or :class:`IntegrityError` (a signature that does not verify, none from a known
key); caller bugs raise ``ValueError``. Encodings are canonical both ways: what this module
writes is the only spelling it reads back (base64 with zero padding bits, lowercase hex), so
every byte of an accepted note is covered by a signature or by a structural check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lucidd import merkle
from lucidd.errors import FormatError, IntegrityError

__all__ = [
    "ED25519_ALG",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SEED_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "KEY_ID_SIZE",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "Signer",
    "Verifier",
    "is_valid_key_name",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_note",
    "sign_checkpoint",
    "sign_note",
]

ED25519_ALG: Final = 0x01
"""The signature-type byte of Ed25519 keys (first byte of the encoded key)."""
KEY_ID_SIZE: Final = 4
ED25519_PUBLIC_KEY_SIZE: Final = 32
ED25519_SEED_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
MAX_SIGNATURES: Final = 100
"""As Go's ``note.Open``: a bound on the work one note can ask for."""
MAX_NOTE_SIZE: Final = 1024 * 1024
"""A checkpoint note is ~200 bytes; this bounds what untrusted bytes can make us scan."""

_SIGNATURE_PREFIX: Final = "\N{EM DASH} ".encode()
_SEPARATOR: Final = b"\n\n"
_SKEY_PREFIX: Final = "PRIVATE+KEY+"
_KEY_ID_HEX: Final = re.compile(r"[0-9a-f]{8}")
# Control characters other than "\n": refused anywhere in a note (as Go's note.Open does).
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")
_MAX_NAMES_IN_MESSAGE: Final = 8
_MAX_NAME_IN_MESSAGE: Final = 64


def is_valid_key_name(name: object) -> bool:
    """Whether ``name`` can name a key: Go's ``isValidName`` (non-empty, no white space, no
    ``+``) and no control character. A checkpoint origin may hold spaces; a key name may not."""
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and not any(c.isspace() for c in name)
        and _CONTROL.search(name) is None
    )


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id of an Ed25519 key: ``SHA-256(name || "\\n" || 0x01 || public_key)[:4]``."""
    encoded = bytes([ED25519_ALG]) + bytes(public_key)
    return hashlib.sha256(name.encode() + b"\n" + encoded).digest()[:KEY_ID_SIZE]


def _canonical_b64decode(text: str) -> bytes | None:
    """Decode standard padded base64, or None unless ``text`` is its one canonical spelling."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def _split_key(text: str, parts: int) -> list[str] | None:
    fields = text.split("+", parts - 1)
    return fields if len(fields) == parts else None


def _parse_key_fields(name: str, id_hex: str, key64: str, what: str) -> tuple[bytes, bytes]:
    """Check a key's name, id and ``base64(0x01 || key)``; return ``(key id, key)``."""
    if not is_valid_key_name(name):
        raise FormatError(f"{what}: the key name is empty or has a space, '+' or control code")
    if not _KEY_ID_HEX.fullmatch(id_hex):
        raise FormatError(f"{what}: the key id is not 8 lowercase hex digits")
    encoded = _canonical_b64decode(key64)
    if not encoded:
        raise FormatError(f"{what}: the key is not canonical base64")
    if encoded[0] != ED25519_ALG:
        raise FormatError(f"{what}: unknown key algorithm {encoded[0]:#04x} (only Ed25519)")
    if len(encoded) != 1 + ED25519_PUBLIC_KEY_SIZE:
        raise FormatError(f"{what}: an Ed25519 key is {ED25519_PUBLIC_KEY_SIZE} bytes")
    return bytes.fromhex(id_hex), encoded[1:]


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that checks note signatures.

    Building one directly checks its fields (``ValueError``: a caller bug); untrusted key text
    goes through :meth:`from_vkey`.
    """

    name: str
    key_id: bytes
    public_key: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise ValueError("key name must be non-empty, with no space, '+' or control code")
        if (
            not isinstance(self.public_key, bytes)
            or len(self.public_key) != ED25519_PUBLIC_KEY_SIZE
        ):
            raise ValueError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_SIZE} bytes")
        if self.key_id != key_id(self.name, self.public_key):
            raise ValueError("key id does not match the name and key")
        object.__setattr__(self, "_key", Ed25519PublicKey.from_public_bytes(self.public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``name+<hex key id>+base64(0x01 || public key)`` (Go's verifier key).

        Refused with :class:`FormatError`: not three ``+``-separated fields, a name that is
        empty or holds a space, ``+`` or control character, a key id that is not 8 lowercase
        hex digits or does not match the name and key, non-canonical base64, an algorithm other
        than Ed25519, a key of the wrong length.
        """
        if not isinstance(vkey, str):
            raise FormatError("verifier key must be text")
        fields = _split_key(vkey, 3)
        if fields is None:
            raise FormatError("verifier key is not name+keyid+key")
        name, id_hex, key64 = fields
        kid, public_key = _parse_key_fields(name, id_hex, key64, "verifier key")
        if kid != key_id(name, public_key):
            raise FormatError(f"verifier key {name}: the key id does not match the key")
        return cls(name, kid, public_key)

    @property
    def vkey(self) -> str:
        """The verifier key text that :meth:`from_vkey` reads back."""
        key64 = base64.b64encode(bytes([ED25519_ALG]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{key64}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``text`` (one verification)."""
        try:
            self._key.verify(bytes(signature), bytes(text))
        except InvalidSignature:
            return False
        return True


class Signer:
    """A named Ed25519 private key that signs notes. Its ``repr`` shows the name and key id only."""

    __slots__ = ("_private_key", "_verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not is_valid_key_name(name):
            raise ValueError("key name must be non-empty, with no space, '+' or control code")
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        public_key = private_key.public_key().public_bytes_raw()
        self._private_key = private_key
        self._verifier = Verifier(name, key_id(name, public_key), public_key)

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse Go's ``PRIVATE+KEY+name+<hex key id>+base64(0x01 || seed)`` signer key.

        Refused with :class:`FormatError` as :meth:`Verifier.from_vkey` refuses, plus a missing
        ``PRIVATE+KEY+`` prefix and a key id that does not match the key derived from the seed.
        Messages never contain key material.
        """
        if not isinstance(skey, str) or not skey.startswith(_SKEY_PREFIX):
            raise FormatError("signer key does not start with PRIVATE+KEY+")
        fields = _split_key(skey[len(_SKEY_PREFIX) :], 3)
        if fields is None:
            raise FormatError("signer key is not PRIVATE+KEY+name+keyid+key")
        name, id_hex, key64 = fields
        kid, seed = _parse_key_fields(name, id_hex, key64, "signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.verifier.key_id != kid:
            raise FormatError(f"signer key {name}: the key id does not match the key")
        return signer

    @property
    def name(self) -> str:
        return self._verifier.name

    @property
    def verifier(self) -> Verifier:
        """The public half: what a reader needs to check this signer's notes."""
        return self._verifier

    def sign(self, text: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``text``."""
        return self._private_key.sign(bytes(text))

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self._verifier.key_id.hex()})"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key's name and id, and the signature bytes (not yet checked)."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Note:
    """A note's text (ending in ``\\n``) and its signature lines, in the order they appear."""

    text: bytes
    signatures: tuple[NoteSignature, ...]


def _check_text(text: bytes) -> None:
    if not isinstance(text, bytes):
        raise TypeError("note text must be bytes")
    if not text.endswith(b"\n"):
        raise ValueError("note text must end in a newline")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("note text must be UTF-8") from None
    if _CONTROL.search(decoded):
        raise ValueError("note text must have no control character but newline")


def sign_note(text: bytes, signers: Sequence[Signer]) -> bytes:
    """The signed note of ``text``: text, a blank line, one signature line per signer, in order.

    ``text`` must be UTF-8 ending in ``\\n`` with no control character but ``\\n``; there must
    be 1 to :data:`MAX_SIGNATURES` signers and the note at most :data:`MAX_NOTE_SIZE` bytes.
    Otherwise ``ValueError`` (a caller bug): what this returns always passes
    :func:`parse_note`. Costs one Ed25519 signature per signer.
    """
    _check_text(text)
    if not 1 <= len(signers) <= MAX_SIGNATURES:
        raise ValueError(f"a note needs 1 to {MAX_SIGNATURES} signers, got {len(signers)}")
    lines = []
    for signer in signers:
        b64 = base64.b64encode(signer.verifier.key_id + signer.sign(text))
        lines.append(_SIGNATURE_PREFIX + signer.name.encode() + b" " + b64 + b"\n")
    note = text + b"\n" + b"".join(lines)
    if len(note) > MAX_NOTE_SIZE:
        raise ValueError(f"signed note would exceed {MAX_NOTE_SIZE} bytes")
    return note


def _parse_signature_line(line: bytes) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise FormatError("note signature line does not start with an em dash and a space")
    name, space, b64 = line[len(_SIGNATURE_PREFIX) :].decode("utf-8").partition(" ")
    if not space or not is_valid_key_name(name):
        raise FormatError("note signature line has no valid key name")
    blob = _canonical_b64decode(b64)
    if blob is None or len(blob) <= KEY_ID_SIZE:
        raise FormatError("note signature is not canonical base64 of a key id and a signature")
    return NoteSignature(name, blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:])


def parse_note(data: bytes) -> Note:
    """Split untrusted bytes into text and signature lines; check no signature.

    Go's ``note.Open`` rules: the whole note is UTF-8 with no control character but ``\\n``,
    at most :data:`MAX_NOTE_SIZE` bytes; the text ends at the last blank line; the signature
    block after it is 1 to :data:`MAX_SIGNATURES` lines, each ``— name base64``, where the name
    has no space or ``+`` and the base64 (canonical, unlike Go) holds a 4-byte key id and at
    least one signature byte. Anything else: :class:`FormatError`. Costs one pass over
    ``data``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError("note must be bytes")
    raw = bytes(data)
    if len(raw) > MAX_NOTE_SIZE:
        raise FormatError(f"note is larger than {MAX_NOTE_SIZE} bytes", limit=MAX_NOTE_SIZE)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("note is not UTF-8") from None
    if _CONTROL.search(decoded):
        raise FormatError("note has a control character other than newline")
    split = raw.rfind(_SEPARATOR)
    if split < 0:
        raise FormatError("note has no blank line before its signatures")
    text, block = raw[: split + 1], raw[split + len(_SEPARATOR) :]
    if not block.endswith(b"\n"):
        raise FormatError("note does not end in a newline-terminated signature line")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise FormatError(f"note has more than {MAX_SIGNATURES} signatures", limit=MAX_SIGNATURES)
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def _index_verifiers(verifiers: Iterable[Verifier]) -> dict[tuple[str, bytes], Verifier]:
    index: dict[tuple[str, bytes], Verifier] = {}
    for verifier in verifiers:
        if not isinstance(verifier, Verifier):
            raise TypeError("verifiers must be Verifier values")
        known = index.setdefault((verifier.name, verifier.key_id), verifier)
        if known != verifier:
            raise ValueError(f"two verifier keys share the name and id of {verifier.vkey}")
    return index


def _key_label(name: str, kid: bytes) -> str:
    if len(name) > _MAX_NAME_IN_MESSAGE:
        name = name[:_MAX_NAME_IN_MESSAGE] + "..."
    return f"{name}+{kid.hex()}"


def _unknown_keys_message(note: Note) -> str:
    labels = list(dict.fromkeys(_key_label(s.name, s.key_id) for s in note.signatures))
    shown = ", ".join(labels[:_MAX_NAMES_IN_MESSAGE])
    if len(labels) > _MAX_NAMES_IN_MESSAGE:
        shown += f" and {len(labels) - _MAX_NAMES_IN_MESSAGE} more"
    return f"no signature from a known key: {shown}"


def open_note(data: bytes, verifiers: Iterable[Verifier]) -> tuple[Note, tuple[Verifier, ...]]:
    """Parse an untrusted signed note and check it against the known ``verifiers``.

    Every signature whose name and key id match a known verifier is checked (repeats too,
    stricter than Go, which checks the first only); signatures by unknown keys are ignored, as
    Go does. Refused: what :func:`parse_note` refuses (:class:`FormatError`); a known key's
    signature that does not verify (:class:`IntegrityError` naming the key); no signature from
    a known key (:class:`IntegrityError` listing the keys seen). Two different verifiers with
    the same name and id are a caller bug (``ValueError``). Returns the note (all its
    signatures) and the verifiers that signed it, in the order of their first signature.
    Costs one Ed25519 verification per signature by a known key.
    """
    note = parse_note(data)
    index = _index_verifiers(verifiers)
    signed: dict[tuple[str, bytes], Verifier] = {}
    for sig in note.signatures:
        verifier = index.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(note.text, sig.signature):
            label = _key_label(sig.name, sig.key_id)
            raise IntegrityError(f"invalid note signature for key {label}", key=label)
        signed.setdefault((sig.name, sig.key_id), verifier)
    if not signed:
        raise IntegrityError(_unknown_keys_message(note))
    return note, tuple(signed.values())


def sign_checkpoint(checkpoint: merkle.Checkpoint, signer: Signer) -> bytes:
    """The C2SP signed checkpoint: the note of :meth:`Checkpoint.encode` signed by ``signer``.

    Costs one Ed25519 signature.
    """
    if not isinstance(checkpoint, merkle.Checkpoint):
        raise TypeError("checkpoint must be a merkle.Checkpoint")
    return sign_note(checkpoint.encode(), [signer])


def open_checkpoint(
    data: bytes, verifiers: Iterable[Verifier]
) -> tuple[merkle.Checkpoint, tuple[Verifier, ...]]:
    """Open a signed checkpoint: :func:`open_note`, then :meth:`Checkpoint.parse` of its text.

    Refused as :func:`open_note` refuses, and with :class:`FormatError` when the signed text
    is not exactly a three-line checkpoint (no extension lines). Returns the checkpoint and the
    verifiers that signed it. Costs one Ed25519 verification per signature by a known key.
    """
    note, signed = open_note(data, verifiers)
    return merkle.Checkpoint.parse(note.text), signed
