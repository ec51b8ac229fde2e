"""Loading the configuration: defaults < TOML < environment < flags (layer 1, DESIGN §7).

Pure: the caller (``__main__``, ``lucidd keys``) reads the TOML file and passes its text,
``os.environ`` and the command-line flags in; :func:`load_config` merges them with this
precedence, lowest first::

    defaults < TOML file < LUCIDD_<FIELD> environment variables < overrides (flags)

and returns a validated :class:`~lucidd.daemon.config.Config`. Every failure is a
:class:`~lucidd.errors.ConfigError` whose message names the setting, the value and what is
allowed (CLI exit status 78, so the unit can refuse to restart on it).

Every setting may also be written as a string in its environment-variable syntax: sizes as
``"10MiB"``/``"64 KiB"``/``"100GB"``/``"4096"`` (see :func:`~lucidd.units.parse_size`),
booleans as ``1/0/true/false/yes/no``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Final

import msgspec

from lucidd.daemon.config import (
    CHOICES,
    ENV_PREFIX,
    FIELD_TYPES,
    SIZE_FIELDS,
    Config,
    env_var_name,
    has_type,
    problems,
    type_name,
)
from lucidd.errors import ConfigError
from lucidd.units import parse_size

_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})


def _parse_text(name: str, text: str) -> object:
    """A setting from its string spelling (environment variables, or strings in TOML/flags)."""
    kind = FIELD_TYPES[name]
    if kind is bool:
        token = text.strip().lower()
        if token in _TRUE or token in _FALSE:
            return token in _TRUE
        raise ConfigError(f"{name} = {text!r} is not a boolean: use 1/0, true/false or yes/no")
    if kind is int or kind is float:
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name} = {text!r} is not {type_name(kind)}") from None
    return text.lower() if name in CHOICES else text


def _coerce(name: str, value: object) -> object:
    """``value`` converted to ``name``'s type; only the shape is checked here, not the range."""
    kind = FIELD_TYPES[name]
    if name in SIZE_FIELDS and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return parse_size(value)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc.message}") from None
    if isinstance(value, str):
        return _parse_text(name, value)
    if not has_type(value, kind):
        raise ConfigError(f"{name} = {value!r} has the wrong type: expected {type_name(kind)}")
    if kind is float and isinstance(value, int | float):
        return float(value)
    return value


def _set(
    values: dict[str, object], sources: dict[str, str], name: str, value: object, source: str
) -> None:
    try:
        values[name] = _coerce(name, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (set by {source})", field=name, source=source) from None
    sources[name] = source


def _unknown_setting(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown setting {key!r} in {where}{hint}", key=key)


def _decode_toml(toml_text: bytes | str) -> dict[str, object]:
    try:
        text = toml_text.decode() if isinstance(toml_text, bytes) else toml_text
        table = msgspec.toml.decode(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the config file is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid TOML in the config file: {exc}") from None
    if not isinstance(table, dict):  # pragma: no cover - a TOML document is always a table
        raise ConfigError("the config file must be a TOML table of settings")
    return table


def load_config(
    toml_text: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Merge defaults, the TOML file's text, ``LUCIDD_*`` variables and flags; validate.

    ``overrides`` are the command-line flags, keyed by field name; None values are skipped (a
    flag not given). An unknown key in the TOML file is a :class:`ConfigError`; an unknown key in
    ``overrides`` is a caller bug (``ValueError``). Unknown ``LUCIDD_*`` variables are ignored
    here: :func:`unknown_env_settings` lists them so the daemon can log a warning.
    Error messages say which source set the offending value.
    """
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    if toml_text is not None:
        for key, value in _decode_toml(toml_text).items():
            if key not in FIELD_TYPES:
                raise _unknown_setting(key, "the config file")
            _set(values, sources, key, value, "the config file")
    for name in FIELD_TYPES:
        var = env_var_name(name)
        if env is not None and var in env:
            _set(values, sources, name, env[var], var)
    for key, value in (overrides or {}).items():
        if key not in FIELD_TYPES:
            raise ValueError(f"unknown config override {key!r}")
        if value is not None:
            _set(values, sources, key, value, "the command line")
    config = msgspec.structs.replace(Config(), **values)
    found = problems(config)
    if found:
        raise ConfigError(
            "; ".join(
                f"{message} (set by {sources[name]})" if name in sources else message
                for name, message in found
            ),
            fields=[name for name, _ in found],
        )
    return config


def unknown_env_settings(env: Mapping[str, str]) -> list[str]:
    """Sorted names of ``LUCIDD_*`` variables that set nothing (likely typos, worth a warning)."""
    known = {env_var_name(name) for name in FIELD_TYPES}
    return sorted(var for var in env if var.startswith(ENV_PREFIX) and var not in known)
