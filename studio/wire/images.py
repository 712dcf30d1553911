"""Where request images come from and where result images go: S3 and http(s), through injected clients.

The codec (studio.wire.codec) does no I/O. The serving side gives it a `RequestImages` as its `fetch` and writes
results with an `S3Writer`; the remote client reads S3-only responses with an `S3Reader`.

The S3 allowed-prefix policy (STUDIO_S3_ALLOWED_PREFIXES: the endpoint's role may reach more buckets than its
callers should) lives inside `S3Reader` and `S3Writer`: every object they read or write is checked against it
right before the call, so no path that reads or writes S3 for a request can skip it. boto3 (through the client
factory, e.g. `studio.aws.LazyClient("s3")`) and requests are imported only when an s3:// or http(s) reference
arrives.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from studio import aws
from studio.engine import EngineError
from studio.types import RequestError
from studio.wire.codec import s3_images_disabled, url_images_disabled

# Bytes accepted for one image fetched from S3 or a URL (inline images are bounded by the body limit).
MAX_IMAGE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class S3Policy:
    """The s3:// locations requests may read from or write to; empty = any the container's role can reach.

    Prefixes are canonical "s3://bucket/prefix" strings (studio.aws.s3_prefix; a bare bucket ends in "/", so
    s3://b/ does not admit s3://b-other/). With a policy, keys with "." or ".." segments are refused outright.
    """

    allowed_prefixes: tuple[str, ...] = ()

    def allows(self, uri: str) -> bool:
        if not self.allowed_prefixes:
            return True
        bucket, key = aws.parse_s3_uri(uri, "s3_uri", need_key=False)
        if {".", ".."} & set(key.split("/")):
            return False
        return f"s3://{bucket}/{key}".startswith(self.allowed_prefixes)

    def refusal(self, field: str, shown: str) -> RequestError:
        message = f"{shown} is outside the S3 locations this endpoint may use (STUDIO_S3_ALLOWED_PREFIXES)"
        return RequestError(field, shown, message)


class S3Reader:
    """Reads one s3:// object for a request field (the codec's `fetch` for S3), bounded in size.

    `client` is a boto3 S3 client or a zero-argument factory called on first use. Errors are RequestErrors naming
    the field and the object, never credentials.
    """

    def __init__(self, client: Any, allowed_prefixes: tuple[str, ...] = (), *, max_bytes: int = MAX_IMAGE_BYTES):
        self._client = client
        self.policy = S3Policy(tuple(allowed_prefixes))
        self.max_bytes = max_bytes

    def __call__(self, field: str, uri: str) -> bytes:
        bucket, key = aws.parse_s3_uri(uri, field)
        if not self.policy.allows(uri):
            raise self.policy.refusal(field, uri)
        client = aws.resolve(self._client)
        if client is None:
            raise s3_images_disabled(field, uri)
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
            size = obj.get("ContentLength")
            if size is not None and size > self.max_bytes:
                raise RequestError(field, uri, f"{uri} is {size} bytes; the limit is {self.max_bytes}")
            data = obj["Body"].read(self.max_bytes + 1)
        except RequestError:
            raise
        except Exception as exc:  # botocore ClientError / connection errors, kept free of credentials
            code = aws.error_code(exc) or type(exc).__name__
            if aws.is_not_found(exc):
                raise RequestError(field, uri, f"{uri} does not exist ({code})") from None
            if aws.is_access_denied(exc):
                raise RequestError(field, uri, f"access to {uri} is denied ({code})") from None
            raise RequestError(field, uri, f"could not read {uri}: {code}: {exc}") from None
        if len(data) > self.max_bytes:
            raise RequestError(field, uri, f"{uri} is larger than {self.max_bytes} bytes")
        return data


class S3Writer:
    """Writes a response's PNGs under an s3://bucket/prefix location and returns their URIs.

    `client` is a boto3 S3 client or a factory. Locations outside the policy are a RequestError naming the field
    (checked for every object, right before writing); a failed write is an EngineError.
    """

    def __init__(self, client: Any, allowed_prefixes: tuple[str, ...] = ()):
        self._client = client
        self.policy = S3Policy(tuple(allowed_prefixes))

    def check(self, location: str, *, field: str = "s3_output") -> None:
        """Refuse a location outside the policy before any work is spent on the request."""
        bucket, prefix = aws.parse_s3_uri(location, field, need_key=False)
        if not self.policy.allows(f"s3://{bucket}/{_folder(prefix)}"):
            raise self.policy.refusal(field, location)

    def write(self, location: str, pngs: list[bytes], seeds: list[int], *, field: str = "s3_output") -> list[str]:
        bucket, prefix = aws.parse_s3_uri(location, field, need_key=False)
        run = uuid.uuid4().hex[:12]
        keys = [f"{_folder(prefix)}{run}-{index}-{seed}.png" for index, seed in enumerate(seeds)]
        if len(keys) != len(pngs):
            raise EngineError(f"{len(pngs)} images but {len(seeds)} seeds")
        for key in keys:
            if not self.policy.allows(f"s3://{bucket}/{key}"):
                raise self.policy.refusal(field, location)
        client = aws.resolve(self._client)
        if client is None:
            raise EngineError("s3_output: no S3 client configured")
        uris = []
        for key, data in zip(keys, pngs, strict=True):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
            except Exception as exc:
                code = aws.error_code(exc) or type(exc).__name__
                raise EngineError(f"s3_output: could not write s3://{bucket}/{key}: {code}") from None
            uris.append(f"s3://{bucket}/{key}")
        return uris


def _folder(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


@dataclass(frozen=True)
class URLReader:
    """Downloads one http(s) image for a request field, bounded in size and time (enable only when the server
    may fetch URLs: a server fetching arbitrary URLs is an SSRF risk)."""

    connect_timeout: float = 5
    read_timeout: float = 30
    max_bytes: int = MAX_IMAGE_BYTES

    def __call__(self, field: str, url: str) -> bytes:
        import requests

        shown = aws.redact_url(url)
        try:
            with requests.get(url, timeout=(self.connect_timeout, self.read_timeout), stream=True) as response:
                if response.status_code != 200:
                    raise RequestError(field, shown, f"downloading {shown} failed with HTTP {response.status_code}")
                chunks, total = [], 0
                for chunk in response.iter_content(1 << 16):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise RequestError(field, shown, f"{shown} is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
        except RequestError:
            raise
        except requests.RequestException as exc:
            raise RequestError(field, shown, f"could not download {shown}: {type(exc).__name__}") from None
        return b"".join(chunks)


@dataclass(frozen=True)
class RequestImages:
    """The `fetch` the serving side gives the codec: s3:// through `s3` (its policy inside), http(s) through
    `urls`. A missing reader refuses its kind of reference with a RequestError naming the field."""

    s3: S3Reader | None = None
    urls: URLReader | None = None  # None: http(s) image URLs are disabled

    def __call__(self, field: str, uri: str) -> bytes:
        lowered = uri[:16].lower()
        if lowered.startswith("s3://"):
            if self.s3 is None:
                raise s3_images_disabled(field, uri)
            return self.s3(field, uri)
        if lowered.startswith(("http://", "https://")):
            if self.urls is None:
                raise url_images_disabled(field, uri)
            return self.urls(field, uri)
        raise RequestError(field, aws.redact_url(uri), "is not an s3:// or http(s):// reference")
