"""GPU section (runs only when torch sees CUDA): plain diffusers fp16 vs the studio's speed settings on the same card.

Measured on the full-size SD 1.5 architecture (random weights, real cost per step) at 512x512: it/s (denoising
steps per second, from step-callback timestamps) and images/s (whole pipeline calls). Everything is interleaved
against plain diffusers fp16 (`from_pretrained(..., torch_dtype=float16)`, nothing else set):

- `batch_1` / `batch_8`: the studio's CUDA defaults (`studio.engines.tuning.default_tuning("cuda")`: SDPA,
  channels_last, TF32/cuDNN autotune). Goal: `gpu.speedup` (images/s at batch 1) >= 1.2.
- `settings`: each setting alone vs plain at batch 1 (`sdpa`, `channels_last`, `fuse_qkv`, `tf32`, and in the full
  run `compile_unet`), plus `fast_compiled` (the defaults + torch.compile of the UNet: the studio with `--compile`).
- `batched_cfg`: not a setting. diffusers runs the unconditional and conditional halves of a guided step as one UNet
  call of batch 2, in plain and fast alike; the section checks it (`unet_calls_per_step`, `unet_batch`).
- How close to the card: `fp16_matmul_tflops` (the best of timed 8192² fp16 torch.matmul, CUDA events),
  `unet_tflop_512` (FLOPs of one guided 512² UNet step, counted on the meta device by bench.hardware.unet_tflop) and
  `unet_peak_fraction_512` {plain, fast, ...}: unet_tflop_512 x it/s at batch 1 / fp16_matmul_tflops.

For scale: on an H100 plain diffusers does ~55 it/s and the best public stacks ~105 it/s. It needs nothing beyond
the studio's install: the model is built from the shipped configs (bench.models.ensure_fullsize).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from bench.core import Stats, interleave, ratio_summary
from studio.engines.tuning import Tuning, apply_tuning, default_tuning

logger = logging.getLogger(__name__)

MATMUL_SIDE = 8192
PROMPT = "a photo of an astronaut riding a horse"
ALONE = ("sdpa", "channels_last", "fuse_qkv", "tf32")  # each measured alone against plain (+ compile_unet in full)


def apply_fast_settings(pipe: Any, *, compile_unet: bool = False, large: bool = False) -> Any:
    """The studio's CUDA settings on `pipe` (studio.engines.tuning), in place; VAE tiling when `large`."""
    apply_tuning(pipe, default_tuning("cuda", compile_unet=compile_unet), "cuda")
    if large:
        pipe.vae.enable_tiling()
    return pipe


def fp16_matmul_tflops(side: int = MATMUL_SIDE, repeats: int = 10) -> float:
    """The card's fp16 matmul peak: the best of `repeats` timed side x side torch.matmul (CUDA events)."""
    import torch

    a = torch.randn(side, side, dtype=torch.float16, device="cuda")
    b = torch.randn(side, side, dtype=torch.float16, device="cuda")
    for _ in range(3):  # warm-up: cuBLAS picks its kernel, clocks ramp up
        torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * side**3 / best / 1e12


class _Backends:
    """TF32 and cuDNN autotune are process-wide: each measured call sets them for its own variant (torch's defaults
    for every variant without `tf32`), so plain never runs with the fast flags. Made before any variant is tuned
    (`apply_tuning` sets them), so the defaults read are torch's."""

    def __init__(self) -> None:
        import torch

        self.defaults = self._read(torch)

    @staticmethod
    def _read(torch: Any) -> tuple[bool, bool, bool]:
        backends = torch.backends
        return backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark

    def set(self, tuning: Tuning) -> None:
        import torch

        matmul, cudnn, benchmark = (True, True, True) if tuning.tf32 else self.defaults
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cudnn.benchmark = benchmark


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _measure(pipe: Any, batch: int, steps: int, size: int, device: str) -> dict[str, float]:
    """One pipeline call: denoising it/s (from step timestamps) and images/s (the whole call)."""
    import torch

    stamps: list[float] = []

    def on_step(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        _sync(device)
        stamps.append(time.perf_counter())
        return {}

    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt=[PROMPT] * batch,
            num_inference_steps=steps,
            width=size,
            height=size,
            generator=torch.Generator(device).manual_seed(0),
            callback_on_step_end=on_step,
            output_type="np",
        )
    _sync(device)
    total = time.perf_counter() - started
    loop = stamps[-1] - stamps[0] if len(stamps) > 1 else total
    its = (len(stamps) - 1) / loop if len(stamps) > 1 else steps / total
    return {"its": its, "images_per_s": batch / total, "loop_steps": len(stamps)}


def variant(plain: Any, tuning: Tuning, device: str) -> Any:
    """A pipeline sharing `plain`'s text encoder and tokenizer, with its own copies of the UNet and VAE tuned."""
    components = {**plain.components, "unet": copy.deepcopy(plain.unet), "vae": copy.deepcopy(plain.vae)}
    pipe = type(plain)(**components)
    pipe.set_progress_bar_config(disable=True)
    apply_tuning(pipe, tuning, device)
    return pipe


