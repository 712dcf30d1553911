"""The SageMaker PyTorch inference toolkit handlers (packaged as code/inference.py in model.tar.gz).

The PyTorch DLC calls model_fn(model_dir) once, then input_fn -> predict_fn -> output_fn per request. They run
the same code as the serving app (studio.serving.invoker: decode -> engine.generate -> encode), with the engine
built the same way (studio.engines.build, the model picked by studio.models.serving_model, so STUDIO_ENGINE and
STUDIO_MODEL mean the same here), so an endpoint built from the DLC answers exactly like the Dockerfile's
container. Request images and S3 outputs go through the readers and writers of studio.wire.images, which enforce
STUDIO_S3_ALLOWED_PREFIXES themselves, also before model_fn has run.

This file also runs as a copy, code/inference.py next to a code/studio/ package: it imports only studio.* (and
the requirements); torch and diffusers load inside model_fn.
"""

from __future__ import annotations

import http
import json
import logging
from pathlib import Path
from typing import Any

from studio.config import ServingSettings, load_serving_settings
from studio.engine import EngineError
from studio.serving.invoker import Invoker, RequestCodec, engine_settings, error_body, error_status, parse_json_body
from studio.types import GenerationResult, RequestError
from studio.wire.codec import Invocation

logger = logging.getLogger(__name__)

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


def _toolkit_error(exc: Exception) -> Exception:
    """The exception the toolkit turns into an HTTP status: 400 for bad input, 503 not ready, 500 otherwise.

    The toolkit answers BaseInferenceToolkitError with its status code and message (followed by a traceback),
    so the body starts with our usual {"error": ..., "field": ...} JSON line.
    """
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError
    except ImportError:  # not inside the DLC (tests, the studio itself): keep our own exception
        return exc
    status = error_status(exc)
    return BaseInferenceToolkitError(status, json.dumps(error_body(exc)), http.HTTPStatus(status).phrase)


def model_fn(model_dir: str, context: Any = None) -> Invoker:
    """Load the model once: --model/STUDIO_MODEL, else the model files in model_dir, else the demo."""
    global _invoker
    from studio import engines  # the composition root: the heavy engine modules load only here

    settings = _serving_settings()
    chosen = engine_settings(settings, Path(model_dir))
    logger.info("model_fn: loading %s (engine %s, device %s)", chosen.model, chosen.kind, chosen.device)
    engine = engines.build(chosen)
    engine.load()  # raises ModelLoadError: the toolkit then reports the endpoint as failed
    _invoker = Invoker(engine, settings)
    return _invoker


def input_fn(request_body: bytes | str, request_content_type: str | None) -> Invocation:
    """JSON body in any dialect -> a validated Invocation (RequestError -> 400 naming the field)."""
    try:
        return _request_codec().decode(parse_json_body(request_body, request_content_type))
    except RequestError as exc:
        raise _toolkit_error(exc) from exc


def predict_fn(invocation: Invocation, model: Invoker) -> tuple[Invocation, GenerationResult]:
    """Generate (one at a time); engine failures carry their message to the caller."""
    try:
        return invocation, model.generate(invocation)
    except (RequestError, EngineError) as exc:
        raise _toolkit_error(exc) from exc


def output_fn(prediction: tuple[Invocation, GenerationResult], accept: str | None) -> tuple[str, str]:
    """The response in the caller's dialect, as JSON (images written to S3 first when an output is set)."""
    media = (accept or "application/json").split(";")[0].strip().lower()
    if media not in ("application/json", "*/*", "application/*"):
        error = RequestError("accept", media, f"only application/json responses are supported, not {media}")
        raise _toolkit_error(error)
    invocation, result = prediction
    try:
        payload = _request_codec().encode(invocation, result)
    except (RequestError, EngineError) as exc:
        raise _toolkit_error(exc) from exc
    return json.dumps(payload), "application/json"
