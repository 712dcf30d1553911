"""The benchmark sections. Each takes the run Context and returns its part of the result JSON.

Heavy or memory-sensitive measurements run in worker processes (bench.workers); the HTTP ones (serving, load
run, gradio, async remote) drive real servers on 127.0.0.1 from this process.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core import REPO, Stats, interleave, percentile, run_worker, timed, worker_env
from bench.dlc import dlc_section
from bench.lambda_ import lambda_section
from bench.peer import section as peer_section
from bench.ray_ import ray_serve_section

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """How much each section measures. `quick` fits in ~3 minutes on 2 cores (once caches exist)."""

    name: str
    engine_cases: tuple[tuple[str, int, int, int], ...]  # (model, size, steps, interleaved rounds)
    serving_requests: int
    load_requests: int
    load_concurrency: int
    gradio_requests: int
    async_rounds: int
    task_switch: tuple[str, int, int, int]  # (model, size, steps, cycles)
    load_time_models: tuple[str, ...]
    load_rounds: int
    peak_rss_cases: tuple[tuple[str, str], ...]  # (model, engine)
    openvino_sizes: tuple[int, ...]
    openvino_rounds: int
    openvino_e2e: tuple[int, int] | None  # (size, steps) of one whole generation per engine
    openvino_accuracy: bool  # demo-model pixel differences f32/bf16 vs torch (also covered by the tests)
    a1111: tuple[str, int, int, int] = ("demo", 256, 10, 8)  # weighting + LoRA cost: (model, size, steps, rounds)
    lora_rss: tuple[str, int, int, int] = ("demo", 256, 2, 50)  # LoRA cycling: (model, size, steps, requests)
    # Live previews: (model, size, steps, rounds). The demo is the worst case (its steps take milliseconds). The
    # figure is timed in the loop; the interleaved A/B beside it only cross-checks (the demo's jitter is +-15 %).
    previews: tuple[str, int, int, int] = ("demo", 256, 10, 8)
    # sd15 load + first image, each in a fresh process: (size, steps, also a cold conversion?); None: not measured
    openvino_memory: tuple[int, int, bool] | None = None
    openvino_static: tuple[int, int] | None = None  # dynamic vs static-shape UNet step: (size, rounds); None: not run
    # The calibrated int8 UNets (int8-hybrid, int8-full) vs torch, each: (size, rounds); None: not run
    openvino_int8_modes: tuple[int, int] | None = None
    drafts_decode: tuple[str, int, int] = ("sd15", 256, 2)  # VAE decode per VAE: (model, size, interleaved rounds)
    drafts_lcm: tuple[str, int] | None = None  # a 4-step LCM image on OpenVINO: (model, size); None: not measured
    matmul_repeats: int = 5  # the machine's matmul peak: best of this many timed runs per library
    worker_timeout: float = 1800.0
    # Sections this profile leaves out unless named with --only (the hosting stacks: minutes of start-up each)
    full_only: tuple[str, ...] = ()
    budget_s: float | None = None  # the run's own time goal (`total_seconds`), with warm caches

    def capped(self, rounds: int) -> Profile:
        """This profile with every repetition count capped at `rounds` (smoke runs, e.g. the test suite)."""
        n = max(1, rounds)
        model, size, steps, cycles = self.task_switch
        return dataclasses.replace(
            self,
            name=f"{self.name}-capped{n}",
            engine_cases=tuple((m, s, st, min(r, n)) for m, s, st, r in self.engine_cases),
            serving_requests=min(self.serving_requests, n),
            load_requests=min(self.load_requests, n * self.load_concurrency),
            gradio_requests=min(self.gradio_requests, n),
            async_rounds=min(self.async_rounds, n),
            task_switch=(model, size, steps, min(cycles, n)),
            load_rounds=min(self.load_rounds, n),
            openvino_rounds=min(self.openvino_rounds, n),
            a1111=(*self.a1111[:3], min(self.a1111[3], n)),
            lora_rss=(*self.lora_rss[:3], min(self.lora_rss[3], max(8, n))),
            previews=(*self.previews[:3], min(self.previews[3], n)),
            drafts_decode=(*self.drafts_decode[:2], min(self.drafts_decode[2], n)),
        )


QUICK = Profile(
    name="quick",
    engine_cases=(("demo", 256, 10, 10),),
    serving_requests=4,
    load_requests=24,
    load_concurrency=4,
    gradio_requests=3,
    async_rounds=3,
    task_switch=("demo", 512, 4, 1),
    load_time_models=("demo",),
    load_rounds=3,
    peak_rss_cases=(("demo", "torch"),),
    openvino_sizes=(256,),
    openvino_rounds=2,
    openvino_e2e=None,
    openvino_accuracy=False,
    a1111=("sd15", 128, 2, 3),  # the full-size architecture: on the tiny demo, fixed per-request costs dominate
    lora_rss=("demo", 256, 2, 16),  # 4 cycles: growth is read over the 3 after the first
    matmul_repeats=3,
    # Left to the full run (and --only): the hosting stacks (minutes of start-up each), two sections that only
    # inform (no goal of theirs is decided by a quick run) at ~17 and ~23 s: the gradio round trip, fast drafts; and
    # the peer (minutes of SD 1.5 at 512², in its own venv).
    full_only=("ray_serve", "dlc", "lambda", "gradio", "drafts", "peer"),
    budget_s=180.0,
)
FULL = Profile(
    name="full",
    engine_cases=(("demo", 256, 10, 20), ("sd15", 256, 4, 3)),
    serving_requests=12,
    load_requests=50,
    load_concurrency=4,
    gradio_requests=8,
    async_rounds=5,
    task_switch=("sd15", 512, 2, 1),
    load_time_models=("demo", "sd15"),
    load_rounds=3,
    peak_rss_cases=(("demo", "torch"), ("sd15", "torch"), ("sd15", "openvino")),
    openvino_sizes=(256, 512),
    openvino_rounds=3,
    openvino_e2e=(512, 4),
    openvino_accuracy=True,
    a1111=("sd15", 256, 4, 3),
    openvino_memory=(512, 2, True),
    openvino_static=(512, 3),
    openvino_int8_modes=(512, 3),
    drafts_decode=("sd15", 512, 3),
    drafts_lcm=("sd15", 512),
    lora_rss=("sd15", 128, 1, 50),
    previews=("demo", 256, 10, 20),
)

# Requests the HTTP sections send (the demo model: the point is the overhead around the engine, not the engine).
SERVING_REQUEST = {"prompt": "a red fox in the snow", "steps": 2, "width": 512, "height": 512, "seed": 7}
LOAD_REQUEST = {"prompt": "a lighthouse at dusk", "steps": 4, "width": 256, "height": 256, "seed": 11}


@dataclass
class Context:
    """Shared state of one run: the profile, verbosity, and a serving process reused by the HTTP sections."""

    profile: Profile
    verbose: bool = False
    fresh_workers: bool = False  # a new interpreter per worker instead of a fork of the zygote (bench.zygote)
    _serving: Any = None
    _zygote: Any = None
    _hardware: dict[str, Any] | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def worker(self, task: str, **args: Any) -> dict[str, Any]:
        timeout = self.profile.worker_timeout
        return run_worker(task, args, timeout=timeout, verbose=self.verbose, zygote=self.zygote())

    def zygote(self) -> Any:
        """The run's bench.zygote process (started on first use, stopped by close()); None with fresh_workers."""
        if self.fresh_workers:
            return None
        if self._zygote is None:
            from bench.zygote import Zygote

            started = time.perf_counter()
            self._zygote = Zygote(worker_env(), REPO, verbose=self.verbose)
            self._closers.append(self._zygote.close)
            logger.info("worker zygote ready in %.1fs", time.perf_counter() - started)
        return self._zygote

    def serving(self) -> Any:
        """A real `python -m studio.serving --model demo` process on 127.0.0.1 (started once, stopped by close())."""
        if self._serving is None:
            from studio.testing.servers import ServingProcess

            started = time.perf_counter()
            self._serving = ServingProcess(model="demo").start()
            self._closers.append(self._serving.stop)
            logger.info("serving process ready on %s in %.1fs", self._serving.url, time.perf_counter() - started)
        return self._serving

    def hardware(self) -> dict[str, Any]:
        """The machine's bf16 matmul peak and the UNet's TFLOP per guided step (bench/hardware.py), measured once."""
        if self._hardware is None:
            self._hardware = self.worker("hardware", sizes=[256, 512], repeats=self.profile.matmul_repeats)
        return self._hardware

    def close(self) -> None:
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as exc:  # cleanup must not hide the results
                logger.warning("cleanup failed: %s", exc)


