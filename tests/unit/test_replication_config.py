"""The replication target URL and the S3 credentials file (no server needed)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from lucidd.daemon.replication.objects import (
    CREDENTIALS_NAME,
    ObjectConflictError,
    ReplicationTarget,
    S3Credentials,
    load_s3_credentials,
    resolve_s3_credentials,
    state_s3_credentials_path,
)
from lucidd.errors import EX_DATAERR, ConfigError, error_from_wire

SECRET = "s3cr3t-Value-that-must-never-show"
ENDPOINT = "http://127.0.0.1:8333"


def write_credentials(path: Path, body: object, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    path.chmod(mode)
    return path


GOOD = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET}


# --- the target ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://logs", "logs", ""),
        ("s3://logs/", "logs", ""),
        ("s3://logs/lucidd", "logs", "lucidd"),
        ("s3://logs//a/b/", "logs", "a/b"),
        ("s3://my.bucket-1/hosts/h1", "my.bucket-1", "hosts/h1"),
    ],
)
def test_parse_takes_the_bucket_and_strips_the_prefix(url: str, bucket: str, prefix: str) -> None:
    target = ReplicationTarget.parse(url, ENDPOINT + "/", "us-east-1")
    assert target == ReplicationTarget(bucket, prefix, ENDPOINT, "us-east-1")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "logs/prefix",
        "https://logs/prefix",
        "s3:///prefix",
        "s3://Upper/x",
        "s3://a/x",
        "s3://logs/a//b",
        "s3://logs/a/../b",
        "s3://logs/x?versionId=1",
    ],
)
def test_parse_refuses_what_is_not_an_s3_url(url: str) -> None:
    with pytest.raises(ConfigError):
        ReplicationTarget.parse(url, ENDPOINT, "us-east-1")


def test_parse_refuses_a_non_http_endpoint_and_an_empty_region() -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        ReplicationTarget.parse("s3://logs", "ftp://host", "us-east-1")
    with pytest.raises(ConfigError, match="region"):
        ReplicationTarget.parse("s3://logs", ENDPOINT, "")


def test_an_empty_endpoint_means_aws() -> None:
    assert ReplicationTarget.parse("s3://logs", "", "eu-west-1").endpoint == ""


# --- the conflict error -------------------------------------------------------------------


def test_the_conflict_error_is_registered_with_its_code() -> None:
    err = error_from_wire("replication_conflict", "m")
    assert type(err) is ObjectConflictError
    assert (err.exit_code, err.retryable) == (EX_DATAERR, False)


# --- the credentials file -----------------------------------------------------------------


def test_credentials_load_and_hide_the_secret(tmp_path: Path) -> None:
    credentials = load_s3_credentials(write_credentials(tmp_path / "s3.json", GOOD))
    assert credentials == S3Credentials("AKIDEXAMPLE", SECRET)
    assert SECRET not in repr(credentials)
    assert SECRET not in str(credentials)
    assert "AKIDEXAMPLE" in repr(credentials)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610, 0o601])
def test_credentials_with_group_or_other_bits_are_refused(tmp_path: Path, mode: int) -> None:
    path = write_credentials(tmp_path / "s3.json", GOOD, mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}") as caught:
        load_s3_credentials(path)
    assert SECRET not in str(caught.value)


def test_a_symlink_to_good_credentials_is_refused(tmp_path: Path) -> None:
    real = write_credentials(tmp_path / "real.json", GOOD)
    link = tmp_path / "s3.json"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        load_s3_credentials(link)


def test_a_folder_is_not_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_s3_credentials(tmp_path)


@pytest.mark.parametrize(
    "body",
    [
        "not json " + SECRET,
        json.dumps({"secret_access_key": SECRET}),
        json.dumps({"access_key_id": "", "secret_access_key": SECRET}),
        json.dumps({"access_key_id": "AKID", "secret_access_key": ""}),
        json.dumps({"access_key_id": 7, "secret_access_key": SECRET}),
        json.dumps({**GOOD, "extra": SECRET}),
        json.dumps([SECRET]),
    ],
)
def test_malformed_credentials_are_refused_without_echoing_them(tmp_path: Path, body: str) -> None:
    path = write_credentials(tmp_path / "s3.json", body)
    with pytest.raises(ConfigError, match=re.escape(str(path))) as caught:
        load_s3_credentials(path)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.context)


def test_missing_credentials_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be opened"):
        load_s3_credentials(tmp_path / "absent.json")


# --- where credentials are looked for -----------------------------------------------------


def test_the_configured_path_comes_first(tmp_path: Path) -> None:
    configured = write_credentials(tmp_path / "conf.json", {**GOOD, "access_key_id": "CONF"})
    creds_dir = tmp_path / "creds"
    write_credentials(creds_dir / CREDENTIALS_NAME, GOOD)
    found = resolve_s3_credentials(str(configured), creds_dir, tmp_path / "state")
    assert found.access_key_id == "CONF"


def test_a_configured_path_that_is_missing_is_an_error(tmp_path: Path) -> None:
    write_credentials(state_s3_credentials_path(tmp_path / "state"), GOOD)
    with pytest.raises(ConfigError, match=r"absent\.json"):
        resolve_s3_credentials(str(tmp_path / "absent.json"), None, tmp_path / "state")


def test_the_systemd_credential_comes_before_the_state_folder(tmp_path: Path) -> None:
    creds_dir = tmp_path / "creds"
    write_credentials(creds_dir / CREDENTIALS_NAME, {**GOOD, "access_key_id": "SYSTEMD"})
    write_credentials(state_s3_credentials_path(tmp_path / "state"), GOOD)
    assert resolve_s3_credentials("", creds_dir, tmp_path / "state").access_key_id == "SYSTEMD"


def test_the_state_folder_is_the_last_place(tmp_path: Path) -> None:
    path = write_credentials(tmp_path / "state" / "keys" / "s3.json", GOOD)
    assert state_s3_credentials_path(tmp_path / "state") == path
    assert resolve_s3_credentials("", tmp_path / "creds", tmp_path / "state") == S3Credentials(
        "AKIDEXAMPLE", SECRET
    )


def test_a_dangling_symlink_is_refused_not_skipped(tmp_path: Path) -> None:
    creds_dir = tmp_path / "creds"
    creds_dir.mkdir()
    os.symlink(tmp_path / "nowhere", creds_dir / CREDENTIALS_NAME)
    write_credentials(state_s3_credentials_path(tmp_path / "state"), GOOD)
    with pytest.raises(ConfigError, match="symlink"):
        resolve_s3_credentials("", creds_dir, tmp_path / "state")


def test_no_credentials_anywhere_names_every_place_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_s3_credentials("", tmp_path / "creds", tmp_path / "state")
    message = str(caught.value)
    assert str(tmp_path / "creds" / CREDENTIALS_NAME) in message
    assert str(tmp_path / "state" / "keys" / "s3.json") in message
