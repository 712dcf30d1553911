"""The AWS Lambda handler `studio.serving.aws_lambda.handler`: the serving app's decode -> generate -> encode.

Events it answers:
- Function URL and API Gateway HTTP API events (payload 2.0; 1.0 / REST events too): POST (any path: a route or
  stage may prefix it) with a JSON body (base64-encoded when `isBase64Encoded`), GET /ping. The answer is an HTTP
  response: the same JSON bodies and statuses as the serving app's /invocations and /ping.
- Direct invocations (`lambda invoke`, studio's `--backend lambda`): the event *is* the JSON request. The answer
  is the response body itself; an error is the serving app's error body plus its status, {"error", "field"?,
  "statusCode"}, returned (not raised), so bad input is a 4xx naming the field and never a function error.
Every request dialect of /invocations works here (studio.serving.invoker is the one path, studio.wire the codec).

Lambda-specific rules:
- Responses: Lambda refuses synchronous answers over 6 MB. A larger answer is a 413 naming `s3_output` (the way
  out), computed before answering. With S3 output (the request's `s3_output`, or STUDIO_S3_OUTPUT) the images go to
  S3 under the same STUDIO_S3_ALLOWED_PREFIXES policy as the serving app, and an answer that would still be too big
  carries the URIs only.
- Loading: the engine is built and loaded once per execution environment, at init (module import inside Lambda).
  The load runs in a thread; init (this module's import, the engine's imports included) waits for it until
  INIT_BUDGET_SECONDS have passed (Lambda allows 10 s before it restarts init inside the first invocation), and a
  request arriving earlier waits for the rest within its own time.
- Engine: OpenVINO unless STUDIO_ENGINE says otherwise (studio.config.load_lambda_settings); its precision is
  decided from the CPU (studio.engines.openvino.cpu_bf16) and logged. STUDIO_MODEL is a path (best: a folder
  prepared by `python -m studio.models export-openvino`, so a cold start never converts), "demo", or an s3://
  location copied into /tmp on cold start.
- Time: a generation still running when the function's time is nearly up is stopped between steps and answered
  with a 504 that says so, instead of Lambda's bare "Task timed out".

Outside Lambda, importing this module does nothing heavy: tests and the bench build a `LambdaApp` themselves.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.config import ServingSettings, in_aws_lambda, load_lambda_settings
from studio.engine import Engine, EngineError, GenerationCancelled, ModelLoadError
from studio.serving.invoker import Invoker, error_body, error_status, parse_json_body
from studio.types import RequestError

logger = logging.getLogger(__name__)
_IMPORTED_AT = time.monotonic()

MAX_RESPONSE_BYTES = 6 * 1024 * 1024 - 1024  # Lambda's synchronous response limit, less room for the envelope
INIT_BUDGET_SECONDS = 8.5  # Lambda's init phase may take 10 s (from before this import); the load goes on after
TIMEOUT_MARGIN_SECONDS = 5.0  # stop a generation this long before the function's timeout, to answer in time
NO_CONTEXT_SECONDS = 900.0  # the time a request may take when there is no Lambda context (tests, the bench)
_JSON_HEADERS = {"content-type": "application/json"}


@dataclass
class HttpRequest:
    """A Function URL / API Gateway event, reduced to what the routes need."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def http_request(event: Any) -> HttpRequest | None:
    """The HTTP request an API Gateway / Function URL event carries, or None for a direct invocation."""
    if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
        return None
    context = event["requestContext"]
    if event.get("version") == "2.0" and isinstance(context.get("http"), dict):
        method, path = context["http"].get("method", ""), event.get("rawPath") or context["http"].get("path", "/")
    elif "httpMethod" in event:  # payload 1.0 (HTTP API) and REST API events
        method, path = event["httpMethod"], event.get("path") or "/"
    else:
        return None
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except ValueError:
            raise RequestError("body", "<base64>", "isBase64Encoded is set but the body is not valid base64") from None
    else:
        body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    return HttpRequest(method=str(method).upper(), path=str(path), headers=headers, body=body)


def _seconds_left(context: Any) -> float:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining() / 1000.0 if callable(remaining) else NO_CONTEXT_SECONDS