# ---------------------------------------------------------------------------------------------------------------------
# Engine, memory and load time (workers)


def engine_vs_raw(ctx: Context) -> dict[str, Any]:
    """`engine_vs_raw.ratio`: LocalEngine.generate / raw diffusers call (headline: the first case, the demo)."""
    cases = []
    for model, size, steps, rounds in ctx.profile.engine_cases:
        args = {"model": model, "size": size, "steps": steps, "sampler": "Euler a", "rounds": rounds}
        cases.append(ctx.worker("engine_vs_raw", **args))
    head = cases[0]
    return {
        "ratio": head["ratio"],
        "model": head["model"],
        "size": head["size"],
        "steps": head["steps"],
        "cases": cases,
        "worst_ratio": max(c["ratio"] for c in cases),
    }


def task_switch(ctx: Context) -> dict[str, Any]:
    """`task_switch.reloads` / `.rss_increase_pct`: txt2img -> img2img -> inpaint on one loaded model."""
    model, size, steps, cycles = ctx.profile.task_switch
    return ctx.worker("task_switch", model=model, size=size, steps=steps, cycles=cycles)


def load_time(ctx: Context) -> dict[str, Any]:
    """engine.load() time: diffusers folder vs single .safetensors file of the same model, alternating."""
    out = {}
    for model in ctx.profile.load_time_models:
        out[model] = ctx.worker("load_time", model=model, rounds=ctx.profile.load_rounds)
    return out


