"""Lambda's Runtime API on 127.0.0.1 (what the runtime interface emulator does), for tests only: it drives a real
`python -m awslambdaric studio.serving.aws_lambda.handler` process the way Lambda drives the image's entry point.

The process polls GET /2018-06-01/runtime/invocation/next; `invoke(event)` hands it one event (with the request
id, deadline and function ARN headers Lambda sends) and waits for POST .../invocation/{id}/response or .../error.
A failed init (POST /runtime/init/error) is kept in `init_error`. Start the process with
AWS_LAMBDA_RUNTIME_API=<runtime.address>.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sd-studio-test"


@dataclass
class _Pending:
    event: bytes
    deadline_ms: int
    done: threading.Event = field(default_factory=threading.Event)
    kind: str = ""  # "response" or "error"
    body: bytes = b""


class FunctionError(Exception):
    """The handler raised: Lambda's error document (errorType, errorMessage)."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        super().__init__(f"{document.get('errorType')}: {document.get('errorMessage')}")


class _QuietServer(ThreadingHTTPServer):
    """A runtime process killed while it waits for the next event resets its connection: not an error here."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RuntimeAPI:
    """The Runtime API (context manager). `address` is what AWS_LAMBDA_RUNTIME_API takes."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: dict[str, _Pending] = {}
        self.init_error: dict[str, Any] | None = None
        self.polls = 0  # GET .../next calls: the first one means init has finished
        self.first_poll = threading.Event()
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                runtime._next(self)

            def do_POST(self) -> None:  # noqa: N802
                runtime._post(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="lambda-runtime-api", daemon=True)

    def start(self) -> RuntimeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> RuntimeAPI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def invoke(self, event: Any, *, timeout: float = 120.0, function_timeout: float = 900.0) -> Any:
        """Hand `event` to the runtime and return the handler's answer; FunctionError when it raised."""
        return self.invoke_raw(json.dumps(event).encode(), timeout=timeout, function_timeout=function_timeout)

    def invoke_raw(self, payload: bytes, *, timeout: float = 120.0, function_timeout: float = 900.0) -> Any:
        """`invoke` with the payload bytes as given (Lambda passes them on unparsed)."""
        request_id = str(uuid.uuid4())
        pending = _Pending(payload, int((time.time() + function_timeout) * 1000))
        self._pending[request_id] = pending
        self._queue.put(request_id)
        if not pending.done.wait(timeout):
            raise TimeoutError(f"no answer from the runtime within {timeout:g} s (init error: {self.init_error})")
        body = json.loads(pending.body or b"null")
        if pending.kind == "error":
            raise FunctionError(body)
        return body

    def _next(self, request: BaseHTTPRequestHandler) -> None:
        if request.path != f"{PREFIX}/invocation/next":
            self._reply(request, 404, b'{"errorMessage": "unknown path"}')
            return
        self.polls += 1
        self.first_poll.set()
        request_id = self._queue.get()
        pending = self._pending[request_id]
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(pending.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
            "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0",
        }
        self._reply(request, 200, pending.event, headers)

    def _post(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        parts = request.path.removeprefix(PREFIX).strip("/").split("/")
        if parts == ["init", "error"]:
            self.init_error = json.loads(body or b"{}")
            self.first_poll.set()
        elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            pending = self._pending.get(parts[1])
            if pending is None:
                self._reply(request, 404, b'{"errorMessage": "unknown request id"}')
                return
            pending.kind, pending.body = parts[2], body
            pending.done.set()
        else:
            self._reply(request, 404, b'{"errorMessage": "unknown path"}')
            return
        self._reply(request, 202, b'{"status": "OK"}')

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
