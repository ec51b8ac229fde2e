"""Client library of lucidd: a sans-IO core with blocking and asyncio front ends (layer 4).

This package imports only :mod:`lucidd.protocol` and :mod:`lucidd.errors`, so it can ship on
its own (DESIGN §8). The wire protocol it speaks is documented for third-party authors in
``docs/protocol.md``. Import everything from here; the modules are its parts:

- :mod:`~lucidd.client.ids`: session ids, where the sockets are, and the trust checks.
- :mod:`~lucidd.client.data_core` and :mod:`~lucidd.client.control_core` (h11 style,
  STYLE.md, over the shared base of :mod:`~lucidd.client.core`): :class:`DataCore` and
  :class:`ControlCore` own no socket. They assign request ids, build frames, feed reply bytes to a
  :class:`~lucidd.protocol.FrameDecoder`, match each reply to the request it answers (replies
  may come out of order) and turn every wire ``Error`` into the
  :class:`~lucidd.errors.LucidError` subclass of its code, with the request's session and index
  as context. They return results; they never raise for what the daemon sends. ControlCore has
  one method per control request, the one place its reply type is known.
- :mod:`~lucidd.client.blocking`: :class:`DataClient` / :class:`ControlClient` drive a core
  over a blocking Unix socket (:mod:`~lucidd.client.sync_link`); :func:`put_until_acked`
  resends until every chunk is acked.
- :mod:`~lucidd.client.aio`: :class:`AsyncDataClient` / :class:`AsyncControlClient` over
  asyncio streams (:mod:`~lucidd.client.async_link`), with any number of concurrent calls
  pipelined on one connection.

Connection contract of every front end: a connection that fails (the daemon closed it, a read
or write failed, ``timeout`` seconds passed without progress) is *broken*: every request still
waiting fails (:class:`~lucidd.errors.UnavailableError`, or
:class:`~lucidd.errors.RequestTimeoutError` for the request that timed out) and later calls raise
``UnavailableError``; make a new client. Chunks in flight on a broken connection may or may not
be stored: resend them (a resend of a stored chunk with the same bytes is acknowledged again
and never sealed twice, DESIGN §2). Clients are not thread-safe.

Trust (issue 10, ``docs/security.md``): every front end checks the socket's folder before it
connects and the peer's uid right after (:func:`trusted_peer_uids`, :func:`check_peer`), and
raises :class:`~lucidd.errors.UntrustedSocketError` before sending a byte to a socket another
user may have planted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lucidd.client.blocking import ControlClient, DataClient
from lucidd.client.blocking import Readable as Readable
from lucidd.client.blocking import put_until_acked as put_until_acked
from lucidd.client.control_core import ControlCore
from lucidd.client.core import (
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    Buffer,
    ChunkResult,
    ControlResult,
)
from lucidd.client.core import FIRST_REQ as FIRST_REQ
from lucidd.client.data_core import DataCore
from lucidd.client.ids import (
    CONTROL_SOCKET_NAME,
    DATA_SOCKET_NAME,
    RUNTIME_DIR_ENV,
    SessionIdError,
    check_peer,
    default_runtime_dir,
    format_session_id,
    new_session_id,
    parse_session_id,
    trusted_peer_uids,
)
from lucidd.client.sync_link import IOV_MAX as IOV_MAX
from lucidd.client.sync_link import _send_all as _send_all
from lucidd.protocol import (
    Ack,
    CheckReply,
    ChunkReply,
    ConsistencyProofReply,
    FinalizeReply,
    HealthReply,
    InclusionProofReply,
    ProcessStatus,
    RootReply,
    SessionSummary,
)

# The public API, as it was when the client was one module. Also re-exported, as "X as X"
# and outside __all__ as before: put_until_acked, and what the core's unit tests reach
# (FIRST_REQ, IOV_MAX, _send_all).
__all__ = [
    "CONTROL_SOCKET_NAME",
    "DATA_SOCKET_NAME",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WINDOW",
    "RUNTIME_DIR_ENV",
    "Ack",
    "AsyncControlClient",
    "AsyncDataClient",
    "Buffer",
    "CheckReply",
    "ChunkReply",
    "ChunkResult",
    "ConsistencyProofReply",
    "ControlClient",
    "ControlCore",
    "ControlResult",
    "DataClient",
    "DataCore",
    "FinalizeReply",
    "HealthReply",
    "InclusionProofReply",
    "ProcessStatus",
    "Readable",
    "RootReply",
    "SessionIdError",
    "SessionSummary",
    "check_peer",
    "default_runtime_dir",
    "format_session_id",
    "new_session_id",
    "parse_session_id",
    "trusted_peer_uids",
]

if TYPE_CHECKING:
    from lucidd.client.aio import AsyncControlClient, AsyncDataClient


def __getattr__(name: str) -> Any:
    # The asyncio clients are imported on first use: asyncio is a third of what a blocking
    # client (``lucidctl put``) would otherwise load at start (python -X importtime).
    if name in ("AsyncControlClient", "AsyncDataClient"):
        from lucidd.client import aio  # noqa: PLC0415 (asyncio only when used)

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