def peak_rss(ctx: Context) -> dict[str, Any]:
    """Peak RSS of the studio's engine with each model (load + one generation), each in a fresh process."""
    out = {}
    for model, engine in ctx.profile.peak_rss_cases:
        size = 256 if model == "sd15" else 512
        out[f"{model}_{engine}"] = ctx.worker("peak_rss", model=model, engine=engine, size=size, steps=2)
    return out


def hardware(ctx: Context) -> dict[str, Any]:
    """`machine.bf16_matmul_tflops`: this CPU's bf16 (and f32) matmul peak on the engine's threads (+ the UNet's
    TFLOP/step)."""
    return dict(ctx.hardware())


def peak_fraction(speed: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """How close the OpenVINO UNet step runs to the machine's matmul peak at the precision the engine ran
    (`openvino.precision`: `bf16_matmul_tflops` for bf16; `f32_matmul_tflops` where the CPU has no native bf16 and
    the engine ran f32), per measured size: achieved TFLOPS (the step's FLOPs over its median time) ÷ that peak
    (`peak_precision`, `peak_tflops`). `unet_peak_fraction_512` is null when 512² was not measured (the quick profile
    measures 256²)."""
    precision = (speed.get("openvino") or {}).get("precision") or "bf16"
    flops, peak = machine.get("unet_tflop", {}), machine.get(f"{precision}_matmul_tflops")
    out: dict[str, Any] = {
        "unet_tflop_512": flops.get("512"),
        "bf16_matmul_tflops": machine.get("bf16_matmul_tflops"),
        "peak_precision": precision,
        "peak_tflops": peak,
    }
    for size, data in speed.get("per_size", {}).items():
        tflop, seconds = flops.get(size), data["openvino_step_s"]["median"]
        if tflop is None or not seconds or not peak:
            continue
        data["unet_tflop"] = tflop
        data["achieved_tflops"] = round(tflop / seconds, 4)
        data["peak_fraction"] = round(tflop / seconds / peak, 3)
        out[f"unet_peak_fraction_{size}"] = data["peak_fraction"]
    out.setdefault("unet_peak_fraction_512", None)
    return out


def end_to_end_costs(speed: dict[str, Any]) -> dict[str, Any]:
    """`e2e_<px>`: the measured whole generation split into per-step and fixed costs (text encoding + VAE decode +
    overhead = the generation minus its steps at the UNet step's median), and the 20-step speedup derived from
    them. Empty without an end-to-end measurement at a size whose step was measured."""
    e2e = speed.get("end_to_end")
    if not e2e:
        return {}
    size, steps = str(e2e["size"]), e2e["steps"]
    step = speed.get("per_size", {}).get(size)
    if step is None:
        return {}
    ov_step, torch_step = step["openvino_step_s"]["median"], step["torch_step_s"]["median"]
    ov_fixed, torch_fixed = e2e["openvino_s"] - steps * ov_step, e2e["torch_s"] - steps * torch_step
    return {
        f"e2e_{size}": {
            "steps": steps,
            "speedup": e2e["speedup"],
            "fixed_s": round(ov_fixed, 2),
            "fixed_steps": round(ov_fixed / ov_step, 2),
            "torch_fixed_s": round(torch_fixed, 2),
            "speedup_20": round((torch_fixed + 20 * torch_step) / (ov_fixed + 20 * ov_step), 3),
        }
    }


def openvino_memory(ctx: Context) -> dict[str, Any]:
    """Peak RSS and time of load + first image on sd15, each in a fresh process: the torch engine, the OpenVINO
    engine from a warm IR cache (the speed worker left it warm) and, when asked, a cold conversion into an empty
    cache. Goals: `warm_load_peak_rss_mb` ≤ 50 % of `torch_peak_rss_mb`, `warm_load_s` ≤ `torch_load_s`,
    `cold_convert_peak_rss_mb` ≤ 6 GB."""
    if ctx.profile.openvino_memory is None:
        return {}
    size, steps, cold = ctx.profile.openvino_memory
    case = {"model": "sd15", "size": size, "steps": steps}
    torch_run = ctx.worker("peak_rss", engine="torch", **case)
    warm = ctx.worker("peak_rss", engine="openvino", **case)
    out: dict[str, Any] = {
        "warm_load_peak_rss_mb": warm["peak_rss_mb"],
        "torch_peak_rss_mb": torch_run["peak_rss_mb"],
        "warm_load_rss_fraction": round(warm["peak_rss_mb"] / torch_run["peak_rss_mb"], 3),
        "warm_load_s": warm["load_and_first_image_s"],
        "torch_load_s": torch_run["load_and_first_image_s"],
        "warm_load_time_fraction": round(warm["load_and_first_image_s"] / torch_run["load_and_first_image_s"], 3),
        "warm_load_was_warm": warm.get("openvino_warm"),
        # RssAnon peaks: without the mapped model files the kernel can drop (OpenVINO keeps its IR mapped)
        "warm_load_peak_anon_mb": warm.get("peak_anon_mb"),
        "torch_peak_anon_mb": torch_run.get("peak_anon_mb"),
        "memory_case": {**case, "torch": torch_run, "warm": warm},
    }
    if cold:
        with tempfile.TemporaryDirectory(prefix="bench-ov-cold-") as empty:
            cold_run = ctx.worker("peak_rss", engine="openvino", openvino_cache=empty, **case)
        out["cold_convert_peak_rss_mb"] = cold_run["peak_rss_mb"]
        out["cold_load_s"] = cold_run["load_and_first_image_s"]
        out["cold_convert_s"] = cold_run.get("openvino_convert_s")
        out["memory_case"]["cold"] = cold_run
    return out


def openvino(ctx: Context) -> dict[str, Any]:
    """`openvino_vs_torch.speedup` on the full-size SD 1.5 architecture, plus demo-model pixel differences."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {"speedup": None, "skipped": "openvino is not installed (pip install -r requirements.txt)"}
    p = ctx.profile
    speed = ctx.worker(
        "openvino_speed",
        model="sd15",
        sizes=list(p.openvino_sizes),
        rounds=p.openvino_rounds,
        precision="bf16",
        e2e=list(p.openvino_e2e) if p.openvino_e2e else None,
    )
    speed.update(peak_fraction(speed, ctx.hardware()))
    speed.update(end_to_end_costs(speed))
    speed.update(openvino_memory(ctx))
    if p.openvino_static is not None:
        size, rounds = p.openvino_static
        speed["static"] = ctx.worker("openvino_static", model="sd15", size=size, rounds=rounds, precision="bf16")
    if p.openvino_int8_modes is not None:
        for key, weights in INT8_MODES.items():
            speed[key] = openvino_int8_mode(ctx, weights, *p.openvino_int8_modes)
    if not p.openvino_accuracy:
        return speed
    precisions = ["f32", "bf16", "bf16:fp16", *(f"bf16:{weights}" for weights in INT8_MODES.values())]
    accuracy = ctx.worker("openvino_accuracy", precisions=precisions, size=256, steps=10)
    return {**speed, "accuracy_demo": accuracy}


# openvino_vs_torch.<key>: --openvino-weights <value> (the calibrated int8 UNets)
INT8_MODES = {"hybrid": "int8-hybrid", "full": "int8-full"}


def openvino_int8_mode(ctx: Context, weights: str, size: int, rounds: int) -> dict[str, Any]:
    """`openvino_vs_torch.hybrid` / `.full`: the engine with --openvino-weights `weights` (int8 convolutions in the
    UNet; int8-full: its linear layers too) measured as the default one is, against torch fp32: per step, a 4-step
    generation, the 20-step speedup derived from them, and its fraction of the bf16 peak (int8 kernels may pass 1)."""
    run = ctx.worker(
        "openvino_speed", model="sd15", sizes=[size], rounds=rounds, precision=f"bf16:{weights}", e2e=[size, 4]
    )
    run.update(peak_fraction(run, ctx.hardware()))
    run.update(end_to_end_costs(run))
    return run


# ---------------------------------------------------------------------------------------------------------------------
# HTTP: serving overhead, load run, gradio, async remote


def _post(session: Any, url: str, payload: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    response = session.post(f"{url}/invocations", json=payload, timeout=300)
    seconds = time.perf_counter() - started
    return seconds, response


def serving(ctx: Context) -> dict[str, Any]:
    """`serving_overhead_ms_512`: /invocations round trip minus the engine's own time, per 512x512 image."""
    import requests

    server = ctx.serving()
    session = requests.Session()
    overheads, trips, engine_times, encode_times, sizes = [], [], [], [], []
    for index in range(ctx.profile.serving_requests + 1):
        seconds, response = _post(session, server.url, SERVING_REQUEST)
        response.raise_for_status()
        body = response.json()
        if index == 0:
            continue  # warm-up
        engine_s = body["timings"]["generate"]
        trips.append(seconds)
        engine_times.append(engine_s)
        encode_times.append(body["timings"].get("encode", 0.0))
        overheads.append(seconds - engine_s)
        sizes.append(len(response.content))
        png = base64.b64decode(body["images"][0])
    median_ms = round(statistics.median(overheads) * 1000, 1)
    return {
        "overhead_ms": Stats.of(overheads).as_dict(1000, 1),
        "round_trip_s": Stats.of(trips).as_dict(),
        "engine_s": Stats.of(engine_times).as_dict(),
        "server_encode_ms": Stats.of(encode_times).as_dict(1000, 1),
        "response_bytes": int(statistics.median(sizes)),
        "png_bytes": len(png),
        "request": SERVING_REQUEST,
        "headline_ms": median_ms,
    }


def load_run(ctx: Context) -> dict[str, Any]:
    """A bounded load run: N requests at concurrency C against the serving process (p50, p95, errors)."""
    import requests

    server = ctx.serving()
    total, concurrency = ctx.profile.load_requests, ctx.profile.load_concurrency
    local = threading.local()

    def one(_: int) -> tuple[float, int | str]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        try:
            seconds, response = _post(session, server.url, LOAD_REQUEST)
            return seconds, response.status_code
        except requests.RequestException as exc:
            return float("nan"), type(exc).__name__

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(total)))
    wall = time.perf_counter() - started
    ok = [s for s, status in results if status == 200]
    errors = [status for _, status in results if status != 200]
    return {
        "requests": total,
        "concurrency": concurrency,
        "request": LOAD_REQUEST,
        "errors": len(errors),
        "error_kinds": sorted({str(e) for e in errors}),
        "p50_s": round(percentile(ok, 50), 3) if ok else None,
        "p95_s": round(percentile(ok, 95), 3) if ok else None,
        "max_s": round(max(ok), 3) if ok else None,
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2),
    }


