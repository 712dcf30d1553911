"""The container app SageMaker (or any host) runs: GET /ping and POST /invocations on :8080.

`/invocations` is decode (studio.wire) -> engine.generate -> encode (studio.wire), nothing else; the engine
is the same LocalEngine the studio runs, so a seed gives the same image locally and on an endpoint.
`/ping` answers 200 only once the model is loaded (it loads in a background thread at startup), 503 while
loading or after a failed load. Errors are JSON {"error": ...}: 400 for bad input (naming the field),
413 for an oversized body, 503 when not ready, 500 with the engine's message. Never 200 without images.

Run: `python -m studio.serving --model M --host H --port P`, or `serve` (SageMaker starts containers as
`docker run IMAGE serve`; a leading "serve" argument is accepted and ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from studio import wire
from studio.config import ConfigError, limits_from_env, parse_bool, parse_int
from studio.engine import CancelToken, Engine, EngineError, EngineNotReady, GenerationCancelled
from studio.types import GenerationResult, Limits, RequestError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
_JSON_TYPES = ("application/json", "application/x-json", "text/json")
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_IGNORED_MODEL_DIR_ENTRIES = ("code",)  # the PyTorch toolkit's code/inference.py lives next to the weights


def _env_int(environ: dict[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    return parse_int(name, raw) if raw.strip() else default


def _env_bool(environ: dict[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "")
    return parse_bool(name, raw) if raw.strip() else default


@dataclass(frozen=True)
class ServingSettings:
    """What the serving app enforces; `from_env` reads STUDIO_* variables with explicit parsing."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_urls: bool = False  # fetch http(s) image URLs (off: a server fetching arbitrary URLs is an SSRF risk)
    s3_output: str | None = None  # s3://bucket/prefix: write images there and return their URIs
    # s3:// locations requests may read from or write to; empty = any the container's IAM role can reach.
    s3_allowed_prefixes: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServingSettings:
        env = dict(os.environ if environ is None else environ)
        settings = cls(
            max_body_bytes=_env_int(env, "STUDIO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            allow_urls=_env_bool(env, "STUDIO_ALLOW_URLS", False),
            s3_output=env.get("STUDIO_S3_OUTPUT", "").strip() or None,
            s3_allowed_prefixes=_s3_prefixes(env.get("STUDIO_S3_ALLOWED_PREFIXES", "")),
            limits=limits_from_env(env),
        )
        if settings.max_body_bytes <= 0:
            raise ConfigError(f"STUDIO_MAX_BODY_BYTES: must be positive, got {settings.max_body_bytes}")
        if settings.s3_output:
            try:
                wire.parse_s3_uri(settings.s3_output, "STUDIO_S3_OUTPUT", need_key=False)
            except RequestError as exc:
                raise ConfigError(str(exc)) from None
        return settings


def _s3_prefixes(text: str) -> tuple[str, ...]:
    """STUDIO_S3_ALLOWED_PREFIXES: comma-separated s3://bucket[/prefix]; a bare bucket means the whole bucket."""
    prefixes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            bucket, key = wire.parse_s3_uri(item, "STUDIO_S3_ALLOWED_PREFIXES", need_key=False)
        except RequestError as exc:
            raise ConfigError(str(exc)) from None
        prefixes.append(f"s3://{bucket}/{key}")  # "s3://b/" so that s3://b-other/ does not match
    return tuple(prefixes)


def check_s3_locations(payload: Any, allowed: tuple[str, ...]) -> None:
    """Refuse s3:// inputs or outputs outside the allowed prefixes (the endpoint's role may reach more buckets
    than its callers should). RequestError names the field."""
    if not allowed or not isinstance(payload, dict):
        return
    items = list(payload.items())
    if isinstance(payload.get("parameters"), dict):
        items += list(payload["parameters"].items())
    for key, value in items:
        if isinstance(value, str) and value.startswith("s3://") and not value.startswith(allowed):
            raise RequestError(
                key, value, f"{value} is outside the S3 locations this endpoint may use (STUDIO_S3_ALLOWED_PREFIXES)"
            )


class LazyS3Client:
    """Creates the boto3 S3 client on first use (standard resolution: AWS_ENDPOINT_URL, credential chain)."""

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client("s3")
            return self._client


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


class Invoker:
    """decode -> generate -> encode, shared by the HTTP app and the SageMaker toolkit handler.

    One generation runs at a time (the engine's weights are shared); decoding and encoding run outside the lock.
    """

    def __init__(self, engine: Engine, settings: ServingSettings, s3_client: Any = None):
        self.engine = engine
        self.settings = settings
        self.s3_client = s3_client if s3_client is not None else LazyS3Client()
        self._lock = threading.Lock()

    def decode(self, payload: Any) -> wire.Invocation:
        check_s3_locations(payload, self.settings.s3_allowed_prefixes)
        return wire.decode_invocation(
            payload, allow_urls=self.settings.allow_urls, s3_client=self.s3_client, limits=self.settings.limits
        )

    def generate(self, invocation: wire.Invocation, cancel: CancelToken | None = None) -> GenerationResult:
        while not self._lock.acquire(timeout=0.2):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the client went away before the generation started")
        try:
            result = self.engine.generate(invocation.request, cancel=cancel)
        finally:
            self._lock.release()
        if not result.images:
            raise EngineError("the engine returned no images")
        return result

    def encode(self, invocation: wire.Invocation, result: GenerationResult) -> dict[str, Any]:
        uri = invocation.s3_output or self.settings.s3_output
        output = None
        if uri:
            client = self.s3_client() if callable(self.s3_client) else self.s3_client
            output = wire.S3Output(uri=uri, client=client)
        return wire.encode_result(result, invocation.dialect, output)


def error_status(exc: BaseException) -> int:
    """The HTTP status for an exception raised while serving a request."""
    if isinstance(exc, RequestError):
        return 400
    if isinstance(exc, EngineNotReady | GenerationCancelled):
        return 503
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RequestError):
        return {"error": str(exc), "field": exc.field}
    if isinstance(exc, EngineError):
        return {"error": str(exc)}
    return {"error": f"internal error: {type(exc).__name__}: {exc}"}


