"""The serving app on Ray Serve: one deployment wrapping studio.serving.app with `@serve.ingress`, scaled by Serve.

Each replica builds its engine once with studio.engines.build (the model picked by the serving rule,
studio.models.serving_model) and loads it in its constructor, so Serve sends it traffic only once the model is in
memory; `check_health` reports unhealthy whenever the engine is not loaded (health = model loaded), and `/ping`
answers as in the plain serving app. Every response names its replica in the `X-Studio-Replica` header.

Run it:
    python -m studio.serving.ray --model M --host H --port P --min-replicas N --max-replicas M
        (a local Ray when RAY_ADDRESS is unset, else joins that cluster)
    serve run studio.serving.ray:build_app model=M min_replicas=0 max_replicas=4
        (Ray's application-builder arguments: the flags' names without dashes)
    deploy/ray/serve.yaml (a Serve config) and deploy/ray/rayservice.yaml (KubeRay RayService, GPU node group)

Scaling: `autoscaling_config` {min_replicas (0 allowed: the first request starts one), max_replicas,
target_ongoing_requests}; `ray_actor_options` reserve one GPU per replica on a GPU cluster (or --device cuda), else
`replica_cpus` CPUs.

Stopping replicas: one Serve stops (scale-down, redeploy) finishes its running requests first
(graceful_shutdown_timeout_s). One that dies mid-request (killed, OOM, node lost) would leave Ray's proxy answering a
bare "500 Internal Server Error"; with the proxy middleware (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
studio.serving.ray:proxy_middlewares, set by the CLI for its local Ray and in deploy/ray) such a request is replayed
on another replica, and only if that is lost too does the client get a 503 with a JSON message saying so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from studio.config import (
    DEFAULT_MAX_BODY_BYTES,
    ConfigError,
    Device,
    RaySettings,
    load_ray_settings,
    ray_settings_from_args,
)
from studio.engine import ModelLoadError

if TYPE_CHECKING:
    from ray.serve import Application

logger = logging.getLogger("studio.serving.ray")

APP_NAME = "sd-studio"
DEPLOYMENT_NAME = "StudioServing"
REPLICA_HEADER = "X-Studio-Replica"
# A generation may take a while on a CPU: a replica Serve stops (scale-down, redeploy) finishes it first.
GRACEFUL_SHUTDOWN_S = 120.0
HEALTH_CHECK_PERIOD_S = 10.0
CONSTRUCTOR_RETRIES = 3  # a model that fails to load fails the deployment after 3 tries, not 20


# ---- what Serve is asked for ------------------------------------------------------------------------------------
def uses_gpu(settings: RaySettings, cluster_gpus: float | None) -> bool:
    """A replica reserves a GPU with --device cuda, or with --device auto on a cluster that has GPUs."""
    device = settings.serving.engine.device
    if device is Device.CPU:
        return False
    return device is Device.CUDA or bool(cluster_gpus)


def actor_options(settings: RaySettings, cluster_gpus: float | None = None) -> dict[str, Any]:
    """`ray_actor_options`: num_gpus 1 on a GPU (plus a CPU for the Python side), else `replica_cpus` CPUs."""
    if settings.replica_gpus is not None:
        gpus = settings.replica_gpus
    else:
        gpus = 1.0 if uses_gpu(settings, cluster_gpus) else 0.0
    if gpus:
        return {"num_gpus": gpus, "num_cpus": 1.0}
    return {"num_cpus": settings.replica_cpus}


def autoscaling_config(settings: RaySettings) -> dict[str, Any]:
    return {
        "min_replicas": settings.min_replicas,
        "max_replicas": settings.max_replicas,
        "target_ongoing_requests": settings.target_ongoing_requests,
    }


def deployment_options(settings: RaySettings, cluster_gpus: float | None = None) -> dict[str, Any]:
    """Everything `Deployment.options()` gets: replicas, resources, queueing, health and shutdown."""
    return {
        "autoscaling_config": autoscaling_config(settings),
        "ray_actor_options": actor_options(settings, cluster_gpus),
        "max_ongoing_requests": settings.max_ongoing_requests,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
    }


def ray_init_options(settings: RaySettings, **local: Any) -> dict[str, Any]:
    """`ray.init` arguments: join the cluster at RAY_ADDRESS, else start a local Ray (without the dashboard, plus
    `local` options such as num_cpus or object_store_memory). See prepare_local_ray for the environment."""
    if settings.address:
        return {"address": settings.address}
    return {"include_dashboard": False, **local}


def prepare_local_ray() -> bool:
    """Set the environment a local Ray (one machine) should start with; call it before `import ray`.

    LOCAL_RAY_ENVIRONMENT keeps every Ray process on 127.0.0.1 (by default Ray binds its GCS, raylet and workers to
    the machine's outward address, even when told 127.0.0.1; the switch is read when ray is imported) and enables
    the proxy middleware. Returns False when ray was imported already (the address switch then comes too late for
    this process: Ray uses the outward address, still on this machine)."""
    for name, value in LOCAL_RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return "ray" not in sys.modules


# ---- the deployment ----------------------------------------------------------------------------------------------
class ReplicaHeader:
    """ASGI middleware: every HTTP response says which replica answered (`X-Studio-Replica`)."""

    def __init__(self, app: Any, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


# Ray's HTTP proxy takes extra middlewares from this import path (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, read by
# the proxy actor: set it on every node of a cluster; the CLI sets it for the local Ray it starts).
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "studio.serving.ray:proxy_middlewares"
# What a local Ray starts with (prepare_local_ray): loopback only, and the proxy middleware.
LOCAL_RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", PROXY_CALLBACK_VARIABLE: PROXY_CALLBACK}
RETRY_PATHS = ("/invocations", "/ping")
RETRY_BODY_LIMIT = 4 * DEFAULT_MAX_BODY_BYTES  # bigger bodies are streamed through once (the app refuses them anyway)
LOST_MESSAGE = (
    "the replica handling this request stopped before answering (it was killed or crashed) and the retry on another "
    "replica failed too; send the request again"
)


def proxy_middlewares() -> list[Any]:
    """The proxy callback: Ray's proxy runs requests through RetryLostReplica."""
    from starlette.middleware import Middleware

    return [Middleware(RetryLostReplica)]


class RetryLostReplica:
    """Proxy middleware: a request whose replica died before answering is sent once more.

    When a replica actor dies mid-request, Ray's proxy returns without any response and uvicorn answers a bare
    "500 Internal Server Error". Generation is deterministic for a given body (seed), so the request is replayed
    (Serve's router has dropped the dead replica by then). If that attempt is lost too, the client gets a 503 with a
    JSON message instead of the bare 500. Answers from the app itself (any status) pass through untouched."""

    def __init__(self, app: Any, attempts: int = 2):
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in RETRY_PATHS:
            await self.app(scope, receive, send)
            return
        chunks, complete = await _buffer_body(receive)
        if not complete:  # too big to keep for a replay: one attempt, the body streamed through
            await self.app(scope, _replay(chunks, receive, more=True), send)
            return
        for attempt in range(1, self.attempts + 1):
            if await self._attempt(scope, chunks, receive, send):
                return
            logger.warning("%s %s: its replica stopped before answering (attempt %d)", scope["method"], scope["path"],
                           attempt)
        await _send_json(send, 503, {"error": LOST_MESSAGE})

    async def _attempt(self, scope: Any, chunks: list[bytes], receive: Any, send: Any) -> bool:
        """One pass through the proxy; False when it ended without starting a response (the replica was lost)."""
        started = False

        async def forward(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _replay(chunks, receive, more=False), forward)
        except Exception:
            if started:
                raise
            logger.exception("the proxy failed before answering")
            return False
        return started


async def _buffer_body(receive: Any) -> tuple[list[bytes], bool]:
    """The request body's chunks, and whether all of it fit under RETRY_BODY_LIMIT."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return chunks, True
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False):
            return chunks, True
        if size > RETRY_BODY_LIMIT:
            return chunks, False


def _replay(chunks: list[bytes], receive: Any, *, more: bool) -> Any:
    """A `receive` that hands out the buffered chunks, then the client's own messages (its disconnect, or the rest of
    a body that was too big to buffer)."""
    pending = list(chunks)

    async def replayed() -> dict[str, Any]:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending) or more}
        return await receive()

    return replayed


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def __getattr__(name: str) -> Any:
    """`studio.serving.ray.StudioServing`, the Serve deployment, imported on first use (it imports Ray)."""
    if name == "StudioServing":
        from studio.serving.ray_deployment import StudioServing

        return StudioServing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def application(settings: RaySettings, cluster_gpus: float | None = None) -> Application:
    """The Serve application for `settings` (bind it with serve.run, or return it from a builder)."""
    from studio.serving.ray_deployment import StudioServing

    return StudioServing.options(**deployment_options(settings, cluster_gpus)).bind(settings)


def _cluster_gpus() -> float | None:
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else None


def build_app(args: dict[str, str]) -> Application:
    """Ray Serve application builder: `serve run studio.serving.ray:build_app model=M min_replicas=0 ...`, or a Serve
    config's `import_path` with `args:` (deploy/ray/serve.yaml). Arguments are the CLI flags' names without dashes
    (model, device, engine, min_replicas, max_replicas, target_ongoing_requests, ...); STUDIO_* variables apply too.
    `device: auto` reserves a GPU when the cluster reports one (known only once Ray is up: set `device: cuda` when
    the builder runs before `ray.init`, as under `serve run`)."""
    return application(ray_settings_from_args(_plain(args)), _cluster_gpus())


def _plain(args: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Builder arguments as a dict (Serve passes a dict; a pydantic model if a builder annotated one)."""
    if hasattr(args, "model_dump"):
        return dict(args.model_dump())
    return dict(args or {})


