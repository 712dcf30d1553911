"""Measurements that run in a fresh process: `python -m bench.workers TASK ARGS_JSON`.

A fresh process per measurement gives clean peak-RSS figures, keeps multi-GB models out of the coordinating
process, and gives each load-time figure the same starting point. Each task prints one line
``BENCH_RESULT {json}`` on stdout (see bench.core.run_worker); logs go to stderr.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench.core import (
    RESULT_PREFIX,
    AnonPeak,
    Stats,
    interleave,
    peak_rss_mb,
    ratio_summary,
    reset_peak_rss,
    rss_mb,
    speedup_fields,
    timed,
)
from bench.models import ensure_single_file, model_spec

logger = logging.getLogger("bench.workers")

PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, 8k"
NEGATIVE = "blurry, low quality"


def _request(
    size: int, steps: int, sampler: str = "Euler a", seed: int = 1234, cfg_scale: float = 7.0, **extra: Any
) -> Any:
    from studio.types import GenerationRequest

    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler=sampler,
        steps=steps,
        cfg_scale=cfg_scale,
        seed=seed,
        width=size,
        height=size,
        **extra,
    )


def _mask(size: int) -> Any:
    from PIL import Image

    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return mask


def _init_image(size: int) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([np.add.outer(gradient, gradient) / 2, np.tile(gradient, (size, 1)), np.full((size, size), 96)], -1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def _pixel_diff(a: Any, b: Any) -> dict[str, float]:
    import numpy as np

    x = np.asarray(a, dtype=np.int16)
    y = np.asarray(b, dtype=np.int16)
    diff = np.abs(x - y)
    return {
        "max": int(diff.max()),
        "mean": round(float(diff.mean()), 4),
        "pct_over_8": round(float((diff > 8).mean() * 100), 3),
    }


def _engine(model: str, engine: str = "torch", precision: str = "bf16", openvino_cache: str | None = None) -> Any:
    """The studio's local engine for a benchmark model, made the way every composition root makes it. `precision`
    may name the IR weights too: "bf16:fp16" is bf16 inference with fp16 weights (--openvino-weights)."""
    extra: dict[str, Any] = {"openvino_cache": openvino_cache} if openvino_cache else {}
    precision, _, weights = precision.partition(":")
    if weights:
        extra["openvino_weights"] = weights
    return _build(model_spec(model), kind=engine, precision=precision, **extra)


def _build(spec: str, **settings: Any) -> Any:
    from studio.config import EngineSettings
    from studio.engines import build

    return build(EngineSettings(model=spec, device="cpu", **settings))


# ---------------------------------------------------------------------------------------------------------------------
# Tasks


def engine_vs_raw(model: str, size: int, steps: int, sampler: str, rounds: int, warmup: int = 1) -> dict[str, Any]:
    """LocalEngine.generate vs a raw diffusers call on the same modules, interleaved; plus where the overhead goes."""
    import diffusers
    import torch

    from studio.samplers import get_sampler
    from studio.types import Task

    engine = _engine(model)
    engine.load()
    base = engine.pipelines[Task.TXT2IMG]
    spec = get_sampler(sampler)
    # What a diffusers user writes: the pipeline once, the scheduler set once, then pipe(...) per image.
    raw = diffusers.AutoPipelineForText2Image.from_pipe(
        base, scheduler=getattr(diffusers, spec.scheduler).from_config(base.scheduler.config, **spec.options)
    )
    raw.set_progress_bar_config(disable=True)
    request = _request(size, steps, sampler)

    # Time spent inside the pipeline's __call__ during engine.generate: the rest is the engine's own work
    # (validation, prompt conditioning, per-call pipeline + scheduler, image conversion, infotext). That part is
    # deterministic, so it stays readable when neighbours make whole-call times noisy. The engine encodes the prompt
    # itself (A1111 syntax) and passes embeddings, so its pipeline call skips the text encoding that the raw call
    # does inside: that encoding is timed too and credited.
    pipeline_class = type(base)
    original_call = pipeline_class.__call__
    inside: list[float] = []
    outside: list[float] = []

    def timed_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_call(self, *args, **kwargs)
        finally:
            inside.append(time.perf_counter() - started)

    def run_engine() -> Any:
        inside.clear()
        pipeline_class.__call__ = timed_call
        try:
            total, result = timed(lambda: engine.generate(request))
        finally:
            pipeline_class.__call__ = original_call
        outside.append(total - sum(inside))
        return result.images[0]

    def run_raw() -> Any:
        return raw(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            num_inference_steps=steps,
            guidance_scale=request.cfg_scale,
            width=size,
            height=size,
            generator=torch.Generator("cpu").manual_seed(request.seed),
        ).images[0]

    def raw_encode() -> Any:
        return raw.encode_prompt(request.prompt, torch.device("cpu"), 1, True, request.negative_prompt)

    same = _pixel_diff(run_engine(), run_raw())
    raw_encode_s = statistics.median(timed(raw_encode)[0] for _ in range(10))
    times = interleave({"engine": run_engine, "raw": run_raw}, rounds=rounds, warmup=warmup)
    diagnosis = _per_call_pipeline_costs(base, sampler)
    # Two estimates of engine/raw: the median of interleaved pairs (direct, but a neighbour's burst can push it
    # either way) and 1 + the engine's own time outside the pipeline call / the raw call (deterministic). The
    # headline `ratio` is the worse of the two, so a noisy machine cannot produce a false pass.
    summary = ratio_summary(times["engine"], times["raw"])
    interleaved = summary["ratio"]
    from_outside = round(1 + (statistics.median(outside[1 + warmup :]) - raw_encode_s) / min(times["raw"]), 4)
    summary["ratio"] = max(interleaved, from_outside)
    return {
        "model": model,
        "size": size,
        "steps": steps,
        "sampler": sampler,
        "engine_s": Stats.of(times["engine"]).as_dict(),
        "raw_s": Stats.of(times["raw"]).as_dict(),
        **summary,
        "ratio_interleaved": interleaved,
        "overhead_ms": round((statistics.median(times["engine"]) - statistics.median(times["raw"])) * 1000, 1),
        "rounds_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
        "engine_outside_pipeline_ms": Stats.of(outside[1 + warmup :]).as_dict(1000, 2),
        "raw_encode_in_call_ms": round(raw_encode_s * 1000, 2),
        "ratio_from_outside": from_outside,
        "same_image_pixel_diff": same,
        "diagnosis": diagnosis,
    }


def _per_call_pipeline_costs(base: Any, sampler: str) -> dict[str, float]:
    """Where the engine's extra time goes: the per-call pipeline object (from_pipe walks every module with .to())
    vs the plain constructor, median of 10 each (ms)."""
    import torch

    from studio.samplers import make_scheduler

    scheduler = make_scheduler(sampler, "Automatic", base.scheduler.config)
    from_pipe_s = statistics.median(
        timed(lambda: type(base).from_pipe(base, scheduler=scheduler, dtype=torch.float32))[0] for _ in range(10)
    )
    expected, optional = type(base)._get_signature_keys(base)
    components = {k: v for k, v in base.components.items() if k in expected}
    options = {k: base.config[k] for k in optional if k in base.config}
    construct_s = statistics.median(
        timed(lambda: type(base)(**{**components, "scheduler": scheduler}, **options))[0] for _ in range(10)
    )
    return {
        "per_call_from_pipe_ms": round(from_pipe_s * 1000, 2),
        "per_call_constructor_ms": round(construct_s * 1000, 2),
    }


def _load_counter() -> dict[str, int]:
    """Count weight loads from now on: studio.models.load_pipeline and every from_pretrained of a model class."""
    import diffusers
    import transformers

    from studio import models

    counts = {"load_pipeline": 0, "from_pretrained": 0}
    original_load = models.load_pipeline

    def load_pipeline(*args: Any, **kwargs: Any) -> Any:
        counts["load_pipeline"] += 1
        return original_load(*args, **kwargs)

    models.load_pipeline = load_pipeline
    for cls in (diffusers.ModelMixin, transformers.PreTrainedModel):
        original = cls.from_pretrained.__func__

        def from_pretrained(klass: Any, *args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            counts["from_pretrained"] += 1
            return _original(klass, *args, **kwargs)

        cls.from_pretrained = classmethod(from_pretrained)
    return counts


def _malloc_trim() -> bool:
    """Return glibc's free lists to the OS (malloc_trim(0)), so RSS shows memory held, not allocator caches."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):  # not glibc (musl, macOS): RSS is read untrimmed
        return False


