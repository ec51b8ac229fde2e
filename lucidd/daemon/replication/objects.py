"""The replicator's object store client: create-only puts, gets and lists on S3 (layer 2).

Built on obstore (the Rust ``object_store`` crate): async, so it runs on the daemon's uvloop
loop without threads, and it signs, retries and paginates for us. This module owns the
contract the replicator relies on:

- :meth:`ObjectStore.put_once` never replaces an object. It sends ``If-None-Match: *``; on
  "already exists" it reads the object back: the same bytes are success (a retried put, or a
  put whose reply was lost), other bytes are :class:`ObjectConflictError` (an alarm).
- Every failure of the network or the server is :class:`~lucidd.errors.UnavailableError`
  (retryable); credentials the server refuses (HTTP 401/403) and a bucket that does not exist
  are :class:`~lucidd.errors.ConfigError` (retrying cannot help until an operator fixes them).
- No message contains the secret access key: obstore's messages hold the URL and the server's
  reply, never the signature's key, and :meth:`ObjectStore._fail` removes the secret anyway.

Keys are full keys within the bucket (the layout helpers already include the target's prefix).
SeaweedFS (4.48) and AWS S3 both honour ``If-None-Match: *`` on PUT (412 when the key exists).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import urlsplit

import msgspec
import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    InvalidPathError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from lucidd.errors import ConfigError, ObjectConflictError, UnavailableError
from lucidd.private_files import read_private_file

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import S3Config, S3Credential

__all__ = [
    "CREDENTIALS_NAME",
    "DEFAULT_TIMEOUT_S",
    "ObjectConflictError",
    "ObjectStore",
    "ReplicationTarget",
    "S3Credentials",
    "load_s3_credentials",
    "resolve_s3_credentials",
    "state_s3_credentials_path",
]

CREDENTIALS_NAME: Final = "lucidd.s3"
"""File name of the S3 credentials inside ``$CREDENTIALS_DIRECTORY``."""
DEFAULT_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 5.0
#: obstore retries 5xx replies and dropped connections this often, within the request timeout.
MAX_RETRIES: Final = 3
INIT_BACKOFF: Final = timedelta(milliseconds=100)
MAX_BACKOFF: Final = timedelta(seconds=2)
#: Objects per batch of :func:`obstore.list` (S3 itself pages by 1000 keys; obstore follows).
LIST_BATCH: Final = 1000
#: The longest server message kept in an error (an S3 error body is XML; keep the gist).
MAX_DETAIL_CHARS: Final = 300
S3_SCHEME: Final = "s3"
#: S3 bucket names: 3 to 63 lower-case letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
#: obstore's message for a refused signature or a policy denial in a list request.
_REFUSED_STATUS = re.compile(r"status code: 40[13]\b")
_NO_SUCH_BUCKET = "NoSuchBucket"
#: What a request can fail with: obstore's errors (network ones are GenericError), the
#: built-in ones it raises (FileNotFoundError for a 404), and our own deadline.
_FAILURES: Final = (BaseError, OSError, TimeoutError)


class ReplicationTarget(msgspec.Struct, frozen=True):
    """Where sessions are replicated: a bucket, a key prefix (no slashes at either end), the
    S3 endpoint URL (empty: AWS's, from the region) and the region."""

    bucket: str
    prefix: str
    endpoint: str
    region: str

    @classmethod
    def parse(cls, url: str, endpoint: str, region: str) -> ReplicationTarget:
        """``s3://BUCKET/PREFIX`` (the prefix may be empty) with its endpoint and region.

        Raises :class:`ConfigError` naming what is wrong: another scheme, a bad bucket name,
        an empty or ``..`` segment in the prefix, an endpoint that is not http(s), no region.
        """
        parts = urlsplit(url)
        if parts.scheme != S3_SCHEME or parts.query or parts.fragment:
            raise ConfigError(f"replication target {url!r} is not s3://BUCKET/PREFIX", url=url)
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError(
                f"replication target {url!r}: bucket {bucket!r} is not an S3 bucket name "
                "(3-63 lower-case letters, digits, dots and hyphens)",
                url=url,
            )
        prefix = parts.path.strip("/")
        if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
            raise ConfigError(
                f"replication target {url!r}: the prefix has an empty, '.' or '..' segment",
                url=url,
            )
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(
                f"replication endpoint {endpoint!r} is not an http:// or https:// URL",
                endpoint=endpoint,
            )
        if not region:
            raise ConfigError("replication region is empty (S3 signs requests per region)")
        return cls(bucket=bucket, prefix=prefix, endpoint=endpoint.rstrip("/"), region=region)


class S3Credentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An S3 access key. ``repr`` shows the key id and hides the secret."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key=<hidden>)"

    __str__ = __repr__


def load_s3_credentials(path: Path) -> S3Credentials:
    """Read ``{"access_key_id": "…", "secret_access_key": "…"}`` from ``path``.

    Refused (:class:`ConfigError`, naming the path and the fix, never the contents) unless
    ``path`` is a regular file (not a symlink) that neither group nor others may access, and
    both fields are non-empty strings.
    """
    data = read_private_file(path, "S3 credentials")
    try:
        # msgspec's messages name the field and the expected type, never the value.
        credentials = msgspec.json.decode(data, type=S3Credentials)
    except msgspec.DecodeError as err:
        raise ConfigError(f"S3 credentials {path}: {err}", path=str(path)) from None
    if not credentials.access_key_id or not credentials.secret_access_key:
        raise ConfigError(
            f"S3 credentials {path}: access_key_id and secret_access_key must not be empty",
            path=str(path),
        )
    return credentials


def state_s3_credentials_path(state_dir: Path) -> Path:
    """Default S3 credentials location under the state folder: ``<state>/keys/s3.json``."""
    return state_dir / "keys" / "s3.json"


def _lexists(path: Path) -> bool:
    """True for any directory entry, a dangling symlink included (so load can refuse it)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def resolve_s3_credentials(
    configured: str, credentials_dir: Path | None, state_dir: Path
) -> S3Credentials:
    """Find and load the S3 credentials.

    1. ``configured`` (the config's path) if set: it must exist;
    2. else ``<credentials_dir>/lucidd.s3`` if that entry exists (systemd ``LoadCredential=``;
       the caller passes ``$CREDENTIALS_DIRECTORY`` taken from the environment at the edge);
    3. else ``<state_dir>/keys/s3.json`` if it exists.

    Raises :class:`ConfigError` naming every place it looked when none holds credentials.
    """
    if configured:
        return load_s3_credentials(Path(configured))
    looked: list[Path] = []
    if credentials_dir is not None:
        looked.append(credentials_dir / CREDENTIALS_NAME)
    looked.append(state_s3_credentials_path(state_dir))
    for path in looked:
        if _lexists(path):
            return load_s3_credentials(path)
    raise ConfigError(
        "no S3 credentials: looked for " + ", ".join(str(p) for p in looked) + "; write "
        '{"access_key_id": "…", "secret_access_key": "…"} there (mode 0600) or configure a path',
        looked=[str(p) for p in looked],
    )


class ObjectStore:
    """The objects of one bucket, through one S3 client (connections are pooled and reused).

    ``timeout`` bounds each request, obstore's own retries included (and, for :meth:`list`,
    each page). Methods may be called concurrently from one event loop.
    """

    def __init__(
        self,
        target: ReplicationTarget,
        credentials: S3Credentials,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.target = target
        self._secret = credentials.secret_access_key
        self._timeout = timeout
        #: Whether the bucket answered once (then a 404 from HEAD can only mean the key).
        self._bucket_seen = False
        request_timeout = timedelta(seconds=timeout)

        def static_credentials() -> S3Credential:
            # A provider (not access_key_id=...) so that no AWS_SESSION_TOKEN from the
            # environment is mixed with our key; it never expires, so obstore calls it once.
            return {
                "access_key_id": credentials.access_key_id,
                "secret_access_key": credentials.secret_access_key,
                "token": None,
                "expires_at": None,
            }

        config: S3Config = {"region": target.region}
        if target.endpoint:
            config["endpoint"] = target.endpoint
        self._store = S3Store(
            target.bucket,
            config=config,
            credential_provider=static_credentials,
            client_options={
                "allow_http": target.endpoint.startswith("http://"),
                "timeout": request_timeout,
                "connect_timeout": timedelta(seconds=min(CONNECT_TIMEOUT_S, timeout)),
            },
            retry_config={
                "max_retries": MAX_RETRIES,
                "retry_timeout": request_timeout,
                "backoff": {"init_backoff": INIT_BACKOFF, "max_backoff": MAX_BACKOFF},
            },
        )

    def __repr__(self) -> str:
        return f"ObjectStore(bucket={self.target.bucket!r}, endpoint={self.target.endpoint!r})"

    async def put_once(self, key: str, data: bytes | bytearray) -> bool:
        """Create ``key`` holding ``data`` unless it exists; True if this call created it.

        obstore sends ``data`` without copying it: a bytearray must not change until this
        returns.

        An existing object with the same bytes returns False (already replicated: success);
        one with other bytes raises :class:`ObjectConflictError` naming the key. The create is
        atomic on the server (``If-None-Match: *``), so two writers cannot both create the key.
        When this returns the server has acknowledged the object (S3's durability). False can
        also mean that an attempt of this same call created it and its reply was lost (obstore
        retried): either way the object holds ``data``.
        """
        try:
            async with asyncio.timeout(self._timeout):
                await obstore.put_async(self._store, key, data, mode="create")
        except AlreadyExistsError:
            return await self._same_as_existing(key, data)
        except _FAILURES as err:
            self._fail("put", key, err)
        self._bucket_seen = True
        return True

    async def _same_as_existing(self, key: str, data: bytes | bytearray) -> bool:
        existing = await self.get(key)
        if existing is None:
            # Deleted between our put and our get (a lifecycle rule, an operator): try again.
            raise UnavailableError(
                f"object store: {key} existed on put and was gone on get; retry", key=key
            )
        if existing != data:
            raise ObjectConflictError(
                f"object store: {key} already holds {len(existing)} different bytes "
                f"(this put has {len(data)}); never overwritten: tampering or a bug",
                key=key,
                size=len(existing),
            )
        return False

    async def get(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None if no such object exists."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await obstore.get_async(self._store, key)
                data = bytes(await result.bytes_async())
        except FileNotFoundError as err:
            self._raise_if_no_bucket(err)
            return None
        except _FAILURES as err:
            self._fail("get", key, err)
        self._bucket_seen = True
        return data

    async def exists(self, key: str) -> bool:
        """Whether an object named ``key`` exists (a HEAD request)."""
        try:
            async with asyncio.timeout(self._timeout):
                await obstore.head_async(self._store, key)
        except FileNotFoundError:
            if not self._bucket_seen:
                # A HEAD 404 has no body to tell a missing bucket from a missing key: list
                # once (a missing bucket fails with ConfigError), then trust the bucket.
                await self.list(key)
            return False
        except _FAILURES as err:
            self._fail("head", key, err)
        self._bucket_seen = True
        return True

    async def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted; all pages are fetched.

        ``prefix`` is matched by whole path segments (obstore's rule): ``a/b`` lists
        ``a/b/c`` but not ``a/bc``. An empty prefix lists the whole bucket.
        """
        keys: list[str] = []
        try:
            async for batch in self._batches(prefix):
                keys.extend(meta["path"] for meta in batch)
        except _FAILURES as err:
            self._fail("list", prefix, err)
        self._bucket_seen = True
        keys.sort()
        return keys

    async def _batches(self, prefix: str) -> AsyncIterator[Sequence[ObjectMeta]]:
        stream = obstore.list(self._store, prefix or None, chunk_size=LIST_BATCH)
        while True:
            async with asyncio.timeout(self._timeout):
                try:
                    batch = await anext(stream)
                except StopAsyncIteration:
                    return
            yield batch

    def _raise_if_no_bucket(self, err: FileNotFoundError) -> None:
        """A 404 for the bucket (not the key) must not read as "no such object"; any other
        404 of a GET shows that the bucket exists."""
        if _NO_SUCH_BUCKET not in str(err):
            self._bucket_seen = True
        else:
            raise ConfigError(
                f"object store: bucket {self.target.bucket} does not exist",
                bucket=self.target.bucket,
            ) from None

    def _fail(self, operation: str, key: str, err: BaseException) -> NoReturn:
        """Raise the lucidd error for ``err``, a failed ``operation`` on ``key``."""
        if isinstance(err, InvalidPathError):
            raise ValueError(f"invalid object key {key!r}") from None
        if isinstance(err, TimeoutError):
            raise UnavailableError(
                f"object store: {operation} {key} timed out after {self._timeout:g} s", key=key
            ) from None
        detail = self._detail(err)
        if isinstance(err, FileNotFoundError) or _NO_SUCH_BUCKET in str(err):
            # A 404 of a put is the bucket's (a list's comes as GenericError naming it).
            raise ConfigError(
                f"object store: bucket {self.target.bucket} not found on {operation} {key}: "
                f"{detail}",
                bucket=self.target.bucket,
            ) from None
        if isinstance(err, PermissionDeniedError | UnauthenticatedError) or (
            _REFUSED_STATUS.search(str(err))
        ):
            raise ConfigError(
                f"object store refused our credentials or policy on {operation} {key}: {detail}",
                key=key,
            ) from None
        raise UnavailableError(
            f"object store: {operation} {key} failed: {detail}", key=key
        ) from None

    def _detail(self, err: BaseException) -> str:
        """obstore's message, first line only, bounded, with the secret removed (belt and
        braces: obstore does not put it there)."""
        text = str(err).replace(self._secret, "<secret>")
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return first[:MAX_DETAIL_CHARS]
