"""The container app SageMaker (or any host) runs: GET /ping and POST /invocations on :8080.

`/invocations` is the Invoker's decode -> engine.generate -> encode, nothing else; the engine is the same one the
studio runs (built by studio.engines.build), so a seed gives the same image locally and on an endpoint.
`/ping` answers 200 only once the model is loaded (it loads in a background thread at startup), 503 while
loading or after a failed load. Errors are JSON {"error": ...}: 400 for bad input (naming the field),
413 for an oversized body, 503 when not ready, 500 with the engine's message. Never 200 without images.
The same app also speaks AUTOMATIC1111's API (`/sdapi/v1`, studio.serving.sdapi) on the same engine, and publishes
its OpenAPI description at /openapi.json.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from studio.config import ServingSettings, load_serving_settings
from studio.engine import Engine, EngineError
from studio.serving.invoker import Invoker, error_body, error_status, parse_json_body
from studio.serving.schema import invocation_openapi
from studio.types import RequestError
from studio.wire.codec import Invocation

logger = logging.getLogger(__name__)

router = APIRouter()


@dataclass
class ServingState:
    """What the routes need (kept on app.state.serving): the invoker, the body limit and the load outcome."""

    invoker: Invoker
    max_body_bytes: int
    load_on_start: bool
    load_error: str | None = None  # what the background load reported (engines also keep their own status)

    @property
    def engine(self) -> Engine:
        return self.invoker.engine


def create_app(
    engine: Engine,
    *,
    settings: ServingSettings | None = None,
    load: bool = True,
    s3_client: Any = None,
) -> FastAPI:
    """The FastAPI app serving `engine` (settings default to the STUDIO_* variables). With `load`,
    engine.load() runs in a background thread at startup. `s3_client`: a boto3 S3 client or factory."""
    settings = settings or load_serving_settings([])
    invoker = Invoker(engine, settings, s3_client=s3_client)
    app = FastAPI(title="SD Studio serving", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.serving = ServingState(invoker=invoker, max_body_bytes=settings.max_body_bytes, load_on_start=load)
    app.state.invoker = invoker
    app.include_router(router)
    app.include_router(_sdapi_router(engine, settings))
    app.openapi = _openapi(app, settings)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, settings: ServingSettings) -> Any:
    """/openapi.json with the /invocations request body described for this app's limits (the route itself reads
    the raw body: the codec decodes it)."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema["paths"]["/invocations"]["post"]["requestBody"] = invocation_openapi(settings.limits)
            app.openapi_schema = schema
        return app.openapi_schema

    return document


def _sdapi_router(engine: Engine, settings: ServingSettings) -> APIRouter:
    """The A1111 API on this engine (its own queue for API jobs; no outputs folder here)."""
    from studio.jobs import JobTracker
    from studio.sdapi import EngineHost, SdapiService
    from studio.serving.sdapi import build_router

    jobs = JobTracker(preview_every=settings.engine.live_preview_every)
    host = EngineHost(engine, settings.limits, settings.engine.models_dir, jobs=jobs)
    return build_router(SdapiService(host), max_body_bytes=settings.max_body_bytes)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServingState = app.state.serving
    if state.load_on_start:
        threading.Thread(target=_load_model, args=(state,), name="model-load", daemon=True).start()
    yield


def _load_model(state: ServingState) -> None:
    started = time.perf_counter()
    try:
        state.engine.load()
    except Exception as exc:
        state.load_error = str(exc) or type(exc).__name__
        logger.error("model load failed; /ping will answer 503: %s", state.load_error)
    else:
        logger.info("model loaded in %.1fs; ready", time.perf_counter() - started)


def readiness(state: ServingState) -> tuple[bool, dict[str, Any]]:
    """(ready, the /ping body): ok with the model and device, else loading or the load error."""
    status = state.engine.status()
    if status.loaded:
        return True, {"status": "ok", "model": status.model, "device": status.device}
    error = status.error or state.load_error
    if error:
        return False, {"status": "error", "error": f"model failed to load: {error}"}
    what = f"model {status.model}" if status.model else "the model"
    return False, {"status": "loading", "error": f"{what} is not loaded yet"}


@router.get("/ping")
def ping(request: Request) -> JSONResponse:
    ready, body = readiness(request.app.state.serving)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.post("/invocations")
async def invocations(request: Request) -> JSONResponse:
    state: ServingState = request.app.state.serving
    started = time.perf_counter()
    limit = state.max_body_bytes
    declared = request.headers.get("content-length")
    try:
        body = await _read_body(request, limit, declared)
    except ClientDisconnect:
        logger.info("client disconnected while sending the body")
        return _error(400, "body: the client disconnected before sending the whole body", "body")
    if body is None:
        logger.warning("rejected a body over %d bytes (content-length %s)", limit, declared)
        return _error(413, f"body: larger than the {limit}-byte limit", "body")

    ready, info = readiness(state)
    if not ready:
        return _error(503, info["error"])
    content_type = request.headers.get("content-type")
    try:
        invocation = await run_in_threadpool(lambda: state.invoker.decode(parse_json_body(body, content_type)))
    except RequestError as exc:
        logger.info("bad request: %s", exc)
        return JSONResponse(error_body(exc), status_code=400)
    except Exception as exc:  # a decoder bug must still answer, and the server must keep serving
        logger.exception("unexpected error while decoding a request")
        return JSONResponse(error_body(exc), status_code=500)

    cancel = threading.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    try:
        result = await run_in_threadpool(state.invoker.generate, invocation, cancel)
        payload = await run_in_threadpool(state.invoker.encode, invocation, result)
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
    _log_invocation(invocation, time.perf_counter() - started)
    return JSONResponse(payload)


def _log_invocation(invocation: Invocation, seconds: float) -> None:
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
        seconds,
    )


def _error(status: int, message: str, field_name: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field_name:
        body["field"] = field_name
    return JSONResponse(body, status_code=status)


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