def task_switch(model: str, size: int, steps: int, cycles: int, strength: float = 0.75) -> dict[str, Any]:
    """txt2img -> img2img -> inpaint on one loaded model: weight loads after the first load, and RSS after each."""
    from studio.types import Task

    counts = _load_counter()
    engine = _engine(model)
    engine.load()
    gc.collect()
    gc.freeze()  # the libraries and the loaded model are never garbage: each collect below scans only new objects
    loads_at_start = dict(counts)
    pipes = engine.pipelines
    shared = all(
        getattr(pipes[task], attr) is getattr(pipes[Task.TXT2IMG], attr)
        for task in pipes
        for attr in ("unet", "vae", "text_encoder")
    )
    txt = _request(size, steps)
    trace: list[dict[str, Any]] = []
    image = None
    for cycle in range(cycles):
        for task, request in (
            ("txt2img", txt),
            ("img2img", None),
            ("inpaint", None),
        ):
            if task == "img2img":
                request = txt.replace(image=image, strength=strength)
            elif task == "inpaint":
                request = txt.replace(image=image, mask=_mask(size), strength=strength)
            seconds, result = timed(lambda request=request: engine.generate(request))
            if task == "txt2img":
                image = result.images[0]
            gc.collect()
            untrimmed = rss_mb()
            trimmed = untrimmed if not _malloc_trim() else rss_mb()
            trace.append(
                {
                    "cycle": cycle + 1,
                    "task": task,
                    "seconds": round(seconds, 3),
                    "rss_mb": trimmed,
                    "rss_untrimmed_mb": untrimmed,
                }
            )
    base = trace[0]["rss_mb"]
    first_cycle = [t["rss_mb"] for t in trace[1:3]]
    base_untrimmed = trace[0]["rss_untrimmed_mb"]
    reloads = (counts["load_pipeline"] - loads_at_start["load_pipeline"]) + (
        counts["from_pretrained"] - loads_at_start["from_pretrained"]
    )
    return {
        "model": model,
        "size": size,
        "steps": steps,
        "reloads": reloads,
        "rss_increase_pct": round((max(first_cycle) - base) / base * 100, 2),
        "rss_after_all_pct": round((max(t["rss_mb"] for t in trace) - base) / base * 100, 2),
        "rss_increase_pct_untrimmed": round(
            (max(t["rss_untrimmed_mb"] for t in trace[1:3]) - base_untrimmed) / base_untrimmed * 100, 2
        ),
        "malloc_trim": _malloc_trim(),
        "rss_after_txt2img_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "shared_modules": shared,
        "weight_loads_during_load": loads_at_start,
        "trace": trace,
    }


