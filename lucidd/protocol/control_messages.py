"""The control socket's requests and replies (layer 1, DESIGN §6, docs/protocol.md §5).

Msgspec Structs in the tagged unions :data:`ControlRequest` and :data:`ControlReply`, over the
base, limits and shared messages of :mod:`~lucidd.protocol.messages`, and the argument checks
every control request passes before a handler sees it (:func:`check_control_request`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from lucidd.errors import BadRequestError
from lucidd.protocol.messages import (
    MAX_INDEX,
    SESSION_ID_SIZE,
    ActAs,
    ActingAs,
    Error,
    Message,
)

# --- control socket: requests -----------------------------------------------------------


class Health(Message, tag="health", frozen=True):
    pass


class Metrics(Message, tag="metrics", frozen=True):
    pass


class GetConfig(Message, tag="config", frozen=True):
    pass


class OpenSession(Message, tag="open", frozen=True):
    """Open a session; ``session`` may be chosen by the client (else the daemon picks one)."""

    compression: str | None = None
    session: bytes | None = None
    #: A note people choose (shown by ``sessions``/``info``), at most MAX_LABEL_SIZE bytes.
    label: str | None = None
    #: The chunk size the session is written in (recorded once; resumes must match it).
    chunk_size: int | None = None


class ListSessions(Message, tag="sessions", frozen=True):
    pass


class SessionInfo(Message, tag="info", frozen=True):
    session: bytes


class GetRoot(Message, tag="root", frozen=True):
    session: bytes
    size: int | None = None


class GetInclusionProof(Message, tag="proof", frozen=True):
    session: bytes
    index: int
    size: int | None = None


class GetConsistencyProof(Message, tag="consistency", frozen=True):
    session: bytes
    size1: int
    size2: int | None = None


class Finalize(Message, tag="finalize", frozen=True):
    session: bytes


class ReadChunk(Message, tag="read", frozen=True):
    session: bytes
    index: int


class Shred(Message, tag="shred", frozen=True):
    session: bytes


class Check(Message, tag="check", frozen=True):
    """Scrub a session: read and authenticate every chunk's record, compare its leaf with the
    Merkle log (answered with :class:`CheckReply`)."""

    session: bytes


class GetSigningKey(Message, tag="signing_key", frozen=True):
    """The host's checkpoint-signing key (answered with :class:`SigningKeyReply`)."""


class GetCheckpoint(Message, tag="checkpoint", frozen=True):
    """A signed checkpoint of the session. Without ``size``: of its current size, stored and
    logged in the anchor log; with one: the stored checkpoint of that size, else one signed
    for the reply only."""

    session: bytes
    size: int | None = None


class Anchor(Message, tag="anchor", frozen=True):
    """Checkpoint every grown session and the anchor log now, and start anchoring it
    (root, the daemon's uid and the admin group only)."""


class GetReceipt(Message, tag="receipt", frozen=True):
    """Everything needed to prove chunk ``index`` offline (:class:`ReceiptReply`)."""

    session: bytes
    index: int


class ListRemoteSessions(Message, tag="remote_sessions", frozen=True):
    """The object store's sessions, by host (root, the daemon's uid and the admin group)."""


# --- control socket: master keys (docs/keys.md "Online rotation"; root, the daemon's uid and
# the admin group only) --------------------------------------------------------------------


class ListKeys(Message, tag="keys", frozen=True):
    """The keyring's key ids, which is current, and how many sessions each wraps."""


class RotateKeys(Message, tag="rotate_keys", frozen=True):
    """Add a master key, make it current, re-wrap every session under it; ``new``: add a key
    even when an earlier rotation is unfinished (else that one is finished)."""

    new: bool = False


class RewrapKeys(Message, tag="rewrap_keys", frozen=True):
    """Re-wrap every session not under the current key; adds no key."""


class RetireKey(Message, tag="retire_key", frozen=True):
    """Remove key ``key_id`` from the keyring once no session needs it."""

    key_id: int


class LoadKeyring(Message, tag="load_keyring", frozen=True):
    """Use this keyring (keyring file text, unlocked) from now on, as SIGHUP does with the
    keyring's file: for a keyring the daemon cannot read again itself (a systemd credential,
    which systemd does not refresh while the service runs). Root and the daemon's uid only;
    refused if it lacks a key some session needs. Answered with :class:`KeysChanged`."""

    keyring: bytes

    def __repr__(self) -> str:  # never the keys
        return f"LoadKeyring(req={self.req})"


class KeyInfo(msgspec.Struct, frozen=True):
    id: int
    current: bool
    sessions: int
    created_ns: int | None = None


