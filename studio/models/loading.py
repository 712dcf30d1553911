"""Loading a ModelSource into a diffusers text-to-image pipeline, offline unless a hub model must be fetched.

Every failure is a ModelLoadError that names the model and the reason. torch, diffusers and huggingface_hub are
imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.config import hub_offline
from studio.engine import ModelLoadError
from studio.models.demo import demo_model_dir
from studio.models.single_file import (
    CONFIG_DESCRIPTIONS,
    checkpoint_config_type,
    checkpoint_shapes,
    ckpt_safe_globals,
    shipped_config_dir,
)
from studio.models.sources import DEMO_INPAINT, ModelKind, ModelSource

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)


def single_file_config_dir(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[str, Path]:
    """(config type, local diffusers config folder) for loading the checkpoint at `path` fully offline."""
    config = checkpoint_config_type(path, shapes)
    if config in ("demo", "demo-inpaint"):
        return config, demo_model_dir(inpaint=config == "demo-inpaint")
    return config, shipped_config_dir(config)


def _torch_dtype(dtype: Any) -> Any:
    if dtype is None or not isinstance(dtype, str):
        return dtype
    import torch

    value = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return value


def _safety_kwargs(model_index: dict[str, Any]) -> dict[str, Any]:
    # Skip loading a safety checker at all (SD 1.x folders ship one); pipelines without one take no such argument.
    if "safety_checker" in model_index:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _load_pretrained(location: str, dtype: Any, local_files_only: bool) -> DiffusionPipeline:
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    model_index = DiffusionPipeline.load_config(location, local_files_only=local_files_only)
    kwargs: dict[str, Any] = {"local_files_only": local_files_only, **_safety_kwargs(model_index)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        # Maps inpainting / img2img folders (e.g. StableDiffusionInpaintPipeline) to their text-to-image class.
        return AutoPipelineForText2Image.from_pretrained(location, **kwargs)
    except ValueError as err:
        if "AutoPipeline can't find a pipeline" not in str(err):
            raise
        logger.info(
            "%s: no text-to-image AutoPipeline for %s; loading it as is", location, model_index.get("_class_name")
        )
        return DiffusionPipeline.from_pretrained(location, **kwargs)


def _load_single_file(path: Path, dtype: Any) -> DiffusionPipeline:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    # Reading the shapes also validates a .ckpt: pickled code is refused before diffusers opens the file.
    shapes = checkpoint_shapes(path)
    config, config_dir = single_file_config_dir(path, shapes)
    logger.info("%s: single-file %s, config %s", path.name, CONFIG_DESCRIPTIONS.get(config, config), config_dir)
    pipeline_class = StableDiffusionXLPipeline if config.startswith("sdxl") else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"config": str(config_dir), "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    # diffusers also unpickles .ckpt with weights_only=True; allow the same harmless numpy globals there.
    with torch.serialization.safe_globals(ckpt_safe_globals()):
        return pipeline_class.from_single_file(str(path), **kwargs)


def hub_cached_file(repo_id: str, filename: str) -> str | None:
    """The path of `filename` of hub model `repo_id` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # malformed ids etc.: treat as not cached
        return None
    return found if isinstance(found, str) else None


def _hub_not_cached_error(repo_id: str, reason: str) -> ModelLoadError:
    from huggingface_hub import constants

    return ModelLoadError(
        f"{repo_id}: this Hugging Face hub model is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
        f"and {reason}. To use it, download it on a connected machine (`hf download {repo_id}`) and copy the "
        "cache here, unset HF_HUB_OFFLINE on a machine with network access, or put a .safetensors/.ckpt file or "
        "a diffusers folder in the models folder (./models)."
    )


def _load_hub(repo_id: str, dtype: Any) -> DiffusionPipeline:
    cached = hub_cached_file(repo_id, "model_index.json") is not None
    if not cached and hub_offline():
        raise _hub_not_cached_error(repo_id, "there is no network access (HF_HUB_OFFLINE is set)")
    try:
        return _load_pretrained(repo_id, dtype, local_files_only=hub_offline())
    except ModelLoadError:
        raise
    except Exception as err:
        text = f"{type(err).__name__}: {err}"
        if not cached and re.search(r"connect|resolve|network|timed? ?out|offline|local cache", text, re.I):
            raise _hub_not_cached_error(repo_id, "the hub could not be reached (no network?)") from err
        raise


def _load_by_kind(source: ModelSource, dtype: Any) -> DiffusionPipeline:
    match source.kind:
        case ModelKind.DEMO:
            folder = demo_model_dir(inpaint=source.location == DEMO_INPAINT)
            return _load_pretrained(str(folder), dtype, local_files_only=True)
        case ModelKind.DIFFUSERS:
            folder = Path(source.location)
            if not (folder / "model_index.json").is_file():
                raise ModelLoadError(f"{source.name}: {folder} is not a diffusers folder (no model_index.json)")
            return _load_pretrained(str(folder), dtype, local_files_only=True)
        case ModelKind.SINGLE_FILE:
            return _load_single_file(Path(source.location), dtype)
        case ModelKind.HUB:
            return _load_hub(source.location, dtype)


def load_pipeline(source: ModelSource, device: str = "cpu", dtype: Any = None) -> DiffusionPipeline:
    """Load the text-to-image pipeline for `source` on `device` (safety checker off, progress bar off).

    SD 1.x/2.x give a StableDiffusionPipeline, SDXL a StableDiffusionXLPipeline. Derive img2img/inpaint with
    from_pipe. Every failure is a ModelLoadError naming the model and the reason.
    """
    started = time.perf_counter()
    try:
        pipe = _load_by_kind(source, _torch_dtype(dtype))
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"{source.name}: could not load the model ({type(err).__name__}: {err})") from err
    logger.info(
        "loaded %s (%s) on %s in %.1fs", source.name, type(pipe).__name__, device, time.perf_counter() - started
    )
    return pipe


def is_inpaint_unet(pipe: Any) -> bool:
    """True for a dedicated inpainting model (9-channel UNet): it can only inpaint."""
    unet = getattr(pipe, "unet", None)
    return unet is not None and getattr(unet.config, "in_channels", 4) == 9
