"""Typed errors as HTTP problem details (RFC 9457) with the sockets' codes (layer 1, pure).

Every :class:`~lucidd.errors.LucidError` code has one HTTP status here, so a client of the
REST API branches on ``code`` exactly as a socket client does, and on the status as HTTP
clients do. Retryable refusals carry ``Retry-After``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from lucidd.errors import ERROR_BY_CODE, LucidError

#: Where the ``type`` URIs of lucidd's problems point (the codes are documented there).
PROBLEM_TYPE_BASE: Final = "https://lucidd.dev/problems/"
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
#: Seconds a client is asked to wait before retrying a retryable refusal.
RETRY_AFTER_S: Final = 1

STATUS_BY_CODE: Final[dict[str, int]] = {
    "bad_frame": 400,
    "bad_request": 400,
    "bad_format": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "untrusted_socket": 502,
    "unknown_session": 404,
    "not_found": 404,
    "no_route": 404,
    "method_not_allowed": 405,
    "duplicate_index": 409,
    "session_finalized": 409,
    "session_busy": 409,
    "incomplete": 409,
    "too_large": 413,
    "session_full": 413,
    "unsupported_media_type": 415,
    "too_many_requests": 429,
    "busy": 503,
    "unavailable": 503,
    "timeout": 503,
    "payload_timeout": 408,
    "idle_timeout": 408,
    "not_anchored": 503,
    "storage": 507,
    "damaged": 500,
    "integrity": 500,
    "keyring": 500,
    "passphrase": 500,
    "config": 500,
    "internal": 500,
    "replication_conflict": 500,
}

_TITLES: Final[dict[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}

#: Codes of the HTTP layer itself (the others are lucidd.errors' wire codes).
HTTP_CODES: Final = frozenset(
    {"unauthorized", "no_route", "method_not_allowed", "unsupported_media_type",
     "too_many_requests"}
)  # fmt: skip


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem; ``code`` is lucidd's (the same as on the sockets)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    session_id: str | None = None
    chunk_index: int | None = None


class HttpError(Exception):
    """A refusal of the HTTP layer (no route, bad auth, ...), raised and answered as one."""

    def __init__(self, code: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retryable = retryable


def status_of(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)


def problem(
    code: str, detail: str, *, session_id: str | None = None, chunk_index: int | None = None
) -> Problem:
    status = status_of(code)
    return Problem(
        type=PROBLEM_TYPE_BASE + code,
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        code=code,
        session_id=session_id,
        chunk_index=chunk_index,
    )


def problem_of(err: LucidError, *, session_id: str | None = None) -> Problem:
    index = err.context.get("index")
    return problem(
        err.code,
        err.message,
        session_id=session_id,
        chunk_index=index if isinstance(index, int) else None,
    )


def retryable(code: str) -> bool:
    cls = ERROR_BY_CODE.get(code)
    return code == "too_many_requests" or (cls is not None and cls.retryable)
