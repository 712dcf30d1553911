"""The built-in demo model: a tiny SD 1.x-shaped pipeline with deterministic random weights, built offline.

It lets the studio, the serving container and the tests run without downloading anything. The folder is built
once per cache (under a file lock) and written atomically, like every diffusers folder the studio saves.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio import fs
from studio.config import cache_dir
from studio.models.single_file import CONFIGS_DIR, DEMO_UNET_WIDTH
from studio.models.tokenizer import clip_tokenizer

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

# Bump when the demo architecture or weights change, so old caches are not reused.
DEMO_VERSION = "v1"


def _is_model_folder(target: Path) -> bool:
    """An existing diffusers folder may be replaced by a new save; anything else is refused (never deleted)."""
    return (target / "model_index.json").is_file()


def save_pipeline_dir(pipe: DiffusionPipeline, target: Path) -> Path:
    """Write `pipe` as a diffusers folder (safetensors) at `target` atomically: readers never see half a model.

    An existing model folder at `target` is replaced; other existing content raises FileExistsError.
    """
    with fs.staged_dir(target, replace=_is_model_folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return target


def _read_shipped_json(config: str, relative: str) -> dict[str, Any]:
    return json.loads((CONFIGS_DIR / config / relative).read_text())


def _demo_components(inpaint: bool, vocab_size: int) -> dict[str, Any]:
    """The demo's UNet, VAE and text encoder, each created under its own fixed seed (byte-identical weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(DEMO_UNET_WIDTH, 64),
            layers_per_block=2,
            sample_size=32,  # latent size: 256 px default
            in_channels=9 if inpaint else 4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        torch.manual_seed(1)
        # 4 blocks so the VAE scale factor is 8 like real SD (2 blocks would make 256 px latents 128x128: slow).
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 64, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            sample_size=256,
        )
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=2,
                pad_token_id=1,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                vocab_size=vocab_size,
                max_position_embeddings=77,
                projection_dim=32,
            )
        )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def build_demo(target: Path, inpaint: bool = False) -> Path:
    """Write the tiny SD 1.x-shaped demo pipeline as a diffusers folder at `target` and return `target`.

    Weights are random but deterministic (each component is created under its own fixed seed), so every
    process writes byte-identical safetensors. The folder is built next to `target` and renamed into place.
    `inpaint=True` gives a dedicated inpainting variant (9-channel UNet).
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    target = Path(target).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = clip_tokenizer()
    scheduler = PNDMScheduler.from_config(_read_shipped_json("sd-v1", "scheduler/scheduler_config.json"))
    pipe = StableDiffusionPipeline(
        **_demo_components(inpaint, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_pipeline_dir(pipe, target)
    logger.info(
        "built the %sdemo model in %s (%.1fs)", "inpainting " if inpaint else "", target, time.perf_counter() - started
    )
    return target


def demo_model_dir(inpaint: bool = False) -> Path:
    """The demo model's folder in the cache, built on first use (under a file lock) and reused afterwards."""
    target = cache_dir() / (f"demo-inpaint-{DEMO_VERSION}" if inpaint else f"demo-{DEMO_VERSION}")
    if (target / "model_index.json").is_file():
        return target
    with fs.file_lock(target.with_name(target.name + ".lock")):
        if not (target / "model_index.json").is_file():
            build_demo(target, inpaint=inpaint)
    return target
