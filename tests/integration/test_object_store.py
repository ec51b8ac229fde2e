"""The replicator's object store client against a real S3 server (SeaweedFS, tests/seaweed.py).

Each test uses its own key prefix in the run's one bucket. Tests that kill or stop the server
restart it before they return, so the others find it serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import obstore
import pytest
import uvloop
from obstore.exceptions import AlreadyExistsError
from obstore.store import S3Store

from lucidd.daemon.replication.objects import (
    ObjectConflictError,
    ObjectStore,
    ReplicationTarget,
    S3Credentials,
    load_s3_credentials,
)
from lucidd.errors import EX_DATAERR, ConfigError, LucidError, UnavailableError
from tests.seaweed import Seaweed

T = TypeVar("T")

#: Short enough that the fault tests finish quickly, long enough for a loaded 2-core machine.
FAULT_TIMEOUT_S = 3.0
#: More than one page of ListObjectsV2 (1000 keys), so list must follow continuation tokens.
MANY_KEYS = 1100
PUT_CONCURRENCY = 32


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop, the daemon's loop."""
    return uvloop.run(coro)


def target(seaweed: Seaweed, bucket: str | None = None) -> ReplicationTarget:
    return ReplicationTarget.parse(
        f"s3://{bucket or seaweed.bucket}/hosts", seaweed.endpoint, seaweed.region
    )


def store(seaweed: Seaweed, timeout: float = 30.0, **overrides: str) -> ObjectStore:
    credentials = S3Credentials(
        access_key_id=overrides.get("access_key_id", seaweed.access_key_id),
        secret_access_key=overrides.get("secret_access_key", seaweed.secret_access_key),
    )
    return ObjectStore(target(seaweed, overrides.get("bucket")), credentials, timeout=timeout)


@pytest.fixture
def prefix() -> str:
    return f"hosts/{uuid.uuid4()}"


def assert_secret_free(err: BaseException, seaweed: Seaweed) -> None:
    assert seaweed.secret_access_key not in str(err)
    assert seaweed.secret_access_key not in repr(err)
    if isinstance(err, LucidError):
        assert seaweed.secret_access_key not in repr(err.context)


# --- create-only puts ---------------------------------------------------------------------


def test_put_once_creates_the_object(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed)
    key = f"{prefix}/s/0001.rec"

    async def go() -> tuple[bool, bytes | None, bool]:
        created = await objects.put_once(key, b"sealed chunk")
        return created, await objects.get(key), await objects.exists(key)

    assert run(go()) == (True, b"sealed chunk", True)


def test_put_once_of_the_same_bytes_again_is_already_there(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed)
    key = f"{prefix}/s/0001.rec"

    async def go() -> list[bool]:
        return [await objects.put_once(key, b"same") for _ in range(3)]

    assert run(go()) == [True, False, False]


def test_put_once_of_other_bytes_raises_conflict_and_keeps_the_first(
    seaweed: Seaweed, prefix: str
) -> None:
    objects = store(seaweed)
    key = f"{prefix}/s/0001.rec"

    async def go() -> bytes | None:
        assert await objects.put_once(key, b"first")
        with pytest.raises(ObjectConflictError) as caught:
            await objects.put_once(key, b"second, longer")
        assert key in str(caught.value)
        assert caught.value.context["key"] == key
        assert caught.value.exit_code == EX_DATAERR
        assert not caught.value.retryable
        return await objects.get(key)

    assert run(go()) == b"first"


def test_concurrent_create_only_puts_create_the_key_once(seaweed: Seaweed, prefix: str) -> None:
    """The server decides (If-None-Match: *), not a check-then-put race in the client."""
    objects = store(seaweed)
    key = f"{prefix}/race"
    writers = 8

    async def go() -> list[bool | BaseException]:
        puts = (objects.put_once(key, f"writer {i}".encode()) for i in range(writers))
        return await asyncio.gather(*puts, return_exceptions=True)

    outcomes = run(go())
    assert outcomes.count(True) == 1
    assert all(isinstance(o, ObjectConflictError) for o in outcomes if o is not True)
    winner = outcomes.index(True)
    assert run(objects.get(key)) == f"writer {winner}".encode()


