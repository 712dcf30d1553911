"""studio.serving.ray on a real local Ray (num_cpus=2, a 200 MB object store, no dashboard) with the demo model.

- `python -m studio.serving.ray` starts its own local Ray, scales from zero replicas on the first request, and cleans
  up on SIGTERM;
- two replicas, built the way `serve run studio.serving.ray:build_app key=value ...` builds them (Ray's own builder
  call with string arguments), serve /ping and /invocations, and concurrent requests are answered by both
  (X-Studio-Replica);
- the same seed gives the same pixels as the plain serving app;
- the studio's `--backend http --url` drives it (gradio studio -> RemoteEngine -> Serve's proxy -> a replica);
- a replica killed mid-load loses no request: its requests are replayed on the other replica (the proxy middleware),
  and Serve starts a replacement; a replica Serve stops on purpose (scale-down) finishes its requests first.
Together about 2 minutes on 2 cores (Ray's start-up and two replicas importing torch dominate).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from studio.serving import ray as studio_ray

LOOPBACK_ONLY = studio_ray.prepare_local_ray()  # before Ray is imported: every Ray process on 127.0.0.1
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from studio import engines  # noqa: E402
from studio.config import EngineSettings, RaySettings, ServingSettings  # noqa: E402
from studio.serving.app import create_app  # noqa: E402
from studio.testing.servers import (  # noqa: E402
    REPO,
    SINGLE_THREAD_ENV,
    UvicornThread,
    free_port,
    single_threaded_torch,
    wait_for,
)

pytestmark = pytest.mark.slow

OBJECT_STORE_BYTES = 200 * 1024 * 1024
SMALL = {"prompt": "a lighthouse on a cliff", "width": 64, "height": 64, "steps": 2}
# `serve run studio.serving.ray:build_app model=demo device=cpu min_replicas=2 ...`: what Ray hands the builder.
SERVE_RUN_ARGS = ("model=demo", "device=cpu", "min_replicas=2", "max_replicas=2", "replica_cpus=0.5")


def pixels(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"))


def invoke(url: str, payload: dict, timeout: float = 120) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=timeout)


# ---- the CLI, with its own local Ray -----------------------------------------------------------------------------
def test_cli_starts_a_local_ray_scales_from_zero_and_stops_cleanly(tmp_path):
    """Runs first, before this module's in-process Ray exists (two local Rays at once would be slow on 2 cores)."""
    port = free_port()
    log = tmp_path / "ray-cli.log"
    env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    args = ["--model", "demo", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
            "--min-replicas", "0", "--max-replicas", "1", "--replica-cpus", "0.5"]
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "studio.serving.ray", *args], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        # Serve's proxy answers once the app is deployed with zero replicas; the first /ping starts one.
        ping = wait_for(f"http://127.0.0.1:{port}/ping", timeout=150, alive=lambda: process.poll() is None)
        cold = time.monotonic() - started
        assert ping.json()["status"] == "ok" and ping.headers["X-Studio-Replica"]
        body = invoke(f"http://127.0.0.1:{port}", {**SMALL, "seed": 3}).json()
        assert body["seeds"] == [3] and len(body["images"]) == 1
        print(f"CLI: /ping 200 from zero replicas {cold:.1f}s after start")
    except Exception:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    assert "started locally" in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--min-replicas", "3", "--max-replicas", "2"], "max_replicas (--max-replicas)"),
        (["--model", "/nonexistent/model.safetensors"], "model '/nonexistent/model.safetensors' not found"),
    ],
    ids=["replicas", "model"],
)
def test_cli_refuses_bad_flags_and_models_before_starting_ray(argv, message):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "studio.serving.ray", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Started a local Ray" not in done.stderr and "Traceback" not in done.stderr


# ---- two replicas in this process's local Ray ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """A local Ray with Serve's proxy on a free port and the application built as `serve run` builds it."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.scripts import convert_args_to_dict

    started = time.perf_counter()
    options = studio_ray.ray_init_options(
        RaySettings(), num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False
    )
    ray.init(**options)  # its proxy inherits the middleware setting from prepare_local_ray (as the CLI's does)
    try:
        if LOOPBACK_ONLY:
            assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        init_seconds = time.perf_counter() - started
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = call_user_app_builder_with_args_if_necessary(studio_ray.build_app, convert_args_to_dict(SERVE_RUN_ARGS))
        serve.run(app, name=studio_ray.APP_NAME, route_prefix="/")
        print(f"Ray init {init_seconds:.1f}s, two replicas ready {time.perf_counter() - started:.1f}s after start")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_ping_and_invocations(cluster):
    ping = requests.get(f"{cluster}/ping", timeout=30)
    assert ping.status_code == 200 and ping.json() == {"status": "ok", "model": "demo", "device": "cpu"}
    assert ping.headers["X-Studio-Replica"]
    response = invoke(cluster, {**SMALL, "seed": 11, "count": 2})
    body = response.json()
    assert response.status_code == 200 and body["seeds"] == [11, 12] and len(body["images"]) == 2
    assert response.headers["X-Studio-Replica"]
    # The serving app's error mapping is intact behind Serve: a 400 naming the field, from a replica.
    bad = invoke(cluster, {**SMALL, "width": 100})
    assert bad.status_code == 400 and bad.json()["field"] == "width" and bad.headers["X-Studio-Replica"]
    status = serve.status().applications[studio_ray.APP_NAME].deployments[studio_ray.DEPLOYMENT_NAME]
    assert status.replica_states == {"RUNNING": 2}


