"""VAE files in MODELS_DIR/VAE/ (A1111's folder): discovery, A1111's "VAE hash", safe offline loading.

A1111 names a VAE by its file name with the suffix (``VAE: vae-ft-mse-840000-ema-pruned.safetensors`` in the
infotext); that name, the stem when only one file has it, or the path under VAE/ for a file in a subfolder selects it.

A VAE file is loaded into the architecture of the model's own VAE (its config: the same layout, and the model's
scaling factor, which differs between SD 1.x/2.x and SDXL), offline. Both key layouts found in the wild load: the
original (ldm) one of A1111's VAE files (``encoder.down.0.block.0…``, with or without ``first_stage_model.``), and
diffusers' (``encoder.down_blocks.0.resnets.0…``). ``.pt`` / ``.ckpt`` files are unpickled with
``torch.load(weights_only=True)``: pickled code is refused, never run.

Importing this module is light: torch and diffusers are imported when a file is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.engine import ModelLoadError

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)

VAE_DIR = "VAE"  # A1111's folder name under the models folder
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
HASH_LENGTH = 10  # A1111's "VAE hash": the first 10 hex digits of the file's sha256
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_LDM_PREFIXES = ("first_stage_model.", "vae.")


@dataclass(frozen=True)
class VaeFile:
    """One VAE file. `name` is the file name with its suffix (A1111's "VAE:" value); `relative` its path under VAE/."""

    name: str
    path: Path
    relative: str


def vae_dir(models_dir: Path) -> Path:
    return Path(models_dir) / VAE_DIR


def discover_vaes(models_dir: Path) -> list[VaeFile]:
    """Every VAE file under MODELS_DIR/VAE/ (any depth, as A1111 searches it), sorted by path; hidden ones skipped.

    A missing folder means no VAE files (not an error).
    """
    root = vae_dir(models_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in VAE_SUFFIXES and path.is_file():
            found.append(VaeFile(name=path.name, path=path, relative=relative.as_posix()))
    return sorted(found, key=lambda vae: (vae.relative.lower(), vae.relative))


def find_vae(name: str, vaes: list[VaeFile]) -> VaeFile | None:
    """The file `name` means: the file name, the path under VAE/, or a stem only one file has. None otherwise."""
    for vae in vaes:
        if name in (vae.name, vae.relative):
            return vae
    by_stem = [vae for vae in vaes if vae.path.stem == name]
    return by_stem[0] if len(by_stem) == 1 else None


def vae_hash(path: Path) -> str:
    """A1111's "VAE hash": the first 10 hex digits of the sha256 of the whole file (cached by path, mtime, size)."""
    from studio.models.hashing import sha256_files

    return sha256_files([Path(path)])[:HASH_LENGTH]


def read_vae_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a VAE file (.safetensors read directly; .pt/.ckpt with weights_only=True)."""
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ModelLoadError(f"{path.name}: not a valid .safetensors file ({err})") from err
    from studio.models.single_file import load_ckpt

    state = load_ckpt(path)
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def to_diffusers_layout(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The VAE weights of `state` in diffusers' AutoencoderKL layout: original (ldm) keys are converted with
    diffusers' single-file converter; training leftovers (loss.*, model_ema.*) and other models' weights dropped."""
    for prefix in _LDM_PREFIXES:  # a whole checkpoint, or a VAE saved with its prefix: keep the VAE part
        if any(key.startswith(prefix + "encoder.") for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            break
    state = {key: value for key, value in state.items() if key.startswith(_VAE_PARTS)}
    if any(key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for key in state):
        return state
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, config)


def load_vae(path: Path, like: AutoencoderKL) -> AutoencoderKL:
    """The VAE in `path` as an AutoencoderKL with `like`'s config (architecture and scaling factor), dtype and
    device, loaded offline. Raises ModelLoadError naming the file when it is unreadable, refused (pickled code),
    not a VAE, or does not fit the model's VAE."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    path = Path(path)
    if not isinstance(like, AutoencoderKL):
        kind = type(like).__name__
        raise ModelLoadError(f"{path.name}: VAE files replace an AutoencoderKL; this model's VAE is a {kind}")
    config = dict(like.config)
    state = to_diffusers_layout(read_vae_state(path), config)
    if not state:
        raise ModelLoadError(f"{path.name}: holds no VAE weights (no encoder.* / decoder.* tensors)")
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    expected = set(vae.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"{path.name}: does not fit this model's VAE ({len(missing)} weights missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    # Cast the tensors, not the module: diffusers warns on a module-level dtype cast.
    state = {key: value.to(device=like.device, dtype=like.dtype) for key, value in state.items()}
    try:
        vae.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # shapes differ: a VAE of another architecture
        detail = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{path.name}: does not fit this model's VAE ({detail})") from err
    vae.eval()
    logger.info("loaded VAE %s", path.name)
    return vae
