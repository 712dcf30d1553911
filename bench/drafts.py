"""Fast drafts (`drafts` section): what a 512x512 decode costs with each VAE, and a 4-step LCM image on OpenVINO.

- `vae_decode_512`: one 512x512 decode (a 1x4x64x64 latent), interleaved: the torch engine's AutoencoderKL
  (fp32), the OpenVINO engine's compiled VAE decoder, and TAESD ("Approx (TAESD)", diffusers' AutoencoderTiny in
  the published architecture with random weights: the real cost). Speedups are torch VAE time / other time.
- `lcm_512`: one whole 512x512 image with the "LCM" preset (sampler LCM, 4 steps, CFG 1.5) on the OpenVINO engine,
  with the model's VAE and with TAESD. The full-size SD 1.5 architecture with random weights: the real cost per
  step (an LCM-LoRA changes the weights, not the cost; LoRAs need the torch engine today).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.core import Stats, interleave, ratio_summary, timed

LCM_PRESET = {"sampler": "LCM", "steps": 4, "cfg_scale": 1.5}


def vae_decode(model: str, size: int, rounds: int) -> dict[str, Any]:
    """One `size`² decode per VAE, interleaved over `rounds` (after one warm-up each)."""
    import torch

    from bench.workers import _engine
    from studio.models.demo_extras import build_demo_taesd
    from studio.models.taesd import find_taesd, load_taesd
    from studio.types import Task

    ov_engine = _engine(model, "openvino")
    ov_engine.load()
    torch_engine = _engine(model)
    torch_engine.load()
    with tempfile.TemporaryDirectory(prefix="bench-taesd-") as models_dir:
        build_demo_taesd(Path(models_dir))
        taesd = load_taesd(find_taesd(Path(models_dir), offline=True))
    vaes = {
        "torch": torch_engine.pipelines[Task.TXT2IMG].vae,
        "openvino": ov_engine.pipelines[Task.TXT2IMG].vae,
        "taesd": taesd,
    }
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(size))

    def decode(vae: Any) -> Any:
        with torch.inference_mode():
            return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]

    times = interleave({name: (lambda v=vae: decode(v)) for name, vae in vaes.items()}, rounds=rounds, warmup=1)
    out: dict[str, Any] = {"model": model, "size": size, "rounds": rounds}
    for name in vaes:
        out[f"{name}_s"] = Stats.of(times[name]).as_dict(digits=4)
    for name in ("openvino", "taesd"):
        summary = ratio_summary(times["torch"], times[name])
        out[f"{name}_speedup"] = summary["ratio"]
        out[f"{name}_speedup_spread"] = [summary["round_ratio_min"], summary["round_ratio_max"]]
    return out


def lcm_image(model: str, size: int) -> dict[str, Any]:
    """One LCM-preset image on the OpenVINO engine with the model's VAE and with TAESD (after a warm-up)."""
    from bench.models import model_spec
    from bench.workers import _build, _request
    from studio.models.demo_extras import build_demo_taesd
    from studio.models.taesd import TAESD

    with tempfile.TemporaryDirectory(prefix="bench-lcm-") as models_dir:
        build_demo_taesd(Path(models_dir))
        engine = _build(model_spec(model), kind="openvino", precision="bf16", models_dir=models_dir)
        engine.load()
        request = _request(size, **LCM_PRESET)
        engine.generate(_request(64, sampler="LCM", steps=1))  # warm-up: first-call setup, not the image
        full_s, _ = timed(lambda: engine.generate(request))
        taesd_s, result = timed(lambda: engine.generate(request.replace(vae=TAESD)))
    return {
        "model": model,
        "size": size,
        **LCM_PRESET,
        "openvino_s": round(full_s, 2),
        "openvino_taesd_s": round(taesd_s, 2),
        "infotext": result.infotexts[0],
    }