def test_concurrent_requests_are_answered_by_both_replicas(cluster):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda seed: invoke(cluster, {**SMALL, "seed": seed}), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.headers["X-Studio-Replica"] for r in responses}) == 2


def test_same_seed_same_pixels_as_the_plain_serving_app(cluster):
    payload = {**SMALL, "seed": 1234, "count": 2, "sampler": "DPM++ 2M", "negative_prompt": "fog"}
    engine = engines.build(EngineSettings(model="demo", device="cpu"))
    with single_threaded_torch(), UvicornThread(create_app(engine, settings=ServingSettings())) as plain:
        wait_for(f"{plain.url}/ping", timeout=120)
        expected = invoke(plain.url, payload).json()
    got = invoke(cluster, payload).json()
    assert got["seeds"] == expected["seeds"] == [1234, 1235]
    for ours, theirs in zip(got["images"], expected["images"], strict=True):
        assert np.array_equal(pixels(ours), pixels(theirs))


def test_the_studio_drives_it_with_backend_http(cluster):
    from gradio_client import Client

    from studio.testing.browser import start_studio

    with tempfile.TemporaryDirectory() as root:
        studio = start_studio(Path(root), "--backend", "http", "--url", cluster)
        try:
            client = Client(studio.url, verbose=False)
            _, info = client.predict(prompt="a harbour", seed=77, width=64, height=64, steps=2, api_name="/txt2img")
            client.close()
            with Image.open(info["paths"][0]) as saved:  # what the studio saved from the replica's answer
                shown = np.asarray(saved.convert("RGB"))
        finally:
            studio.close()
    assert info["backend"] == "http" and info["seeds"] == [77] and len(info["paths"]) == 1
    direct = invoke(cluster, {"prompt": "a harbour", "seed": 77, "width": 64, "height": 64, "steps": 2}).json()
    assert np.array_equal(shown, pixels(direct["images"][0]))


def test_a_replica_killed_mid_load_loses_no_request(cluster):
    """8 requests of ~0.5-1 s each are spread over both replicas; one replica is killed ~1 s in. Every request
    still gets its images (those on the dead replica are replayed on the other), and Serve replaces the replica."""
    replicas = _replica_actors()
    assert len(replicas) == 2
    payload = {"prompt": "a storm", "width": 256, "height": 256, "steps": 8}
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(invoke, cluster, {**payload, "seed": seed}) for seed in range(8)]
        time.sleep(1.0)
        victim = replicas[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        responses = [future.result() for future in futures]
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 8, [(r.status_code, r.text[:200]) for r in responses]
    assert [r.json()["seeds"] for r in responses] == [[seed] for seed in range(8)]
    # Serve starts a replacement; both replicas answer again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = _replica_actors()
        if len(names) == 2 and victim not in names:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no replacement replica: {_replica_actors()}")
    wait_for(f"{cluster}/ping", timeout=120)
    seen: set[str] = set()
    while len(seen) < 2 and time.monotonic() < deadline:
        with ThreadPoolExecutor(4) as pool:
            seen |= {r.headers["X-Studio-Replica"] for r in pool.map(lambda s: invoke(cluster, {**SMALL, "seed": s}),
                                                                       range(4))}
    assert len(seen) == 2 and victim.rsplit("#", 1)[-1] not in seen


def _replica_actors() -> list[str]:
    found = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in found if a["name"].startswith("SERVE_REPLICA::") and _alive(a["name"]))


def _alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace="serve")
    except ValueError:
        return False
    return True


def test_scaling_down_mid_load_lets_the_stopped_replica_finish(cluster):
    """Serve stopping a replica on purpose (here: max_replicas 2 -> 1 while 8 requests run) drains it first."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.scripts import convert_args_to_dict

    deployed = call_user_app_builder_with_args_if_necessary(studio_ray.build_app, convert_args_to_dict(SERVE_RUN_ARGS))
    settings: RaySettings = deployed._bound_deployment.init_args[0]
    one = dataclasses.replace(settings, min_replicas=1, max_replicas=1)
    smaller = studio_ray.StudioServing.options(**studio_ray.deployment_options(one)).bind(settings)  # same replicas
    payload = {"prompt": "a calm sea", "width": 256, "height": 256, "steps": 8}
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(invoke, cluster, {**payload, "seed": seed}) for seed in range(8)]
        time.sleep(1.0)
        serve.run(smaller, name=studio_ray.APP_NAME, route_prefix="/")
        responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [200] * 8, [(r.status_code, r.text[:200]) for r in responses]
    assert len({r.headers["X-Studio-Replica"] for r in responses}) == 2  # both were serving when the scale-down began
    deadline = time.monotonic() + 120
    while len(_replica_actors()) != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_replica_actors()) == 1
