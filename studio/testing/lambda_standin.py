"""A stand-in for the AWS Lambda *invoke* API and for function URLs on 127.0.0.1, for tests only (never the product).

It answers what boto3's lambda client and a function URL caller send, the way the real service does:
- POST /2015-03-31/functions/{name}/invocations: runs the function's handler in-process with the payload as the
  event (RequestResponse). A raised exception is a function error (200, X-Amz-Function-Error: Unhandled, body
  {errorMessage, errorType, stackTrace}); an answer over 6 MB is Lambda's Function.ResponseSizeTooLarge; a request
  over 6 MB is a 413 RequestTooLargeException; an unknown function a 404 ResourceNotFoundException.
- GET /2015-03-31/functions/{name}/configuration: State Active, MemorySize, Timeout, PackageType Image.
- {url}/url/{name}/...: the function URL. The HTTP request becomes a payload 2.0 event (body base64-encoded when it
  is not text, as Lambda does); the handler's {statusCode, headers, body, isBase64Encoded} becomes the response.
  With auth "AWS_IAM" every request must carry a valid SigV4 signature for the "lambda" service (checked against
  the stand-in's credentials), else 403 {"Message": "Forbidden"} like AWS.
- `inject(name, code, times)` makes the next invokes fail with that error (TooManyRequestsException, ...).

Point boto3 at it with AWS_ENDPOINT_URL_LAMBDA (or endpoint_url=standin.url); `function_url(name)` is the URL.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
MAX_PAYLOAD = 6 * 1024 * 1024
MAX_RESPONSE = 6 * 1024 * 1024 + 100  # Lambda's own figure in its error: 6291556 bytes
_TEXT_TYPES = ("application/json", "text/", "application/xml", "application/javascript")

Handler = Callable[[Any, Any], Any]


class StandinContext:
    """What a handler reads from Lambda's context object."""

    def __init__(self, name: str, timeout: float, memory: int):
        self.function_name = name
        self.memory_limit_in_mb = memory
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class StandinFunction:
    """One function: its handler, timeout, memory and function URL auth type."""

    handler: Handler
    timeout: float = 900.0
    memory: int = 10240
    auth: str = "AWS_IAM"  # the function URL's AuthType: AWS_IAM or NONE
    calls: int = 0
    url_calls: int = 0
    faults: list[tuple[str, int, str]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)  # every event the handler received


