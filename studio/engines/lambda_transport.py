"""Transports to the studio's handler on AWS Lambda (studio.serving.aws_lambda): `--backend lambda --function F`.

- `LambdaInvoke(function, lambda_client)`: `lambda.invoke` (RequestResponse) with the native request as the event;
  throttling (TooManyRequestsException, EC2ThrottledException, a function still being updated) is retried with
  backoff like the SageMaker real-time transport; the 6 MB request limit is checked before sending; a function
  error (timeout, out of memory, a crash) becomes an EngineError with Lambda's own words, and the handler's
  `{"error", "field", "statusCode"}` answers become RequestError / EngineNotReady / EngineError like the serving
  app's statuses.
- `LambdaFunctionUrl(url)`: POST to a function URL. With AuthType AWS_IAM (the deploy default) each request is
  signed with SigV4 for the "lambda" service by botocore's signer, from the session's credentials; HTTP statuses
  are the serving app's.

Clients and credentials come from studio.aws (boto3 imported there, on first use); requests on first use.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from studio import aws
from studio.config import Backend
from studio.engine import CancelToken, EngineError, EngineNotReady, EngineStatus, ProgressCallback
from studio.engines.transports import (
    Backoff,
    call_with_retries,
    check_body_size,
    container_error,
    run_cancellable,
    wait_to_retry,
)
from studio.types import RequestError

MAX_REQUEST_BYTES = 6 * 1024 * 1024  # synchronous invoke: 6 MB request and response payloads
READ_TIMEOUT = 910.0  # Lambda's longest timeout is 900 s; wait a little longer for its answer
# Retried with backoff: throttling, and a function still being updated ("ResourceConflictException" / not ready).
RETRY_CODES = frozenset({"EC2ThrottledException", "ResourceConflictException", "ResourceNotReadyException"})
_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws$")
_FUNCTION_ERROR_HINTS = {
    "Function.ResponseSizeTooLarge": "the answer is over Lambda's 6 MB limit: ask for fewer or smaller images, or set "
    "s3_output",
    "Sandbox.Timedout": "the function timed out: ask for fewer steps or smaller images, or raise its timeout",
    "Runtime.OutOfMemory": "the function ran out of memory: give it more (--memory, up to 10240 MB)",
}


def is_function_url(function: str) -> bool:
    """True when `function` is a URL (a function URL) rather than a function name or ARN."""
    return function.startswith(("https://", "http://"))


def make_lambda_client(session: Any = None, *, read_timeout: float = READ_TIMEOUT) -> Any:
    """A lambda client for invocations: a read timeout beyond the longest function timeout, one attempt per call
    (throttling is retried by the transport, explicitly)."""
    return aws.client("lambda", session=session, read_timeout=read_timeout, retries=1)


def _check_size(payload: dict[str, Any], body: bytes) -> None:
    check_body_size(payload, body, MAX_REQUEST_BYTES, "AWS Lambda accepts", "use a smaller input image")


def handler_error(body: dict[str, Any], status: int, target: str) -> Exception:
    """The handler's error answer (the serving app's {"error", "field"} body with its status) as an exception."""
    error = container_error(json.dumps({k: v for k, v in body.items() if k != "statusCode"}), status)
    if isinstance(error, RequestError):
        return error
    if 400 <= status < 500 and isinstance(body.get("field"), str):  # 413 too large, naming the way out
        message = str(body.get("error", ""))
        field_name = body["field"]
        return RequestError(field_name, None, message.removeprefix(f"{field_name}: "))
    if status == 503:
        return EngineNotReady(f"{target}: {error}")
    return EngineError(f"{target}: {error}")


def function_status(client: Any, function: str, backend: str) -> EngineStatus:
    """The function's state from get_function_configuration, as an EngineStatus (never raises)."""
    try:
        config = client.get_function_configuration(FunctionName=function)
    except Exception as exc:
        return EngineStatus(backend=backend, model=function, error=aws.describe_failure(exc, "Lambda"))
    state = config.get("State", "Active")
    update = config.get("LastUpdateStatus", "Successful")
    loading = state == "Pending" or update == "InProgress"
    error = None
    if state == "Failed" or update == "Failed":
        error = f"function is {state}: {config.get('StateReason') or config.get('LastUpdateStatusReason') or ''}"
    elif state == "Inactive":
        error = None  # an idle function wakes up on the next invoke
    details = {
        "function_state": state,
        "memory": f"{config.get('MemorySize', '?')} MB",
        "timeout": f"{config.get('Timeout', '?')} s",
        "package": str(config.get("PackageType", "")),
    }
    return EngineStatus(
        backend=backend,
        model=function,
        loaded=not loading and error is None,
        loading=loading,
        error=error,
        details=details,
    )


