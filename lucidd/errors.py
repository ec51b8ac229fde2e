"""The error tree of lucidd (layer 0).

Every failure that crosses a process or socket boundary is a :class:`LucidError` subclass.
Each class carries three facts, so that the wire, the CLI and the client agree:

- ``code``: the wire error code sent in a protocol ``Error`` reply (DESIGN §6);
- ``exit_code``: the ``sysexits(3)`` status ``lucidctl`` exits with (DESIGN §9);
- ``retryable``: whether resending the same request later can succeed.

Context (session, index, limit, ...) is kept as plain fields in ``context``; messages and
context never contain key material. Caller bugs raise ``ValueError``/``TypeError`` instead.
"""

from __future__ import annotations

from typing import ClassVar

# sysexits(3) codes used by lucidctl and lucidd.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class LucidError(Exception):
    """Base of every lucidd error; ``str(err)`` is a one-line, secret-free message."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = EX_SOFTWARE
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, object] = context

    def __str__(self) -> str:
        return self.message


class InternalError(LucidError):
    """A bug or an unexpected condition inside lucidd."""


class FormatError(LucidError):
    """Bytes that are not a well-formed lucidd record, file or message."""

    code = "bad_format"
    exit_code = EX_DATAERR


class IntegrityError(LucidError):
    """Authentication failed. Deliberately says nothing about why (restic, borg)."""

    code = "integrity"
    exit_code = EX_DATAERR


class KeyringError(LucidError):
    """The keyring is missing, malformed, or has unsafe ownership or permissions."""

    code = "keyring"
    exit_code = EX_CONFIG


class PassphraseError(KeyringError):
    """A passphrase-locked keyring could not be unlocked: wrong passphrase, or none to be had.

    The message says which source was tried or where to put one; never the passphrase."""

    code = "passphrase"
    exit_code = EX_CONFIG


class ConfigError(LucidError):
    """An invalid configuration value; the message names the field and the allowed range."""

    code = "config"
    exit_code = EX_CONFIG


class BadFrameError(LucidError):
    """A frame that cannot be parsed; the connection that sent it is closed."""

    code = "bad_frame"
    exit_code = EX_DATAERR


class BadRequestError(LucidError):
    """A well-formed request with invalid arguments (a negative index, a size beyond the log)."""

    code = "bad_request"
    exit_code = EX_USAGE


class TooLargeError(LucidError):
    """A chunk or frame longer than the configured maximum."""

    code = "too_large"
    exit_code = EX_DATAERR


class UnknownSessionError(LucidError):
    """No session with that id exists (or it was shredded)."""

    code = "unknown_session"
    exit_code = EX_NOINPUT


class NotFoundError(LucidError):
    """The session exists but the requested chunk index is not stored."""

    code = "not_found"
    exit_code = EX_NOINPUT


class DamagedSessionError(LucidError):
    """The session's files are damaged: its metadata or secret cannot be read (every request
    naming it is refused), or the record of the requested chunk is gone (quarantined, or its
    segment cut). ``lucidctl check`` exits with this status when a scrub finds bad chunks."""

    code = "damaged"
    exit_code = EX_DATAERR


class SessionFinalizedError(LucidError):
    """The session is finalized and accepts no more chunks."""

    code = "session_finalized"
    exit_code = EX_DATAERR


class DuplicateIndexError(LucidError):
    """The index is already stored with different bytes, or is in flight."""

    code = "duplicate_index"
    exit_code = EX_DATAERR


class SessionFullError(LucidError):
    """Accepting the chunk would exceed the session size limit."""

    code = "session_full"
    exit_code = EX_DATAERR


class IncompleteSessionError(LucidError):
    """Finalize asked for a session with missing chunks (gaps) or chunks still in flight."""

    code = "incomplete"
    exit_code = EX_DATAERR
    retryable = True


class BusyError(LucidError):
    """The daemon cannot take the request now (draining, limits); retry later."""

    code = "busy"
    exit_code = EX_TEMPFAIL
    retryable = True


class SessionBusyError(LucidError):
    """Another connection is writing to the session (one writer at a time); nothing was stored.

    Retryable: the lease ends when that connection closes.
    """

    code = "session_busy"
    exit_code = EX_TEMPFAIL
    retryable = True


class StorageError(LucidError):
    """Disk full or an I/O error; nothing was acknowledged. Retry once space is back."""

    code = "storage"
    exit_code = EX_IOERR
    retryable = True


class RequestTimeoutError(LucidError):
    """No reply in time: a worker exceeded ``worker_timeout`` twice, or the client gave up."""

    code = "timeout"
    exit_code = EX_TEMPFAIL
    retryable = True


class ForbiddenError(LucidError):
    """The caller may not touch that session; says nothing about whether it exists."""

    code = "forbidden"
    exit_code = EX_NOPERM


class UntrustedSocketError(LucidError):
    """Client side: the socket's folder or the peer behind it is not the daemon's (squatting)."""

    code = "untrusted_socket"
    exit_code = EX_NOPERM


class PayloadTimeoutError(LucidError):
    """A chunk's payload stopped arriving for ``payload_timeout``: dropped, connection closed."""

    code = "payload_timeout"
    exit_code = EX_TEMPFAIL
    retryable = True


class IdleTimeoutError(LucidError):
    """The connection sent nothing and waited for nothing for ``idle_timeout``: closed."""

    code = "idle_timeout"
    exit_code = EX_TEMPFAIL
    retryable = True


class NotAnchoredError(LucidError):
    """The chunk is in no anchored checkpoint yet; the message says when it will be."""

    code = "not_anchored"
    exit_code = EX_TEMPFAIL
    retryable = True


class UnavailableError(LucidError):
    """A service cannot be reached: the daemon (its socket), an anchoring backend's RPC."""

    code = "unavailable"
    exit_code = EX_UNAVAILABLE
    retryable = True


class ObjectConflictError(LucidError):
    """A different object already exists under a create-only key in the replication store.

    Replicated objects are never overwritten, so this is tampering or a bug: an alarm, not a
    retry (lucidd.daemon.replication.objects).
    """

    code = "replication_conflict"
    exit_code = EX_DATAERR


_ALL: tuple[type[LucidError], ...] = (
    InternalError,
    FormatError,
    IntegrityError,
    KeyringError,
    PassphraseError,
    ConfigError,
    BadFrameError,
    BadRequestError,
    TooLargeError,
    UnknownSessionError,
    NotFoundError,
    DamagedSessionError,
    SessionFinalizedError,
    DuplicateIndexError,
    SessionFullError,
    IncompleteSessionError,
    BusyError,
    SessionBusyError,
    StorageError,
    RequestTimeoutError,
    ForbiddenError,
    UntrustedSocketError,
    PayloadTimeoutError,
    IdleTimeoutError,
    NotAnchoredError,
    UnavailableError,
    ObjectConflictError,
)

ERROR_BY_CODE: dict[str, type[LucidError]] = {cls.code: cls for cls in _ALL}


def error_from_wire(code: str, message: str, **context: object) -> LucidError:
    """Build the exception class matching a wire error code (unknown codes are internal)."""
    return ERROR_BY_CODE.get(code, InternalError)(message, **context)