class LambdaApp:
    """The handler's state in one execution environment: the invoker (engine + codec + S3 policy) and its load.

    `load` makes the engine ready (default: engine.load(); the environment's own also copies an S3 model into
    /tmp first). Call `start()` once (init does), then call the app with each (event, context).
    """

    def __init__(
        self,
        engine: Engine,
        settings: ServingSettings,
        *,
        s3_client: Any = None,
        load: Callable[[], None] | None = None,
    ):
        self.invoker = Invoker(engine, settings, s3_client=s3_client)
        self.settings = settings
        self._load = load or engine.load
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self.max_response_bytes = MAX_RESPONSE_BYTES

    @property
    def engine(self) -> Engine:
        return self.invoker.engine

    def start(self, wait: float = 0.0) -> LambdaApp:
        """Start loading the engine in a thread (once) and wait up to `wait` seconds for it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_load, name="model-load", daemon=True)
            self._thread.start()
        self._done.wait(wait)
        return self

    def _run_load(self) -> None:
        started = time.perf_counter()
        try:
            self._load()
        except Exception as exc:  # kept and answered as 503 on every request: the caller sees why
            self.load_error = str(exc) or type(exc).__name__
            logger.error("model load failed; requests will answer 503: %s", self.load_error)
        else:
            self.load_seconds = time.perf_counter() - started
            logger.info("model loaded in %.1fs; ready", self.load_seconds)
        finally:
            self._done.set()

    def readiness(self, wait: float = 0.0) -> tuple[int, dict[str, Any]]:
        """(status, body) like the serving app's /ping, after waiting up to `wait` s for a load in progress."""
        self.start()
        self._done.wait(max(0.0, wait))
        status = self.engine.status()
        if status.loaded:
            return 200, {"status": "ok", "model": status.model, "device": status.device, "dtype": status.dtype}
        error = status.error or self.load_error
        if error:
            return 503, {"status": "error", "error": f"model failed to load: {error}"}
        what = f"model {status.model}" if status.model else "the model"
        return 503, {"status": "loading", "error": f"{what} is not loaded yet"}

    def __call__(self, event: Any, context: Any = None) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            request = http_request(event)
        except RequestError as exc:
            return _http(400, error_body(exc))
        if request is None:
            status, body = self.invoke(event, None, context)
            return body if status == 200 else {**body, "statusCode": status}
        status, body = self.route(request, context)
        logger.info("%s %s -> %d in %.2fs", request.method, request.path, status, time.perf_counter() - started)
        return _http(status, body)

    def route(self, request: HttpRequest, context: Any) -> tuple[int, dict[str, Any]]:
        """POST on any path generates (an API Gateway route or stage may prefix it); GET / or .../ping is readiness."""
        path = request.path.rstrip("/") or "/"
        if request.method == "POST":
            if not request.body:
                return 400, error_body(RequestError("body", "", "is empty: POST a JSON request"))
            return self.invoke(request.body, request.headers.get("content-type"), context)
        if request.method in ("GET", "HEAD") and (path == "/" or path.endswith("/ping")):
            return self.readiness()
        if request.method in ("GET", "HEAD"):
            return 404, {"error": f"{request.method} {request.path}: not found; POST a JSON request, GET /ping"}
        return 405, {"error": f"{request.method} is not supported: POST a JSON request, GET /ping"}

    def invoke(self, payload: Any, content_type: str | None, context: Any) -> tuple[int, dict[str, Any]]:
        """decode -> generate -> encode; `payload` is raw body bytes (HTTP) or the parsed event (direct)."""
        deadline = time.monotonic() + _seconds_left(context)
        try:
            data = parse_json_body(payload, content_type) if isinstance(payload, bytes) else payload
            invocation = self.invoker.decode(data)
        except RequestError as exc:
            logger.info("bad request: %s", exc)
            return 400, error_body(exc)
        except Exception as exc:  # a decoder bug still answers, and the environment keeps serving
            logger.exception("unexpected error while decoding a request")
            return 500, error_body(exc)
        status, ready = self.readiness(wait=deadline - time.monotonic() - TIMEOUT_MARGIN_SECONDS)
        if status != 200:
            return status, {"error": ready["error"]}
        cancel = threading.Event()
        timer = threading.Timer(max(0.0, deadline - time.monotonic() - TIMEOUT_MARGIN_SECONDS), cancel.set)
        timer.daemon = True
        timer.start()
        try:
            result = self.invoker.generate(invocation, cancel)
            body = self.invoker.encode(invocation, result)
        except GenerationCancelled as exc:
            if not cancel.is_set():
                return error_status(exc), error_body(exc)
            logger.warning("stopped a generation %.0f s before the function's timeout", TIMEOUT_MARGIN_SECONDS)
            return 504, {
                "error": "the generation did not finish within the function's timeout: ask for fewer steps, fewer "
                "or smaller images, or give the function a longer timeout (at most 900 s)"
            }
        except Exception as exc:
            if isinstance(exc, RequestError | EngineError):
                logger.warning("invocation failed (%s): %s", error_status(exc), exc)
            else:
                logger.exception("unexpected error during an invocation")
            return error_status(exc), error_body(exc)
        finally:
            timer.cancel()
        return fit_response(body, self.max_response_bytes)


def fit_response(body: dict[str, Any], limit: int = MAX_RESPONSE_BYTES) -> tuple[int, dict[str, Any]]:
    """(200, body) when it fits in Lambda's response limit; with S3 URIs, the body without its inline images; else
    413 naming `s3_output`, the way to get large answers."""
    size = len(json.dumps(body))
    if size <= limit:
        return 200, body
    if body.get("s3_uris"):
        slim = {k: v for k, v in body.items() if k not in ("images", "generated_images")}
        slim["warnings"] = [*body.get("warnings", []), "images are in S3 only: inline they exceed Lambda's 6 MB limit"]
        if len(json.dumps(slim)) <= limit:
            return 200, slim
    message = (
        f"the answer would be {size / 1e6:.1f} MB, over AWS Lambda's 6 MB limit for a response: "
        "ask for fewer or smaller images (count, width, height), or give s3_output (s3://bucket/prefix) to get S3 URIs"
    )
    return 413, error_body(RequestError("s3_output", None, message))