class MissingKey(msgspec.Struct, frozen=True):
    """A session whose metadata names key ``key_id``, which the keyring lacks."""

    session: bytes
    key_id: int


class KeysReply(Message, tag="keys_reply", frozen=True):
    """``unreadable``: sessions whose metadata cannot be read (which key they need is unknown)."""

    current: int
    keys: list[KeyInfo]
    missing: list[MissingKey] = []
    unreadable: list[bytes] = []


class KeysChanged(Message, tag="keys_changed", frozen=True):
    """The outcome of a rotate, rewrap or retire: the key added or retired (if any), the
    current key, how many sessions were re-wrapped and how many keys the keyring holds."""

    current: int
    keys: int
    rewrapped: int = 0
    added: int | None = None
    retired: int | None = None


KeyRequest = ListKeys | RotateKeys | RewrapKeys | RetireKey | LoadKeyring
KeyReply = KeysReply | KeysChanged


ControlRequest = (
    Health
    | Metrics
    | GetConfig
    | OpenSession
    | ListSessions
    | SessionInfo
    | GetRoot
    | GetInclusionProof
    | GetConsistencyProof
    | Finalize
    | ReadChunk
    | Shred
    | Check
    | GetSigningKey
    | GetCheckpoint
    | Anchor
    | GetReceipt
    | ListRemoteSessions
    | ActAs
    | KeyRequest
)


# --- control socket: replies ------------------------------------------------------------


class ProcessStatus(msgspec.Struct, frozen=True):
    role: str
    pid: int
    alive: bool
    rss_bytes: int = 0
    restarts: int = 0


class HealthReply(Message, tag="health_reply", frozen=True):
    """``status`` is ``ok`` only when every process is alive and no session is damaged."""

    status: str
    processes: list[ProcessStatus]
    sessions: int = 0
    #: Why ``status`` is "degraded", one line each ("worker1: cannot start a process (Too many
    #: open files); retrying"); a reply without it (an older daemon) decodes as [].
    reasons: list[str] = []
    #: Sessions that are damaged (SessionSummary.damaged).
    damaged_sessions: int = 0


class Histogram(msgspec.Struct, frozen=True):
    """Observations in fixed buckets: ``bounds`` ascending (upper bounds, seconds or counts);
    ``counts`` has ``len(bounds) + 1`` entries, ``counts[i]`` the observations in
    ``(bounds[i-1], bounds[i]]``, the last those above every bound (not cumulative); ``sum``
    of all observations."""

    bounds: list[float]
    counts: list[int]
    sum: float


class MetricsReply(Message, tag="metrics_reply", frozen=True):
    """Counters and gauges by name; ``histograms`` by name (a reply without them, from an
    older daemon, decodes as {})."""

    metrics: dict[str, float]
    histograms: dict[str, Histogram] = msgspec.field(default_factory=dict)


class ConfigReply(Message, tag="config_reply", frozen=True):
    config: dict[str, Any]


class SessionSummary(msgspec.Struct, frozen=True):
    session: bytes
    state: str
    size: int
    chunks: int
    plaintext_bytes: int
    compression: str
    owner_uid: int = -1
    #: When it was opened (Unix time, nanoseconds), its label and recorded chunk size (0: none).
    created_ns: int = 0
    label: str = ""
    chunk_size: int = 0
    #: Bytes of its segment files on disk (sealed records: compressed, plus headers and tags).
    stored_bytes: int = 0
    #: Chunks of the log whose record is gone, damage inside a segment, or (state
    #: ``damaged``) metadata or a secret that cannot be read.
    damaged: bool = False
    #: The chunks whose record is gone (reading them is refused as ``damaged``).
    missing: list[int] = []
    #: Segment ranges copied to the quarantine (torn tails included).
    quarantined: int = 0
    #: What is wrong, in words ("" when nothing is).
    problem: str = ""


class SessionOpened(Message, tag="opened", frozen=True):
    session: bytes


class SessionListReply(Message, tag="sessions_reply", frozen=True):
    sessions: list[SessionSummary]


class SessionInfoReply(Message, tag="info_reply", frozen=True):
    info: SessionSummary


class RootReply(Message, tag="root_reply", frozen=True):
    session: bytes
    size: int
    root: bytes


class InclusionProofReply(Message, tag="proof_reply", frozen=True):
    session: bytes
    index: int
    size: int
    leaf_hash: bytes
    path: list[bytes]
    root: bytes


class ConsistencyProofReply(Message, tag="consistency_reply", frozen=True):
    session: bytes
    size1: int
    size2: int
    path: list[bytes]
    root1: bytes
    root2: bytes
    #: Signed checkpoints (notes) of the two sizes: the stored ones where they exist.
    checkpoint1: bytes = b""
    checkpoint2: bytes = b""


