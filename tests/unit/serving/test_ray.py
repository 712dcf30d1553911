"""studio.serving.ray without a running Ray: what Serve is asked for (replicas, resources, health), the builder's
arguments (as `serve run` and a Serve config pass them), deploy/ray's manifests, and the two ASGI middlewares."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from studio.serving import ray as studio_ray

studio_ray.prepare_local_ray()  # harmless here (no Ray is started); keeps a later local Ray in this process on loopback
pytest.importorskip("ray")
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402
from ray.serve.scripts import convert_args_to_dict  # noqa: E402

from studio.config import ConfigError, RaySettings, load_ray_settings, ray_settings_from_args  # noqa: E402
from studio.testing.fakes import FakeEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy" / "ray"


def settings(*argv: str) -> RaySettings:
    return load_ray_settings(list(argv), environ={})


# ---- flags and builder arguments ------------------------------------------------------------------------------------
def test_cli_flags():
    s = settings("--model", "demo", "--host", "0.0.0.0", "--port", "9000", "--min-replicas", "0", "--max-replicas", "3")
    assert (s.host, s.port, s.min_replicas, s.max_replicas, s.address) == ("0.0.0.0", 9000, 0, 3, None)
    assert s.serving.engine.model == "demo"
    assert settings().max_replicas == 1 and settings("--min-replicas", "3").max_replicas == 3


def test_ray_address_joins_a_cluster():
    s = load_ray_settings([], environ={"RAY_ADDRESS": "ray://head:10001"})
    assert studio_ray.ray_init_options(s, num_cpus=2) == {"address": "ray://head:10001"}
    local = studio_ray.ray_init_options(settings(), num_cpus=2, object_store_memory=1)
    assert local == {"include_dashboard": False, "num_cpus": 2, "object_store_memory": 1}


def test_a_local_ray_is_prepared_for_loopback_and_the_proxy_middleware(monkeypatch):
    for name in studio_ray.LOCAL_RAY_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    studio_ray.prepare_local_ray()
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # Ray then binds everything to 127.0.0.1
    assert os.environ[studio_ray.PROXY_CALLBACK_VARIABLE] == "studio.serving.ray:proxy_middlewares"
    module, _, function = studio_ray.PROXY_CALLBACK.partition(":")
    assert getattr(__import__(module, fromlist=[function]), function) is studio_ray.proxy_middlewares


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--min-replicas", "-1"], "min_replicas (--min-replicas): must be 0 or more, got -1"),
        (["--min-replicas", "2", "--max-replicas", "1"], "max_replicas (--max-replicas)"),
        (["--max-replicas", "0"], "max_replicas (--max-replicas)"),
        (["--target-ongoing-requests", "0"], "target_ongoing_requests: must be above 0"),
        (["--target-ongoing-requests", "many"], "--target-ongoing-requests: expected a number"),
        (["--replica-cpus", "-1"], "replica_cpus"),
        (["--port", "0"], "--port"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(*argv)


def test_builder_arguments_as_serve_run_passes_them():
    """`serve run studio.serving.ray:build_app model=demo min_replicas=0 ...`: Ray's own builder call, string values."""
    args = convert_args_to_dict(("model=demo", "device=cpu", "min_replicas=0", "max_replicas=3", "replica_cpus=0.5"))
    app = call_user_app_builder_with_args_if_necessary(studio_ray.build_app, args)
    deployment = app._bound_deployment
    assert deployment.name == studio_ray.DEPLOYMENT_NAME
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (0, 3, 1.0)
    assert deployment.ray_actor_options == {"num_cpus": 0.5}
    assert deployment._deployment_config.max_ongoing_requests == 4
    bound: RaySettings = app._bound_deployment.init_args[0]
    assert bound.serving.engine.model == "demo" and bound.min_replicas == 0


def test_builder_refuses_unknown_or_bad_arguments():
    with pytest.raises(ConfigError, match="replicas: not a studio.serving.ray argument"):
        studio_ray.build_app({"replicas": "2"})
    with pytest.raises(ConfigError, match="min_replicas: expected a whole number"):
        studio_ray.build_app({"min_replicas": "two"})


# ---- resources --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "cluster_gpus", "expected"),
    [
        (["--device", "cpu"], 8.0, {"num_cpus": 1.0}),
        (["--device", "cpu", "--replica-cpus", "3"], None, {"num_cpus": 3.0}),
        (["--device", "cuda"], None, {"num_gpus": 1.0, "num_cpus": 1.0}),
        ([], 4.0, {"num_gpus": 1.0, "num_cpus": 1.0}),  # auto on a GPU cluster
        ([], 0.0, {"num_cpus": 1.0}),  # auto on a CPU cluster
        ([], None, {"num_cpus": 1.0}),  # auto, cluster unknown (builder before ray.init): CPUs
        (["--replica-gpus", "0.5"], None, {"num_gpus": 0.5, "num_cpus": 1.0}),  # two replicas share a GPU
    ],
)
def test_actor_options_gpu_or_cpus(argv, cluster_gpus, expected):
    assert studio_ray.actor_options(settings(*argv), cluster_gpus) == expected


