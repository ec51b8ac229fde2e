"""The words lucidd's parts share, as enums (layer 0): one definition of each choice.

``StrEnum`` members are their strings, so they go on the wire, into files and into JSON
unchanged, and compare equal to the plain strings older peers send.
"""

from __future__ import annotations

from enum import StrEnum


class Compression(StrEnum):
    """A session's compression: ``auto`` stores raw unless zstd saves at least 3 %."""

    AUTO = "auto"
    ZSTD = "zstd"
    ZLIB = "zlib"
    OFF = "off"


class SessionState(StrEnum):
    """Where a session is in its life (``SessionSummary.state`` on the wire)."""

    OPEN = "open"
    FINALIZING = "finalizing"
    FINALIZED = "finalized"
    SHREDDED = "shredded"
    #: Its metadata or secret cannot be read: every request naming it is refused.
    DAMAGED = "damaged"
    #: Supervisor only: a new id's first chunk arrived, the aggregator has not answered yet.
    OPENING = "opening"
