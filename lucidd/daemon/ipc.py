"""Messages between lucidd's processes (layer 1, DESIGN §2).

One tagged msgspec union per channel; the processes share nothing else. Frames on every pipe
are ``multiprocessing.Connection``-compatible (a signed 4-byte big-endian length, then the
msgpack body) so a blocking process can use ``Connection.send_bytes``/``recv_bytes`` while the
asyncio processes read and write the same pipes without blocking (:mod:`lucidd.daemon.channels`).

Payload bytes never travel here: a :class:`Seal` names a byte range of the ring. Master keys
travel only in the key-distribution messages (:class:`InstallKeyring` and its kin, an online
rotation or a SIGHUP reload), as keyring text over these private pipes: never in shared memory,
logs, argv or the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from lucidd import protocol as p
from lucidd.crypto import Keyring
from lucidd.daemon.config import Config
from lucidd.vocabulary import SessionState

# Session states travel as the SessionState strings (one definition: lucidd.vocabulary).
SESSION_OPEN: Final = SessionState.OPEN
SESSION_FINALIZING: Final = SessionState.FINALIZING
SESSION_FINALIZED: Final = SessionState.FINALIZED
SESSION_SHREDDED: Final = SessionState.SHREDDED
SESSION_DAMAGED: Final = SessionState.DAMAGED


class IpcMessage(msgspec.Struct, frozen=True, tag_field="t", array_like=True):
    """Base of every inter-process message (array_like: compact and fast to encode)."""


# --- what a child is started with ----------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker is started with; picklable. ``keyring`` is the supervisor's copy of
    the daemon's keyring (unlocked, or distributed by an online rotation or a reload), pickled
    through the forkserver's pipe (never a file; ``repr`` shows no key), so a replaced worker
    holds what the live ones hold; None only in tests that start a child by path."""

    worker_id: int
    config: Config
    keyring_path: str
    ring_name: str
    ring_size: int
    #: How many times worker ``worker_id`` was replaced before this one (0 for the first).
    incarnation: int = 0
    keyring: Keyring | None = None


@dataclass(frozen=True)
class AggregatorSpec:
    """Everything the aggregator is started with (like WorkerSpec: no secrets but ``keyring``,
    the supervisor's copy of the daemon's keyring)."""

    config: Config
    keyring_path: str
    ring_name: str
    ring_size: int
    #: True at daemon start (no worker runs yet: torn segment tails may be cut off);
    #: False when a dead aggregator is replaced while workers keep writing.
    repair: bool = True
    keyring: Keyring | None = None


def spec_keyring(spec: WorkerSpec | AggregatorSpec, load: Callable[[Path], Keyring]) -> Keyring:
    """The keyring a child uses: the one in its spec, else ``load(spec.keyring_path)``."""
    return spec.keyring if spec.keyring is not None else load(Path(spec.keyring_path))


# --- supervisor -> worker -----------------------------------------------------------------


class Seal(IpcMessage, tag="seal", frozen=True):
    """Seal ``length`` bytes at ``offset`` as chunk ``index`` of ``session``: of the ring, or
    of a client's shared region (``region`` > 0, handed to the worker before this message on
    its region socket: :mod:`lucidd.daemon.shared_regions`)."""

    session: bytes
    index: int
    offset: int
    length: int
    compression: str
    dispatched_ns: int = 0  # CLOCK_MONOTONIC (system-wide) at dispatch, for queue-wait metrics
    region: int = 0


class ForgetRegion(IpcMessage, tag="forget_region", frozen=True):
    """Unmap client region ``region``: nothing in it is in flight any more (sent after the
    last Seal naming it, on the same pipe)."""

    region: int


class Forget(IpcMessage, tag="forget", frozen=True):
    """Drop any cached secret and segment of a shredded session."""

    session: bytes


class UseKeyring(IpcMessage, tag="use_keyring", frozen=True):
    """From now on unwrap session secrets with this keyring (keyring file text); reply
    :class:`KeyringInUse` on the acks pipe. Sent before any session's metadata names a new key
    (docs/keys.md, online rotation)."""

    token: int
    keyring: bytes

    def __repr__(self) -> str:  # never the keys
        return f"UseKeyring(token={self.token})"


SupervisorToWorker = Seal | Forget | ForgetRegion | UseKeyring


# --- worker -> aggregator and worker -> supervisor ----------------------------------------


