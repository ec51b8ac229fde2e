"""Unit tests of the daemon config: defaults, ranges, size strings, precedence and directories."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lucidd import protocol
from lucidd.daemon.config import Config, config_as_dict, connection_limit, env_var_name
from lucidd.daemon.config_load import load_config, unknown_env_settings
from lucidd.daemon.default_dirs import default_runtime_dir, default_state_dir, resolve_dirs
from lucidd.errors import EX_CONFIG, ConfigError
from lucidd.units import parse_size

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def make(**fields: Any) -> Config:
    """``Config(**fields)`` for fields chosen at run time (mypy cannot check those)."""
    return Config(**fields)


def invalid(**fields: Any) -> str:
    """The message of the ConfigError that validating ``Config(**fields)`` raises."""
    with pytest.raises(ConfigError) as info:
        Config(**fields).validate()
    return info.value.message


# --- defaults ---------------------------------------------------------------------------


def test_defaults_equal_the_spec() -> None:
    assert config_as_dict(Config()) == {
        "workers": 10,
        "max_chunk_size": 10 * MiB,
        "max_session_size": 100 * 10**9,
        "max_in_flight": 1000,
        "worker_timeout": 30.0,
        "batch_size": 100,
        "batch_bytes": 64 * MiB,
        "compression": "auto",
        "durability": "fsync",
        "slot_size": 64 * KiB,
        "ring_size": 32 * MiB,
        "reorder_window": 65536,
        "segment_size": 1 * GiB,
        "state_dir": "",
        "runtime_dir": "",
        "keyring": "",
        "log_level": "info",
        "watchdog": True,
        "admin_group": "",
        "max_connections": 256,
        "connection_max_in_flight": 256,
        "connection_ring_share": 0.5,
        "payload_timeout": 10.0,
        "idle_timeout": 300.0,
        "max_reply_buffer": 4 * MiB,
        "max_pipelined_requests": 16,
        "shared_memory_max": 64 * 1024 * 1024,
        "origin": "",
        "checkpoint_interval": 10.0,
        "anchor_interval": 60.0,
        "anchors": "",
        "anchor_command": "",
        "ethereum_credentials": "",
        "ethereum_contract": "",
        "replication_url": "",
        "replication_endpoint": "",
        "replication_region": "us-east-1",
        "replication_credentials": "",
        "replication_timeout": 30.0,
        "local_retention": 0.0,
        "metrics_listen": "",
        "http_listen": "",
        "http_tokens": "",
        "http_max_connections": 256,
        "http_user_requests": 64,
        "http_request_timeout": 10.0,
    }


def test_defaults_are_valid_and_give_512_slots() -> None:
    config = Config()
    config.validate()
    assert config.slots == 512


def test_load_config_without_sources_returns_the_defaults() -> None:
    assert load_config() == Config()
    assert load_config(None, {}, {}) == Config()


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().workers = 3  # type: ignore[misc]


def test_config_error_exits_with_ex_config() -> None:
    assert ConfigError.exit_code == EX_CONFIG == 78


# --- ranges -----------------------------------------------------------------------------

# field, lowest allowed, highest allowed (None: no upper bound), the range text in messages,
# and other settings that make each boundary valid across fields.
RANGE_CASES: list[tuple[str, int | float, int | float | None, str, dict[str, Any]]] = [
    ("workers", 1, 50, "allowed 1..50", {}),
    (
        "max_chunk_size",
        1,
        64 * MiB,
        "allowed 1..67108864 (1 B..64 MiB)",
        {"ring_size": 128 * MiB},
    ),
    ("max_session_size", 1, None, "allowed 1 or more", {}),
    ("max_in_flight", 1, 100_000, "allowed 1..100000", {}),
    ("worker_timeout", 0.1, 3600.0, "allowed 0.1..3600", {}),
    ("batch_size", 1, 4672, "allowed 1..4672", {}),
    ("batch_bytes", 1 * MiB, 1 * GiB, "allowed 1048576..1073741824 (1 MiB..1 GiB)", {}),
    (
        "slot_size",
        4 * KiB,
        64 * MiB,
        "allowed 4096..67108864 (4 KiB..64 MiB)",
        {"ring_size": 128 * MiB},
    ),
    (
        "ring_size",
        8 * KiB,
        4 * GiB,
        "allowed 8192..4294967296 (8 KiB..4 GiB)",
        {"slot_size": 4 * KiB, "max_chunk_size": 4 * KiB},
    ),
    ("reorder_window", 1, 10**7, "allowed 1..10000000", {}),
    ("segment_size", 1 * MiB, 64 * GiB, "allowed 1048576..68719476736 (1 MiB..64 GiB)", {}),
    ("max_connections", 1, 65_536, "allowed 1..65536", {}),
    ("connection_max_in_flight", 1, 100_000, "allowed 1..100000", {}),
    ("connection_ring_share", 0.01, 1.0, "allowed 0.01..1", {}),
    ("payload_timeout", 0.1, 3600.0, "allowed 0.1..3600", {}),
    ("idle_timeout", 0.1, 86_400.0, "allowed 0.1..86400", {}),
    ("max_reply_buffer", 64 * KiB, 1 * GiB, "allowed 65536..1073741824 (64 KiB..1 GiB)", {}),
    ("max_pipelined_requests", 1, 10_000, "allowed 1..10000", {}),
    ("checkpoint_interval", 0.05, 86_400.0, "allowed 0.05..86400", {}),
    ("anchor_interval", 0.05, 86_400.0, "allowed 0.05..86400", {}),
]


def _just_outside(value: int | float, direction: int) -> int | float:
    if isinstance(value, float):
        return value + direction * 1e-9
    return value + direction


@pytest.mark.parametrize(("field", "lo", "hi", "text", "extra"), RANGE_CASES)
def test_range_boundaries_are_accepted(
    field: str, lo: int | float, hi: int | float | None, text: str, extra: dict[str, Any]
) -> None:
    for value in (lo, hi if hi is not None else 10**18):
        config = make(**{**extra, field: value})
        config.validate()
        assert getattr(config, field) == value


@pytest.mark.parametrize(("field", "lo", "hi", "text", "extra"), RANGE_CASES)
def test_values_just_outside_the_range_are_rejected_naming_field_and_range(
    field: str, lo: int | float, hi: int | float | None, text: str, extra: dict[str, Any]
) -> None:
    outside = [_just_outside(lo, -1)]
    if hi is not None:
        outside.append(_just_outside(hi, +1))
    for value in outside:
        message = invalid(**{**extra, field: value})
        assert message == f"{field} = {value!r} is out of range: {text}"


def test_out_of_range_message_matches_the_documented_example() -> None:
    assert invalid(workers=0) == "workers = 0 is out of range: allowed 1..50"


def test_nan_timeout_is_out_of_range() -> None:
    assert "worker_timeout = nan is out of range" in invalid(worker_timeout=float("nan"))


@pytest.mark.parametrize(
    ("field", "choices"),
    [
        ("compression", ["auto", "zstd", "zlib", "off"]),
        ("durability", ["fsync", "os", "replicated"]),
        ("log_level", ["debug", "info", "warning", "error"]),
    ],
)
def test_each_choice_is_accepted_and_others_rejected_listing_the_choices(
    field: str, choices: list[str]
) -> None:
    for choice in choices:
        extra = {"replication_url": "s3://b/p"} if choice == "replicated" else {}
        make(**{field: choice}, **extra).validate()
    message = invalid(**{field: "bogus"})
    assert message == f"{field} = 'bogus' is not allowed: choose one of {', '.join(choices)}"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("workers", True, "an integer"),
        ("workers", "10", "an integer"),
        ("workers", 10.0, "an integer"),
        ("max_chunk_size", "1MiB", "an integer"),
        ("worker_timeout", "30", "a number"),
        ("worker_timeout", False, "a number"),
        ("compression", 1, "a string"),
        ("state_dir", None, "a string"),
        ("watchdog", 1, "a boolean"),
    ],
)
def test_wrong_types_are_rejected(field: str, value: object, expected: str) -> None:
    assert invalid(**{field: value}) == (
        f"{field} = {value!r} has the wrong type: expected {expected}"
    )


def test_integer_timeout_is_accepted() -> None:
    Config(worker_timeout=5).validate()


@pytest.mark.parametrize("slot_size", [4 * KiB + 1, 3 * 4 * KiB, 64 * MiB - 1])
def test_slot_size_must_be_a_power_of_two(slot_size: int) -> None:
    assert invalid(slot_size=slot_size) == f"slot_size = {slot_size} must be a power of two"


def test_ring_size_must_be_a_multiple_of_slot_size() -> None:
    message = invalid(ring_size=128 * MiB + 4 * KiB)
    assert message == f"ring_size = {128 * MiB + 4 * KiB} must be a multiple of slot_size = 65536"


def test_ring_must_hold_one_maximal_chunk_plus_a_slot() -> None:
    # Exactly one maximal chunk plus one slot fits ...
    Config(max_chunk_size=63 * MiB, slot_size=1 * MiB, ring_size=64 * MiB).validate()
    # ... one byte more of chunk does not.
    message = invalid(max_chunk_size=63 * MiB + 1, slot_size=1 * MiB, ring_size=64 * MiB)
    assert message == (
        f"ring_size = {64 * MiB} is too small: it must hold one maximal chunk plus a slot, "
        f"max_chunk_size + slot_size = {64 * MiB + 1} (67108865 B)"
    )


@pytest.mark.parametrize("field", ["state_dir", "runtime_dir", "keyring"])
def test_paths_must_be_absolute_or_empty(field: str) -> None:
    make(**{field: ""}).validate()
    make(**{field: "/var/lib/x"}).validate()
    assert invalid(**{field: "relative/dir"}).startswith(
        f"{field} = 'relative/dir' must be an absolute path"
    )
    assert "NUL" in invalid(**{field: "/a\0b"})


def test_runtime_dir_too_long_for_a_unix_socket_path_is_rejected() -> None:
    # "/control.sock" is 13 bytes; a socket path may have at most 107.
    Config(runtime_dir="/" + "r" * (107 - 13 - 1)).validate()
    message = invalid(runtime_dir="/" + "r" * (107 - 13))
    assert message.startswith("runtime_dir = ")
    assert "too long" in message
    assert "108 bytes" in message


def test_validate_reports_every_invalid_field_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Config(workers=0, batch_size=0, compression="lz4").validate()
    assert info.value.context["fields"] == ["workers", "batch_size", "compression"]
    for name in ("workers", "batch_size", "compression"):
        assert name in info.value.message


# --- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("0", 0),
        ("12B", 12),
        ("10MiB", 10 * MiB),
        ("64 KiB", 64 * KiB),
        (" 2 gib ", 2 * GiB),
        ("1TiB", 1024 * GiB),
        ("100GB", 100 * 10**9),
        ("3kb", 3000),
        ("5 MB", 5 * 10**6),
        ("2TB", 2 * 10**12),
    ],
)
def test_parse_size_accepts_ints_and_unit_strings(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "garbage", ["", "MiB", "ten", "1.5MiB", "-1", "10 M", "10K", "10 PiB", "1 0", "0x10", -1, True]
)
def test_parse_size_rejects_garbage(garbage: Any) -> None:
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(garbage)


# --- loading and precedence ---------------------------------------------------------------


def test_toml_sets_values_and_accepts_size_strings_and_ints() -> None:
    config = load_config(
        'workers = 4\nmax_chunk_size = "1MiB"\nsegment_size = 2147483648\n'
        'compression = "zstd"\nworker_timeout = 5\nwatchdog = false\n'
    )
    assert config == Config(
        workers=4,
        max_chunk_size=1 * MiB,
        segment_size=2 * GiB,
        compression="zstd",
        worker_timeout=5.0,
        watchdog=False,
    )
    assert isinstance(config.worker_timeout, float)


def test_toml_bytes_and_str_give_the_same_config() -> None:
    text = 'workers = 7\nstate_dir = "/srv/lucidd"\n'
    assert (
        load_config(text)
        == load_config(text.encode())
        == Config(workers=7, state_dir="/srv/lucidd")
    )


def test_precedence_defaults_toml_env_overrides() -> None:
    toml = "workers = 3\nbatch_size = 30\nmax_in_flight = 300\n"
    env = {"LUCIDD_WORKERS": "4", "LUCIDD_BATCH_SIZE": "40"}
    overrides: dict[str, object] = {"workers": 5}
    config = load_config(toml, env, overrides)
    assert (config.workers, config.batch_size, config.max_in_flight, config.reorder_window) == (
        5,  # flag beats env and file
        40,  # env beats file
        300,  # file beats default
        65536,  # default
    )


def test_none_overrides_are_ignored() -> None:
    config = load_config("workers = 3\n", {"LUCIDD_WORKERS": "4"}, {"workers": None})
    assert config.workers == 4


def test_overrides_accept_size_strings() -> None:
    assert load_config(overrides={"max_chunk_size": "2MiB"}).max_chunk_size == 2 * MiB


def test_env_values_are_converted_to_each_field_type() -> None:
    env = {
        env_var_name("workers"): "12",
        env_var_name("worker_timeout"): "2.5",
        env_var_name("max_session_size"): "1GB",
        env_var_name("slot_size"): "64KiB",
        env_var_name("compression"): "ZLIB",
        env_var_name("log_level"): "DEBUG",
        env_var_name("state_dir"): "/state",
        env_var_name("watchdog"): "no",
    }
    assert load_config(env=env) == Config(
        workers=12,
        worker_timeout=2.5,
        max_session_size=10**9,
        slot_size=64 * KiB,
        compression="zlib",
        log_level="debug",
        state_dir="/state",
        watchdog=False,
    )


def test_env_var_names_are_the_upper_case_field_names() -> None:
    assert env_var_name("max_chunk_size") == "LUCIDD_MAX_CHUNK_SIZE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("0", False),
        ("False", False),
        ("no", False),
    ],
)
def test_env_booleans(text: str, expected: bool) -> None:
    # Start from the opposite value so that a parser ignoring the variable fails.
    toml = f"watchdog = {'false' if expected else 'true'}\n"
    assert load_config(toml, {"LUCIDD_WATCHDOG": text}).watchdog is expected


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("LUCIDD_WATCHDOG", "maybe", "is not a boolean"),
        ("LUCIDD_WORKERS", "ten", "is not an integer"),
        ("LUCIDD_WORKER_TIMEOUT", "soon", "is not a number"),
        ("LUCIDD_MAX_CHUNK_SIZE", "big", "max_chunk_size: invalid size 'big'"),
        ("LUCIDD_WORKERS", "0", "is out of range: allowed 1..50"),
    ],
)
def test_bad_env_values_name_the_variable(var: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={var: value})
    assert fragment in info.value.message
    assert f"(set by {var})" in info.value.message


def test_invalid_values_name_their_source() -> None:
    with pytest.raises(
        ConfigError, match=r"^workers = 0 is out of range.*\(set by the config file\)$"
    ):
        load_config("workers = 0\n")
    with pytest.raises(ConfigError, match=r"\(set by the command line\)$"):
        load_config(overrides={"batch_size": 0})


def test_cross_field_errors_are_checked_after_merging_all_sources() -> None:
    # The file's ring is fine with the default chunk size; the flag's chunk size breaks it.
    load_config("ring_size = '64MiB'\n").validate()
    with pytest.raises(ConfigError, match=r"^ring_size = 67108864 is too small.*file\)$"):
        load_config("ring_size = '64MiB'\n", overrides={"max_chunk_size": 64 * MiB})


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('workers = "ten"\n', "workers = 'ten' is not an integer"),
        ("workers = 1.5\n", "workers = 1.5 has the wrong type: expected an integer"),
        ("state_dir = 5\n", "state_dir = 5 has the wrong type: expected a string"),
        ("watchdog = 1\n", "watchdog = 1 has the wrong type: expected a boolean"),
        ("max_chunk_size = 1.5\n", "max_chunk_size = 1.5 has the wrong type"),
        ("max_chunk_size = -1\n", "max_chunk_size: invalid size -1"),
        ("[workers]\nx = 1\n", "workers = {'x': 1} has the wrong type"),
    ],
)
def test_toml_values_of_the_wrong_type_are_rejected(toml: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(toml)
    assert fragment in info.value.message
    assert "(set by the config file)" in info.value.message


def test_unknown_toml_key_is_rejected_naming_it_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("wrokers = 4\n")
    assert (
        info.value.message
        == "unknown setting 'wrokers' in the config file; did you mean 'workers'?"
    )
    assert info.value.context["key"] == "wrokers"


def test_unknown_toml_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'lucidd'"):
        load_config("[lucidd]\nworkers = 4\n")


def test_malformed_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config("workers = \n")
    with pytest.raises(ConfigError, match="the config file is not UTF-8"):
        load_config(b"\xff\xfe")


def test_unknown_override_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="unknown config override 'wrokers'"):
        load_config(overrides={"wrokers": 4})


def test_unrelated_and_unknown_env_vars_do_not_change_the_config() -> None:
    env = {"PATH": "/bin", "LUCIDD_WROKERS": "3", "WORKERS": "3"}
    assert load_config(env=env) == Config()


def test_unknown_env_settings_lists_only_unknown_lucidd_vars_sorted() -> None:
    env = {
        "PATH": "/bin",
        "LUCIDD_WORKERS": "3",
        "LUCIDD_WROKERS": "3",
        "LUCIDD_workers": "3",
        "LUCIDD_COMPRESION": "zstd",
    }
    assert unknown_env_settings(env) == ["LUCIDD_COMPRESION", "LUCIDD_WROKERS", "LUCIDD_workers"]
    assert unknown_env_settings({"LUCIDD_LOG_LEVEL": "debug"}) == []


# --- directories --------------------------------------------------------------------------


def test_state_dir_defaults_to_home_local_state() -> None:
    assert default_state_dir({}, "/home/ada") == "/home/ada/.local/state/lucidd"


def test_state_dir_follows_xdg_state_home() -> None:
    assert default_state_dir({"XDG_STATE_HOME": "/xdg/state"}, "/home/ada") == "/xdg/state/lucidd"


@pytest.mark.parametrize("value", ["", "relative/state"])
def test_state_dir_ignores_empty_or_relative_xdg_state_home(value: str) -> None:
    env = {"XDG_STATE_HOME": value}
    assert default_state_dir(env, "/home/ada") == "/home/ada/.local/state/lucidd"


def test_systemd_state_directory_wins_over_xdg() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/lucidd", "XDG_STATE_HOME": "/xdg/state"}
    assert default_state_dir(env, "/home/ada") == "/var/lib/lucidd"


def test_systemd_directories_take_the_first_of_a_colon_list() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/h") == "/var/lib/a"
    assert default_runtime_dir({"RUNTIME_DIRECTORY": "/run/a:/run/b"}, 0) == "/run/a"


def test_runtime_dir_falls_back_to_tmp_with_uid() -> None:
    assert default_runtime_dir({}, 1234) == "/tmp/lucidd-1234"


def test_runtime_dir_follows_xdg_runtime_dir() -> None:
    assert (
        default_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == "/run/user/1000/lucidd"
    )


def test_systemd_runtime_directory_wins_over_xdg() -> None:
    env = {"RUNTIME_DIRECTORY": "/run/lucidd", "XDG_RUNTIME_DIR": "/run/user/0"}
    assert default_runtime_dir(env, 0) == "/run/lucidd"


def test_resolve_dirs_fills_empty_dirs_and_leaves_the_rest() -> None:
    env = {"XDG_STATE_HOME": "/xdg/state", "XDG_RUNTIME_DIR": "/run/user/7"}
    original = Config(workers=3)
    resolved = resolve_dirs(original, env, "/home/ada", 7)
    assert resolved == Config(
        workers=3, state_dir="/xdg/state/lucidd", runtime_dir="/run/user/7/lucidd"
    )
    assert original.state_dir == original.runtime_dir == ""  # a copy, not a mutation
    assert resolved.keyring == ""  # the keyring loader resolves an empty keyring


def test_resolve_dirs_without_xdg_vars_uses_home_and_tmp() -> None:
    resolved = resolve_dirs(Config(), {}, "/home/ada", 1000)
    assert (resolved.state_dir, resolved.runtime_dir) == (
        "/home/ada/.local/state/lucidd",
        "/tmp/lucidd-1000",
    )


def test_resolve_dirs_under_systemd() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/lucidd", "RUNTIME_DIRECTORY": "/run/lucidd"}
    resolved = resolve_dirs(Config(), env, "/root", 0)
    assert (resolved.state_dir, resolved.runtime_dir) == ("/var/lib/lucidd", "/run/lucidd")


def test_resolve_dirs_keeps_configured_dirs() -> None:
    config = Config(state_dir="/srv/state", runtime_dir="/srv/run", keyring="/etc/k")
    env = {"STATE_DIRECTORY": "/var/lib/lucidd", "RUNTIME_DIRECTORY": "/run/lucidd"}
    assert resolve_dirs(config, env, "/root", 0) == config


def test_resolve_dirs_validates_the_result() -> None:
    with pytest.raises(ConfigError, match=r"runtime_dir = .* is too long"):
        resolve_dirs(Config(), {"XDG_RUNTIME_DIR": "/" + "x" * 120}, "/home/ada", 0)


# --- control-socket view -------------------------------------------------------------------


def test_config_as_dict_round_trips_and_fits_a_config_reply() -> None:
    config = load_config("workers = 2\nstate_dir = '/s'\n")
    as_dict = config_as_dict(config)
    assert as_dict["workers"] == 2
    assert as_dict["state_dir"] == "/s"
    assert set(as_dict) == set(msgspec.structs.asdict(Config()))
    assert msgspec.convert(as_dict, Config) == config
    reply = protocol.ConfigReply(req=1, config=as_dict)
    decoder = protocol.control_reply_decoder(max_chunk=1024)
    decoder.receive_data(protocol.encode_frame(reply))
    event = decoder.next_event()
    assert isinstance(event, protocol.FrameMessage)
    assert event.message == reply


# --- documentation ------------------------------------------------------------------------


def test_docs_describe_every_setting_and_its_env_var() -> None:
    text = DOCS.read_text()
    for name in msgspec.structs.asdict(Config()):
        assert re.search(rf"`{name}`", text), f"docs/config.md lacks setting {name}"
        assert env_var_name(name) in text, f"docs/config.md lacks {env_var_name(name)}"


def test_connection_limit_is_max_connections_clamped_to_the_fd_budget() -> None:
    config = Config(max_connections=256)
    assert connection_limit(config) == 256
    assert connection_limit(config, fd_budget=100) == 100
    assert connection_limit(config, fd_budget=1000) == 256
    assert connection_limit(config, fd_budget=0) == 1  # never refuse every client


@pytest.mark.parametrize(
    "origin", ["has space", "trailing/", "a//b", "+plus", "x" * 201, "é.example/log"]
)
def test_an_origin_that_cannot_name_a_key_or_a_log_is_refused(origin: str) -> None:
    with pytest.raises(ConfigError, match="origin"):
        load_config(None, {"LUCIDD_ORIGIN": origin}, {})


def test_a_valid_origin_and_known_anchor_backends_are_accepted() -> None:
    env = {"LUCIDD_ORIGIN": "rec.example.com/lucidd", "LUCIDD_ANCHORS": "ethereum, command"}
    config = load_config(None, env, {})
    assert (config.origin, config.anchors) == ("rec.example.com/lucidd", "ethereum, command")


def test_an_unknown_anchor_backend_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="'bitcoin'"):
        load_config(None, {"LUCIDD_ANCHORS": "command,bitcoin"}, {})


def test_replicated_durability_needs_a_replication_url() -> None:
    with pytest.raises(ConfigError, match="replication_url"):
        load_config(None, {"LUCIDD_DURABILITY": "replicated"}, {})
    config = load_config(
        None, {"LUCIDD_DURABILITY": "replicated", "LUCIDD_REPLICATION_URL": "s3://b/p"}, {}
    )
    assert config.durability == "replicated"


@pytest.mark.parametrize("url", ["http://b/p", "s3://", "s3:///p", "b/p"])
def test_a_replication_url_must_be_s3_bucket_prefix(url: str) -> None:
    with pytest.raises(ConfigError, match="replication_url"):
        load_config(None, {"LUCIDD_REPLICATION_URL": url}, {})
