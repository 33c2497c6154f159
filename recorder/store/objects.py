"""The store in S3-compatible object storage: naming ``s3://bucket/prefix``, reaching it.

``recorder upload`` copies the store's closed files there (same keys as the local paths:
``s3://bucket/prefix/trades/symbol=S/date=D/hour=H/trades.parquet``, day files, and
``gaps/gaps.ndjson``), and the engine reads such a copy back. Both reach it the same way:

- ``parse_target("s3://bucket/prefix", option)`` -> ``Target``: the bucket and the prefix;
- ``S3Settings.from_env()``: the endpoint and credentials from the standard ``AWS_*``
  variables (``AWS_ENDPOINT_URL`` for an S3-compatible server such as SeaweedFS or MinIO);
- ``filesystem(settings)``: a pyarrow ``S3FileSystem`` with short timeouts and a few retries;
- ``s3_errors(settings, what)``: the AWS SDK's OSError as one line saying what to do;
- ``bucket_exists``: whether the bucket is there (access problems are errors).

pyarrow is imported only when a filesystem is made, so ``--help`` stays fast.

Errors::

    RecorderError
    └── StoreError
        └── ObjectStoreError   a bad s3:// URL or endpoint, an endpoint that cannot be
                               reached, refused credentials, a request that failed
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recorder.errors import StoreError

__all__ = [
    "ATTEMPTS",
    "CONNECT_TIMEOUT",
    "ENDPOINT_ENV",
    "REQUEST_TIMEOUT",
    "SCHEME",
    "ObjectStoreError",
    "S3Settings",
    "Target",
    "bucket_exists",
    "filesystem",
    "is_url",
    "no_bucket",
    "parse_target",
    "s3_errors",
]

SCHEME = "s3://"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the endpoint
REQUEST_TIMEOUT = 60.0  # seconds one request may wait for data
ATTEMPTS = 3  # tries per request (the AWS SDK's standard retry strategy)


class ObjectStoreError(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    """Where a store is kept: ``s3://bucket/prefix``."""

    bucket: str
    prefix: str  # without leading or trailing slashes; may be empty

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    def path(self, key: str) -> str:
        """The object's path as pyarrow names it: ``bucket/prefix/key``."""
        return "/".join(p for p in (self.bucket, self.prefix, key) if p)


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach the object store. None: the AWS SDK's defaults (its credential chain)."""

    endpoint_url: str | None = None  # http://127.0.0.1:8333 for an S3-compatible server
    access_key: str | None = None
    secret_key: str | None = None
    region: str = "us-east-1"
    connect_timeout: float = CONNECT_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    option: str | None = None  # the CLI option that sets endpoint_url, named in messages

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, option: str | None = None) -> S3Settings:
        """From ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (or
        ``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL`` (``endpoint_url`` wins; ``option``
        names the option it came from in messages, e.g. ``--endpoint-url``)."""
        env = os.environ
        return cls(
            endpoint_url=endpoint_url or env.get(ENDPOINT_ENV) or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            option=option,
        )

    @property
    def endpoint_source(self) -> str:
        """Where the endpoint is set: ``--endpoint-url (AWS_ENDPOINT_URL)`` or the variable."""
        return f"{self.option} ({ENDPOINT_ENV})" if self.option else ENDPOINT_ENV


def is_url(text: str) -> bool:
    """True for text naming a store by URL (``s3://...``, or another ``scheme://``) rather
    than by a local folder."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isascii() and scheme[:1].isalpha() and scheme.isalnum()


def parse_target(url: str, option: str) -> Target:
    """``s3://bucket/prefix`` -> Target; ObjectStoreError for anything else (``option``, the
    CLI option that gave it, is named in the hint)."""
    hint = f"give one like {option} s3://my-bucket/tapewatch"
    if not url.startswith(SCHEME):
        raise ObjectStoreError(f"{url!r} is not an s3:// URL; {hint}")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    ok = 3 <= len(bucket) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in bucket)
    if not ok or not bucket.isascii():
        raise ObjectStoreError(f"{url!r} does not name a valid bucket; {hint}")
    return Target(bucket, prefix.strip("/"))


def filesystem(settings: S3Settings) -> Any:
    """A pyarrow ``S3FileSystem`` for ``settings`` (no request is made yet)."""
    from pyarrow import fs

    kw: dict[str, Any] = {}
    if settings.endpoint_url:
        scheme, sep, host = settings.endpoint_url.partition("://")
        if not sep or scheme not in ("http", "https") or not host.strip("/"):
            example = (
                f"{settings.option} http://127.0.0.1:8333"
                if settings.option
                else f"{ENDPOINT_ENV}=http://127.0.0.1:8333"
            )
            raise ObjectStoreError(
                f"endpoint {settings.endpoint_url!r} is not an http(s):// URL; "
                f"give one like {example}"
            )
        kw.update(endpoint_override=host.strip("/"), scheme=scheme)
    if settings.access_key or settings.secret_key:
        kw.update(access_key=settings.access_key or "", secret_key=settings.secret_key or "")
    return fs.S3FileSystem(
        region=settings.region,
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.request_timeout,
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
        **kw,
    )


@contextlib.contextmanager
def s3_errors(
    settings: S3Settings, what: str, retry: str = "run the command again"
) -> Iterator[None]:
    """The AWS SDK's OSError as one ObjectStoreError: ``what`` failed, and what to do
    (``retry``: the hint for a failure that is neither the network nor the credentials)."""
    try:
        yield
    except OSError as e:
        text = str(e)
        where = settings.endpoint_url or "AWS S3"
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            hint = f"cannot reach {where}; check {settings.endpoint_source} and the network"
        elif any(
            s in text
            for s in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE", "Forbidden", "403")
        ):
            hint = (
                f"{where} refused the credentials; check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            )
        else:
            hint = retry
        detail = text.splitlines()[0][:200] if text else type(e).__name__
        raise ObjectStoreError(f"{what}: {hint} ({detail})") from None


def no_bucket(target: Target, settings: S3Settings) -> str:
    """The message for a bucket the endpoint says it does not have. A server that is not
    S3 at all (a web server, the wrong port) answers the same way, so say where we asked."""
    where = settings.endpoint_url or "AWS S3"
    return (
        f"bucket {target.bucket!r} does not exist at {where} (if that is not the S3 server, "
        f"check {settings.endpoint_source})"
    )


def bucket_exists(s3: Any, target: Target, settings: S3Settings) -> bool:
    """Whether ``target``'s bucket exists; ObjectStoreError if it cannot be asked (network,
    credentials)."""
    from pyarrow import fs

    with s3_errors(settings, f"cannot open {target.url}"):
        info = s3.get_file_info(target.bucket)
        # HeadBucket answers 403 and 404 alike for some servers; a listing tells them apart.
        s3.get_file_info(fs.FileSelector(target.path(""), allow_not_found=True))
    return bool(info.type != fs.FileType.NotFound)
