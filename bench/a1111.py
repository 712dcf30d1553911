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
    """Live previews at the default interval vs none, interleaved on one engine: `overhead_pct` = (ratio - 1) x 100.

    Also the cost of one preview on its own (latent → RGB map + PIL image, median of 200) and what it adds per run
    at this size and step count (`derived_overhead_pct`): readable where the interleaved ratio drowns in noise.
    """
    import time

    import torch

    from studio.config import DEFAULT_LIVE_PREVIEW_EVERY
    from studio.engine import LivePreview
    from studio.engines import previews

    engine, _ = _engine_with_loras(model)
    shown: list[int] = []
    preview = LivePreview(every=DEFAULT_LIVE_PREVIEW_EVERY, show=lambda _image, step, _total: shown.append(step))
    request = _request(PLAIN, size, steps)
    times = interleave(
        {"previews": lambda: engine.generate(request, preview=preview), "plain": lambda: engine.generate(request)},
        rounds=rounds,
        warmup=warmup,
    )
    summary = ratio_summary(times["previews"], times["plain"])
    latents = torch.randn(1, 4, size // 8, size // 8)
    factors = previews.factors_for(sdxl=False)
    one: list[float] = []
    for _ in range(200):
        started = time.perf_counter()
        previews.approximate(latents, factors, 2.0)
        one.append(time.perf_counter() - started)
    per_run = len(shown) / (rounds + warmup)
    preview_ms = Stats.of(one).median * 1000
    plain_ms = Stats.of(times["plain"]).median * 1000
    return {
        "model": model,
        "size": size,
        "steps": steps,
        "every": DEFAULT_LIVE_PREVIEW_EVERY,
        "previews_per_run": per_run,
        "plain_s": Stats.of(times["plain"]).as_dict(),
        "previews_s": Stats.of(times["previews"]).as_dict(),
        **summary,
        "overhead_pct": round((summary["ratio"] - 1) * 100, 2),
        "preview_ms": round(preview_ms, 3),
        "derived_overhead_pct": round(per_run * preview_ms / plain_ms * 100, 3),
    }
