"""Daemon configuration: the settings, their defaults, bounds and checks (layer 1, DESIGN §7).

Pure: this module reads no file and no environment. :class:`Config` is every setting with its
default; :data:`RANGES`, :data:`CHOICES`, :data:`SIZE_FIELDS` and :data:`PATH_FIELDS` say what
each may hold, and :func:`problems` checks a whole Config, settings against each other too.
Merging the TOML file, the environment and the flags into one is
:mod:`~lucidd.daemon.config_load`'s. Secrets never come from configuration: ``keyring`` is a
path. The reference for users is ``docs/config.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import msgspec

from lucidd.errors import ConfigError
from lucidd.listen import parse_listen
from lucidd.protocol import MAX_BATCH_ITEMS
from lucidd.units import GiB, KiB, MiB, format_size
from lucidd.vocabulary import Compression

#: Prefix of the environment variables that set a field: ``LUCIDD_WORKERS`` sets ``workers``.
ENV_PREFIX: Final = "LUCIDD_"

COMPRESSION_CHOICES: Final = tuple(c.value for c in Compression)
#: ``fsync``: ack after fdatasync (the default). ``os``: ack after write(2) — acked chunks may be
#: lost on power loss; for benchmarks and users who accept that (the daemon logs a warning).
#: ``replicated``: ack after fdatasync and once the pack holding the chunk is in the object
#: store (``replication_url``).
DURABILITY_CHOICES: Final = ("fsync", "os", "replicated")
#: The durabilities whose acks follow the workers' fdatasync of the records.
LOCALLY_SYNCED: Final = ("fsync", "replicated")
LOG_LEVEL_CHOICES: Final = ("debug", "info", "warning", "error")

#: The socket files created in ``runtime_dir`` (DESIGN §7); the longest bounds its path length.
SOCKET_NAMES: Final = ("data.sock", "control.sock")
#: ``sizeof(sockaddr_un.sun_path)`` on Linux, including the terminating NUL.
SUN_PATH_SIZE: Final = 108
#: The ring is one shared-memory segment; keep it far below what a host would lend.
MAX_RING_SIZE: Final = 4 * GiB


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The daemon's settings. Construct with :func:`load_config`, which also validates.

    A directly constructed ``Config`` is not checked until :meth:`validate` is called. Empty
    ``state_dir``/``runtime_dir`` mean "the default" (see
    :func:`lucidd.daemon.default_dirs.resolve_dirs`); an empty
    ``keyring`` means "``$CREDENTIALS_DIRECTORY/lucidd.keyring``, else ``<state>/keys/keyring``"
    (decided by the keyring loader, DESIGN §4).
    """

    workers: int = 10
    max_chunk_size: int = 10 * MiB
    max_session_size: int = 100 * 10**9
    #: Chunks admitted and not yet acknowledged, daemon-wide.
    max_in_flight: int = 1000
    worker_timeout: float = 30.0
    #: Most chunks in one ``Batch`` frame and in one worker group commit.
    batch_size: int = 100
    #: Group-commit size bound of one worker batch.
    batch_bytes: int = 64 * MiB
    #: Default compression of new sessions.
    compression: str = "auto"
    durability: str = "fsync"
    slot_size: int = 64 * KiB
    ring_size: int = 32 * MiB
    #: How far past a session's contiguous prefix an index may be accepted.
    reorder_window: int = 65536
    #: A worker's segment file rolls over once it grows past this.
    segment_size: int = 1 * GiB
    state_dir: str = ""
    runtime_dir: str = ""
    keyring: str = ""
    log_level: str = "info"
    watchdog: bool = True
    #: Members of this group (a name or a gid) may touch every session, like root; empty: none.
    admin_group: str = ""
    # -- bounds per client (DESIGN §10, issue 10): no local client can starve or wedge us --
    #: Open connections per socket (data and control each); one more gets ``busy`` and is
    #: closed at once. See :func:`connection_limit` for the clamp to the fd budget.
    max_connections: int = 256
    #: Chunks admitted and not yet acknowledged on one data connection.
    connection_max_in_flight: int = 256
    #: The fraction of the ring one data connection may hold while another waits for room.
    connection_ring_share: float = 0.5
    #: Seconds a chunk's payload may stop arriving before the chunk is dropped.
    payload_timeout: float = 10.0
    #: Seconds a connection with nothing in flight may stay silent before it is closed.
    idle_timeout: float = 300.0
    #: Reply bytes buffered for one connection before it is no longer read from.
    max_reply_buffer: int = 4 * MiB
    #: Control requests of one connection being served at once; beyond it, reading waits.
    max_pipelined_requests: int = 16
    #: The largest shared-memory region one data connection may ask for (``ShareMemory``,
    #: its payloads then bypass the socket); 0: every client uses the socket.
    shared_memory_max: int = 64 * MiB
    # -- the trust chain (issue 13): signed checkpoints, the anchor log, anchoring --
    #: The host origin: checkpoints are ``<origin>/<session id>`` and ``<origin>/anchor``, and
    #: the signing key is named after it. Empty: ``<host name>/lucidd``, stored at first start.
    origin: str = ""
    #: Seconds between the signed checkpoints of a growing session (and one at finalize).
    checkpoint_interval: float = 10.0
    #: Seconds between signed checkpoints (and anchorings) of the host's anchor log.
    anchor_interval: float = 60.0
    #: Anchoring backends, comma-separated: ``ethereum``, ``command``; empty: none.
    anchors: str = ""
    #: The program (split like a shell would, no shell run) of the ``command`` backend.
    anchor_command: str = ""
    #: JSON file with ``rpc_url`` and ``private_key``; empty:
    #: ``$CREDENTIALS_DIRECTORY/lucidd.ethereum``, else ``<state>/keys/ethereum.json``.
    ethereum_credentials: str = ""
    #: Address of the deployed LucidAnchor contract (``lucidd anchor deploy``).
    ethereum_contract: str = ""
    # -- replication to S3-compatible object storage (issue 14) --
    #: ``s3://BUCKET/PREFIX``; empty: no replication.
    replication_url: str = ""
    #: The S3 endpoint (``http://127.0.0.1:8333``); empty: AWS's for the region.
    replication_endpoint: str = ""
    replication_region: str = "us-east-1"
    #: JSON file with ``access_key_id`` and ``secret_access_key``; empty:
    #: ``$CREDENTIALS_DIRECTORY/lucidd.s3``, else ``<state>/keys/s3.json``.
    replication_credentials: str = ""
    #: With ``durability = "replicated"``: seconds a chunk may wait for its upload before the
    #: client is told ``unavailable`` (the chunk stays stored locally and is uploaded later).
    replication_timeout: float = 30.0
    #: Seconds a finalized session stays on the local disk once the object store holds all of
    #: it; then its records are freed locally and reads fetch them back. 0: kept forever.
    local_retention: float = 0.0
    # -- HTTP (issue 15): Prometheus metrics, and the REST gateway ``lucidd http`` --
    #: Where the daemon serves ``GET /metrics``: ``127.0.0.1:PORT``, ``[::1]:PORT`` or
    #: ``unix:PATH``; empty: not served.
    metrics_listen: str = ""
    #: Where ``lucidd http`` serves the REST API (the same spellings); it is its own process.
    http_listen: str = ""
    #: ``USER TOKEN`` lines (mode 0600) for bearer tokens on TCP; empty:
    #: ``$CREDENTIALS_DIRECTORY/lucidd.http-tokens``, else ``<state>/keys/http-tokens``.
    http_tokens: str = ""
    #: HTTP connections ``lucidd http`` keeps open at once (beyond it: 503).
    http_max_connections: int = 256
    #: Requests of one user ``lucidd http`` serves at once (beyond it: 429).
    http_user_requests: int = 64
    #: Seconds an HTTP request may take to arrive: its head, or a gap in its body.
    http_request_timeout: float = 10.0

    @property
    def slots(self) -> int:
        """Number of slots in the shared-memory ring."""
        return self.ring_size // self.slot_size

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming every invalid setting; return None if all are valid.

        Checks types, ranges, choices, path shape and the cross-field rules: ``slot_size`` is a
        power of two, ``ring_size`` is a multiple of it and holds one maximal chunk plus a slot.
        """
        found = problems(self)
        if found:
            raise ConfigError(
                "; ".join(message for _, message in found),
                fields=[name for name, _ in found],
            )


#: Inclusive ranges of the numeric settings; None as the upper bound means "no upper bound".
RANGES: Final[Mapping[str, tuple[int | float, int | float | None]]] = {
    "workers": (1, 50),
    "max_chunk_size": (1, 64 * MiB),
    "max_session_size": (1, None),
    "max_in_flight": (1, 100_000),
    "worker_timeout": (0.1, 3600.0),
    "batch_size": (1, MAX_BATCH_ITEMS),  # a full Batch frame must fit the header bound
    "batch_bytes": (1 * MiB, 1 * GiB),
    "slot_size": (4 * KiB, 64 * MiB),
    # The smallest ring that can work: two minimal slots (one maximal chunk plus a slot).
    "ring_size": (8 * KiB, MAX_RING_SIZE),
    "reorder_window": (1, 10**7),
    "segment_size": (1 * MiB, 64 * GiB),
    "max_connections": (1, 65_536),
    "connection_max_in_flight": (1, 100_000),
    "connection_ring_share": (0.01, 1.0),
    "payload_timeout": (0.1, 3600.0),
    "idle_timeout": (0.1, 86_400.0),
    "max_reply_buffer": (64 * KiB, 1 * GiB),
    "max_pipelined_requests": (1, 10_000),
    "shared_memory_max": (0, 1 * GiB),
    "checkpoint_interval": (0.05, 86_400.0),
    "anchor_interval": (0.05, 86_400.0),
    "replication_timeout": (0.1, 3600.0),
    "local_retention": (0.0, 10 * 365 * 86_400.0),
    "http_max_connections": (1, 65_536),
    "http_user_requests": (1, 65_536),
    "http_request_timeout": (0.1, 3600.0),
}

CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "compression": COMPRESSION_CHOICES,
    "durability": DURABILITY_CHOICES,
    "log_level": LOG_LEVEL_CHOICES,
}

#: Settings measured in bytes: they accept size strings such as ``"10MiB"``.
SIZE_FIELDS: Final = frozenset(
    {
        "max_chunk_size",
        "max_session_size",
        "batch_bytes",
        "slot_size",
        "ring_size",
        "segment_size",
        "max_reply_buffer",
        "shared_memory_max",
    }
)
#: Settings holding a filesystem path; empty means the default, otherwise it must be absolute.
PATH_FIELDS: Final = (
    "state_dir",
    "runtime_dir",
    "keyring",
    "ethereum_credentials",
    "replication_credentials",
    "http_tokens",
)
#: A host origin: a schema-less URL-like name (no spaces, no ``+``, no trailing ``/``).
_ORIGIN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
_ANCHOR_BACKENDS: Final = ("ethereum", "command")


def valid_origin(origin: str) -> bool:
    """Whether ``origin`` may be a host origin (and the signing key's name)."""
    return bool(_ORIGIN.match(origin)) and not origin.endswith("/") and "//" not in origin


FIELD_TYPES: Final[Mapping[str, type]] = {
    field.name: field.type for field in msgspec.structs.fields(Config)
}


def connection_limit(config: Config, fd_budget: int | None = None) -> int:
    """The most connections one socket keeps open: ``max_connections``, clamped to
    ``fd_budget`` (the fds left for clients after the daemon's own and a reserve) when known.

    The hook for the fd reserve (issue 10): both sockets ask this, never the field directly,
    so the clamp is one change here. Never below 1.
    """
    limit = config.max_connections
    if fd_budget is not None:
        limit = min(limit, fd_budget)
    return max(1, limit)


def env_var_name(field: str) -> str:
    """The environment variable that sets ``field``: ``workers`` -> ``LUCIDD_WORKERS``."""
    return ENV_PREFIX + field.upper()


# --- validation -------------------------------------------------------------------------


def type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}[kind]


