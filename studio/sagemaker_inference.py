"""The SageMaker PyTorch inference toolkit handler (packaged as code/inference.py in model.tar.gz).

The PyTorch DLC calls model_fn(model_dir) once, then input_fn -> predict_fn -> output_fn per request. They run
the same code as studio.serving (its Invoker: wire.decode_invocation -> LocalEngine.generate -> wire.encode_result),
so an endpoint built from the DLC answers exactly like the Dockerfile's container.

Imports only studio.* and the requirements; torch and diffusers load inside model_fn.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from studio import wire
from studio.engine import EngineError, EngineNotReady
from studio.serving import Invoker, LazyS3Client, ServingSettings, model_in_dir, parse_json_body
from studio.types import GenerationResult, RequestError

logger = logging.getLogger(__name__)

_settings: ServingSettings | None = None
_invoker: Invoker | None = None


def _serving_settings() -> ServingSettings:
    global _settings
    if _settings is None:
        _settings = ServingSettings.from_env()
    return _settings


def _toolkit_error(exc: Exception) -> Exception:
    """The exception the toolkit turns into an HTTP status: 400 for bad input, 503 not ready, 500 otherwise.

    The toolkit answers BaseInferenceToolkitError with its status code and message (followed by a traceback),
    so the body starts with our usual {"error": ..., "field": ...} JSON line.
    """
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError
    except ImportError:  # not inside the DLC (tests, the studio itself): keep our own exception
        return exc
    if isinstance(exc, RequestError):
        status, phrase, body = 400, "Bad Request", {"error": str(exc), "field": exc.field}
    elif isinstance(exc, EngineNotReady):
        status, phrase, body = 503, "Service Unavailable", {"error": str(exc)}
    else:
        status, phrase, body = 500, "Internal Server Error", {"error": str(exc)}
    return BaseInferenceToolkitError(status, json.dumps(body), phrase)


def model_fn(model_dir: str, context: Any = None) -> Invoker:
    """Load the model once: files in model_dir (diffusers folder or single file), else STUDIO_MODEL, else demo."""
    global _invoker
    from studio.local_engine import LocalEngine

    settings = _serving_settings()
    model = model_in_dir(Path(model_dir)) or os.environ.get("STUDIO_MODEL", "").strip() or "demo"
    device = os.environ.get("STUDIO_DEVICE", "auto").strip() or "auto"
    logger.info("model_fn: loading %s (device %s)", model, device)
    engine = LocalEngine(model, device=device, limits=settings.limits)
    engine.load()  # raises ModelLoadError: the toolkit then reports the endpoint as failed
    _invoker = Invoker(engine, settings)
    return _invoker


def input_fn(request_body: bytes | str, request_content_type: str | None) -> wire.Invocation:
    """JSON body in any dialect -> a validated Invocation (RequestError -> 400 naming the field)."""
    settings = _serving_settings()
    try:
        payload = parse_json_body(request_body, request_content_type)
        invoker = _invoker
        if invoker is not None:
            return invoker.decode(payload)
        return wire.decode_invocation(
            payload, allow_urls=settings.allow_urls, s3_client=LazyS3Client(), limits=settings.limits
        )
    except RequestError as exc:
        raise _toolkit_error(exc) from exc


def predict_fn(invocation: wire.Invocation, model: Invoker) -> tuple[wire.Invocation, GenerationResult]:
    """Generate (one at a time); engine failures carry their message to the caller."""
    try:
        return invocation, model.generate(invocation)
    except (RequestError, EngineError) as exc:
        raise _toolkit_error(exc) from exc


def output_fn(prediction: tuple[wire.Invocation, GenerationResult], accept: str | None) -> tuple[str, str]:
    """The response in the caller's dialect, as JSON."""
    media = (accept or "application/json").split(";")[0].strip().lower()
    if media not in ("application/json", "*/*", "application/*"):
        error = RequestError("accept", media, f"only application/json responses are supported, not {media}")
        raise _toolkit_error(error)
    invocation, result = prediction
    invoker = _invoker
    try:
        if invoker is not None:
            payload = invoker.encode(invocation, result)
        else:
            payload = wire.encode_result(result, invocation.dialect)
    except EngineError as exc:
        raise _toolkit_error(exc) from exc
    return json.dumps(payload), "application/json"