class Sealed(msgspec.Struct, frozen=True, array_like=True):
    """One durable record: where it lives and its Merkle leaf hash."""

    session: bytes
    index: int
    leaf_hash: bytes
    segment: str
    offset: int
    record_length: int
    plaintext_length: int


class Failed(msgspec.Struct, frozen=True, array_like=True):
    """A chunk that could not be sealed or stored; ``code`` is a wire error code."""

    session: bytes
    index: int
    code: str
    message: str


class StageTimes(msgspec.Struct, frozen=True, array_like=True):
    """Nanoseconds one worker batch spent per stage (for the metrics breakdown), and how
    many chunks the batch held (sealed and failed).

    A batch too large for one atomic pipe write goes out in several :class:`SealedBatch`
    messages: the first carries the whole batch's figures, the others ``StageTimes()``
    (``chunks`` 0), so a reader counts each group commit once.
    """

    queue_wait: int = 0
    seal: int = 0
    write: int = 0
    fsync: int = 0
    chunks: int = 0


class SealedBatch(IpcMessage, tag="batch", frozen=True):
    """The outcome of one group commit: every ``sealed`` record is fdatasync'd.

    The worker writes the same bytes twice: first to the aggregator (index and Merkle log),
    then to the supervisor, which acknowledges the chunks from it. That order is the
    read-your-writes promise: once a client holds an ack, the batch is already in the
    aggregator's pipe, and the aggregator drains its pipes before it answers any request.
    """

    worker: int
    sealed: list[Sealed]
    failed: list[Failed]
    times: StageTimes
    plaintext_bytes: int = 0
    sent_ns: int = 0  # CLOCK_MONOTONIC when the worker sent it
    incarnation: int = 0  # WorkerSpec.incarnation: a dead worker's late messages are ignored


#: A pipe write of at most PIPE_BUF bytes is atomic (POSIX): a worker killed mid-send can never
#: leave half a message in the pipe its replacement inherits. Workers keep every message
#: (4-byte length prefix included) within this bound.
MAX_ATOMIC_MESSAGE: Final = 4096


class KeyringInUse(IpcMessage, tag="keyring_in_use", frozen=True):
    """Worker ``worker`` (incarnation ``incarnation``) now holds the keyring of ``token``."""

    worker: int
    incarnation: int
    token: int


WorkerToAggregator = SealedBatch
WorkerToSupervisor = SealedBatch | KeyringInUse


# --- aggregator -> supervisor -------------------------------------------------------------


class Acked(msgspec.Struct, frozen=True, array_like=True):
    session: bytes
    index: int
    leaf_hash: bytes


class Outcomes(IpcMessage, tag="outcomes", frozen=True):
    """The reply to a :class:`RecoverWorker`: acks for what a dead worker made durable.

    (Live workers acknowledge their own chunks: :class:`SealedBatch`.)
    """

    acked: list[Acked]
    failed: list[Failed]
    token: int = 0


class SessionView(msgspec.Struct, frozen=True, array_like=True):
    """What the supervisor needs for admission: state, sizes and which indices are stored.

    ``prefix`` chunks 0..prefix-1 are stored; ``above`` lists stored indices past the prefix.
    """

    session: bytes
    state: str
    compression: str
    plaintext_bytes: int
    prefix: int
    above: list[int]
    owner_uid: int = -1  # access.LEGACY_OWNER


class SessionChanged(IpcMessage, tag="session", frozen=True):
    """A session was opened, finalized, shredded or unfrozen.

    A failed open carries the error's wire code and message (``error_code`` empty: none).
    """

    view: SessionView
    error_code: str = ""
    error_message: str = ""


class AggregatorReady(IpcMessage, tag="ready", frozen=True):
    """The aggregator recovered its state from disk and serves the control socket."""

    sessions: list[SessionView]


class FreezeRequest(IpcMessage, tag="freeze", frozen=True):
    """Stop admitting chunks of ``session`` and reply :class:`Frozen` once none is in flight."""

    token: int
    session: bytes


class ThawRequest(IpcMessage, tag="thaw", frozen=True):
    """Undo a freeze whose operation did not happen (finalize found gaps)."""

    session: bytes


class CompareResult(IpcMessage, tag="compared", frozen=True):
    """Whether a resent chunk equals the stored one (and its stored leaf hash)."""

    token: int
    equal: bool
    leaf_hash: bytes
    code: str = ""
    message: str = ""