# ---- python -m studio.serving.ray ---------------------------------------------------------------------------------
def check_model(settings: RaySettings) -> None:
    """For a local Ray (replicas share this machine's files): the model must resolve before Ray starts. Raises
    ModelLoadError naming it (a joined cluster's nodes may hold files this machine does not: checked there)."""
    from studio.models import resolve_model
    from studio.serving.invoker import engine_settings

    chosen = engine_settings(settings.serving)
    resolve_model(chosen.model, chosen.models_dir)


def serve_until_stopped(settings: RaySettings, **local: Any) -> int:
    """Start (or join) Ray, run the application behind Serve's HTTP proxy at settings.host:port and block until
    Ctrl-C / SIGTERM. A local Ray is shut down on exit; on a joined cluster only this application is deleted."""
    if not settings.address:
        prepare_local_ray()
    import ray
    from ray import serve

    started = time.perf_counter()
    ray.init(**ray_init_options(settings, **local))
    logger.info("Ray %s in %.1fs", "joined" if settings.address else "started locally", time.perf_counter() - started)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(application(settings, _cluster_gpus()), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info(
            "serving on http://%s:%d (/ping, /invocations), %d-%d replicas, %.1fs after start",
            settings.host, settings.port, settings.min_replicas, settings.max_replicas, time.perf_counter() - started,
        )
        _block()
    except KeyboardInterrupt:
        logger.info("stopping")
    except RuntimeError as exc:  # e.g. every replica failed to load the model
        logger.error("deployment failed: %s%s", exc, _failure_reason())
        return 1
    finally:
        _stop(settings)
    return 0


def _failure_reason() -> str:
    """The replicas' own error (the last line of Serve's deployment message), to show beside Serve's summary."""
    from ray import serve

    try:
        status = serve.status().applications.get(APP_NAME)
        messages = [d.message for d in status.deployments.values() if d.message] if status else []
    except Exception:  # the reason is a courtesy: never hide the failure itself
        return ""
    lines = [line.strip() for message in messages for line in message.splitlines() if line.strip()]
    return f" ({lines[-1]})" if lines else ""


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _block() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, a container stop: clean up as for Ctrl-C
    while True:
        time.sleep(3600)


def _stop(settings: RaySettings) -> None:
    import ray
    from ray import serve

    try:
        if settings.address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    finally:
        if not settings.address:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, then serve until stopped; 2 for a configuration error, 1 when the deployment fails."""
    from studio.serving.__main__ import configure_logging

    configure_logging("info")
    try:
        settings = load_ray_settings(list(sys.argv[1:] if argv is None else argv))
        if not settings.address:
            check_model(settings)
    except (ConfigError, ModelLoadError) as exc:
        logger.error("%s", exc)
        return 2
    return serve_until_stopped(settings)


if __name__ == "__main__":
    sys.exit(main())