def load_time(model: str, rounds: int) -> dict[str, Any]:
    """Load (engine.load() plus a 64 px one-step image) of the diffusers folder vs the single-file copy, alternating,
    after one warm-up load each. `*_s` figures include the first image; `first_image_*` isolates it."""
    single = str(ensure_single_file(model))
    folder = model_spec(model)

    first_image: dict[str, list[float]] = {"folder": [], "single_file": []}
    tiny = _request(64, 1)

    def loader(name: str, spec: str) -> Callable[[], None]:
        def run() -> None:
            engine = _build(spec)
            engine.load()
            # safetensors weights may be memory-mapped and paged in lazily: the first image shows that cost.
            first_image[name].append(timed(functools.partial(engine.generate, tiny))[0])
            del engine
            gc.collect()

        return run

    times = interleave(
        {"folder": loader("folder", folder), "single_file": loader("single_file", single)}, rounds=rounds, warmup=1
    )
    ratio = ratio_summary(times["single_file"], times["folder"])
    return {
        "model": model,
        "folder_s": Stats.of(times["folder"]).as_dict(),
        "single_file_s": Stats.of(times["single_file"]).as_dict(),
        "first_image_64px_1step_s": {k: Stats.of(v[1:]).as_dict() for k, v in first_image.items()},
        "single_file_vs_folder": ratio["ratio"],
        "single_file_vs_folder_spread": [ratio["round_ratio_min"], ratio["round_ratio_max"]],
        "single_file_bytes": os.path.getsize(single),
    }