class LambdaInvoke:
    """lambda.invoke (RequestResponse) of a function running studio.serving.aws_lambda.handler."""

    backend = Backend.LAMBDA.value

    def __init__(
        self,
        function: str,
        lambda_client: Any = None,
        *,
        max_retries: int = 4,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.function = function
        self.target = function
        self.client = lambda_client or make_lambda_client()
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self.sleep = sleep

    def invoke(
        self, payload: dict[str, Any], *, total: int, on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        _check_size(payload, body)

        def call() -> tuple[dict[str, Any], bytes]:
            response = self.client.invoke(FunctionName=self.function, InvocationType="RequestResponse", Payload=body)
            return response, response["Payload"].read()

        response, data = call_with_retries(
            call,
            target=self.function,
            cancel=cancel,
            retryable=self._retryable,
            failure=self._failure,
            max_retries=self.max_retries,
            backoff=self.backoff,
            sleep=self.sleep,
        )
        return self._answer(response, data)

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        return aws.is_throttling(exc) or aws.error_code(exc) in RETRY_CODES

    def _answer(self, response: dict[str, Any], data: bytes) -> dict[str, Any]:
        try:
            body = json.loads(data) if data else None
        except ValueError:
            raise EngineError(f"{self.function} answered with a payload that is not JSON") from None
        if response.get("FunctionError"):
            detail = body if isinstance(body, dict) else {}
            kind = str(detail.get("errorType", response["FunctionError"]))
            message = str(detail.get("errorMessage", "")) or "no message"
            hint = _FUNCTION_ERROR_HINTS.get(kind, "")
            if "Task timed out" in message:
                hint = _FUNCTION_ERROR_HINTS["Sandbox.Timedout"]
            raise EngineError(f"{self.function}: the function failed ({kind}): {message}{'; ' + hint if hint else ''}")
        if not isinstance(body, dict):
            raise EngineError(f"{self.function} answered with {type(body).__name__}, not a JSON object")
        if "error" in body and "statusCode" in body:
            raise handler_error(body, int(body["statusCode"]), self.function)
        return body

    def _failure(self, exc: BaseException, attempts: int) -> Exception:
        code = aws.error_code(exc)
        if self._retryable(exc):
            return EngineError(
                f"{self.function} is throttling requests ({code}) after {attempts} attempts; try again later or raise "
                "the function's concurrency limit"
            )
        if code == "RequestTooLargeException":
            return RequestError("body", None, f"too large for AWS Lambda: {aws.error_message(exc)}")
        if type(exc).__name__ == "ReadTimeoutError":
            return EngineError(f"{self.function} did not answer within {READ_TIMEOUT:g} s")
        return EngineError(aws.describe_failure(exc, self.function))

    def check(self) -> EngineStatus:
        return function_status(self.client, self.function, self.backend)


class LambdaFunctionUrl:
    """POST to a Lambda function URL; SigV4-signed for AuthType AWS_IAM (`sign=True`, the default)."""

    backend = Backend.LAMBDA.value

    def __init__(
        self,
        url: str,
        *,
        session: Any = None,
        region: str | None = None,
        sign: bool = True,
        timeout: float = READ_TIMEOUT,
        max_retries: int = 4,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url.rstrip("/") + "/"
        self.target = aws.redact_url(self.url)
        self.session = session
        host = self.url.split("/")[2].split(":")[0]
        match = _URL_REGION.search(host)
        self.region = region or (match.group(1) if match else None)
        self.sign = sign
        self.timeout = (10.0, timeout)
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self._http: Any = None

    def _signed(self, method: str, url: str, body: bytes) -> dict[str, str]:
        """The headers of a request, with a SigV4 Authorization for the "lambda" service when signing."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"} if body else {}
        if not self.sign:
            return headers
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        session = self.session if self.session is not None else aws.new_session(self.region)
        credentials = session.get_credentials()
        if credentials is None:
            raise EngineError(f"{self.target}: no AWS credentials to sign the request with (AuthType AWS_IAM)")
        region = self.region or session.region_name
        if not region:
            raise EngineError(f"{self.target}: no AWS region to sign the request for (set AWS_REGION)")
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "lambda", region).add_auth(request)
        return dict(request.headers.items())

    def _post(self, body: bytes) -> Any:
        import requests

        if self._http is None:
            self._http = requests.Session()
        headers = self._signed("POST", self.url, body)
        return self._http.post(self.url, data=body, headers=headers, timeout=self.timeout)

    def invoke(
        self, payload: dict[str, Any], *, total: int, on_progress: ProgressCallback | None, cancel: CancelToken | None
    ) -> dict[str, Any]:
        import requests

        body = json.dumps(payload).encode()
        _check_size(payload, body)
        delays = self.backoff.delays()
        attempts = 1
        while True:
            try:
                response = run_cancellable(lambda: self._post(body), cancel, self.target)
            except requests.Timeout:
                raise EngineError(f"{self.target} did not answer within {self.timeout[1]:g} s") from None
            except requests.RequestException as exc:
                raise EngineError(f"cannot reach {self.target}: {type(exc).__name__}") from None
            if response.status_code != 429 or attempts > self.max_retries:
                return self._answer(response, attempts)
            wait_to_retry(delays, cancel, self.sleep, self.target, attempts, "HTTP 429")
            attempts += 1

    def _answer(self, response: Any, attempts: int) -> dict[str, Any]:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status == 200 and isinstance(body, dict):
            return body
        if status == 200:
            raise EngineError(f"{self.target} answered 200 with a body that is not a JSON object")
        if status == 403 and (not isinstance(body, dict) or "error" not in body):
            raise EngineError(
                f"{self.target}: forbidden (403): the URL uses IAM auth and these credentials may not call it "
                "(lambda:InvokeFunctionUrl), or the request was not signed"
            )
        if status == 429:
            raise EngineError(f"{self.target} is throttling requests (429) after {attempts} attempts; try again later")
        if isinstance(body, dict) and "error" in body:
            raise handler_error(body, status, self.target)
        raise container_error(response.text, status)

    def check(self) -> EngineStatus:
        """GET {url}ping (an invocation: it wakes a cold function, so a timeout here means "starting")."""
        import requests

        url = self.url + "ping"
        try:
            if self._http is None:
                self._http = requests.Session()
            response = self._http.get(url, headers=self._signed("GET", url, b""), timeout=(3, 10))
        except requests.Timeout:
            return EngineStatus(backend=self.backend, model=self.target, loading=True, details={"state": "starting"})
        except (requests.RequestException, EngineError) as exc:
            return EngineStatus(backend=self.backend, model=self.target, error=f"unreachable: {exc}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 200:
            details = {"server_model": str(body.get("model", "")), "device": str(body.get("device", ""))}
            details["dtype"] = str(body.get("dtype", ""))
            return EngineStatus(backend=self.backend, model=self.target, loaded=True, details=details)
        loading = isinstance(body, dict) and body.get("status") == "loading"
        error = None if loading else str((body or {}).get("error") or f"HTTP {response.status_code}")
        return EngineStatus(backend=self.backend, model=self.target, loading=loading, error=error)
