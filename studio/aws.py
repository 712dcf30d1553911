"""The one AWS edge: boto3 sessions and clients, error classification, S3 URIs and URL redaction.

Every module that talks to AWS (the remote engines, the serving app's S3 images, deploy) builds its clients here
and classifies botocore errors here, so "not found" or "throttled" means the same thing everywhere.

boto3 and botocore are imported inside the functions that need them: importing this module is free, and a studio
that never talks to AWS never imports boto3. Clients honour the standard resolution (AWS_ENDPOINT_URL and the
per-service AWS_ENDPOINT_URL_*, AWS_PROFILE, the credential chain); credentials never appear in messages.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from studio.types import RequestError

# Error codes by meaning. S3 spells "not found" four ways, SageMaker says ValidationException "Could not find",
# application-autoscaling ObjectNotFoundException, IAM NoSuchEntity.
NOT_FOUND_CODES = frozenset(
    {
        "NoSuchKey",
        "NoSuchBucket",
        "404",
        "NotFound",
        "ObjectNotFoundException",
        "ResourceNotFound",
        "ResourceNotFoundException",
        "NoSuchEntity",
    }
)
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "403", "Forbidden"})
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)
_NOT_FOUND_MESSAGES = ("could not find", "not found", "no scal", "does not exist")

_LOADER: Any = None  # botocore's JSON model loader, shared by all our sessions (it only caches service models)
_LOADER_LOCK = threading.Lock()


# ---- sessions and clients ---------------------------------------------------------------------------------------
def new_session(region: str | None = None) -> Any:
    """A fresh boto3 Session honouring the standard credential chain and AWS_ENDPOINT_URL.

    Each operation gets a new session, so changed credentials or environment are picked up; the service-model
    loader is shared, which makes building clients ~4x cheaper (the models are parsed once per process).
    """
    global _LOADER
    import boto3
    import botocore.loaders
    import botocore.session

    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        core = botocore.session.Session()
        core.register_component("data_loader", _LOADER)
        made = boto3.session.Session(botocore_session=core, region_name=region)
        # boto3 appends its data folder to the loader's search path for every session: keep the list unique.
        _LOADER.search_paths[:] = list(dict.fromkeys(_LOADER.search_paths))
    return made


def client(
    service: str,
    region: str | None = None,
    *,
    session: Any = None,
    quick: bool = False,
    read_timeout: float | None = None,
    retries: int | None = None,
) -> Any:
    """The one place clients are built, cached on the session they come from (building one costs ~0.1 s).

    `quick`: short timeouts and one attempt (start-up checks). `read_timeout`/`retries`: for calls that wait for a
    generation (the remote engines retry throttling themselves, explicitly, so botocore must not hide retries).
    """
    from botocore.config import Config

    owner = session if session is not None else new_session(region)
    region = region or owner.region_name
    cache = owner.__dict__.setdefault("_sd_studio_clients", {})
    key = (service, region, quick, read_timeout, retries)
    if key not in cache:
        if quick:
            # total_max_attempts: botocore reads max_attempts as *retries* (max_attempts=1 makes two calls).
            config = Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 1})
        elif read_timeout is not None or retries is not None:
            config = Config(
                connect_timeout=10,
                read_timeout=read_timeout or 60,
                retries={"total_max_attempts": retries or 1},
                user_agent_extra="sd-studio",
            )
        else:
            config = Config(retries={"mode": "standard", "max_attempts": 5}, user_agent_extra="sd-studio")
        cache[key] = owner.client(service, region_name=region, config=config)
    return cache[key]


class LazyClient:
    """A client built on first use (thread-safe), so a server that never sees an s3:// image never imports boto3."""

    def __init__(self, service: str, region: str | None = None):
        self.service = service
        self.region = region
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = client(self.service, self.region)
            return self._client


def resolve(source: Any) -> Any:
    """A client from a client, a zero-argument factory (LazyClient) or None."""
    return source() if callable(source) else source


# ---- errors ----------------------------------------------------------------------------------------------------
def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def is_not_found(exc: BaseException) -> bool:
    """True when the error says the resource (object, bucket, endpoint, scalable target, role) does not exist."""
    code = error_code(exc)
    if code in NOT_FOUND_CODES:
        return True
    message = error_message(exc).lower()
    return code in ("ValidationException", "ValidationError") and any(m in message for m in _NOT_FOUND_MESSAGES)


def is_access_denied(exc: BaseException) -> bool:
    return error_code(exc) in ACCESS_DENIED_CODES


def is_throttling(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLING_CODES


def describe_failure(exc: BaseException, target: str) -> str:
    """A boto/botocore failure as one line for the user, naming `target` (never credentials)."""
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "no AWS credentials found (set a profile, environment variables or an instance role)"
    if name == "NoRegionError":
        return "no AWS region configured (set AWS_DEFAULT_REGION or a profile region)"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"cannot reach the AWS API for {target}: {name}"
    if name == "ReadTimeoutError":
        return f"{target} did not answer in time"
    code = error_code(exc)
    # botocore messages may embed URLs with credentials (a proxy's user:password, a presigned token): redact them.
    if code:
        return f"{target}: {code}: {redact_urls(error_message(exc))}"
    return f"{target}: {name}: {redact_urls(str(exc))}"


# ---- S3 URIs and URLs ------------------------------------------------------------------------------------------
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", flags=re.DOTALL)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_s3_uri(uri: str, field: str = "s3_uri", *, need_key: bool = True) -> tuple[str, str]:
    """Split s3://bucket/key into (bucket, key); RequestError naming `field` when malformed."""
    match = _S3_URI.fullmatch(uri or "") if isinstance(uri, str) else None
    if not match:
        raise RequestError(field, _short(uri), f"not a valid s3:// URI: {_short(uri)}")
    bucket, key = match.group(1), match.group(2) or ""
    if need_key and not key:
        raise RequestError(field, _short(uri), f"{uri} names a bucket but no object key")
    return bucket, key


def s3_prefix(uri: str, field: str = "s3_prefix") -> str:
    """The canonical "s3://bucket/prefix" form of a location, ending in "/" for a bare bucket (so that s3://b/
    does not match s3://b-other/)."""
    bucket, key = parse_s3_uri(uri, field, need_key=False)
    return f"s3://{bucket}/{key}"


def redact_url(url: str) -> str:
    """A URL safe for messages and logs: no user:password@ (even with a '/' in the password), no query or fragment
    (they may carry tokens such as X-Amz-Security-Token)."""
    from urllib.parse import urlsplit, urlunsplit

    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(.*)$", url or "", flags=re.DOTALL)
    if not match:
        return url.split("?", 1)[0].split("#", 1)[0] if url else url
    scheme, rest = match.groups()
    rest = rest.rsplit("@", 1)[-1]  # credentials end at the last '@' before the host
    parts = urlsplit(scheme + rest)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def redact_urls(text: str) -> str:
    """`text` with every URL in it passed through redact_url."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)
