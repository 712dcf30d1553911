"""The torch engine's speed settings (`Tuning`) and `apply_tuning`, which sets them on a loaded pipeline in place.

- `sdpa`: every UNet and VAE attention through torch's scaled_dot_product_attention (diffusers' AttnProcessor2_0).
  diffusers already picks it by default on torch >= 2, so this pins it rather than changing the math.
- `channels_last`: the UNet's and VAE's weights in NHWC, the layout cuDNN's fast fp16 convolutions want.
- `fuse_qkv`: one matmul for the query, key and value projections (diffusers' `fuse_qkv_projections`), where the
  pipeline supports it. Off by default: peft LoRAs wrap `to_q`/`to_k`/`to_v`, which the fused processor no longer
  calls, so a request's LoRAs would silently stop acting on attention (studio.engines.adapters loads them per
  request).
- `tf32`: TF32 matmuls and convolutions and cuDNN autotune; CUDA only (ignored on a CPU).
- `compile_unet`: torch.compile of the UNet (`--compile`): faster steps after a slow first image (minutes on a GPU
  with max-autotune) and a recompile per new size. Opt-in everywhere; needs a C++ compiler on a CPU (inductor).

Batched CFG is not a setting: diffusers' SD pipelines (and so studio.engines.generation) run the unconditional and
conditional halves of a guided step as one UNet call of batch 2 already (tests/unit/engines/test_tuning.py checks).

Defaults (`default_tuning`): on CUDA `sdpa`, `channels_last` and `tf32` (the fast fp16 path bench/gpu.py measures);
on a CPU nothing, so CPU pixels and speed stay what diffusers' defaults give. The OpenVINO engine replaces the torch
modules and gets no tuning. Nothing heavy is imported at module import.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from studio.config import ConfigError

logger = logging.getLogger(__name__)

# How torch.compile is asked for, per device: max-autotune searches GEMM/conv kernels on a GPU (no CUDA graphs: sizes
# change between requests); on a CPU inductor's default mode. fullgraph stays off so a LoRA's peft layers or another
# graph break falls back to eager for that part instead of failing the generation.
COMPILE_MODES = {"cuda": "max-autotune-no-cudagraphs", "cpu": "default"}


@dataclass(frozen=True)
class Tuning:
    """Which speed settings a torch pipeline runs with (see the module docstring). All off: diffusers' defaults."""

    sdpa: bool = False
    channels_last: bool = False
    fuse_qkv: bool = False
    tf32: bool = False
    compile_unet: bool = False

    def __post_init__(self) -> None:
        for name in self.names():
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"tuning setting {name}: expected true or false, got {value!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, in the order status and the bench list them."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, names: Iterable[str]) -> Tuning:
        """The tuning with exactly `names` on; an unknown name is a ConfigError naming it and listing the valid ones."""
        wanted = [str(name).strip() for name in names]
        unknown = [name for name in wanted if name not in cls.names()]
        if unknown:
            raise ConfigError(f"tuning setting {unknown[0]!r}: unknown; expected one of {', '.join(cls.names())}")
        return cls(**{name: True for name in wanted})

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in self.names() if getattr(self, name))

    def describe(self) -> str:
        """What Settings shows, e.g. "sdpa, channels_last, tf32" or "none (diffusers defaults)"."""
        return ", ".join(self.enabled()) or "none (diffusers defaults)"


NONE = Tuning()


def default_tuning(device: str, *, compile_unet: bool = False) -> Tuning:
    """The studio's settings for a pipeline on `device` ("cuda" or "cpu"); `compile_unet` is `--compile`."""
    if device == "cuda":
        return Tuning(sdpa=True, channels_last=True, tf32=True, compile_unet=compile_unet)
    return Tuning(compile_unet=compile_unet)


def apply_tuning(pipe: Any, tuning: Tuning, device: str) -> Tuning:
    """Set `tuning` on `pipe`'s UNet and VAE in place (modules shared with other pipelines see it too).

    Returns what was really applied: `tf32` only on CUDA, `fuse_qkv` only where the pipeline supports it.
    """
    import torch

    applied: dict[str, bool] = {}
    if tuning.tf32 and device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        applied["tf32"] = True
    networks = [module for module in (getattr(pipe, "unet", None), getattr(pipe, "vae", None)) if module is not None]
    if tuning.sdpa:
        from diffusers.models.attention_processor import AttnProcessor2_0

        for module in networks:
            module.set_attn_processor(AttnProcessor2_0())
        applied["sdpa"] = True
    if tuning.fuse_qkv:
        applied["fuse_qkv"] = _fuse_qkv(networks)
    if tuning.channels_last:
        for module in networks:
            module.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    if tuning.compile_unet:
        pipe.unet.compile(mode=COMPILE_MODES.get(device, "default"))
        applied["compile_unet"] = True
    return Tuning(**applied)


def _fuse_qkv(networks: list[Any]) -> bool:
    """Fused QKV projections on each network that has them (diffusers' UNet and AutoencoderKL); False (logged) when
    none could be fused. What `DiffusionPipeline.fuse_qkv_projections` does, per module, so a VAE without fusion
    (e.g. TAESD's AutoencoderTiny) does not stop the UNet's."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    fused = False
    for module in networks:
        if not hasattr(module, "fuse_qkv_projections"):
            logger.info("fused QKV projections: %s has none; left unfused", type(module).__name__)
            continue
        try:
            module.fuse_qkv_projections()
        except ValueError as exc:  # e.g. a UNet with added KV projections
            logger.info("fused QKV projections not applied to %s: %s", type(module).__name__, exc)
            continue
        module.set_attn_processor(FusedAttnProcessor2_0())
        fused = True
    return fused
