"""A LoRA and a VAE file for the demo model, so LoRA and VAE choice can be tried and tested offline.

- ``build_demo_lora``: a small kohya/A1111-format LoRA (``lora_unet_…`` / ``lora_te_…`` keys with ``lora_down``,
  ``lora_up`` and ``alpha``) for the demo UNet's attention layers and the demo text encoder's attention and MLP
  layers. Deterministic random weights from `seed`, large enough to change the demo's pixels visibly.
- ``build_demo_vae``: the demo model's VAE with a retuned decoder (a colour cast and deterministic noise), saved in
  the original (ldm) key layout of A1111's VAE files (``.safetensors`` plain, ``.pt`` as {"state_dict": …}).

Both read the demo model (built in the cache on first use). Their tensors are deterministic; safetensors writes
metadata in no fixed order, so compare LoRA files by A1111's hash (which skips the header), not by their bytes.
Importing this module is light.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from studio import fs
from studio.models.demo import demo_model_dir

logger = logging.getLogger(__name__)

DEMO_LORA_RANK = 4
DEMO_LORA_ALPHA = 2.0  # != rank on purpose: the alpha / rank scaling must be applied to match A1111
_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_DEMO_MARK = "STUDIO_DEMO_TAESD"


def _linear_shapes(module: Any, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    import torch

    return {
        name: (sub.out_features, sub.in_features)
        for name, sub in module.named_modules()
        if name.endswith(targets) and isinstance(sub, torch.nn.Linear)
    }


def _demo_shapes(model_dir: Path | None = None) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """(UNet, text encoder) Linear layers the demo LoRA adapts -> (out, in) features; built on the meta device.
    `model_dir`: another SD 1.x diffusers folder to fit (the bench's full-size model), else the demo model."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(model_dir) if model_dir is not None else demo_model_dir()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    return _linear_shapes(unet, _UNET_TARGETS), _linear_shapes(text_encoder, _TEXT_TARGETS)


def demo_lora_state(seed: int = 0, strength: float = 1.0, model_dir: Path | None = None) -> dict[str, Any]:
    """The demo LoRA's tensors in kohya's key layout (see module docstring), for the demo or `model_dir`'s model."""
    import torch

    unet_shapes, text_shapes = _demo_shapes(model_dir)
    generator = torch.Generator("cpu").manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers = [("lora_unet_", name, shape) for name, shape in unet_shapes.items()]
    # transformers 5 flattened CLIPTextModel; kohya files name its layers under text_model.
    layers += [("lora_te_text_model_", name, shape) for name, shape in text_shapes.items()]
    for prefix, name, (out_features, in_features) in layers:
        key = prefix + name.replace(".", "_")
        down = torch.randn(DEMO_LORA_RANK, in_features, generator=generator) / in_features**0.5
        up = torch.randn(out_features, DEMO_LORA_RANK, generator=generator) * (2.0 * strength)
        state[f"{key}.lora_down.weight"] = down.contiguous()
        state[f"{key}.lora_up.weight"] = up.contiguous()
        state[f"{key}.alpha"] = torch.tensor(DEMO_LORA_ALPHA)
    return state


def build_demo_lora(target: Path, seed: int = 0, strength: float = 1.0, model_dir: Path | None = None) -> Path:
    """Write the demo LoRA (kohya format, .safetensors) to `target` atomically and return `target`. With
    `model_dir` (an SD 1.x diffusers folder) the LoRA fits that model instead of the demo (random all the same)."""
    from safetensors.torch import save_file

    target = Path(target).expanduser().absolute()
    if target.suffix.lower() != ".safetensors":
        raise ValueError(f"{target.name}: the demo LoRA is a .safetensors file (got {target.suffix or 'no suffix'})")
    metadata = {  # what kohya's trainer records; A1111 shows it in the LoRA card
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(DEMO_LORA_RANK),
        "ss_network_alpha": f"{DEMO_LORA_ALPHA:g}",
        "ss_base_model_version": "sd_v1",
        "studio_demo_seed": str(seed),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.atomic_path(target) as tmp:
        save_file(demo_lora_state(seed, strength, model_dir), str(tmp), metadata=metadata)
    logger.info("wrote the demo LoRA (seed %d) to %s", seed, target)
    return target


def demo_vae_state() -> dict[str, Any]:
    """The demo VAE with a warm colour cast and retuned decoder weights, in the original (ldm) layout."""
    import torch
    from diffusers import AutoencoderKL

    from studio.testing.checkpoints import vae_to_original

    vae = AutoencoderKL.from_pretrained(demo_model_dir() / "vae")
    generator = torch.Generator("cpu").manual_seed(7)
    with torch.no_grad():
        for name, param in vae.decoder.named_parameters():
            if name.startswith("up_blocks") and param.ndim == 4:
                param.mul_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
        vae.decoder.conv_out.bias.add_(torch.tensor([0.25, 0.05, -0.2]))
    state = vae_to_original(vae.state_dict(), dict(vae.config))
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def build_demo_vae(target: Path) -> Path:
    """Write the demo VAE to `target` (.safetensors, or .pt as A1111's {"state_dict": …}) atomically."""
    import torch
    from safetensors.torch import save_file

    target = Path(target).expanduser().absolute()
    suffix = target.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".ckpt"):
        raise ValueError(f"{target.name}: a VAE file ends in .safetensors, .pt or .ckpt (got {target.suffix!r})")
    state = demo_vae_state()
    target.parent.mkdir(parents=True, exist_ok=True)
    with fs.atomic_path(target) as tmp:
        if suffix == ".safetensors":
            save_file(state, str(tmp))
        else:
            torch.save({"state_dict": state}, str(tmp))
    logger.info("wrote the demo VAE to %s", target)
    return target


def build_demo_taesd(models_dir: Path, *, layout: str = "folder", encoder: bool = True, seed: int = 0) -> Path:
    """Write a TAESD with deterministic random weights (the published architecture, so its speed is real) where
    the studio looks for one: ``MODELS_DIR/VAE-approx/taesd/`` as a diffusers folder (`layout` "folder"), or
    A1111's ``taesd_decoder.safetensors`` + ``taesd_encoder.pth`` (`layout` "a1111"; `encoder` False writes the
    decoder only, as A1111 usually has). Returns the folder or the decoder file."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    from studio.models.taesd import approx_dir

    if layout not in ("folder", "a1111"):
        raise ValueError(f"layout: 'folder' or 'a1111', got {layout!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderTiny()
    root = approx_dir(models_dir)
    if layout == "folder":
        # Only an earlier demo TAESD is replaced: real weights are never overwritten with random ones.
        with fs.staged_dir(root / "taesd", replace=lambda old: (old / _DEMO_MARK).is_file()) as tmp:
            vae.save_pretrained(tmp, safe_serialization=True)
            (tmp / _DEMO_MARK).write_text("random weights written by studio.models.demo_extras.build_demo_taesd\n")
        logger.info("wrote a demo TAESD to %s", root / "taesd")
        return root / "taesd"
    root.mkdir(parents=True, exist_ok=True)
    # A1111's decoder is a Sequential starting with a parameterless clamp: its indices are diffusers' + 1.
    decoder = {}
    for key, value in vae.state_dict().items():
        if key.startswith("decoder.layers."):
            index, _, rest = key.removeprefix("decoder.layers.").partition(".")
            decoder[f"{int(index) + 1}.{rest}"] = value.contiguous()
    target = root / "taesd_decoder.safetensors"
    with fs.atomic_path(target) as tmp:
        save_file(decoder, str(tmp))
    if encoder:
        state = {k.removeprefix("encoder.layers."): v for k, v in vae.state_dict().items() if k.startswith("encoder.")}
        with fs.atomic_path(root / "taesd_encoder.pth") as tmp:
            torch.save(state, str(tmp))
    logger.info("wrote a demo TAESD (A1111 files) to %s", root)
    return target