def has_type(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _range_text(name: str, lo: float, hi: float | None) -> str:
    if hi is None:
        return f"allowed {lo} or more"
    if isinstance(lo, float) or isinstance(hi, float):
        return f"allowed {lo:g}..{hi:g}"
    text = f"allowed {lo}..{hi}"
    if name in SIZE_FIELDS:
        text += f" ({format_size(int(lo))}..{format_size(int(hi))})"
    return text


def _field_problem(name: str, value: object) -> str | None:
    kind = FIELD_TYPES[name]
    if not has_type(value, kind):
        return f"{name} = {value!r} has the wrong type: expected {type_name(kind)}"
    if name in RANGES:
        lo, hi = RANGES[name]
        number = value if isinstance(value, int | float) else 0
        # Written so that NaN is out of range too.
        if not (lo <= number and (hi is None or number <= hi)):
            return f"{name} = {value!r} is out of range: {_range_text(name, lo, hi)}"
    if name in CHOICES and value not in CHOICES[name]:
        return f"{name} = {value!r} is not allowed: choose one of {', '.join(CHOICES[name])}"
    if name in PATH_FIELDS and isinstance(value, str) and value:
        if "\0" in value:
            return f"{name} = {value!r} contains a NUL byte"
        if not value.startswith("/"):
            return f"{name} = {value!r} must be an absolute path (or empty for the default)"
    return None


def _cross_field_problems(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    slot, ring, chunk = config.slot_size, config.ring_size, config.max_chunk_size
    if slot & (slot - 1):
        problems.append(("slot_size", f"slot_size = {slot} must be a power of two"))
        return problems
    if ring % slot:
        problems.append(
            ("ring_size", f"ring_size = {ring} must be a multiple of slot_size = {slot}")
        )
    if ring < chunk + slot:
        problems.append(
            (
                "ring_size",
                f"ring_size = {ring} is too small: it must hold one maximal chunk plus a slot, "
                f"max_chunk_size + slot_size = {chunk + slot} ({format_size(chunk + slot)})",
            )
        )
    if config.origin and not valid_origin(config.origin):
        problems.append(
            (
                "origin",
                f"origin = {config.origin!r} is not a valid origin: letters, digits and "
                "._:/- only, like example.com/lucidd, no trailing /",
            )
        )
    for name in (n.strip() for n in config.anchors.split(",")):
        if name and name not in _ANCHOR_BACKENDS:
            problems.append(
                (
                    "anchors",
                    f"anchors = {config.anchors!r}: unknown backend {name!r}; "
                    f"choose among {', '.join(_ANCHOR_BACKENDS)}",
                )
            )
    url = config.replication_url
    if url and not (url.startswith("s3://") and len(url) > len("s3://") and url[5] != "/"):
        problems.append(
            ("replication_url", f"replication_url = {url!r} is not s3://BUCKET[/PREFIX]")
        )
    if config.durability == "replicated" and not url:
        problems.append(
            (
                "durability",
                'durability = "replicated" needs replication_url (s3://BUCKET/PREFIX)',
            )
        )
    if config.local_retention and not url:
        problems.append(
            ("local_retention", "local_retention needs replication_url (s3://BUCKET/PREFIX)")
        )
    for name in ("metrics_listen", "http_listen"):
        listen = getattr(config, name)
        if listen:
            try:
                parse_listen(listen)
            except ValueError as exc:
                problems.append((name, f"{name}: {exc}"))
    runtime = config.runtime_dir
    if runtime:
        longest = max(
            len(f"{runtime}/{name}".encode(errors="surrogateescape")) for name in SOCKET_NAMES
        )
        if longest >= SUN_PATH_SIZE:
            problems.append(
                (
                    "runtime_dir",
                    f"runtime_dir = {runtime!r} is too long: its socket paths take {longest} "
                    f"bytes, a Unix socket path allows {SUN_PATH_SIZE - 1}",
                )
            )
    return problems


def problems(config: Config) -> list[tuple[str, str]]:
    """Every (field, message) wrong with ``config``; cross-field rules only once fields pass."""
    found = [
        (name, problem)
        for name in FIELD_TYPES
        if (problem := _field_problem(name, getattr(config, name))) is not None
    ]
    return found or _cross_field_problems(config)


def config_as_dict(config: Config) -> dict[str, object]:
    """Every setting by name, builtins only (the control socket's ``ConfigReply``)."""
    return msgspec.structs.asdict(config)