def test_deployment_options():
    options = studio_ray.deployment_options(settings("--min-replicas", "0", "--max-replicas", "5"))
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 1.0}
    assert options["graceful_shutdown_timeout_s"] >= 60  # a running generation finishes before a replica stops
    assert options["max_constructor_retry_count"] == studio_ray.CONSTRUCTOR_RETRIES


# ---- health -----------------------------------------------------------------------------------------------------
def test_health_is_model_loaded():
    """The deployment's check_health on a stand-in replica (its constructor would build and load a real engine)."""
    check_health = studio_ray.StudioServing.func_or_class.check_health
    engine = FakeEngine()
    replica = SimpleNamespace(engine=engine, replica="r1")
    with pytest.raises(RuntimeError, match="replica r1: model not loaded"):
        check_health(replica)
    engine.load()
    check_health(replica)


# ---- deploy/ray --------------------------------------------------------------------------------------------------
def test_serve_yaml_is_a_valid_serve_config_whose_args_build():
    config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "studio.serving.ray:build_app"
    built = ray_settings_from_args(app.args, environ={})
    assert built.min_replicas == 0 and built.max_replicas >= 1 and built.serving.engine.device.value == "cuda"
    assert studio_ray.actor_options(built)["num_gpus"] == 1


def test_rayservice_manifest():
    manifest = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = ServeDeploySchema.model_validate(serve_config).applications
    assert app.args == yaml.safe_load((DEPLOY / "serve.yaml").read_text())["applications"][0]["args"]
    cluster = manifest["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    (gpu,) = cluster["workerGroupSpecs"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for spec in (cluster["headGroupSpec"]["template"]["spec"], gpu["template"]["spec"]):
        env = {item["name"]: item["value"] for item in spec["containers"][0]["env"]}
        assert env[studio_ray.PROXY_CALLBACK_VARIABLE] == studio_ray.PROXY_CALLBACK
    assert "Inferentia" in (DEPLOY / "rayservice.yaml").read_text()


# ---- the middlewares -------------------------------------------------------------------------------------------
def run_asgi(app, path: str = "/invocations", body: bytes = b'{"prompt": "x"}', chunk: int | None = None):
    """Drive an ASGI app with one HTTP request; return (status, headers, body) as the client sees them."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    # In a thread of its own: asyncio.run refuses to start inside a running loop, and the e2e tests' Playwright
    # browser keeps one running in the main thread for the rest of the session.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return None, {}, b""
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start.get("headers", [])), payload


class ProxyStandIn:
    """Ray's proxy as seen by its middlewares: each call either loses the replica (returns without a response) or
    answers with what the app would. Records the bodies it received."""

    def __init__(self, outcomes: list[int | None]):
        self.outcomes = outcomes
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        status = self.outcomes.pop(0)
        if status is None:
            return  # the replica died: no response at all
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-studio-replica", b"r2")]})
        await send({"type": "http.response.body", "body": b'{"images": []}'})


def test_a_lost_replica_is_replayed_once():
    proxy = ProxyStandIn([None, 200])
    status, headers, _ = run_asgi(studio_ray.RetryLostReplica(proxy), body=b'{"prompt": "a"}', chunk=4)
    assert status == 200 and headers[b"x-studio-replica"] == b"r2"
    assert proxy.bodies == [b'{"prompt": "a"}'] * 2  # the same body both times


def test_lost_twice_is_a_clear_503():
    status, _, body = run_asgi(studio_ray.RetryLostReplica(ProxyStandIn([None, None])))
    assert status == 503 and json.loads(body) == {"error": studio_ray.LOST_MESSAGE}


def test_answers_from_the_app_pass_through_without_a_retry():
    for answer in (200, 400, 500):
        proxy = ProxyStandIn([answer])
        status, _, _ = run_asgi(studio_ray.RetryLostReplica(proxy))
        assert status == answer and len(proxy.bodies) == 1


def test_other_paths_and_huge_bodies_are_not_buffered(monkeypatch):
    proxy = ProxyStandIn([None])
    app = studio_ray.RetryLostReplica(proxy)
    assert run_asgi(app, path="/docs")[0] is None  # passed straight through: no replay, no 503 of ours
    assert len(proxy.bodies) == 1
    monkeypatch.setattr(studio_ray, "RETRY_BODY_LIMIT", 8)
    proxy = ProxyStandIn([200])
    status, _, _ = run_asgi(studio_ray.RetryLostReplica(proxy), body=b"x" * 40, chunk=5)
    assert status == 200 and proxy.bodies == [b"x" * 40]  # streamed through once, intact


def test_proxy_callback_returns_starlette_middlewares():
    (middleware,) = studio_ray.proxy_middlewares()
    assert middleware.cls is studio_ray.RetryLostReplica


def test_replica_header_names_the_replica():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    status, headers, body = run_asgi(studio_ray.ReplicaHeader(app, replica="abc123"))
    assert (status, body) == (200, b"ok")
    assert headers[b"x-studio-replica"] == b"abc123" and headers[b"content-type"] == b"text/plain"
