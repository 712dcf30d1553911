"""Single-file checkpoints (A1111-style .safetensors / .ckpt): safe reading, family detection, offline configs.

A checkpoint is loaded with a published diffusers config shipped in ``studio/configs`` plus CLIP tokenizers built
offline, so no hub access is ever needed. ``.ckpt`` files are only unpickled with ``torch.load(weights_only=True)``:
a checkpoint that carries code is refused before anything else touches it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from studio import fs
from studio.config import cache_dir
from studio.engine import ModelLoadError
from studio.models.tokenizer import EOT, clip_tokenizer

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

# Output channels of the demo UNet's conv_in (real SD models have 320): how a demo checkpoint is recognised.
DEMO_UNET_WIDTH = 32

# diffusers' infer_diffusers_model_type() name -> the config folder shipped in studio/configs.
_CONFIG_FOR_MODEL_TYPE = {
    "v1": "sd-v1",
    "inpainting": "sd-v1-inpainting",
    "v2": "sd-v2-768-v",  # or sd-v2-base: decided by a sidecar .yaml, see _sd2_config()
    "inpainting_v2": "sd-v2-inpainting",
    "xl_base": "sdxl-base",
    "xl_inpaint": "sdxl-inpainting",
}
# Pad token per tokenizer folder: SD 1.x pads with <|endoftext|>; OpenCLIP ones (SD 2.x, SDXL tokenizer_2) with "!".
_TOKENIZER_PADS = {
    "sd-v1": {"tokenizer": EOT},
    "sd-v1-inpainting": {"tokenizer": EOT},
    "sd-v2-768-v": {"tokenizer": "!"},
    "sd-v2-base": {"tokenizer": "!"},
    "sd-v2-inpainting": {"tokenizer": "!"},
    "sdxl-base": {"tokenizer": EOT, "tokenizer_2": "!"},
    "sdxl-inpainting": {"tokenizer": EOT, "tokenizer_2": "!"},
}
CONFIG_DESCRIPTIONS = {
    "demo": "built-in tiny demo model",
    "demo-inpaint": "built-in tiny demo model, inpainting (9-channel UNet)",
    "sd-v1": "Stable Diffusion 1.x",
    "sd-v1-inpainting": "Stable Diffusion 1.x inpainting",
    "sd-v2-768-v": "Stable Diffusion 2.x 768 (v-prediction)",
    "sd-v2-base": "Stable Diffusion 2.x base 512 (epsilon)",
    "sd-v2-inpainting": "Stable Diffusion 2.x inpainting",
    "sdxl-base": "Stable Diffusion XL base",
    "sdxl-inpainting": "Stable Diffusion XL inpainting",
}


class _IgnoredPickledObject:
    """Stand-in for harmless training objects some .ckpt files carry (e.g. a Lightning ModelCheckpoint)."""

    def __setstate__(self, state: Any) -> None:  # the state is dropped: only the weights matter
        pass


def ckpt_safe_globals() -> list[Any]:
    """Extra globals allowed by torch.load(weights_only=True): numpy scalars/arrays (global_step etc.) and stand-ins.

    None of these run code from the file: they build numbers, arrays and dtypes, or a do-nothing placeholder.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    allowed.append((_IgnoredPickledObject, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"))
    return allowed


def _refusal(path: Path, err: Exception) -> ModelLoadError:
    """The error for a .ckpt that torch's weights-only unpickler rejected: pickled code, or not a checkpoint."""
    # torch wraps the reason in a long help text; keep the "WeightsUnpickler error: ..." part.
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(err), re.S)
    reason = " ".join((found.group(1) if found else str(err)).split())
    if not re.search(r"GLOBAL|unrecognized function|Can only (create|build)|blocked|allowlist", reason):
        return ModelLoadError(f"{path.name}: not a readable .ckpt checkpoint ({reason})")
    culprit = re.search(r"GLOBAL (\S+)", reason) or re.search(r"function (.+?)(?: which|$)", reason)
    detail = f"it references {culprit.group(1)}" if culprit else reason
    return ModelLoadError(
        f"{path.name}: refused to load: the checkpoint contains pickled code that is not plain tensors "
        f"({detail}). Use a .safetensors version of this model."
    )


def load_ckpt(path: Path) -> dict[str, Any]:
    """Unpickle a .ckpt with weights_only=True (tensors memory-mapped when possible) and return its state dict.

    Pickled code (anything but tensors, containers, numbers and the allowed globals) raises ModelLoadError and is
    never executed.
    """
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(ckpt_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except Exception as err:
        raise ModelLoadError(f"{path.name}: not a readable .ckpt checkpoint ({type(err).__name__}: {err})") from err
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name}: not a model checkpoint (it holds a {type(obj).__name__}, not weights)")
    return obj


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a single-file checkpoint, without loading safetensors weights."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as err:
            raise ModelLoadError(f"{path.name}: not a valid .safetensors file ({err})") from err
    import torch

    state = load_ckpt(path)
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _sd2_config(path: Path) -> str:
    """SD 2.x 768 (v-prediction) or 512 base (epsilon): the weights look the same, so use an A1111 sidecar yaml.

    <model>.yaml next to the file with `parameterization: "v"` -> v-prediction; a yaml without it -> the 512
    epsilon base; no yaml -> v-prediction (SD 2.0/2.1 768, what diffusers also assumes).
    """
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return "sd-v2-768-v"
    text = sidecar.read_text(errors="replace")
    return "sd-v2-768-v" if re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", text, re.M) else "sd-v2-base"


def checkpoint_config_type(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """Which config a single-file checkpoint needs: "demo", "demo-inpaint" or a folder name in studio/configs.

    Decided from tensor names and shapes with diffusers' infer_diffusers_model_type; unsupported families
    (LoRA, VAE, SD3, Flux, refiner, ...) raise ModelLoadError naming what was found.
    """
    path = Path(path)
    shapes = checkpoint_shapes(path) if shapes is None else shapes
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ModelLoadError(
            f"{path.name}: not a Stable Diffusion checkpoint (no UNet weights model.diffusion_model.*). "
            "It may be a LoRA, a VAE, an embedding or another model family; single files of SD 1.x, SD 2.x and "
            "SDXL are supported."
        )
    if conv_in[0] == DEMO_UNET_WIDTH:
        return "demo-inpaint" if conv_in[1] == 9 else "demo"

    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    model_type = infer_diffusers_model_type(meta)
    config = _CONFIG_FOR_MODEL_TYPE.get(model_type)
    if config is None or conv_in[0] != 320 or conv_in[1] not in (4, 9):
        raise ModelLoadError(
            f"{path.name}: this looks like a {model_type!r} checkpoint (UNet input {conv_in[1]} channels, width "
            f"{conv_in[0]}), which the studio cannot load as a single file. Supported: SD 1.x, SD 2.x, SDXL base "
            "and their inpainting variants. Convert other models to a diffusers folder."
        )
    if config == "sd-v2-768-v":
        config = _sd2_config(path)
    return config


def _replace_leftover(_target: Path) -> bool:
    """A config folder in the studio's cache without model_index.json is an incomplete leftover: replace it."""
    return True


def shipped_config_dir(config: str) -> Path:
    """A complete diffusers config folder (JSON from studio/configs + CLIP tokenizers) in the cache, built once."""
    shipped = CONFIGS_DIR / config
    if not (shipped / "model_index.json").is_file():
        raise ModelLoadError(f"no shipped config {config!r} in {CONFIGS_DIR}")
    digest = hashlib.sha256()
    files = sorted(p for p in shipped.rglob("*.json"))
    for file in files:
        digest.update(str(file.relative_to(shipped)).encode() + b"\0" + file.read_bytes())
    target = cache_dir() / "configs" / f"{config}-{digest.hexdigest()[:12]}"
    if (target / "model_index.json").is_file():
        return target
    with fs.file_lock(target.with_name(target.name + ".lock")):
        if (target / "model_index.json").is_file():
            return target
        with fs.staged_dir(target, replace=_replace_leftover) as tmp:
            for file in files:
                dest = tmp / file.relative_to(shipped)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, dest)
            for folder, pad in _TOKENIZER_PADS[config].items():
                clip_tokenizer(pad_token=pad).save_pretrained(tmp / folder)
    return target
