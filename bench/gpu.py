"""GPU section (runs only when torch sees CUDA): plain diffusers fp16 vs the studio's fast settings.

Measured on the full-size SD 1.5 architecture (random weights, real cost per step) at 512x512: it/s (denoising
steps per second, from step-callback timestamps) and images/s (whole pipeline calls) at batch 1 and batch 8,
interleaved plain / fast. Goal: fast >= 1.2x plain (`gpu.speedup`, images/s at batch 1). For scale: on an H100
plain diffusers does ~55 it/s and the best public stacks ~105 it/s.

`apply_fast_settings` is what the studio's CUDA path should apply (SDPA attention, channels_last, fused QKV
projections, TF32 matmuls, cuDNN autotune, optional torch.compile, VAE tiling above 1024 px). It lives here until
LocalEngine adopts it; the lead's integration note says where.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench.core import Stats, interleave

logger = logging.getLogger(__name__)


def apply_fast_settings(pipe: Any, *, compile_unet: bool = False, large: bool = False) -> Any:
    """Speed settings for a CUDA fp16 pipeline, in place; returns the pipeline."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    try:
        pipe.fuse_qkv_projections()
    except Exception as exc:  # older/other pipelines: not fatal, just slower
        logger.info("fuse_qkv_projections unavailable: %s", exc)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    if large:
        pipe.vae.enable_tiling()
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
    return pipe


def _measure(pipe: Any, batch: int, steps: int, size: int) -> dict[str, float]:
    import torch

    stamps: list[float] = []

    def on_step(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return {}

    torch.cuda.synchronize()
    started = time.perf_counter()
    pipe(
        prompt=["a photo of an astronaut riding a horse"] * batch,
        num_inference_steps=steps,
        width=size,
        height=size,
        generator=torch.Generator("cuda").manual_seed(0),
        callback_on_step_end=on_step,
        output_type="np",
    )
    torch.cuda.synchronize()
    total = time.perf_counter() - started
    loop = stamps[-1] - stamps[0] if len(stamps) > 1 else total
    return {"its": (len(stamps) - 1) / loop if len(stamps) > 1 else steps / total, "images_per_s": batch / total}


def run(quick: bool) -> dict[str, Any]:
    """The GPU section: {"skipped": reason} without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU (torch.cuda.is_available() is False)", "speedup": None}
    from diffusers import StableDiffusionPipeline

    from bench.models import ensure_fullsize

    folder = str(ensure_fullsize())
    steps, size, rounds = (10, 512, 2) if quick else (20, 512, 3)
    plain = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None).to("cuda")
    fast = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None).to("cuda")
    apply_fast_settings(fast, compile_unet=not quick)
    for pipe in (plain, fast):
        pipe.set_progress_bar_config(disable=True)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "steps": steps, "size": size, "compiled": not quick}
    for batch in (1, 8):
        samples: dict[str, list[dict[str, float]]] = {"plain": [], "fast": []}
        times = interleave(
            {
                "plain": lambda b=batch, s=samples: s["plain"].append(_measure(plain, b, steps, size)),
                "fast": lambda b=batch, s=samples: s["fast"].append(_measure(fast, b, steps, size)),
            },
            rounds=rounds,
            warmup=1,
        )
        row: dict[str, Any] = {}
        for name in ("plain", "fast"):
            measured = samples[name][1:]  # drop the warm-up
            row[f"{name}_its"] = Stats.of([m["its"] for m in measured]).as_dict(digits=2)
            row[f"{name}_images_per_s"] = Stats.of([m["images_per_s"] for m in measured]).as_dict(digits=3)
            row[f"{name}_call_s"] = Stats.of(times[name]).as_dict()
        row["speedup"] = round(row["fast_images_per_s"]["median"] / row["plain_images_per_s"]["median"], 3)
        out[f"batch_{batch}"] = row
    out["speedup"] = out["batch_1"]["speedup"]
    return out