def test_seaweedfs_refuses_a_create_only_put_on_an_existing_key(
    seaweed: Seaweed, prefix: str
) -> None:
    """What put_once relies on: the server answers If-None-Match: * with 412 (no overwrite).

    If a SeaweedFS upgrade ignored the header this fails, and put_once's guarantee with it.
    """
    raw = S3Store(
        seaweed.bucket,
        endpoint=seaweed.endpoint,
        region=seaweed.region,
        access_key_id=seaweed.access_key_id,
        secret_access_key=seaweed.secret_access_key,
        client_options={"allow_http": True},
    )
    key = f"{prefix}/raw"
    obstore.put(raw, key, b"one", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(raw, key, b"two", mode="create")
    assert bytes(obstore.get(raw, key).bytes()) == b"one"


# --- get, exists, list --------------------------------------------------------------------


def test_get_and_exists_of_a_missing_key(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed)

    async def go() -> tuple[bytes | None, bool]:
        return await objects.get(f"{prefix}/missing"), await objects.exists(f"{prefix}/missing")

    assert run(go()) == (None, False)


def test_an_empty_object_is_stored_and_read_back(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed)

    async def go() -> tuple[bool, bytes | None, bool]:
        return (
            await objects.put_once(f"{prefix}/empty", b""),
            await objects.get(f"{prefix}/empty"),
            await objects.put_once(f"{prefix}/empty", b""),
        )

    assert run(go()) == (True, b"", False)


def test_list_returns_every_key_of_many_pages_sorted(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed)
    keys = [f"{prefix}/s/{i:05d}.rec" for i in range(MANY_KEYS)]
    limit = asyncio.Semaphore(PUT_CONCURRENCY)

    async def put(key: str) -> bool:
        async with limit:
            return await objects.put_once(key, key.encode())

    async def go() -> list[str]:
        # Created in reverse: the listing's order must not be the order of creation.
        assert all(await asyncio.gather(*(put(k) for k in reversed(keys))))
        await objects.put_once(f"{prefix}-sibling/x", b"not under the prefix")
        return await objects.list(prefix)

    assert run(go()) == keys


def test_list_matches_whole_segments_and_lists_nested_keys(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed)
    inside = [f"{prefix}/a/b/c", f"{prefix}/a/x", f"{prefix}/ab"]

    async def go() -> tuple[list[str], list[str], list[str], list[str]]:
        for key in [*inside, f"{prefix}/abc/d"]:
            await objects.put_once(key, b"x")
        return (
            await objects.list(f"{prefix}/a"),
            await objects.list(f"{prefix}/a/"),
            await objects.list(f"{prefix}/nothing"),
            await objects.list(""),
        )

    under_a, under_a_slash, nothing, everything = run(go())
    assert under_a == [f"{prefix}/a/b/c", f"{prefix}/a/x"]
    assert under_a_slash == under_a
    assert nothing == []
    assert {*inside, f"{prefix}/abc/d"} <= set(everything)
    assert everything == sorted(everything)


def test_an_invalid_key_is_a_caller_bug(seaweed: Seaweed) -> None:
    with pytest.raises(ValueError, match="empty path segment"):
        run(store(seaweed).put_once("hosts//double-slash", b"x"))


# --- failures -----------------------------------------------------------------------------


@contextlib.contextmanager
def server_down(seaweed: Seaweed) -> Iterator[None]:
    seaweed.kill()
    try:
        yield
    finally:
        seaweed.restart()


@contextlib.contextmanager
def server_frozen(seaweed: Seaweed) -> Iterator[None]:
    """SIGSTOP: connections are accepted by the kernel, and nothing answers."""
    os.killpg(seaweed.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(seaweed.pid, signal.SIGCONT)


def each_operation(
    objects: ObjectStore, prefix: str
) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    return [
        ("put_once", lambda: objects.put_once(f"{prefix}/new", b"x")),
        ("get", lambda: objects.get(f"{prefix}/before")),
        ("exists", lambda: objects.exists(f"{prefix}/before")),
        ("list", lambda: objects.list(prefix)),
    ]


async def failures(
    objects: ObjectStore, prefix: str
) -> list[tuple[str, BaseException | None, float]]:
    """Run every operation; each one's error (None if it succeeded) and seconds taken."""
    results: list[tuple[str, BaseException | None, float]] = []
    for name, operation in each_operation(objects, prefix):
        started = time.monotonic()
        try:
            await operation()
        except Exception as err:  # the test reports whatever comes out
            results.append((name, err, time.monotonic() - started))
        else:
            results.append((name, None, time.monotonic() - started))
    return results


def test_a_killed_server_is_unavailable_then_works_after_restart(
    seaweed: Seaweed, prefix: str
) -> None:
    objects = store(seaweed, timeout=FAULT_TIMEOUT_S)
    # Set-up with the default timeout: only the failures are measured against the short one.
    assert run(store(seaweed).put_once(f"{prefix}/before", b"acknowledged"))
    with server_down(seaweed):
        outcomes = run(failures(objects, prefix))
    for name, err, seconds in outcomes:
        assert isinstance(err, UnavailableError), (name, err)
        assert err.retryable
        # The timeout is the contract: a refused connection must not be retried for minutes.
        assert seconds < 4 * FAULT_TIMEOUT_S, (name, seconds)  # a bound, not a speed
        assert_secret_free(err, seaweed)

    async def after() -> tuple[bytes | None, bool, list[str]]:
        return (
            await objects.get(f"{prefix}/before"),
            await objects.put_once(f"{prefix}/after", b"y"),
            await objects.list(prefix),
        )

    # The same client (its pooled connections died with the server) works again.
    assert run(after()) == (b"acknowledged", True, [f"{prefix}/after", f"{prefix}/before"])


def test_a_server_that_stops_answering_times_out_as_unavailable(
    seaweed: Seaweed, prefix: str
) -> None:
    objects = store(seaweed, timeout=1.0)
    assert run(store(seaweed).put_once(f"{prefix}/before", b"acknowledged"))
    with server_frozen(seaweed):
        outcomes = run(failures(objects, prefix))
    for name, err, seconds in outcomes:
        assert isinstance(err, UnavailableError), (name, err)
        assert seconds < 4 * FAULT_TIMEOUT_S, (name, seconds)  # a bound, not a speed
        assert_secret_free(err, seaweed)
    assert run(store(seaweed).get(f"{prefix}/before")) == b"acknowledged"


def test_a_wrong_secret_is_a_config_error_that_names_no_secret(
    seaweed: Seaweed, prefix: str
) -> None:
    """Refused credentials (HTTP 403) are ConfigError: not retryable, an operator must act."""
    wrong = "wrong-" + seaweed.secret_access_key[::-1]
    objects = store(seaweed, secret_access_key=wrong)
    outcomes = run(failures(objects, prefix))
    for name, err, _ in outcomes:
        assert isinstance(err, ConfigError), (name, err)
        assert not err.retryable
        assert wrong not in str(err)
        assert_secret_free(err, seaweed)


def test_an_unknown_access_key_is_a_config_error(seaweed: Seaweed, prefix: str) -> None:
    objects = store(seaweed, access_key_id="nobody")
    for name, err, _ in run(failures(objects, prefix)):
        assert isinstance(err, ConfigError), (name, err)


def test_a_missing_bucket_is_a_config_error_not_a_missing_key(
    seaweed: Seaweed, prefix: str
) -> None:
    objects = store(seaweed, bucket="lucidd-no-such-bucket")
    for name, err, _ in run(failures(objects, prefix)):
        assert isinstance(err, ConfigError), (name, err)
        assert "lucidd-no-such-bucket" in str(err)


# --- credentials files --------------------------------------------------------------------


def test_the_fixture_credentials_file_loads(seaweed: Seaweed, tmp_path: Path) -> None:
    credentials = load_s3_credentials(seaweed.credentials_file(tmp_path))
    assert credentials.access_key_id == seaweed.access_key_id
    assert credentials.secret_access_key == seaweed.secret_access_key
    assert seaweed.secret_access_key not in repr(credentials)
    assert seaweed.secret_access_key not in str(credentials)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_credentials_readable_by_others_are_refused(
    seaweed: Seaweed, tmp_path: Path, mode: int
) -> None:
    path = seaweed.credentials_file(tmp_path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}") as caught:
        load_s3_credentials(path)
    assert_secret_free(caught.value, seaweed)