def _error(status: int, message: str, field_name: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field_name:
        body["field"] = field_name
    return JSONResponse(body, status_code=status)


class _LoadState:
    """What the background load thread reports (engines also keep their own status)."""

    def __init__(self) -> None:
        self.error: str | None = None


def create_app(
    engine: Engine,
    *,
    settings: ServingSettings | None = None,
    load: bool = True,
    s3_client: Any = None,
) -> FastAPI:
    """The FastAPI app serving `engine`. With `load`, engine.load() runs in a background thread at startup."""
    settings = settings or ServingSettings.from_env()
    invoker = Invoker(engine, settings, s3_client=s3_client)
    state = _LoadState()

    def load_model() -> None:
        started = time.perf_counter()
        try:
            engine.load()  # type: ignore[attr-defined]
        except Exception as exc:
            state.error = str(exc) or type(exc).__name__
            logger.error("model load failed; /ping will answer 503: %s", state.error)
        else:
            logger.info("model loaded in %.1fs; ready", time.perf_counter() - started)

    async def lifespan(_app: FastAPI):
        if load and hasattr(engine, "load"):
            threading.Thread(target=load_model, name="model-load", daemon=True).start()
        yield

    app = FastAPI(title="SD Studio serving", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.invoker = invoker

    def readiness() -> tuple[bool, dict[str, Any]]:
        status = engine.status()
        if status.loaded:
            return True, {"status": "ok", "model": status.model, "device": status.device}
        error = status.error or state.error
        if error:
            return False, {"status": "error", "error": f"model failed to load: {error}"}
        what = f"model {status.model}" if status.model else "the model"
        return False, {"status": "loading", "error": f"{what} is not loaded yet"}

    @app.get("/ping")
    def ping() -> JSONResponse:
        ready, body = readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        started = time.perf_counter()
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        try:
            body = await _read_body(request, limit, declared)
        except ClientDisconnect:
            logger.info("client disconnected while sending the body")
            return _error(400, "body: the client disconnected before sending the whole body", "body")
        if body is None:
            logger.warning("rejected a body over %d bytes (content-length %s)", limit, declared)
            return _error(413, f"body: larger than the {limit}-byte limit", "body")

        ready, info = readiness()
        if not ready:
            return _error(503, info["error"])
        content_type = request.headers.get("content-type")
        try:
            invocation = await run_in_threadpool(lambda: invoker.decode(parse_json_body(body, content_type)))
        except RequestError as exc:
            logger.info("bad request: %s", exc)
            return JSONResponse(error_body(exc), status_code=400)
        except Exception as exc:  # a decoder bug must still answer, and the server must keep serving
            logger.exception("unexpected error while decoding a request")
            return JSONResponse(error_body(exc), status_code=500)

        cancel = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        try:
            result = await run_in_threadpool(invoker.generate, invocation, cancel)
            payload = await run_in_threadpool(invoker.encode, invocation, result)
        except Exception as exc:
            if cancel.is_set():
                logger.info("client disconnected; generation stopped")
            elif isinstance(exc, RequestError | EngineError):
                logger.warning("invocation failed (%s): %s", error_status(exc), exc)
            else:
                logger.exception("unexpected error during an invocation")
            return JSONResponse(error_body(exc), status_code=error_status(exc))
        finally:
            watcher.cancel()
        req = invocation.request
        logger.info(
            "%s %dx%d steps=%d count=%d sampler=%s dialect=%s: %.2fs",
            req.task.value,
            req.width,
            req.height,
            req.steps,
            req.count,
            req.sampler,
            invocation.dialect.value,
            time.perf_counter() - started,
        )
        return JSONResponse(payload)

    return app


async def _read_body(request: Request, limit: int, declared: str | None) -> bytes | None:
    """The body, or None when it exceeds `limit` (checked on Content-Length and on the bytes that arrive).

    An oversized body is still drained (up to 4x the limit) so the client reads the 413 instead of a reset.
    """
    too_big = False
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            too_big = False
        if too_big and int(declared) > 4 * limit:
            return None
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            too_big = True
        if too_big:
            if received > 4 * limit:
                break
            continue
        chunks.append(chunk)
    return None if too_big else b"".join(chunks)


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (e.g. SageMaker's 60 s timeout), so the engine stops between steps."""
    try:
        while True:
            if await request.is_disconnected():
                cancel.set()
                return
            await asyncio.sleep(0.25)
    except asyncio.CancelledError:
        return


# ---- model discovery and the command line ---------------------------------------------------------------------
def model_in_dir(directory: Path) -> str | None:
    """The model inside a SageMaker-style model folder: None when it holds no files.

    A diffusers folder (model_index.json at the top or in one subfolder) or a single .safetensors/.ckpt file.
    Raises ConfigError when the folder has files but no recognisable model (never fall back to the demo then).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    entries = sorted(
        p for p in directory.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_MODEL_DIR_ENTRIES
    )
    if not entries:
        return None
    if (directory / "model_index.json").is_file():
        return str(directory)
    checkpoints = [p for p in entries if p.is_file() and p.suffix.lower() in _CHECKPOINT_SUFFIXES]
    if len(checkpoints) == 1:
        return str(checkpoints[0])
    if len(checkpoints) > 1:
        names = ", ".join(p.name for p in checkpoints)
        raise ConfigError(f"{directory} holds several checkpoints ({names}); set STUDIO_MODEL to the one to serve")
    folders = [p for p in entries if p.is_dir() and (p / "model_index.json").is_file()]
    if len(folders) == 1:
        return str(folders[0])
    shown = ", ".join(p.name for p in entries[:10])
    raise ConfigError(
        f"{directory} has files ({shown}) but no diffusers folder (model_index.json) or .safetensors/.ckpt file"
    )


def discover_model(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    """--model, else STUDIO_MODEL, else the model in SM_MODEL_DIR (or /opt/ml/model), else the demo model."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get("STUDIO_MODEL", "").strip():
        return env["STUDIO_MODEL"].strip()
    model_dir = Path(env["SM_MODEL_DIR"]) if env.get("SM_MODEL_DIR", "").strip() else SAGEMAKER_MODEL_DIR
    found = model_in_dir(model_dir)
    if found:
        return found
    logger.warning("no --model, STUDIO_MODEL or files in %s: serving the built-in demo model", model_dir)
    return "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", description="SD Studio serving app (SageMaker container contract)")
    parser.add_argument("--model", help="diffusers folder, .safetensors/.ckpt, hub id or 'demo' (env STUDIO_MODEL)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080, SageMaker's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; a leading "serve" (SageMaker's `docker run IMAGE serve`) is dropped."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        args = args[1:]
    return build_parser().parse_args(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # botocore/urllib3 debug lines carry signed headers (access key id, session token): never below INFO.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        settings = ServingSettings.from_env()
        model = discover_model(args.model)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    import uvicorn

    from studio.local_engine import LocalEngine

    engine = LocalEngine(model, device=args.device, limits=settings.limits)
    app = create_app(engine, settings=settings)
    logger.info("serving %s on %s:%d", model, args.host, args.port)
    # keep-alive beyond SageMaker's 60 s invocation timeout, so its connections are not dropped between calls
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=75)
    return 0


def serve_main() -> None:
    """Console-script entry point (`serve`)."""
    sys.exit(main())


if __name__ == "__main__":
    serve_main()
