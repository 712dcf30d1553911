"""Bench workers for the A1111 features (run by `python -m bench.workers TASK ARGS_JSON`, see bench.workers).

- `a1111_cost`: what prompt weighting + one LoRA tag costs over the plain prompt, interleaved on one engine.
  The two requests alternate, so every LoRA request switches the adapter on and every plain one switches it off:
  the honest worst case of a user mixing them.
- `lora_rss`: RSS over 50 requests cycling through three LoRAs and back to none. After the first cycle every
  adapter is loaded; growth after that would mean adapters pile up.
Both use the demo model and demo LoRAs written into a temporary models folder.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

from bench.core import Stats, interleave, ratio_summary, rss_mb

LORA_NAMES = ("bench-a", "bench-b", "bench-c")
PLAIN = "a photo of an astronaut riding a horse on the moon, detailed, 8k"
WEIGHTED = "a photo of an (astronaut:1.2) riding a [horse] on the ((moon)), detailed, 8k"


def _engine_with_loras(model: str) -> tuple[Any, Path]:
    from bench.models import model_spec
    from studio.config import EngineSettings
    from studio.engines import build
    from studio.models.demo_extras import build_demo_lora

    models_dir = Path(tempfile.mkdtemp(prefix="bench-loras-"))
    spec = model_spec(model)
    fitted = None if model == "demo" else Path(spec)  # a random LoRA with the full-size model's shapes
    for seed, name in enumerate(LORA_NAMES):
        build_demo_lora(models_dir / "Lora" / f"{name}.safetensors", seed=seed, model_dir=fitted)
    engine = build(EngineSettings(model=spec, device="cpu", models_dir=models_dir))
    engine.load()
    return engine, models_dir


def _request(prompt: str, size: int, steps: int) -> Any:
    from studio.types import GenerationRequest

    return GenerationRequest(prompt=prompt, negative_prompt="blurry", steps=steps, width=size, height=size, seed=5)


def a1111_cost(model: str, size: int, steps: int, rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Plain prompt vs weighted prompt + `<lora:…:0.8>`, interleaved: `overhead_pct` = (ratio - 1) x 100."""
    engine, _ = _engine_with_loras(model)
    plain = _request(PLAIN, size, steps)
    weighted = _request(f"{WEIGHTED} <lora:{LORA_NAMES[0]}:0.8>", size, steps)
    times = interleave(
        {"weighted_lora": lambda: engine.generate(weighted), "plain": lambda: engine.generate(plain)},
        rounds=rounds,
        warmup=warmup,
    )
    summary = ratio_summary(times["weighted_lora"], times["plain"])
    return {
        "model": model,
        "size": size,
        "steps": steps,
        "plain_s": Stats.of(times["plain"]).as_dict(),
        "weighted_lora_s": Stats.of(times["weighted_lora"]).as_dict(),
        **summary,
        "overhead_pct": round((summary["ratio"] - 1) * 100, 2),
    }


def lora_rss(model: str, size: int, steps: int, requests: int = 50) -> dict[str, Any]:
    """RSS after each of `requests` generations cycling LoRA a, b, c, none; growth measured after the first cycle."""
    from bench.workers import _malloc_trim

    engine, _ = _engine_with_loras(model)
    gc.collect()
    gc.freeze()  # what exists now (libraries, the engine) is never garbage: each collect below scans only new objects
    prompts = [f"{PLAIN} <lora:{name}:0.8>" for name in LORA_NAMES] + [PLAIN]
    trace: list[float] = []
    for index in range(requests):
        engine.generate(_request(prompts[index % len(prompts)], size, steps))
        gc.collect()
        _malloc_trim()
        trace.append(rss_mb() or 0.0)
    first_cycle_end = trace[len(prompts) - 1]
    return {
        "model": model,
        "size": size,
        "steps": steps,
        "requests": requests,
        "rss_after_first_cycle_mb": first_cycle_end,
        "rss_max_after_first_cycle_mb": max(trace[len(prompts) :]),
        "rss_end_mb": trace[-1],
        "rss_growth_pct": round((max(trace[len(prompts) :]) - first_cycle_end) / first_cycle_end * 100, 2),
        "rss_trace_mb": trace,
    }


def preview_cost(model: str, size: int, steps: int, rounds: int, warmup: int = 1) -> dict[str, Any]:
    """What live previews at the default interval cost, measured where they run: `overhead_pct` = the time the
    sampling loop spent making and handing over previews (the engine's latent → RGB map, timed in place, plus
    `show`) ÷ the time of the runs that made them, x 100. Exact, where an A/B of two noisy runs is not.

    Also the A/B: previews vs none interleaved on one engine (`interleaved_overhead_pct` = (ratio - 1) x 100, with
    its per-round spread). The demo's run-to-run jitter (±15 %) puts the median of 20 rounds within about ±4 %, so
    it cross-checks the in-place figure rather than deciding a 3 % goal. `preview_ms`: one preview alone.
    """
    import time

    import torch

    from studio.config import DEFAULT_LIVE_PREVIEW_EVERY
    from studio.engine import LivePreview
    from studio.engines import previews

    engine, _ = _engine_with_loras(model)
    spent: list[float] = []  # seconds of each preview, in the loop
    shown: list[tuple[int, tuple[int, int]]] = []
    approximate = previews.approximate

    def timed_approximate(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return approximate(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    def show(image: Any, step: int, _total: int) -> None:  # the handover: the UI queues the image the same way
        started = time.perf_counter()
        shown.append((step, image.size))
        spent[-1] += time.perf_counter() - started

    preview = LivePreview(every=DEFAULT_LIVE_PREVIEW_EVERY, show=show)
    request = _request(PLAIN, size, steps)
    previews.approximate = timed_approximate  # generation.py calls it through the module
    try:
        times = interleave(
            {"previews": lambda: engine.generate(request, preview=preview), "plain": lambda: engine.generate(request)},
            rounds=rounds,
            warmup=warmup,
        )
    finally:
        previews.approximate = approximate
    per_run = len(spent) // (rounds + warmup)
    if per_run == 0:
        least = DEFAULT_LIVE_PREVIEW_EVERY + 1
        raise ValueError(f"steps={steps}: no live preview is made with fewer than {least} steps")
    made = spent[warmup * per_run :]  # the timed runs' previews (the warm-up runs came first)
    summary = ratio_summary(times["previews"], times["plain"])
    plain_ms = Stats.of(times["plain"]).median * 1000
    latents = torch.randn(1, 4, size // 8, size // 8)
    factors = previews.factors_for(sdxl=False)
    one: list[float] = []
    for _ in range(200):
        started = time.perf_counter()
        approximate(latents, factors, 2.0)
        one.append(time.perf_counter() - started)
    return {
        "model": model,
        "size": size,
        "steps": steps,
        "every": DEFAULT_LIVE_PREVIEW_EVERY,
        "previews_per_run": per_run,
        "preview_size": list(shown[0][1]) if shown else None,
        "overhead_pct": round(sum(made) / sum(times["previews"]) * 100, 3),
        "preview_in_loop_ms": Stats.of(made).as_dict(1000, 3) if made else None,
        "plain_s": Stats.of(times["plain"]).as_dict(),
        "previews_s": Stats.of(times["previews"]).as_dict(),
        **summary,
        "interleaved_overhead_pct": round((summary["ratio"] - 1) * 100, 2),
        "preview_ms": round(Stats.of(one).median * 1000, 3),
        # Kept from earlier runs' JSON: previews per run x one preview alone ÷ the plain run.
        "derived_overhead_pct": round(per_run * Stats.of(one).median * 1000 / plain_ms * 100, 3),
    }