def peak_rss(
    model: str, engine: str, size: int, steps: int, precision: str = "bf16", openvino_cache: str | None = None
) -> dict[str, Any]:
    """RSS of the studio's engine with one model: after import, after load, and the peak through one generation.
    `peak_rss_mb` is the peak of the whole process (load + first image); `load_and_first_image_s` their time."""
    import torch  # noqa: F401  (counted in the baseline, as in the studio)

    from studio.engines import local  # noqa: F401

    after_import = rss_mb()
    with AnonPeak() as anon:
        instance = _engine(model, engine, precision, openvino_cache)
        load_s, _ = timed(instance.load)
        after_load = rss_mb()
        peak_load = peak_rss_mb()
        reset_peak_rss()
        gen_s, _ = timed(lambda: instance.generate(_request(size, steps)))
    out: dict[str, Any] = {
        "model": model,
        "engine": engine,
        "size": size,
        "steps": steps,
        "load_s": round(load_s, 2),
        "generate_s": round(gen_s, 2),
        "rss_after_import_mb": after_import,
        "rss_after_load_mb": after_load,
        "peak_during_load_mb": peak_load,
        "peak_during_generate_mb": peak_rss_mb(),
        "rss_after_generate_mb": rss_mb(),
    }
    out["peak_rss_mb"] = max(v for v in (peak_load, out["peak_during_generate_mb"]) if v is not None)
    out["load_and_first_image_s"] = round(load_s + gen_s, 2)
    out["peak_anon_mb"] = anon.mb
    report = getattr(instance.accelerator, "report", None)
    if report is not None:
        out["precision"] = report.precision
        out["weights"] = report.weights
        out["openvino_cache_hits"] = report.cache_hits
        out["openvino_warm"] = report.warm
        out["openvino_convert_s"] = round(sum(c.convert_seconds for c in report.components), 2)
    return out


