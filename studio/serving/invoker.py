"""decode -> generate -> encode: the one invocation path of the serving app and the SageMaker toolkit handlers.

`RequestCodec` binds the pure wire codec to a serving configuration: request images are read through
studio.wire.images readers and results written through its S3 writer, both carrying the S3 allowed-prefix policy.
`Invoker` adds the engine. No web framework is imported here (the FastAPI app is studio.serving.app), and
neither torch nor boto3: the engine is built by the entry points, S3 clients on first use.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

from studio import aws
from studio.config import EngineSettings, ServingSettings
from studio.engine import CancelToken, Engine, EngineError, EngineNotReady, GenerationCancelled
from studio.models import serving_model
from studio.types import GenerationRequest, GenerationResult, RequestError
from studio.wire import codec
from studio.wire.images import RequestImages, S3Reader, S3Writer, URLReader

_JSON_TYPES = ("application/json", "application/x-json", "text/json")
# Accept values answered with JSON (the only response type).
ACCEPTED_MEDIA = ("application/json", "*/*", "application/*")


def engine_settings(settings: ServingSettings, model_dir: Path | None = None) -> EngineSettings:
    """The engine a serving entry point runs: `settings.engine` with the model picked by the one rule,
    studio.models.serving_model — --model/STUDIO_MODEL, else the model files in `model_dir` (default
    settings.model_dir, i.e. SM_MODEL_DIR or /opt/ml/model), else the demo. Pass it to studio.engines.build()."""
    model = serving_model(settings.engine.model, settings.model_dir if model_dir is None else Path(model_dir))
    return dataclasses.replace(settings.engine, model=model)


def _write_prefixes(settings: ServingSettings) -> tuple[str, ...]:
    """Where results may be written: the allowed prefixes plus the operator's own STUDIO_S3_OUTPUT."""
    if not settings.s3_allowed_prefixes or not settings.s3_output:
        return settings.s3_allowed_prefixes
    return (*settings.s3_allowed_prefixes, aws.s3_prefix(settings.s3_output, "STUDIO_S3_OUTPUT"))


class RequestCodec:
    """The wire codec for one serving configuration: payload -> Invocation, result -> response dict.

    s3:// inputs are read and S3 outputs written through readers/writers that enforce
    settings.s3_allowed_prefixes themselves; http(s) inputs are fetched only with settings.allow_urls.
    `s3_client` is a boto3 S3 client or a factory (default: studio.aws.LazyClient("s3"), built on first use).
    """

    def __init__(self, settings: ServingSettings, *, s3_client: Any = None):
        client = s3_client if s3_client is not None else aws.LazyClient("s3")
        self.settings = settings
        self.images = RequestImages(
            s3=S3Reader(client, settings.s3_allowed_prefixes), urls=URLReader() if settings.allow_urls else None
        )
        self.writer = S3Writer(client, _write_prefixes(settings))

    def decode(self, payload: Any) -> codec.Invocation:
        """A validated Invocation; RequestError naming the field. A forbidden S3 output is refused here, before a
        generation is spent on it (the writer checks again when it writes)."""
        invocation = codec.decode_invocation(payload, limits=self.settings.limits, fetch=self.images)
        if invocation.s3_output:
            self.writer.check(invocation.s3_output, field=invocation.s3_output_field)
        return invocation

    def encode(self, invocation: codec.Invocation, result: GenerationResult) -> dict[str, Any]:
        """The response in the caller's dialect; with an S3 output (the request's, else STUDIO_S3_OUTPUT) the
        PNGs are written there first and their URIs returned."""
        location = invocation.s3_output or self.settings.s3_output
        if not location:
            return codec.encode_result(result, invocation.dialect)
        started = time.perf_counter()
        field = invocation.s3_output_field if invocation.s3_output else "s3_output"
        pngs = codec.encode_pngs(result)
        uris = self.writer.write(location, pngs, list(result.seeds), field=field)
        timed = dataclasses.replace(result, timings={**result.timings, "encode": time.perf_counter() - started})
        return codec.encode_result(timed, invocation.dialect, uris=uris, pngs=pngs)


class Invoker:
    """decode -> generate -> encode, shared by the HTTP app and the SageMaker toolkit handlers.

    One generation runs at a time (the engine's weights are shared); decoding and encoding run outside the lock.
    """

    def __init__(self, engine: Engine, settings: ServingSettings, s3_client: Any = None):
        self.engine = engine
        self.settings = settings
        self.codec = RequestCodec(settings, s3_client=s3_client)
        self._lock = threading.Lock()

    def decode(self, payload: Any) -> codec.Invocation:
        return self.codec.decode(payload)

    def generate(self, invocation: codec.Invocation, cancel: CancelToken | None = None) -> GenerationResult:
        """One result for the invocation; a prompt list runs one engine request per prompt, in order, under one
        hold of the lock, and the results are joined (image j has seed + j)."""
        if invocation.prompts:
            invocation = invocation.with_resolved_seed()
        while not self._lock.acquire(timeout=0.2):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the client went away before the generation started")
        try:
            results = [self.engine.generate(request, cancel=cancel) for request in invocation.requests()]
        finally:
            self._lock.release()
        result = results[0] if len(results) == 1 else join_results(invocation.request, results)
        if not result.images:
            raise EngineError("the engine returned no images")
        return result

    def encode(self, invocation: codec.Invocation, result: GenerationResult) -> dict[str, Any]:
        return self.codec.encode(invocation, result)


def join_results(request: GenerationRequest, results: list[GenerationResult]) -> GenerationResult:
    """The results of a prompt list's requests as one result for `request` (images, seeds, infotexts in order;
    timings added up; each warning once)."""
    timings: dict[str, float] = {}
    for part in results:
        for key, value in part.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    return GenerationResult(
        images=[image for part in results for image in part.images],
        seeds=[seed for part in results for seed in part.seeds],
        infotexts=[text for part in results for text in part.infotexts],
        request=request,
        model=results[0].model,
        backend=results[0].backend,
        warnings=list(dict.fromkeys(w for part in results for w in part.warnings)),
        timings=timings,
    )


def check_accept(accept: str | None) -> str:
    """The response media type for an Accept header: JSON is the only answer; anything else is declined
    (RequestError naming "accept") before a generation is spent on it."""
    for item in (accept or "").split(","):
        media = item.split(";")[0].strip().lower()
        if not media or media in ACCEPTED_MEDIA:
            return "application/json"
    media = (accept or "").strip()
    raise RequestError("accept", media, f"only application/json responses are supported, not {media}")


def parse_json_body(body: bytes | str, content_type: str | None) -> Any:
    """Parse a request body as JSON; RequestError naming content_type or body when it is not."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media not in _JSON_TYPES:
        raise RequestError("content_type", media, f"expected application/json, got {media}")
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        return json.loads(text)
    except UnicodeDecodeError:
        raise RequestError("body", "<bytes>", "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            "body", "<json>", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def error_status(exc: BaseException) -> int:
    """The HTTP status for an exception raised while serving a request."""
    if isinstance(exc, RequestError):
        return 400
    if isinstance(exc, EngineNotReady | GenerationCancelled):
        return 503
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON error body: the message, and the field for bad input."""
    if isinstance(exc, RequestError):
        return {"error": str(exc), "field": exc.field}
    if isinstance(exc, EngineError):
        return {"error": str(exc)}
    return {"error": f"internal error: {type(exc).__name__}: {exc}"}
