"""A stand-in for the SageMaker *runtime* API on 127.0.0.1, for tests only (never part of the product).

It answers what boto3's sagemaker-runtime client sends, like the real service does:
- POST /endpoints/{name}/invocations: forwards the body to the endpoint's serving app (`{url}/invocations`).
  A non-200 from the container becomes a ModelError (HTTP 424, OriginalStatusCode / OriginalMessage).
- POST /endpoints/{name}/async-invocations: answers 202 with the OutputLocation / FailureLocation headers at
  once, then (in a thread) reads X-Amzn-SageMaker-InputLocation from S3 (moto), calls the serving app and
  writes <id>.out to the output path, or <id>-error.out with the container's message to the failure path.
- `inject(endpoint, code, times)` makes the next calls fail with that error (ThrottlingException, ModelError,
  ServiceUnavailable, ...), to test retries and error messages.

Point boto3 at it with AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME (or endpoint_url=standin.url).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

ACCOUNT = "123456789012"


@dataclass
class StandinEndpoint:
    """One endpoint: where its container listens, and for async endpoints its S3 output/failure paths."""

    url: str
    output_path: str | None = None  # s3://bucket/prefix/ (async only)
    failure_path: str | None = None
    queue_delay: float = 0.0  # async: seconds "in the queue" before the container is called
    calls: int = 0
    faults: list[tuple[str, int, str]] = field(default_factory=list)  # (code, http status, message)


def _split(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class SageMakerRuntimeStandin:
    """The runtime API stand-in (context manager). `s3_client` is a boto3 S3 client (moto) for async I/O."""

    def __init__(self, s3_client: Any = None):
        self.s3 = s3_client
        self.endpoints: dict[str, StandinEndpoint] = {}
        self.async_threads: list[threading.Thread] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                standin._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="sagemaker-standin", daemon=True)

    # ---- set-up ---------------------------------------------------------------------------------------------
    def add_endpoint(self, name: str, url: str, **kwargs: Any) -> StandinEndpoint:
        self.endpoints[name] = StandinEndpoint(url=url.rstrip("/"), **kwargs)
        return self.endpoints[name]

    def inject(self, name: str, code: str, times: int = 1, *, status: int | None = None, message: str = "") -> None:
        """Fail the next `times` calls to `name` with error `code` (before reaching the container)."""
        default_status = {"ThrottlingException": 400, "ModelError": 424, "ServiceUnavailable": 503}
        entry = (code, status or default_status.get(code, 400), message or f"injected {code}")
        self.endpoints[name].faults.extend([entry] * times)

    def start(self) -> SageMakerRuntimeStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for thread in self.async_threads:
            thread.join(timeout=30)

    def __enter__(self) -> SageMakerRuntimeStandin:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- request handling -----------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urllib.parse.urlparse(handler.path).path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "endpoints" or parts[2] not in ("invocations", "async-invocations"):
            self._aws_error(handler, 404, "UnknownOperationException", f"no route for {handler.path}")
            return
        name = urllib.parse.unquote(parts[1])
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            message = f"Endpoint {name} of account {ACCOUNT} not found."
            self._aws_error(handler, 400, "ValidationError", message)
            return
        endpoint.calls += 1
        if endpoint.faults:
            code, status, message = endpoint.faults.pop(0)
            extra = {"OriginalStatusCode": 500, "OriginalMessage": message} if code == "ModelError" else {}
            self._aws_error(handler, status, code, message, **extra)
            return
        if parts[2] == "invocations":
            self._invoke(handler, name, endpoint, body)
        else:
            self._invoke_async(handler, name, endpoint)

    def _invoke(self, handler: BaseHTTPRequestHandler, name: str, endpoint: StandinEndpoint, body: bytes) -> None:
        headers = {"Content-Type": handler.headers.get("Content-Type", "application/json")}
        if handler.headers.get("Accept"):
            headers["Accept"] = handler.headers["Accept"]
        try:
            response = requests.post(f"{endpoint.url}/invocations", data=body, headers=headers, timeout=60)
        except requests.RequestException as exc:
            self._aws_error(handler, 424, "ModelError", f"container unreachable: {exc}", OriginalStatusCode=502)
            return
        if response.status_code != 200:
            text = response.text
            message = (
                f'Received client error ({response.status_code}) from primary with message "{text[:500]}". '
                f"See https://example.invalid/cloudwatch/logs for more information."
            )
            self._aws_error(
                handler,
                424,
                "ModelError",
                message,
                OriginalStatusCode=response.status_code,
                OriginalMessage=text,
                LogStreamArn=f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{name}",
            )
            return
        self._send(
            handler,
            200,
            response.content,
            {
                "Content-Type": response.headers.get("Content-Type", "application/json"),
                "x-Amzn-Invoked-Production-Variant": "AllTraffic",
            },
        )

    def _invoke_async(self, handler: BaseHTTPRequestHandler, name: str, endpoint: StandinEndpoint) -> None:
        input_location = handler.headers.get("X-Amzn-SageMaker-InputLocation")
        if not input_location or endpoint.output_path is None:
            self._aws_error(handler, 400, "ValidationError", "InputLocation is required for an async endpoint")
            return
        inference_id = handler.headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        output = f"{endpoint.output_path.rstrip('/')}/{inference_id}.out"
        failure = f"{endpoint.failure_path.rstrip('/')}/{inference_id}-error.out" if endpoint.failure_path else None
        content_type = handler.headers.get("Content-Type", "application/json")
        thread = threading.Thread(
            target=self._run_async,
            args=(endpoint, input_location, output, failure, content_type),
            name=f"async-{inference_id}",
            daemon=True,
        )
        self.async_threads.append(thread)
        thread.start()
        headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-OutputLocation": output}
        if failure:
            headers["X-Amzn-SageMaker-FailureLocation"] = failure
        self._send(handler, 202, json.dumps({"InferenceId": inference_id}).encode(), headers)

    def _run_async(
        self, endpoint: StandinEndpoint, input_location: str, output: str, failure: str | None, content_type: str
    ) -> None:
        time.sleep(endpoint.queue_delay)
        bucket, key = _split(input_location)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            response = requests.post(
                f"{endpoint.url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=300
            )
            ok, content = response.status_code == 200, response.content
        except Exception as exc:  # what SageMaker would report for a broken input or an unreachable container
            ok, content = False, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
        target = output if ok else failure
        if target is None:
            return
        out_bucket, out_key = _split(target)
        self.s3.put_object(Bucket=out_bucket, Key=out_key, Body=content)

    # ---- responses ------------------------------------------------------------------------------------------
    def _aws_error(self, handler: BaseHTTPRequestHandler, status: int, code: str, message: str, **extra: Any) -> None:
        body = json.dumps({"message": message, "Message": message, **extra}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": f"{code}:http://internal/"}
        self._send(handler, status, body, headers)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        handler.end_headers()
        handler.wfile.write(body)
