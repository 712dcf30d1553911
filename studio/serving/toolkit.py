"""The SageMaker PyTorch inference toolkit handlers (packaged as code/inference.py in model.tar.gz).

The PyTorch DLC calls model_fn(model_dir) once, then transform_fn per request. They run the same code as the
serving app (studio.serving.invoker: decode -> engine.generate -> encode), with the engine built the same way
(studio.engines.build, the model picked by studio.models.serving_model, so STUDIO_ENGINE and STUDIO_MODEL mean the
same here), so an endpoint built from the DLC answers exactly like the Dockerfile's container. Request images and
S3 outputs go through the readers and writers of studio.wire.images, which enforce STUDIO_S3_ALLOWED_PREFIXES
themselves, also before model_fn has run.

Errors: the toolkit answers an exception raised by a handler with its message *followed by a Python traceback*
and no Content-Type. So transform_fn answers errors itself, the way the serving app does: the status from
`error_status` (400 bad input naming the field, 503 not ready, 500 engine failure), the body `{"error", "field"}`
as application/json, no traceback (that goes to the container log). Outside TorchServe (no request context) it
raises the toolkit's own error type, `sagemaker_inference.errors.BaseInferenceToolkitError`, carrying that JSON.

Two differences the toolkit forces, compared with `python -m studio.serving`:
- the toolkit decodes a JSON body as UTF-8 *before* any handler runs: a body that is not UTF-8 gets the toolkit's
  own 500 with a traceback (the serving app answers 400 naming "body");
- the Accept header reaches the handler (missing or `*/*` becomes SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT): an Accept
  that excludes application/json is declined with 400 naming "accept" before anything is generated (the serving
  app always answers JSON).

A model that cannot load: TorchServe keeps answering /ping 200 while it retries the worker for about 5 minutes,
and invocations hang meanwhile. model_fn therefore logs the error and stops the TorchServe frontend (its parent
process), so `serve` exits and the container is unhealthy at once (SageMaker fails the endpoint with the log
line in CloudWatch) instead of looking healthy. Outside TorchServe nothing is stopped.

This file also runs as a copy, code/inference.py next to a code/studio/ package: it imports only studio.* (and
the requirements); torch and diffusers load inside model_fn.
"""

from __future__ import annotations

import http
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from studio.config import ServingSettings, load_serving_settings
from studio.serving.invoker import (
    Invoker,
    RequestCodec,
    check_accept,
    engine_settings,
    error_body,
    error_status,
    parse_json_body,
)
from studio.types import RequestError

logger = logging.getLogger(__name__)

# The line model_fn logs when the model cannot load; `deploy create` looks for it in CloudWatch Logs.
LOAD_FAILED_MARK = "SD-STUDIO-MODEL-LOAD-FAILED"
TORCHSERVE_FRONTEND = "org.pytorch.serve.ModelServer"  # in the Java frontend's command line
LOG_FLUSH_SECONDS = 2.0  # lets the frontend copy the worker's last log lines to the container log before it stops

_settings: ServingSettings | None = None
_invoker: Invoker | None = None  # set by model_fn
_codec: RequestCodec | None = None  # used only if a request arrives before model_fn (same policy as the invoker's)


def _serving_settings() -> ServingSettings:
    global _settings
    if _settings is None:
        _settings = load_serving_settings([])
    return _settings


def _request_codec() -> RequestCodec:
    """The loaded invoker's codec, else one built from the same settings (never a codec without the S3 policy)."""
    global _codec
    if _invoker is not None:
        return _invoker.codec
    if _codec is None:
        _codec = RequestCodec(_serving_settings())
    return _codec


def toolkit_error(exc: BaseException) -> Exception:
    """The toolkit's own error type for `exc`: its status code, the serving app's JSON body as the message."""
    status = error_status(exc)
    body = json.dumps(error_body(exc))
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError
    except ImportError:  # not inside the DLC (tests, the studio itself)
        return StudioToolkitError(status, body, http.HTTPStatus(status).phrase)
    return BaseInferenceToolkitError(status, body, http.HTTPStatus(status).phrase)


class StudioToolkitError(Exception):
    """BaseInferenceToolkitError's shape (status_code, message, phrase) where the toolkit is not installed."""

    def __init__(self, status_code: int, message: str, phrase: str):
        super().__init__(status_code, message, phrase)
        self.status_code, self.message, self.phrase = status_code, message, phrase


def model_fn(model_dir: str, context: Any = None) -> Invoker:
    """Load the model once: --model/STUDIO_MODEL, else the model files in model_dir, else the demo.

    On failure the error is logged with LOAD_FAILED_MARK and, inside TorchServe, the model server is stopped
    (see the module docstring) before the exception is raised.
    """
    global _invoker
    try:
        from studio import engines  # the composition root: the heavy engine modules load only here

        settings = _serving_settings()
        chosen = engine_settings(settings, Path(model_dir))
        logger.info("model_fn: loading %s (engine %s, device %s)", chosen.model, chosen.kind, chosen.device)
        engine = engines.build(chosen)
        engine.load()
    except Exception as exc:
        message = f"{LOAD_FAILED_MARK}: the model could not be loaded: {type(exc).__name__}: {exc}"
        logger.error("%s", message)
        print(message, file=sys.stderr, flush=True)
        stop_model_server()
        raise
    _invoker = Invoker(engine, settings)
    return _invoker


def stop_model_server(parent_pid: int | None = None) -> bool:
    """Stop the TorchServe frontend this worker runs under (SIGTERM), so the container stops being "healthy".

    Does nothing (False) when the parent is not TorchServe: tests, the studio, another host.
    """
    pid = os.getppid() if parent_pid is None else parent_pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if TORCHSERVE_FRONTEND.encode() not in cmdline:
        return False
    time.sleep(LOG_FLUSH_SECONDS)
    logger.error("stopping the model server (pid %d): the model cannot be served", pid)
    os.kill(pid, signal.SIGTERM)
    return True


def transform_fn(model: Invoker, input_data: bytes | str, content_type: str | None, accept: str | None, context=None):
    """One request: Accept checked first, then decode -> generate -> encode; (JSON text, "application/json").

    Errors are answered like the serving app's (see the module docstring): status and JSON body on the context.
    """
    try:
        media = check_accept(accept)
        invocation = model.decode(parse_json_body(input_data, content_type))
        result = model.generate(invocation)
        return json.dumps(model.encode(invocation, result)), media
    except Exception as exc:
        return _error_answer(exc, context)


def _error_answer(exc: Exception, context: Any) -> tuple[str, str]:
    """Set the error's status on the request context and return its JSON body; raise the toolkit error without
    a context (then the toolkit answers it, with its traceback)."""
    status = error_status(exc)
    if status >= 500 and not isinstance(exc, RequestError):
        logger.error("invocation failed (%d): %s", status, exc, exc_info=not _is_expected(exc))
    else:
        logger.info("bad request: %s", exc)
    if context is None or not hasattr(context, "set_response_status"):
        raise toolkit_error(exc) from exc
    context.set_response_status(code=status, phrase=http.HTTPStatus(status).phrase)
    return json.dumps(error_body(exc)), "application/json"


def _is_expected(exc: Exception) -> bool:
    from studio.engine import EngineError

    return isinstance(exc, EngineError)


def decode_request(request_body: bytes | str, request_content_type: str | None):
    """The request as the handlers decode it (also before model_fn): an Invocation, RequestError naming the field."""
    return _request_codec().decode(parse_json_body(request_body, request_content_type))