def openvino_speed(
    model: str, sizes: list[int], rounds: int, precision: str, e2e: list[int] | None = None
) -> dict[str, Any]:
    """Per-step UNet time (one guided step = batch 2) of the OpenVINO engine vs the torch engine, interleaved.

    Both engines run the studio's own modules (the OpenVINO one through its redirected forward, numpy copies
    included). With `e2e` = [size, steps], one whole generation per engine too, and the pixel difference.
    """
    import torch

    from studio.types import Task

    ov_engine = _engine(model, "openvino", precision)
    ov_load_s, _ = timed(ov_engine.load)  # first, so its temporary torch copy is gone before torch loads
    torch_engine = _engine(model)
    torch_load_s, _ = timed(torch_engine.load)
    ov_unet = ov_engine.pipelines[Task.TXT2IMG].unet
    torch_unet = torch_engine.pipelines[Task.TXT2IMG].unet
    TIMESTEP = torch.tensor(500.0)  # noqa: N806 (a constant of this measurement)
    channels = torch_unet.config.in_channels
    cross = torch_unet.config.cross_attention_dim
    per_size: dict[str, Any] = {}
    for size in sizes:
        generator = torch.Generator("cpu").manual_seed(size)
        sample = torch.randn(2, channels, size // 8, size // 8, generator=generator)
        hidden = torch.randn(2, 77, cross, generator=generator)

        def step(unet: Any, sample: Any = sample, hidden: Any = hidden) -> Any:
            with torch.inference_mode():
                return unet(sample, TIMESTEP, hidden, return_dict=False)[0]

        reference = step(torch_unet)  # doubles as the warm-up of both
        diff = (step(ov_unet) - reference).abs()
        times = interleave(
            {"torch": lambda: step(torch_unet), "openvino": lambda: step(ov_unet)}, rounds=rounds, warmup=0
        )
        per_size[str(size)] = {
            "torch_step_s": Stats.of(times["torch"]).as_dict(),
            "openvino_step_s": Stats.of(times["openvino"]).as_dict(),
            **speedup_fields(times["torch"], times["openvino"]),
            "unet_max_abs_diff": round(float(diff.max()), 5),
            "unet_rel_mean_diff": round(float(diff.mean() / reference.abs().mean()), 5),
        }
    out: dict[str, Any] = {
        "model": model,
        "precision": ov_engine.accelerator.report.precision,
        "openvino": ov_engine.accelerator.report.as_dict(),
        "openvino_load_s": round(ov_load_s, 2),
        "torch_load_s": round(torch_load_s, 2),
        "per_size": per_size,
        "speedup": min(v["speedup"] for v in per_size.values()),
        "speedup_at": max(per_size, key=lambda s: -per_size[s]["speedup"]),
        "rss_mb": rss_mb(),
    }
    if e2e:
        size, steps = e2e
        request = _request(size, steps)
        # Twice each, alternating: the first generation also packs the text encoder's and the VAE's weights (and
        # compiles the VAE's static variant); the second is what every later image costs. One run each was noisy
        # (fixed cost read 9.6 s in one run, 7.0 s in the next).
        first_ov_s, _ = timed(lambda: ov_engine.generate(request))
        first_torch_s, _ = timed(lambda: torch_engine.generate(request))
        ov_s, ov_result = timed(lambda: ov_engine.generate(request))
        torch_s, torch_result = timed(lambda: torch_engine.generate(request))
        out["end_to_end"] = {
            "size": size,
            "steps": steps,
            "openvino_s": round(ov_s, 2),
            "torch_s": round(torch_s, 2),
            "first_openvino_s": round(first_ov_s, 2),
            "first_torch_s": round(first_torch_s, 2),
            "speedup": round(torch_s / ov_s, 3),
            "pixel_diff": _pixel_diff(ov_result.images[0], torch_result.images[0]),
        }
    return out


def openvino_accuracy(precisions: list[str], size: int, steps: int) -> dict[str, Any]:
    """Same seed, demo model: pixel difference OpenVINO vs torch for txt2img / img2img / inpaint, per precision
    ("bf16" runs the default int8 weights, "bf16:fp16" fp16 weights)."""
    engine = _engine("demo")
    engine.load()
    init = _init_image(size)
    requests = {
        "txt2img": _request(size, steps, "DPM++ 2M"),
        "txt2img_euler_a": _request(size, steps, "Euler a"),
        "img2img": _request(size, steps, "DPM++ 2M", image=init, strength=0.6),
        "inpaint": _request(size, steps, "Euler a", image=init, mask=_mask(size), strength=0.8),
    }
    reference = {name: engine.generate(request).images[0] for name, request in requests.items()}
    out: dict[str, Any] = {"size": size, "steps": steps}
    for precision in precisions:
        ov = _engine("demo", "openvino", precision)
        ov.load()
        diffs = {
            name: _pixel_diff(ov.generate(request).images[0], reference[name]) for name, request in requests.items()
        }
        out[precision] = {
            "pixel_diff": diffs,
            "max_pixel_diff": max(d["max"] for d in diffs.values()),
            "effective_precision": ov.accelerator.report.precision,
            "weights": ov.accelerator.report.weights,
            "cache_hits": ov.accelerator.report.cache_hits,
            "components": len(ov.accelerator.report.components),
        }
    return out


from bench.a1111 import a1111_cost, lora_rss, preview_cost  # noqa: E402  (they use this module's helpers)
from bench.dlc import dlc_cold_start  # noqa: E402
from bench.drafts import lcm_image, vae_decode  # noqa: E402
from bench.hardware import hardware  # noqa: E402
from bench.lambda_ import lambda_cold_start  # noqa: E402
from bench.openvino_static import openvino_static  # noqa: E402
from bench.peer import studio_first_image  # noqa: E402
from bench.ray_ import ray_serve  # noqa: E402

TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "a1111_cost": a1111_cost,
    "preview_cost": preview_cost,
    "hardware": hardware,
    "lambda_cold_start": lambda_cold_start,
    "lora_rss": lora_rss,
    "engine_vs_raw": engine_vs_raw,
    "task_switch": task_switch,
    "load_time": load_time,
    "peak_rss": peak_rss,
    "openvino_speed": openvino_speed,
    "openvino_accuracy": openvino_accuracy,
    "ray_serve": ray_serve,
    "dlc_cold_start": dlc_cold_start,
    "vae_decode": vae_decode,
    "openvino_static": openvino_static,
    "lcm_image": lcm_image,
    "studio_first_image": studio_first_image,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("diffusers", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if len(argv) != 2 or argv[0] not in TASKS:
        print(f"usage: python -m bench.workers {{{','.join(TASKS)}}} ARGS_JSON", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        result = TASKS[argv[0]](**json.loads(argv[1]))
        result["worker_seconds"] = round(time.perf_counter() - started, 1)
        code = 0
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
        code = 1
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