def compare(
    runs: dict[str, tuple[Any, Tuning]],
    batch: int,
    steps: int,
    size: int,
    rounds: int,
    device: str,
    backends: _Backends | None = None,
) -> dict[str, Any]:
    """`runs` (name -> pipeline, tuning; the first is the baseline) interleaved: it/s and images/s {stats} per name
    and each other name's `speedup` over the first (images/s, median of per-round ratios, with the round spread)."""
    backends = backends or _Backends()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}

    def call(name: str) -> None:
        pipe, tuning = runs[name]
        backends.set(tuning)
        samples[name].append(_measure(pipe, batch, steps, size, device))

    try:
        times = interleave({name: (lambda n=name: call(n)) for name in runs}, rounds=rounds, warmup=1)
    finally:
        backends.set(Tuning())  # back to torch's defaults
    row: dict[str, Any] = {}
    for name in runs:
        measured = samples[name][1:]  # drop the warm-up (and torch.compile's compilation)
        row[f"{name}_its"] = Stats.of([m["its"] for m in measured]).as_dict(digits=2)
        row[f"{name}_images_per_s"] = Stats.of([m["images_per_s"] for m in measured]).as_dict(digits=3)
        row[f"{name}_call_s"] = Stats.of(times[name]).as_dict()
    baseline, *others = runs
    for name in others:
        ratio = ratio_summary(times[baseline], times[name])  # baseline seconds / these seconds = speedup
        row[f"{name}_speedup"] = ratio["ratio"]
        row[f"{name}_speedup_spread"] = {k: ratio[k] for k in ("round_ratio_min", "round_ratio_max")}
    return row


def cfg_batching(pipe: Any, device: str, size: int = 64, steps: int = 2) -> dict[str, Any]:
    """How a guided call runs its UNet: calls per denoising-loop step (PNDM, the SD 1.5 default, loops once more than
    `steps`) and the batch of each call; batched CFG is one call of batch 2 per step."""
    batches: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda _module, args: batches.append(int(args[0].shape[0])))
    try:
        loop_steps = _measure(pipe, 1, steps, size, device)["loop_steps"]
    finally:
        handle.remove()
    per_step, batch = len(batches) / loop_steps, max(batches)
    return {"batched": per_step == 1 and set(batches) == {2}, "unet_calls_per_step": per_step, "unet_batch": batch}


def peak_fraction(unet_tflop: float, its: float, peak_tflops: float) -> float:
    """Achieved UNet TFLOPS (TFLOP per guided step x steps per second) over the card's matmul peak."""
    return round(unet_tflop * its / peak_tflops, 4)


def run(quick: bool) -> dict[str, Any]:
    """The GPU section: {"skipped": reason} without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU (torch.cuda.is_available() is False)", "speedup": None}
    from diffusers import StableDiffusionPipeline

    from bench.hardware import unet_tflop
    from bench.models import ensure_fullsize

    steps, size, rounds = (10, 512, 2) if quick else (20, 512, 3)
    compiled = not quick  # torch.compile (max-autotune) takes minutes per variant: the full run only
    plain = StableDiffusionPipeline.from_pretrained(
        str(ensure_fullsize()), torch_dtype=torch.float16, safety_checker=None
    ).to("cuda")
    plain.set_progress_bar_config(disable=True)
    backends = _Backends()  # before any variant is tuned
    fast_tuning = default_tuning("cuda")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "steps": steps, "size": size, "compiled": compiled}
    out["fast_settings"] = fast_tuning.describe()
    out["fp16_matmul_tflops"] = round(fp16_matmul_tflops(), 2)
    out["unet_tflop_512"] = unet_tflop([512])["512"]
    out["batched_cfg"] = cfg_batching(plain, "cuda")
    fast = variant(plain, fast_tuning, "cuda")
    for batch in (1, 8):
        runs = {"plain": (plain, Tuning()), "fast": (fast, fast_tuning)}
        row = compare(runs, batch, steps, size, rounds, "cuda", backends)
        row["speedup"] = row.pop("fast_speedup")
        out[f"batch_{batch}"] = row
    out["speedup"] = out["batch_1"]["speedup"]
    del fast
    torch.cuda.empty_cache()
    out["settings"] = _settings_alone(plain, compiled, (steps, size, rounds), backends)
    fractions = {name: out["batch_1"][f"{name}_its"]["median"] for name in ("plain", "fast")}
    for name, row in out["settings"].items():
        if "error" not in row:
            fractions[name] = row[f"{name}_its"]["median"]
    out["unet_peak_fraction_512"] = {
        name: peak_fraction(out["unet_tflop_512"], its, out["fp16_matmul_tflops"]) for name, its in fractions.items()
    }
    return out


def _settings_alone(plain: Any, compiled: bool, shape: tuple[int, int, int], backends: _Backends) -> dict[str, Any]:
    """Each setting alone vs plain at batch 1 (one tuned copy alive at a time), and the studio with --compile."""
    import torch

    cases = {name: Tuning.of([name]) for name in ALONE + (("compile_unet",) if compiled else ())}
    if compiled:
        cases["fast_compiled"] = default_tuning("cuda", compile_unet=True)
    rows: dict[str, Any] = {}
    for name, tuning in cases.items():
        pipe = variant(plain, tuning, "cuda")
        try:
            rows[name] = compare({"plain": (plain, Tuning()), name: (pipe, tuning)}, 1, *shape, "cuda", backends)
        except Exception as exc:  # e.g. torch.compile without a working toolchain: report it, measure the rest
            logger.warning("gpu setting %s failed: %s", name, exc)
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
        del pipe
        torch.cuda.empty_cache()
    return rows