def _http(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The Function URL / API Gateway response for `body`."""
    return {"statusCode": status, "headers": dict(_JSON_HEADERS), "body": json.dumps(body), "isBase64Encoded": False}


def environment_app(settings: ServingSettings | None = None) -> LambdaApp:
    """The app of this execution environment, from the STUDIO_* variables (not started). An s3:// STUDIO_MODEL is
    copied into /tmp by the load, before the engine loads it."""
    from studio import engines
    from studio.serving.invoker import engine_settings

    settings = settings or load_lambda_settings()
    chosen = engine_settings(settings)
    model = chosen.model or ""
    if not model.startswith("s3://"):
        logger.info("Lambda: engine %s, model %s", chosen.kind.value, model)
        return LambdaApp(engines.build(chosen), settings)
    engine = engines.build(dataclasses.replace(chosen, model=None))

    def load() -> None:
        engine.load(str(download_model(model)))

    logger.info("Lambda: engine %s, model %s (copied to /tmp at load)", chosen.kind.value, model)
    return LambdaApp(engine, settings, load=load)


def download_model(uri: str, *, s3_client: Any = None, root: Path | None = None) -> Path:
    """Copy the model at `uri` into `root` (default: <tmp>/sd-studio-model; Lambda's /tmp) and return its local path.

    `uri` is an object (one .safetensors/.ckpt file) or a prefix (a diffusers folder, e.g. an export with its IR):
    every object under it is copied, keeping the relative paths. Files already there with the right size are kept
    (a re-init in the same environment). Too little room in /tmp is a ModelLoadError that names the setting.
    """
    from studio import aws

    client = s3_client or aws.client("s3")
    bucket, key = aws.parse_s3_uri(uri, "STUDIO_MODEL", need_key=False)
    prefix = key.rstrip("/")
    objects: list[tuple[str, int]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objects += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
    except Exception as exc:
        raise ModelLoadError(f"STUDIO_MODEL {uri}: {aws.describe_failure(exc, uri)}") from None
    single = [(k, n) for k, n in objects if k == prefix]
    objects = single or [(k, n) for k, n in objects if k.startswith(prefix + "/") and not k.endswith("/")]
    if not objects:
        raise ModelLoadError(f"STUDIO_MODEL {uri}: no objects there")
    target = (root or Path(tempfile.gettempdir()) / "sd-studio-model") / hashlib.sha256(uri.encode()).hexdigest()[:12]
    target.mkdir(parents=True, exist_ok=True)
    needed = sum(size for _, size in objects)
    free = shutil.disk_usage(target).free
    if needed > free:
        raise ModelLoadError(
            f"STUDIO_MODEL {uri} is {needed / 1e9:.1f} GB but {target} has {free / 1e9:.1f} GB free: give the function "
            "more ephemeral storage (python -m studio.deploy create --target lambda ... --ephemeral-storage MB)"
        )
    started = time.perf_counter()
    for object_key, size in objects:
        local = target / (Path(object_key).name if single else object_key[len(prefix) + 1 :])
        if local.is_file() and local.stat().st_size == size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, object_key, str(local))
        except Exception as exc:
            raise ModelLoadError(
                f"STUDIO_MODEL {uri}: {aws.describe_failure(exc, f's3://{bucket}/{object_key}')}"
            ) from None
    logger.info("copied %s (%.2f GB) to %s in %.1fs", uri, needed / 1e9, target, time.perf_counter() - started)
    return target / Path(single[0][0]).name if single else target


def configure_logging() -> None:
    """INFO for the studio's loggers. Inside Lambda the runtime has set up the root logger (its handler sends lines
    to CloudWatch Logs); elsewhere a plain basicConfig."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("studio").setLevel(logging.INFO)
    # botocore debug lines carry signed headers: never below INFO.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger(noisy).getEffectiveLevel()))


_app: LambdaApp | None = None
_app_lock = threading.Lock()


def init(wait: float = INIT_BUDGET_SECONDS) -> LambdaApp:
    """Build this environment's app and start loading its engine (once); wait up to `wait` s for the load."""
    global _app
    with _app_lock:
        if _app is None:
            _app = environment_app()
            _app.start()
    return _app.start(wait)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point (`studio.serving.aws_lambda.handler`)."""
    return (_app or init(wait=0.0))(event, context)


if in_aws_lambda():  # Lambda's init phase imports this module: load the engine now, once per environment
    configure_logging()
    _built = init(wait=0.0)
    _built.start(wait=max(0.0, INIT_BUDGET_SECONDS - (time.monotonic() - _IMPORTED_AT)))
