"""Bench for Ray Serve (studio.serving.ray): what Ray costs on this machine.

- `ray_serve` (worker task, a fresh process): a local Ray as the tests start it (num_cpus = the machine's cores, a
  200 MB object store, no dashboard, loopback only) with two demo-model replicas. Records `ray.init` seconds, seconds
  until both replicas answer (`serve.run`), the RSS of every Ray process by role (GCS, raylet, Serve controller,
  proxy, replicas, the rest), the per-request overhead of Ray's proxy against the plain serving app (interleaved,
  same 64x64 request, both in this process's reach), whether concurrent requests reached both replicas, and the
  shutdown seconds.
- `ray_serve_section` (bench section `ray_serve`): runs the task; skipped when Ray is not installed.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.core import Stats, interleave, ratio_summary

OBJECT_STORE_BYTES = 200 * 1024 * 1024
REQUEST = {"prompt": "a lighthouse on a cliff", "width": 64, "height": 64, "steps": 2, "seed": 7}


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for marker, role in (
        ("gcs_server", "gcs"),
        ("raylet", "raylet"),
        ("ServeController", "serve_controller"),
        ("ProxyActor", "proxy"),
        ("ServeReplica", "replicas"),
    ):
        if marker in text:
            return role
    return "other"  # log monitor, dashboard agents, idle workers


def ray_rss_mb() -> dict[str, float]:
    """RSS of every process this one started (Ray's), in MB, by role, plus the total."""
    import psutil

    by_role: dict[str, float] = defaultdict(float)
    for child in psutil.Process().children(recursive=True):
        try:
            by_role[_role(child.cmdline())] += child.memory_info().rss / 2**20
        except psutil.Error:  # a process that exited meanwhile
            continue
    result = {role: round(mb, 1) for role, mb in sorted(by_role.items())}
    result["total"] = round(sum(by_role.values()), 1)
    return result


def _start_ray(replicas: int) -> tuple[str, dict[str, float]]:
    from studio.config import ray_settings_from_args
    from studio.serving import ray as studio_ray
    from studio.testing.servers import free_port

    studio_ray.prepare_local_ray()  # before Ray is imported: loopback only, the proxy middleware
    import ray
    from ray import serve

    settings = ray_settings_from_args(
        {"model": "demo", "device": "cpu", "min_replicas": replicas, "max_replicas": replicas, "replica_cpus": 0.5}
    )
    started = time.perf_counter()
    ray.init(**studio_ray.ray_init_options(settings, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False))
    init_s = time.perf_counter() - started
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(studio_ray.application(settings), name=studio_ray.APP_NAME, route_prefix="/")
    return f"http://127.0.0.1:{port}", {"init_s": round(init_s, 2), "ready_s": round(time.perf_counter() - started, 2)}


def ray_serve(replicas: int = 2, rounds: int = 10) -> dict[str, Any]:
    """Worker task: Ray's start-up, memory and proxy overhead with `replicas` demo replicas (see the module doc)."""
    import requests

    from studio import engines
    from studio.config import EngineSettings, ServingSettings
    from studio.serving.app import create_app
    from studio.testing.servers import UvicornThread, single_threaded_torch, wait_for

    url, startup = _start_ray(replicas)
    import ray
    from ray import serve

    try:
        memory = ray_rss_mb()

        def post(base: str) -> requests.Response:
            response = requests.post(f"{base}/invocations", json=REQUEST, timeout=120)
            response.raise_for_status()
            return response

        with ThreadPoolExecutor(4 * replicas) as pool:
            answered = {r.headers["X-Studio-Replica"] for r in pool.map(lambda _: post(url), range(4 * replicas))}
        engine = engines.build(EngineSettings(model="demo", device="cpu"))
        with single_threaded_torch(), UvicornThread(create_app(engine, settings=ServingSettings())) as plain:
            wait_for(f"{plain.url}/ping", timeout=120)
            times = interleave({"ray": lambda: post(url), "plain": lambda: post(plain.url)}, rounds)
    finally:
        stopped = time.perf_counter()
        serve.shutdown()
        ray.shutdown()
        shutdown_s = time.perf_counter() - stopped
    overheads = [a - b for a, b in zip(times["ray"], times["plain"], strict=True)]
    return {
        **startup,
        "shutdown_s": round(shutdown_s, 2),
        "cpus": os.cpu_count(),
        "replicas": replicas,
        "replicas_answering": len(answered),
        "rss_mb": memory,
        "request_s": {"ray": Stats.of(times["ray"]).as_dict(), "plain": Stats.of(times["plain"]).as_dict()},
        "proxy_overhead_ms": Stats.of(overheads).as_dict(1000, 1),
        "ray_vs_plain": ratio_summary(times["ray"], times["plain"]),
        "request": REQUEST,
    }


def ray_serve_section(ctx: Any) -> dict[str, Any]:
    """Ray Serve on this machine: init and ready seconds, RSS by role, proxy overhead per 64x64 request."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "ray is not installed (pip install '.[ray]')"}
    rounds = 4 if ctx.profile.name.startswith("quick") else 10
    return ctx.worker("ray_serve", replicas=2, rounds=rounds)