class LambdaStandin:
    """The invoke API + function URL stand-in (context manager). `credentials` = (access key, secret key) that
    signed requests must use (the tests' dummy ones by default)."""

    def __init__(self, credentials: tuple[str, str] = ("testing", "testing")):
        self.functions: dict[str, StandinFunction] = {}
        self.credentials = credentials
        standin = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                standin._handle(self, "POST")

            def do_GET(self) -> None:  # noqa: N802
                standin._handle(self, "GET")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="lambda-standin", daemon=True)

    def add_function(self, name: str, handler: Handler, **kwargs: Any) -> StandinFunction:
        self.functions[name] = StandinFunction(handler=handler, **kwargs)
        return self.functions[name]

    def function_url(self, name: str) -> str:
        return f"{self.url}/url/{name}/"

    def inject(self, name: str, code: str, times: int = 1, *, status: int | None = None, message: str = "") -> None:
        """Fail the next `times` invokes of `name` with error `code` (before the handler runs)."""
        default_status = {"TooManyRequestsException": 429, "ServiceException": 500, "EC2ThrottledException": 502}
        entry = (code, status or default_status.get(code, 400), message or f"injected {code}")
        self.functions[name].faults.extend([entry] * times)

    def start(self) -> LambdaStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LambdaStandin:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        parsed = urllib.parse.urlparse(request.path)
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        if len(parts) >= 2 and parts[0] == "url":
            self._url_call(request, method, parts[1], "/" + "/".join(parts[2:]), parsed.query, body)
            return
        if len(parts) == 4 and parts[:2] == ["2015-03-31", "functions"]:
            name = parts[2].rsplit(":", 1)[-1]  # a function ARN ends in the name
            function = self.functions.get(name)
            if function is None:
                arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
                self._aws_error(request, 404, "ResourceNotFoundException", f"Function not found: {arn}")
            elif parts[3] == "invocations" and method == "POST":
                self._invoke(request, name, function, body)
            elif parts[3] == "configuration" and method == "GET":
                self._configuration(request, name, function)
            else:
                self._aws_error(request, 404, "UnknownOperationException", f"no route for {method} {request.path}")
            return
        self._aws_error(request, 404, "UnknownOperationException", f"no route for {method} {request.path}")

    def _run(self, name: str, function: StandinFunction, event: Any) -> tuple[Any, dict[str, Any] | None]:
        """(the handler's answer, None) or (None, the function error body)."""
        function.events.append(event)
        try:
            return function.handler(event, StandinContext(name, function.timeout, function.memory)), None
        except Exception as exc:
            trace = traceback.format_exception(type(exc), exc, exc.__traceback__)
            return None, {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": trace}

    def _invoke(self, request: BaseHTTPRequestHandler, name: str, function: StandinFunction, body: bytes) -> None:
        function.calls += 1
        if function.faults:
            code, status, message = function.faults.pop(0)
            self._aws_error(request, status, code, message)
            return
        if len(body) > MAX_PAYLOAD:
            message = f"{len(body)} byte payload is too large for the RequestResponse invocation type ({MAX_PAYLOAD})"
            self._aws_error(request, 413, "RequestTooLargeException", message)
            return
        try:
            event = json.loads(body or b"null")
        except ValueError:
            self._aws_error(request, 400, "InvalidRequestContentException", "Could not parse request body into json")
            return
        answer, error = self._run(name, function, event)
        data = json.dumps(error if error is not None else answer).encode()
        if error is None and len(data) > MAX_RESPONSE:
            error = {
                "errorMessage": f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).",
                "errorType": "Function.ResponseSizeTooLarge",
            }
            data = json.dumps(error).encode()
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"}
        if error is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        self._send(request, 200, data, headers)

    def _configuration(self, request: BaseHTTPRequestHandler, name: str, function: StandinFunction) -> None:
        config = {
            "FunctionName": name,
            "FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "MemorySize": function.memory,
            "Timeout": int(function.timeout),
            "PackageType": "Image",
        }
        self._send(request, 200, json.dumps(config).encode(), {"Content-Type": "application/json"})

    def _url_call(
        self, request: BaseHTTPRequestHandler, method: str, name: str, path: str, query: str, body: bytes
    ) -> None:
        function = self.functions.get(name)
        if function is None:
            self._send(request, 404, b'{"Message": null}', {"Content-Type": "application/json"})
            return
        function.url_calls += 1
        if function.auth == "AWS_IAM" and not self._signed(request, method, body):
            self._send(request, 403, b'{"Message":"Forbidden"}', {"Content-Type": "application/json"})
            return
        content_type = request.headers.get("Content-Type", "")
        text = content_type.startswith(_TEXT_TYPES)
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": query,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "requestContext": {
                "accountId": "anonymous",
                "domainName": request.headers.get("Host", ""),
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
                "requestId": str(uuid.uuid4()),
                "routeKey": "$default",
                "stage": "$default",
            },
            "body": body.decode("utf-8") if text else base64.b64encode(body).decode(),
            "isBase64Encoded": not text,
        }
        answer, error = self._run(name, function, event)
        if error is not None:
            self._send(request, 502, b'{"Message":"Internal Server Error"}', {"Content-Type": "application/json"})
            return
        if isinstance(answer, dict) and "statusCode" in answer:
            data = answer.get("body") or ""
            data = base64.b64decode(data) if answer.get("isBase64Encoded") else str(data).encode()
            self._send(request, int(answer["statusCode"]), data, dict(answer.get("headers") or {}))
            return
        self._send(request, 200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _signed(self, request: BaseHTTPRequestHandler, method: str, body: bytes) -> bool:
        """True when the request carries a valid SigV4 signature (service "lambda") made with our credentials."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        header = request.headers.get("Authorization", "")
        fields = dict(
            part.strip().split("=", 1) for part in header.removeprefix("AWS4-HMAC-SHA256 ").split(",") if "=" in part
        )
        credential = fields.get("Credential", "").split("/")
        if not header.startswith("AWS4-HMAC-SHA256 ") or len(credential) != 5 or credential[0] != self.credentials[0]:
            return False
        _key, _date, region, service, _terminator = credential
        signed = fields.get("SignedHeaders", "").split(";")
        headers = {name: request.headers.get(name, "") for name in signed}
        url = f"http://{request.headers.get('Host', '')}{request.path}"
        canonical = AWSRequest(method=method, url=url, data=body, headers=headers)
        canonical.context["timestamp"] = request.headers.get("X-Amz-Date", "")
        token = request.headers.get("X-Amz-Security-Token")
        auth = SigV4Auth(Credentials(self.credentials[0], self.credentials[1], token), service, region)
        expected = auth.signature(auth.string_to_sign(canonical, auth.canonical_request(canonical)), canonical)
        return service == "lambda" and fields.get("Signature") == expected

    def _aws_error(self, request: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"Type": "User", "message": message, "Message": message}).encode()
        self._send(request, status, body, {"Content-Type": "application/json", "x-amzn-ErrorType": code})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
