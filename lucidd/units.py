"""Sizes in bytes and how people write them (layer 1, shared by the daemon and the clients).

``parse_size`` reads ``"10MiB"``/``"64 KiB"``/``"100GB"``/``"4096"``; ``format_size`` writes the
shortest exact binary unit. Errors are :class:`~lucidd.errors.ConfigError` (a setting or a
command-line size that does not parse).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from lucidd.errors import ConfigError

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
TiB: Final = 1024 * GiB

_SIZE_UNITS: Final[Mapping[str, int]] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
}
_SIZE_RE: Final = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")
_UNITS_HELP: Final = (
    "a whole number of bytes with an optional unit: B, KB, MB, GB, TB, KiB, ..., TiB"
)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a size string: ``"4096"``, ``"64 KiB"``, ``"10MiB"``, ``"100GB"``.

    Units are case-insensitive; ``KiB``/``MiB``/``GiB``/``TiB`` are binary (1024-based) and
    ``KB``/``MB``/``GB``/``TB`` decimal. Bare ``K``/``M``/``G`` are refused as ambiguous.
    Raises :class:`ConfigError` on anything else (negative numbers, fractions, booleans).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"invalid size {value!r}: expected {_UNITS_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"invalid size {value!r}: must not be negative")
        return value
    match = _SIZE_RE.fullmatch(value)
    unit = match and _SIZE_UNITS.get(match.group(2).lower())
    if match is None or unit is None:
        raise ConfigError(f"invalid size {value!r}: expected {_UNITS_HELP}")
    return int(match.group(1)) * unit


def format_size(nbytes: int) -> str:
    """The shortest exact binary unit: ``10485760`` -> ``"10 MiB"``, ``1000`` -> ``"1000 B"``."""
    for name, unit in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit} {name}"
    return f"{nbytes} B"