class InstallKeyring(IpcMessage, tag="install_keyring", frozen=True):
    """Give every worker this keyring (file text), keep it for the children started from now
    on, then reply :class:`KeyringInstalled`. The aggregator sends it only once the keyring is
    durable in its source (or, for a reload, was read from there)."""

    token: int
    keyring: bytes

    def __repr__(self) -> str:  # never the keys
        return f"InstallKeyring(token={self.token})"


AggregatorToSupervisor = (
    Outcomes
    | SessionChanged
    | AggregatorReady
    | FreezeRequest
    | ThawRequest
    | CompareResult
    | InstallKeyring
)


# --- supervisor -> aggregator -------------------------------------------------------------


class OpenRequest(IpcMessage, tag="open", frozen=True):
    """Open a session implicitly (its first chunk arrived on the data socket).

    ``owner_uid`` is the data connection's peer uid; for an id that exists already the
    aggregator answers with the stored session (and its owner), and admission decides.
    """

    session: bytes
    compression: str
    owner_uid: int


class Frozen(IpcMessage, tag="frozen", frozen=True):
    token: int


class CompareRequest(IpcMessage, tag="compare", frozen=True):
    """Compare the resent payload at ring ``offset`` with stored chunk ``index``."""

    token: int
    session: bytes
    index: int
    offset: int
    length: int


class ProcessInfo(msgspec.Struct, frozen=True, array_like=True):
    role: str
    pid: int
    alive: bool
    restarts: int


class SupervisorStatus(IpcMessage, tag="status", frozen=True):
    """Periodic supervisor figures and the process table, for health and metrics."""

    processes: list[ProcessInfo]
    metrics: dict[str, float]
    #: Why the daemon is degraded beyond the table (a child that cannot be started), one line
    #: each; empty when nothing is wrong.
    reasons: list[str] = []
    #: The supervisor's histograms since it started (cumulative: each status replaces the
    #: last one's), by name (lucidd.daemon.histograms).
    histograms: dict[str, p.Histogram] = msgspec.field(default_factory=dict)


class RecoverWorker(IpcMessage, tag="recover", frozen=True):
    """A worker died: index what it made durable in these sessions but never reported.

    Replied to with one ``Outcomes(token=token)`` holding an ack for every such record.
    """

    token: int
    worker: int
    sessions: list[bytes]


class Shutdown(IpcMessage, tag="shutdown", frozen=True):
    """Sync every log and exit; sent after the workers drained."""


class KeyringInstalled(IpcMessage, tag="keyring_installed", frozen=True):
    """Every live worker confirmed the keyring of :class:`InstallKeyring` ``token``."""

    token: int


class ReloadKeyring(IpcMessage, tag="reload_keyring", frozen=True):
    """SIGHUP: the keyring read again from its source (file text). The aggregator checks that
    it holds every key a session needs, then installs it like a rotation does."""

    keyring: bytes

    def __repr__(self) -> str:  # never the keys
        return "ReloadKeyring()"


SupervisorToAggregator = (
    OpenRequest
    | Frozen
    | CompareRequest
    | SupervisorStatus
    | RecoverWorker
    | Shutdown
    | KeyringInstalled
    | ReloadKeyring
)


# --- supervisor <-> replicator ----------------------------------------------------------


@dataclass(frozen=True)
class ReplicatorSpec:
    """Everything the replicator is started with (a credentials path, never a secret)."""

    config: Config
    credentials_dir: str = ""


class Replicate(IpcMessage, tag="replicate", frozen=True):
    """Records made durable locally, to upload (the supervisor forwards each worker batch).

    ``wait``: the supervisor holds these chunks' acks until :class:`Replicated` names them
    (``durability = "replicated"``), so they are uploaded at once instead of being grouped.
    """

    sealed: list[Sealed]
    wait: bool = False


class Replicated(IpcMessage, tag="replicated", frozen=True):
    """These chunks are in the object store (their pack exists)."""

    chunks: list[Acked]


class ReplicatorStatus(IpcMessage, tag="replicator_status", frozen=True):
    """The replicator's lag and counters, every second (health and metrics)."""

    pending_chunks: int
    pending_bytes: int
    #: Seconds the oldest pending record has waited (0: nothing pending).
    oldest_pending_s: float
    counters: dict[str, float]
    #: Why the object store cannot be written now ("" when it can).
    problem: str = ""


SupervisorToReplicator = Replicate | Shutdown
ReplicatorToSupervisor = Replicated | ReplicatorStatus


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def decoder(union: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(union)
