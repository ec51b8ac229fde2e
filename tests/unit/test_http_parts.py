"""The HTTP side's pure parts (issue 15): listen addresses, problem statuses, the tokens file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lucidd.daemon.config_load import load_config
from lucidd.errors import ERROR_BY_CODE, ConfigError
from lucidd.http.auth import Tokens
from lucidd.http.problems import HTTP_CODES, STATUS_BY_CODE, problem, retryable
from lucidd.listen import ListenAddress, parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ListenAddress(host="127.0.0.1", port=9464)),
        ("127.0.0.2:0", ListenAddress(host="127.0.0.2", port=0)),
        ("[::1]:8080", ListenAddress(host="::1", port=8080)),
        ("unix:/run/lucidd/metrics.sock", ListenAddress(path="/run/lucidd/metrics.sock")),
    ],
)
def test_listen_addresses_parse_and_print_back(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected
    assert str(parse_listen(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "9464", "localhost:80", "0.0.0.0:80", "10.0.0.1:80", "[::]:80", "127.0.0.1:70000",
     "127.0.0.1:x", "unix:relative.sock", "unix:/" + "a" * 200],
)  # fmt: skip
def test_listen_refuses_what_is_not_loopback_or_a_unix_path(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_config_names_a_bad_listen_address() -> None:
    with pytest.raises(ConfigError, match="metrics_listen") as caught:
        load_config(env={"LUCIDD_METRICS_LISTEN": "0.0.0.0:9464"})
    assert "loopback" in caught.value.message
    assert load_config(env={"LUCIDD_HTTP_LISTEN": "unix:/tmp/h.sock"}).http_listen


def test_every_error_code_has_an_http_status() -> None:
    assert set(ERROR_BY_CODE) | HTTP_CODES <= set(STATUS_BY_CODE)
    assert problem("duplicate_index", "x").status == 409
    assert problem("forbidden", "x").status == 403
    assert retryable("busy") and retryable("too_many_requests") and not retryable("forbidden")


def _tokens_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_tokens_map_to_users_and_are_not_kept_in_clear(tmp_path: Path) -> None:
    token = "x" * 40
    tokens = Tokens.load(_tokens_file(tmp_path, f"# comment\n\nroot {token}\n1234 {'y' * 32}\n"))
    assert len(tokens) == 2
    assert tokens.uid_of(token) == 0 and tokens.uid_of("y" * 32) == 1234
    assert tokens.uid_of("z" * 40) is None
    assert token not in repr(vars(tokens))


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("root short\n", 0o600, "shorter than 32"),
        (f"root {'a' * 40} extra\n", 0o600, "USER TOKEN"),
        (f"root {'a' * 40}\n0 {'a' * 40}\n", 0o600, "twice"),
        (f"no-such-user-here {'a' * 40}\n", 0o600, "no user"),
        (f"root {'a' * 40}\n", 0o644, "chmod 600"),
    ],
)
def test_a_bad_tokens_file_is_refused_without_showing_a_token(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Tokens.load(_tokens_file(tmp_path, text, mode))
    assert "a" * 32 not in caught.value.message
