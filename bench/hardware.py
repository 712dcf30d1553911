"""How close to the hardware: the machine's matmul peaks and the UNet's FLOPs per guided step.

- `machine_peak` (a worker, so its threads are the engine's: torch's and OpenVINO's defaults in a fresh process):
  a 4096² matmul in bf16 and in f32, each through torch and through OpenVINO; the best of five runs (quick: three)
  after a warm-up. `bf16_matmul_tflops` and `f32_matmul_tflops` are the better of the two libraries: what this CPU
  can do on these threads. On a CPU without native bf16 (no avx512_bf16 or AMX: `bf16_native` false) torch
  emulates bf16 and OpenVINO runs its bf16 hint in f32, and so does the studio's engine: its peak fraction is then
  taken against `f32_matmul_tflops` (bench.sections.peak_fraction).
- `unet_tflop`: FLOPs of one guided SD 1.5 UNet step (batch 2: conditional + unconditional) counted by
  torch.utils.flop_counter.FlopCounterMode on the meta device, from the shipped config (studio/configs/sd-v1): no
  weights, no compute, exact for the architecture. A multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MATMUL_SIDE = 4096
SD1_CONFIG = Path(__file__).resolve().parents[1] / "studio" / "configs" / "sd-v1"


def _best_seconds(run: Any, repeats: int = 5) -> float:
    run()  # warm-up: kernels chosen, memory touched
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _torch_matmul(dtype_name: str, side: int, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    return 2 * side**3 / _best_seconds(lambda: torch.matmul(a, b), repeats) / 1e12


def _openvino_matmul(hint: str, side: int, repeats: int = 5) -> float | None:
    try:
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    left = ops.parameter([side, side], ov.Type.f32)
    right = ops.constant(rng.standard_normal((side, side), dtype=np.float32))
    model = ov.Model([ops.matmul(left, right, False, False)], [left])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request, x = compiled.create_infer_request(), rng.standard_normal((side, side), dtype=np.float32)
    return 2 * side**3 / _best_seconds(lambda: request.infer([x]), repeats) / 1e12


def machine_peak(side: int = MATMUL_SIDE, repeats: int = 5) -> dict[str, Any]:
    """The bf16 and f32 matmul TFLOPS of this machine on the engine's threads (best of `repeats` runs each), and
    whether it computes bf16 natively (`bf16_native`, from its CPU flags as the engine decides it)."""
    import torch

    out: dict[str, Any] = {"matmul_side": side, "matmul_repeats": repeats, "torch_threads": torch.get_num_threads()}
    try:
        from studio.engines.openvino import cpu_bf16

        out["bf16_native"] = cpu_bf16()[0]
    except ImportError:  # no OpenVINO: the engine it describes is not there either
        out["bf16_native"] = None
    out["torch_bf16_tflops"] = round(_torch_matmul("bfloat16", side, repeats), 4)
    out["torch_f32_tflops"] = round(_torch_matmul("float32", side, repeats), 4)
    out["openvino_bf16_tflops"] = _rounded(_openvino_matmul("bf16", side, repeats))
    # OpenVINO's f32 peak only where the engine runs f32: ~2 s of f32 matmuls saved on bf16 CPUs
    native = out["bf16_native"] is True
    out["openvino_f32_tflops"] = None if native else _rounded(_openvino_matmul("f32", side, repeats))
    for precision in ("bf16", "f32"):
        measured = (out[f"torch_{precision}_tflops"], out[f"openvino_{precision}_tflops"])
        out[f"{precision}_matmul_tflops"] = max(v for v in measured if v)
    return out


def _rounded(tflops: float | None) -> float | None:
    return round(tflops, 4) if tflops is not None else None


def unet_tflop(sizes: list[int], batch: int = 2) -> dict[str, float]:
    """TFLOP of one UNet call at each size (batch 2 = one guided step), counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = UNet2DConditionModel.load_config(str(SD1_CONFIG / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    out: dict[str, float] = {}
    for size in sizes:
        latent = size // 8  # the SD VAE downsamples by 8
        sample = torch.empty(batch, unet.config.in_channels, latent, latent, device="meta")
        hidden = torch.empty(batch, 77, unet.config.cross_attention_dim, device="meta")
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            unet(sample, torch.tensor(500.0, device="meta"), hidden, return_dict=False)
        out[str(size)] = round(counter.get_total_flops() / 1e12, 4)
    return out


def hardware(sizes: list[int], repeats: int = 5) -> dict[str, Any]:
    """The worker task: the machine's peak and the UNet's TFLOP per guided step at `sizes`."""
    return {**machine_peak(repeats=repeats), "unet_tflop": unet_tflop(sizes)}
