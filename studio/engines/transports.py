"""Transports: how RemoteEngine carries one native-dialect request dict to a serving app and gets its answer back.

- `HttpTransport(url)`: POST {url}/invocations with requests (any host running `python -m studio.serving`).
- `SageMakerRealtime(endpoint, runtime_client)`: invoke_endpoint; ~70 s read timeout, retries with backoff on
  throttling, the 6 MB request limit checked before sending.
- `SageMakerAsync(endpoint, runtime_client, s3_client, input_location)`: request JSON uploaded to S3,
  invoke_endpoint_async, then OutputLocation / FailureLocation polled with backoff and an overall timeout;
  "queued" progress is reported as on_progress(0, total); cancel stops waiting.

Clients come from studio.aws (imported lazily there: building a transport with injected clients never imports
boto3), and botocore errors are classified there too. requests is imported on first use. The AWS Lambda transports
(lambda.invoke and function URLs) are in studio.engines.lambda_transport.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from studio import aws
from studio.config import Backend
from studio.engine import CancelToken, EngineError, EngineNotReady, EngineStatus, GenerationCancelled, ProgressCallback
from studio.types import RequestError

logger = logging.getLogger(__name__)

REALTIME_MAX_BODY = 6 * 1024 * 1024  # SageMaker InvokeEndpoint: 6 MB request (and response) payload
REALTIME_READ_TIMEOUT = 70.0  # SageMaker answers within 60 s or fails; wait a little longer than that
ASYNC_READ_TIMEOUT = 60.0  # invoke_endpoint_async only queues the request


class Transport(Protocol):
    """Carries one native-dialect request dict to a serving app and returns its response dict."""

    backend: str  # "http" or "sagemaker": recorded in results and gallery metadata
    target: str  # URL or endpoint name, for messages and Settings

    def invoke(
        self, payload: dict[str, Any], *, total: int, on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> dict[str, Any]: ...

    def check(self) -> EngineStatus: ...


def make_runtime_client(session: Any = None, *, read_timeout: float = REALTIME_READ_TIMEOUT) -> Any:
    """A sagemaker-runtime client configured for generations: long read timeout, one attempt per call (throttling
    is retried by the transport, explicitly, with backoff)."""
    return aws.client("sagemaker-runtime", session=session, read_timeout=read_timeout, retries=1)


def container_error(text: str, status: int | None = None) -> Exception:
    """The serving app's error body ({"error", "field"} JSON, maybe followed by a traceback) as an exception.

    An error naming a field (the app's 400) becomes RequestError; everything else an EngineError with the message.
    """
    text = (text or "").strip()
    body: Any = None
    for candidate in (text, text.split("\n", 1)[0]):
        try:
            body = json.loads(candidate)
            break
        except (ValueError, TypeError):
            continue
    if isinstance(body, dict) and "error" in body:
        message = str(body["error"])
        field_name = body.get("field")
        if status in (None, 400) and isinstance(field_name, str) and message.startswith(f"{field_name}: "):
            return RequestError(field_name, None, message[len(field_name) + 2 :])
        return EngineError(message)
    snippet = text if len(text) <= 2000 else text[:2000] + "..."
    return EngineError(snippet or f"the server answered HTTP {status} without a message")


def sleep_or_cancel(seconds: float, cancel: CancelToken | None, sleep: Callable[[float], None]) -> None:
    """Sleep `seconds` in short slices so a cancel is noticed quickly."""
    remaining = seconds
    while remaining > 0:
        if cancel is not None and cancel.is_set():
            return
        step = min(remaining, 0.2)
        sleep(step)
        remaining -= step


def run_cancellable(fn: Callable[[], Any], cancel: CancelToken | None, what: str) -> Any:
    """Run a blocking call in a thread; if `cancel` fires first, stop waiting (the call finishes unseen)."""
    if cancel is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="remote-call", daemon=True)
    thread.start()
    while thread.is_alive():
        if cancel.is_set():
            raise GenerationCancelled(f"stopped waiting for {what}; the server may still finish this request")
        thread.join(0.1)
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_body_size(payload: dict[str, Any], body: bytes, limit: int, who_accepts: str, advice: str) -> None:
    """Refuse a request body over `limit` bytes before sending it, naming the image field that makes it big."""
    if len(body) <= limit:
        return
    biggest = max(("input_image", "mask_image"), key=lambda k: len(payload.get(k) or ""))
    raise RequestError(
        biggest if payload.get(biggest) else "body",
        f"<{len(body)} bytes>",
        f"the request is {len(body) / 1e6:.1f} MB; {who_accepts} at most {limit / 1e6:.1f} MB — {advice}",
    )


def wait_to_retry(
    delays: Iterator[float], cancel: CancelToken | None, sleep: Callable[[float], None], target: str, attempt: int,
    reason: str,
) -> None:  # fmt: skip
    """Wait the next backoff delay after failed attempt `attempt`; a Stop during the wait raises GenerationCancelled."""
    delay = next(delays)
    logger.info("%s is throttling (%s, attempt %d); retrying in %.1fs", target, reason, attempt, delay)
    sleep_or_cancel(delay, cancel, sleep)
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled()


def call_with_retries(
    call: Callable[[], Any],
    *,
    target: str,
    cancel: CancelToken | None,
    retryable: Callable[[BaseException], bool],
    failure: Callable[[BaseException, int], Exception],
    max_retries: int,
    backoff: Backoff,
    sleep: Callable[[float], None],
) -> Any:
    """`call()` (cancellable) until it succeeds. An error `retryable` accepts is retried after the next backoff delay,
    at most `max_retries` times; any other error, or the last one, is raised as `failure(exc, attempts)`.
    RequestError and GenerationCancelled pass through unchanged."""
    delays = backoff.delays()
    attempts = 1
    while True:
        try:
            return run_cancellable(call, cancel, target)
        except (RequestError, GenerationCancelled):
            raise
        except Exception as exc:
            if not retryable(exc) or attempts > max_retries:
                raise failure(exc, attempts) from None
            wait_to_retry(delays, cancel, sleep, target, attempts, aws.error_code(exc) or type(exc).__name__)
            attempts += 1


# ---- plain HTTP -----------------------------------------------------------------------------------------------
class HttpTransport:
    """POST to a serving app's /invocations with requests."""

    backend = Backend.HTTP.value

    def __init__(self, url: str, timeout: float = 600.0, *, connect_timeout: float = 10.0):
        base = url.rstrip("/")
        self.invocations_url = base if base.endswith("/invocations") else base + "/invocations"
        self.ping_url = self.invocations_url.rsplit("/", 1)[0] + "/ping"
        self.target = aws.redact_url(base)
        self.timeout = (connect_timeout, timeout)
        self._requests_session: Any = None

    def _session(self) -> Any:
        """One requests.Session (its urllib3 pool is thread-safe) so connections are reused across calls."""
        import requests

        if self._requests_session is None:
            self._requests_session = requests.Session()
        return self._requests_session

    def invoke(
        self, payload: dict[str, Any], *, total: int, on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        import requests

        body = json.dumps(payload).encode()

        def call() -> Any:
            return self._session().post(
                self.invocations_url,
                data=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self.timeout,
            )

        try:
            response = run_cancellable(call, cancel, self.target)
        except requests.Timeout:
            raise EngineError(f"{self.target} did not answer within {self.timeout[1]:g} s") from None
        except requests.ConnectionError as exc:
            raise EngineError(f"cannot reach {self.target}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise EngineError(f"request to {self.target} failed: {type(exc).__name__}") from None
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise EngineError(f"{self.target} answered 200 with a body that is not JSON") from None
        if response.status_code == 413:
            raise RequestError("body", len(body), f"the request ({len(body)} bytes) is larger than the server accepts")
        error = container_error(response.text, response.status_code)
        if response.status_code == 503 and not isinstance(error, RequestError):
            raise EngineNotReady(f"{self.target}: {error}")
        raise error

    def check(self) -> EngineStatus:
        import requests

        try:
            response = self._session().get(self.ping_url, timeout=(3, 5))
        except requests.RequestException as exc:
            return EngineStatus(backend=self.backend, model=self.target, error=f"unreachable: {type(exc).__name__}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200:
            details = {"server_model": str(body.get("model", "")), "device": str(body.get("device", ""))}
            return EngineStatus(backend=self.backend, model=self.target, loaded=True, details=details)
        loading = body.get("status") == "loading"
        return EngineStatus(
            backend=self.backend,
            model=self.target,
            loading=loading,
            error=None if loading else str(body.get("error") or f"HTTP {response.status_code}"),
        )


# ---- SageMaker ------------------------------------------------------------------------------------------------
@dataclass
class Backoff:
    """Exponential backoff with jitter: first, first*factor, ... capped at `maximum`."""

    first: float = 1.0
    factor: float = 2.0
    maximum: float = 20.0
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random)

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay * (1 + self.rng.uniform(-self.jitter, self.jitter))
            delay = min(delay * self.factor, self.maximum)


def endpoint_status(sagemaker_client: Any, endpoint: str, backend: str) -> EngineStatus:
    """The endpoint's state from describe_endpoint, as an EngineStatus (never raises)."""
    try:
        described = sagemaker_client.describe_endpoint(EndpointName=endpoint)
    except Exception as exc:
        return EngineStatus(backend=backend, model=endpoint, error=aws.describe_failure(exc, endpoint))
    state = described.get("EndpointStatus", "?")
    in_service = state in ("InService", "Updating")
    error = None if in_service or state in ("Creating", "SystemUpdating") else f"endpoint is {state}"
    if state == "Failed" and described.get("FailureReason"):
        error = f"endpoint is Failed: {described['FailureReason']}"
    return EngineStatus(
        backend=backend,
        model=endpoint,
        loaded=in_service,
        loading=state in ("Creating", "SystemUpdating"),
        error=error,
        details={"endpoint_status": state, "config": str(described.get("EndpointConfigName", ""))},
    )


class SageMakerRealtime:
    """invoke_endpoint on a real-time endpoint; retries throttling with backoff; 6 MB checked before sending."""

    backend = Backend.SAGEMAKER.value

    def __init__(
        self,
        endpoint: str,
        runtime_client: Any = None,
        *,
        sagemaker_client: Any = None,
        max_retries: int = 4,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.endpoint = endpoint
        self.target = endpoint
        self.runtime = runtime_client or make_runtime_client()
        self.sagemaker_client = sagemaker_client
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self.sleep = sleep

    def invoke(
        self, payload: dict[str, Any], *, total: int, on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        check_body_size(
            payload, body, REALTIME_MAX_BODY, "SageMaker real-time endpoints accept",
            "use a smaller input image or an async endpoint",
        )  # fmt: skip
        data = call_with_retries(
            lambda: self.runtime.invoke_endpoint(
                EndpointName=self.endpoint, Body=body, ContentType="application/json", Accept="application/json"
            )["Body"].read(),
            target=self.endpoint,
            cancel=cancel,
            retryable=aws.is_throttling,
            failure=self._failure,
            max_retries=self.max_retries,
            backoff=self.backoff,
            sleep=self.sleep,
        )
        try:
            return json.loads(data)
        except ValueError:
            raise EngineError(f"{self.endpoint} answered with a body that is not JSON") from None

    def _failure(self, exc: BaseException, attempts: int) -> Exception:
        code = aws.error_code(exc)
        response = getattr(exc, "response", None) or {}
        if code == "ModelError":
            status = response.get("OriginalStatusCode")
            original = response.get("OriginalMessage") or aws.error_message(exc)
            error = container_error(str(original), int(status) if status else None)
            if isinstance(error, RequestError):
                return error
            return EngineError(f"{self.endpoint}: the model container failed: {error}")
        if aws.is_throttling(exc):
            return EngineError(
                f"{self.endpoint} is throttling requests ({code}) after {attempts} attempts; "
                "try again later or raise the endpoint's instance count"
            )
        if code == "ModelNotReadyException":
            return EngineNotReady(f"{self.endpoint}: the model is not ready yet: {aws.error_message(exc)}")
        if code == "ValidationError":
            return EngineError(f"{self.endpoint}: {aws.error_message(exc)}")
        if type(exc).__name__ == "ReadTimeoutError":
            return EngineError(
                f"{self.endpoint} did not answer in time (SageMaker real-time invocations time out after 60 s)"
            )
        return EngineError(aws.describe_failure(exc, self.endpoint))

    def check(self) -> EngineStatus:
        return endpoint_status(self.sagemaker_client or aws.client("sagemaker"), self.endpoint, self.backend)


class SageMakerAsync:
    """invoke_endpoint_async: upload the request to S3, invoke, poll the output and failure locations."""

    backend = Backend.SAGEMAKER.value

    def __init__(
        self,
        endpoint: str,
        runtime_client: Any = None,
        s3_client: Any = None,
        input_location: str = "",
        *,
        sagemaker_client: Any = None,
        timeout: float = 3600.0,
        poll: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        keep_input: bool = False,
    ):
        if not input_location:
            raise EngineError(f"{endpoint}: async endpoints need an s3:// location to upload requests to")
        self.bucket, prefix = aws.parse_s3_uri(input_location, "input_location", need_key=False)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint = endpoint
        self.target = endpoint
        session = None if runtime_client is not None and s3_client is not None else aws.new_session()
        self.runtime = runtime_client or make_runtime_client(session, read_timeout=ASYNC_READ_TIMEOUT)
        self.s3 = s3_client or aws.client("s3", session=session)
        self.sagemaker_client = sagemaker_client
        self.timeout = timeout
        self.poll = poll or Backoff(first=1.0, factor=1.5, maximum=15.0)
        self.sleep = sleep
        self.keep_input = keep_input

    def invoke(
        self, payload: dict[str, Any], *, total: int, on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        inference_id = uuid.uuid4().hex
        key = f"{self.prefix}{inference_id}.json"
        input_uri = f"s3://{self.bucket}/{key}"
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=json.dumps(payload).encode(), ContentType="application/json"
            )
        except Exception as exc:
            raise EngineError(
                f"could not upload the request to {input_uri}: {aws.describe_failure(exc, input_uri)}"
            ) from None
        try:
            response = self.runtime.invoke_endpoint_async(
                EndpointName=self.endpoint,
                InputLocation=input_uri,
                ContentType="application/json",
                Accept="application/json",
                InferenceId=inference_id,
            )
        except Exception as exc:
            self._forget(key)
            if aws.is_throttling(exc):
                code = aws.error_code(exc)
                raise EngineError(f"{self.endpoint} is throttling requests ({code}); try again later") from None
            raise EngineError(aws.describe_failure(exc, self.endpoint)) from None
        output = response.get("OutputLocation")
        failure = response.get("FailureLocation")
        if not output:
            raise EngineError(f"{self.endpoint}: invoke_endpoint_async returned no OutputLocation")
        logger.info("queued %s on %s; waiting for %s", inference_id, self.endpoint, output)
        try:
            return self._wait(output, failure, total, on_progress, cancel)
        finally:
            self._forget(key)

    def _wait(
        self,
        output: str,
        failure: str | None,
        total: int,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        delays = self.poll.delays()
        while True:
            if on_progress is not None:
                on_progress(0, total)  # still queued/running: the UI shows "queued"
            data = self._fetch(output)
            if data is not None:
                try:
                    return json.loads(data)
                except ValueError:
                    raise EngineError(f"{output} is not JSON") from None
            if failure:
                text = self._fetch(failure)
                if text is not None:
                    error = container_error(text.decode("utf-8", errors="replace"))
                    if isinstance(error, RequestError):
                        raise error
                    raise EngineError(f"{self.endpoint}: async inference failed: {error}")
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"stopped waiting; the endpoint may still write the result to {output}")
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"{self.endpoint}: no result after {self.timeout:g} s; the request may still be queued "
                    f"(its result will appear at {output})"
                )
            sleep_or_cancel(min(next(delays), max(0.0, deadline - time.monotonic())), cancel, self.sleep)

    def _fetch(self, uri: str) -> bytes | None:
        """The object at `uri`, or None while it does not exist yet."""
        bucket, key = aws.parse_s3_uri(uri, "location")
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            # A missing object is "not written yet"; a missing bucket never fills, so it fails at once.
            if aws.is_not_found(exc) and aws.error_code(exc) != "NoSuchBucket":
                return None
            raise EngineError(f"could not read {uri}: {aws.describe_failure(exc, uri)}") from None

    def _forget(self, key: str) -> None:
        if self.keep_input:
            return
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # best effort: a leftover request file is harmless
            logger.debug("could not delete s3://%s/%s: %s", self.bucket, key, exc)

    def check(self) -> EngineStatus:
        status = endpoint_status(self.sagemaker_client or aws.client("sagemaker"), self.endpoint, self.backend)
        status.details["mode"] = "async"
        return status
