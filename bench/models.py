"""Models the benchmark runs: the demo model, and the full-size SD 1.5 architecture with random weights.

The full-size model is built once from the real SD 1.5 configs shipped in studio/configs/sd-v1 (UNet 860 M, VAE
84 M, CLIP text encoder 123 M parameters, the real CLIP tokenizer), with deterministic weights (fixed seeds per
component), and saved as a diffusers folder under ``studio.config.cache_dir()/bench`` (about 4 GB, never in git).
Random weights give noise images, but every multiply-add of a real SD 1.5 step is there, so time and memory are the
real ones. Single-file (.safetensors, original A1111 key layout) copies are written next to it on demand, for the
"diffusers folder vs single file" load-time comparison.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from studio.config import cache_dir
from studio.fs import atomic_path, file_lock
from studio.models import save_pipeline_dir

logger = logging.getLogger(__name__)

FULLSIZE_VERSION = "v1"  # bump when the recipe changes so an old folder is not reused
FULLSIZE_NAME = f"sd15-random-{FULLSIZE_VERSION}"
MODEL_NAMES = ("demo", "sd15")  # what the benchmark's model arguments accept
_REPO = Path(__file__).resolve().parents[1]


def bench_cache() -> Path:
    """``studio.config.cache_dir()/bench``: where benchmark models live."""
    return cache_dir() / "bench"


def fullsize_dir() -> Path:
    """Where the full-size random SD 1.5 model lives (it may not exist yet; see `ensure_fullsize`)."""
    return bench_cache() / FULLSIZE_NAME


def ensure_fullsize() -> Path:
    """The full-size random SD 1.5 diffusers folder, built on first use (under a file lock) and reused."""
    target = fullsize_dir()
    if (target / "model_index.json").is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if not (target / "model_index.json").is_file():
            _build_fullsize(target)
    return target


def _build_fullsize(target: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from studio.models import shipped_config_dir

    started = time.perf_counter()
    configs = shipped_config_dir("sd-v1")  # the JSON configs plus the offline CLIP tokenizer
    logger.info("building the full-size random SD 1.5 model in %s (one-off, ~1 minute, ~4 GB)", target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(15)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        torch.manual_seed(16)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        torch.manual_seed(17)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(configs / "tokenizer"),
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_pretrained(configs / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_pipeline_dir(pipe, target)
    logger.info("built %s in %.0fs", target, time.perf_counter() - started)


def model_spec(name: str) -> str:
    """What LocalEngine accepts for a benchmark model name: "demo", or the full-size folder ("sd15")."""
    if name == "demo":
        return "demo"
    if name == "sd15":
        return str(ensure_fullsize())
    raise ValueError(f"benchmark model: expected one of {', '.join(MODEL_NAMES)}, got {name!r}")


def ensure_single_file(name: str) -> Path:
    """A single-file .safetensors copy (original SD key layout) of benchmark model `name`, written once.

    Uses the tests' diffusers -> original converter (studio/testing/checkpoints.py): diffusers ships only the
    other direction.
    """
    target = bench_cache() / f"{name if name != 'sd15' else FULLSIZE_NAME}.safetensors"
    if target.is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if target.is_file():
            return target
        from studio import models
        from studio.testing.checkpoints import write_safetensors

        started = time.perf_counter()
        pipe = models.load_pipeline(models.resolve_model(model_spec(name), Path("models")))
        with atomic_path(target) as tmp:
            write_safetensors(pipe, tmp)
        logger.info("wrote %s in %.0fs", target, time.perf_counter() - started)
    return target