def gradio(ctx: Context) -> dict[str, Any]:
    """Studio UI round trip via gradio_client (/txt2img) minus the engine's time, per 512x512 image."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    import app
    from studio.config import EngineSettings, Settings
    from studio.testing.servers import free_port

    outputs = Path(tempfile.mkdtemp(prefix="bench-gradio-"))
    settings = Settings(engine=EngineSettings(model="demo", device="cpu"), outputs=outputs, port=free_port())
    blocks, controller = app.launch(settings, prevent_thread_lock=True)
    ctx._closers.append(blocks.close)
    deadline = time.monotonic() + 120
    while not controller.status().loaded:
        if controller.status().error or time.monotonic() > deadline:
            raise RuntimeError(f"studio did not load the demo model: {controller.status().error}")
        time.sleep(0.1)
    client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
    r = SERVING_REQUEST
    args = (r["prompt"], "", "Euler a", r["steps"], 7.0, r["seed"], r["width"], r["height"], 1)
    overheads, trips = [], []
    for index in range(ctx.profile.gradio_requests + 1):
        seconds, (gallery, info) = timed(lambda: client.predict(*args, api_name="/txt2img"))
        if not gallery:
            raise RuntimeError(f"/txt2img returned no images: {info}")
        if index == 0:
            continue
        trips.append(seconds)
        overheads.append(seconds - info["timings"]["generate"])
    client.close()
    return {
        "overhead_ms": Stats.of(overheads).as_dict(1000, 1),
        "round_trip_s": Stats.of(trips).as_dict(),
        "note": "includes saving the PNG to the gallery (outputs/) and gradio_client downloading the file",
    }


def async_remote(ctx: Context) -> dict[str, Any]:
    """RemoteEngine over SageMaker async (S3 upload, invoke, poll) vs real-time, through the test stand-in."""
    import boto3

    from studio.engines.remote import RemoteEngine
    from studio.engines.transports import Backoff, SageMakerAsync, SageMakerRealtime
    from studio.testing.moto import MotoServer, aws_env
    from studio.testing.sagemaker_standin import SageMakerRuntimeStandin
    from studio.types import GenerationRequest

    server = ctx.serving()
    bucket = "bench-async"
    request = GenerationRequest(**{k: v for k, v in LOAD_REQUEST.items()})
    with MotoServer() as moto, aws_env(moto.url):
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        with SageMakerRuntimeStandin(s3) as standin:
            standin.add_endpoint("bench-rt", server.url)
            standin.add_endpoint("bench-async", server.url, output_path=f"s3://{bucket}/async-output/")
            runtime = boto3.client("sagemaker-runtime", endpoint_url=standin.url, region_name="us-east-1")
            sync = RemoteEngine(SageMakerRealtime("bench-rt", runtime))
            poll = Backoff(first=1.0, factor=1.5, maximum=15.0)  # SageMakerAsync's default
            asynchronous = RemoteEngine(
                SageMakerAsync("bench-async", runtime, s3, f"s3://{bucket}/async-input/", poll=poll)
            )
            overheads: dict[str, list[float]] = {"sync": [], "async": []}

            def run(name: str, engine: Any) -> Callable[[], None]:
                def go() -> None:
                    seconds, result = timed(lambda: engine.generate(request))
                    overheads[name].append(seconds - result.timings.get("generate", 0.0))

                return go

            times = interleave(
                {"sync": run("sync", sync), "async": run("async", asynchronous)}, rounds=ctx.profile.async_rounds
            )
    sync_med, async_med = statistics.median(times["sync"]), statistics.median(times["async"])
    return {
        "sync_s": Stats.of(times["sync"]).as_dict(),
        "async_s": Stats.of(times["async"]).as_dict(),
        "async_overhead_over_sync_ms": round((async_med - sync_med) * 1000, 1),
        "sync_overhead_ms": round(statistics.median(overheads["sync"][1:]) * 1000, 1),  # [0] is the warm-up
        "async_overhead_ms": round(statistics.median(overheads["async"][1:]) * 1000, 1),
        "poll": {"first_s": poll.first, "factor": poll.factor, "max_s": poll.maximum},
        "request": LOAD_REQUEST,
        "note": "async = S3 upload + invoke_endpoint_async + polling S3 (first poll after ~1 s) via moto + stand-in",
    }


def a1111(ctx: Context) -> dict[str, Any]:
    """`a1111.overhead_pct` (weighting + one LoRA over a plain prompt) and `a1111.lora_rss_growth_pct`."""
    model, size, steps, rounds = ctx.profile.a1111
    cost = ctx.worker("a1111_cost", model=model, size=size, steps=steps, rounds=rounds)
    model, size, steps, requests = ctx.profile.lora_rss
    memory = ctx.worker("lora_rss", model=model, size=size, steps=steps, requests=requests)
    return {
        "overhead_pct": cost["overhead_pct"],
        "lora_rss_growth_pct": memory["rss_growth_pct"],
        "cost": cost,
        "lora_rss": memory,
    }


def previews(ctx: Context) -> dict[str, Any]:
    """`preview_overhead_pct`: live previews at the default interval vs none (torch engine)."""
    model, size, steps, rounds = ctx.profile.previews
    return ctx.worker("preview_cost", model=model, size=size, steps=steps, rounds=rounds)


def drafts(ctx: Context) -> dict[str, Any]:
    """Fast drafts: VAE decode time (torch, OpenVINO, TAESD) and a 4-step LCM image on OpenVINO (bench.drafts)."""
    model, size, rounds = ctx.profile.drafts_decode
    out: dict[str, Any] = {"vae_decode": ctx.worker("vae_decode", model=model, size=size, rounds=rounds)}
    if ctx.profile.drafts_lcm is not None:
        model, size = ctx.profile.drafts_lcm
        out["lcm"] = ctx.worker("lcm_image", model=model, size=size)
    return out


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "hardware": hardware,
    "engine_vs_raw": engine_vs_raw,
    "a1111": a1111,
    "previews": previews,
    "serving": serving,
    "load_run": load_run,
    "task_switch": task_switch,
    "openvino": openvino,
    "drafts": drafts,
    "load_time": load_time,
    "peak_rss": peak_rss,
    "gradio": gradio,
    "async_remote": async_remote,
    "ray_serve": ray_serve_section,
    "dlc": dlc_section,
    "lambda": lambda_section,
    "peer": peer_section,
}


def gpu(ctx: Context) -> dict[str, Any]:
    """GPU only: it/s and images/s, plain diffusers fp16 vs the studio's fast settings (`gpu.speedup`)."""
    from bench import gpu as gpu_bench

    return gpu_bench.run(ctx.profile.name == "quick")


SECTIONS["gpu"] = gpu


def describe() -> str:
    return json.dumps({name: (fn.__doc__ or "").strip().split("\n")[0] for name, fn in SECTIONS.items()}, indent=1)