class FinalizeReply(Message, tag="finalize_reply", frozen=True):
    session: bytes
    size: int
    root: bytes
    #: The final checkpoint, a signed note.
    checkpoint: bytes
    #: True when the session had been finalized before this request (the same checkpoint).
    already_finalized: bool = False


class ChunkReply(Message, tag="chunk_reply", frozen=True):
    session: bytes
    index: int
    data: bytes
    record: bytes = b""


class ShredReply(Message, tag="shred_reply", frozen=True):
    session: bytes


class CheckReply(Message, tag="check_reply", frozen=True):
    """``checked`` chunks were read (the ``size`` of the log and those stored past it);
    ``bad`` lists, in order, those whose record is gone, fails authentication or does not
    hash to its leaf in the log. The session is intact when ``bad`` is empty."""

    session: bytes
    size: int
    checked: int
    bad: list[int] = []


class SigningKeyReply(Message, tag="signing_key_reply", frozen=True):
    """``vkey`` is the note verifier key ``name+hex key id+base64(0x01 || public key)``."""

    name: str
    key_id: bytes
    vkey: str


class CheckpointReply(Message, tag="checkpoint_reply", frozen=True):
    session: bytes
    size: int
    #: A C2SP signed note over the tlog-checkpoint body.
    checkpoint: bytes


class AnchorReply(Message, tag="anchor_reply", frozen=True):
    """The anchor log's newest signed checkpoint (size 0 and no note: nothing logged yet)."""

    size: int
    checkpoint: bytes
    backends: list[str] = []


class Attestation(msgspec.Struct, frozen=True):
    """What an anchoring backend returned for an anchor checkpoint (ethereum: JSON)."""

    backend: str
    data: bytes


class ReceiptReply(Message, tag="receipt_reply", frozen=True):
    """Chunk ``index`` -> signed session checkpoint -> anchor log -> signed anchor
    checkpoint -> attestations (docs/receipts.md)."""

    session: bytes
    index: int
    leaf_hash: bytes
    session_size: int
    session_checkpoint: bytes
    path: list[bytes]
    anchor_index: int
    anchor_size: int
    anchor_path: list[bytes]
    anchor_checkpoint: bytes
    attestations: list[Attestation] = []


class RemoteHost(msgspec.Struct, frozen=True):
    host_id: str
    origin: str
    vkey: str
    sessions: list[bytes]


class RemoteSessionsReply(Message, tag="remote_sessions_reply", frozen=True):
    hosts: list[RemoteHost]


ControlReply = (
    HealthReply
    | MetricsReply
    | ConfigReply
    | SessionOpened
    | SessionListReply
    | SessionInfoReply
    | RootReply
    | InclusionProofReply
    | ConsistencyProofReply
    | FinalizeReply
    | ChunkReply
    | ShredReply
    | CheckReply
    | SigningKeyReply
    | CheckpointReply
    | AnchorReply
    | ReceiptReply
    | RemoteSessionsReply
    | ActingAs
    | KeyReply
    | Error
)


#: Fields of control requests that hold a chunk index or a tree size.
_INDEX_FIELDS: Final = ("index", "size", "size1", "size2")
#: Bound on a session's label (UTF-8 bytes).
MAX_LABEL_SIZE: Final = 256


def check_control_request(request: Message) -> None:
    """Refuse arguments no session could satisfy, before any handler looks them up.

    A well-framed request with a session id of the wrong length or an index or size outside
    ``0..MAX_INDEX`` is a :class:`~lucidd.errors.BadRequestError` (the connection stays open).
    """
    session = getattr(request, "session", None)
    if isinstance(session, bytes) and len(session) != SESSION_ID_SIZE:
        raise BadRequestError(
            f"session id must be {SESSION_ID_SIZE} bytes, got {len(session)}", req=request.req
        )
    for name in _INDEX_FIELDS:
        value = getattr(request, name, None)
        if isinstance(value, int) and not 0 <= value <= MAX_INDEX:
            raise BadRequestError(f"{name} {value} is out of range 0..{MAX_INDEX}", req=request.req)
    if isinstance(request, OpenSession):
        if request.label is not None and len(request.label.encode()) > MAX_LABEL_SIZE:
            raise BadRequestError(f"label is longer than {MAX_LABEL_SIZE} bytes", req=request.req)
        if request.chunk_size is not None and not 1 <= request.chunk_size <= MAX_INDEX:
            raise BadRequestError(f"chunk_size {request.chunk_size} is out of range")
