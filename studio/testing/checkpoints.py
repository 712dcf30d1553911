"""Write a diffusers SD pipeline as an original-layout (A1111 / CompVis) single-file checkpoint, for tests.

diffusers ships only the other direction (single_file_utils converts original -> diffusers). This is its inverse
for SD 1.x / 2.x / XL-shaped models of any width/depth (the tiny demo model included), in the spirit of diffusers'
scripts/convert_diffusers_to_original_stable_diffusion.py, but driven by the UNet/VAE configs instead of
hard-coding SD 1.5's block layout:

- UNet  -> model.diffusion_model.*  (input_blocks / middle_block / output_blocks, ldm resnet names)
- VAE   -> first_stage_model.*      (down/up/mid.block_N, nin_shortcut, 1x1-conv attention weights)
- CLIP  -> cond_stage_model.transformer.text_model.* (SD 1.x), cond_stage_model.model.* (OpenCLIP, SD 2.x),
           conditioner.embedders.0.transformer.* + conditioner.embedders.1.model.* (SDXL)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

_RESNET = [  # (diffusers, ldm) inside a UNet resnet
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _layers(config: dict[str, Any], block: int) -> int:
    value = config["layers_per_block"]
    return value[block] if isinstance(value, (list, tuple)) else value


def unet_prefix_map(config: dict[str, Any]) -> dict[str, str]:
    """diffusers module prefix -> ldm module prefix for a UNet2DConditionModel config."""
    prefixes: dict[str, str] = dict(_UNET_FIXED)
    down_types = config["down_block_types"]
    index = 1
    for block, _kind in enumerate(down_types):
        for layer in range(_layers(config, block)):
            prefixes[f"down_blocks.{block}.resnets.{layer}"] = f"input_blocks.{index}.0"
            prefixes[f"down_blocks.{block}.attentions.{layer}"] = f"input_blocks.{index}.1"
            index += 1
        if block < len(down_types) - 1:
            prefixes[f"down_blocks.{block}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    prefixes["mid_block.resnets.0"] = "middle_block.0"
    prefixes["mid_block.attentions.0"] = "middle_block.1"
    prefixes["mid_block.resnets.1"] = "middle_block.2"
    up_types = config["up_block_types"]
    index = 0
    for block, kind in enumerate(up_types):
        layers = _layers(config, len(up_types) - 1 - block) + 1
        for layer in range(layers):
            prefixes[f"up_blocks.{block}.resnets.{layer}"] = f"output_blocks.{index}.0"
            prefixes[f"up_blocks.{block}.attentions.{layer}"] = f"output_blocks.{index}.1"
            if layer == layers - 1 and block < len(up_types) - 1:
                slot = 2 if "CrossAttn" in kind else 1
                prefixes[f"up_blocks.{block}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"
            index += 1
    return prefixes


def _rename(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    """(ldm prefix, rest) for the longest diffusers prefix that `key` starts with."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix + "."):
            return prefixes[prefix], key[len(prefix) + 1 :]
    return None


def unet_to_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefixes = unet_prefix_map(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        found = _rename(key, prefixes)
        if found is None:
            raise KeyError(f"no ldm name for UNet weight {key}")
        new_prefix, rest = found
        if ".resnets." in key:
            for diffusers_name, ldm_name in _RESNET:
                if rest.startswith(diffusers_name + "."):
                    rest = ldm_name + rest[len(diffusers_name) :]
                    break
        out[f"{new_prefix}.{rest}"] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    blocks = len(config["down_block_types"])
    prefixes = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for block in range(blocks):
        for layer in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{block}.resnets.{layer}"] = f"encoder.down.{block}.block.{layer}"
            prefixes[f"decoder.up_blocks.{block}.resnets.{layer}"] = f"decoder.up.{blocks - 1 - block}.block.{layer}"
        prefixes[f"encoder.down_blocks.{block}.downsamplers.0"] = f"encoder.down.{block}.downsample"
        prefixes[f"decoder.up_blocks.{block}.upsamplers.0"] = f"decoder.up.{blocks - 1 - block}.upsample"
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        prefixes[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        prefixes[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        found = _rename(key, prefixes)
        if found is None:  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
            out[key] = value
            continue
        new_prefix, rest = found
        if ".resnets." in key:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in key:
            for diffusers_name, ldm_name in _VAE_ATTENTION:
                if rest.startswith(diffusers_name + "."):
                    rest = ldm_name + rest[len(diffusers_name) :]
                    break
            if value.ndim == 2:  # the original VAE attention uses 1x1 convolutions
                value = value.reshape(*value.shape, 1, 1)
        out[f"{new_prefix}.{rest}"] = value
    return out


def text_encoder_to_original(
    state: dict[str, torch.Tensor], prefix: str = "cond_stage_model.transformer."
) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (SD 1.x; SDXL's first encoder with prefix conditioner.embedders.0.transformer.)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")  # transformers < 5.6 nests the weights under text_model
        out[f"{prefix}text_model.{key}"] = value
    # Real SD 1.x files carry the position_ids buffer too; loaders must ignore it.
    positions = out[f"{prefix}text_model.embeddings.position_embedding.weight"].shape[0]
    out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


_OPEN_CLIP_LAYER = [  # (transformers, open_clip) inside one encoder layer
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
]


def open_clip_to_original(
    state: dict[str, torch.Tensor], prefix: str = "cond_stage_model.model.", extra_layer: bool = False
) -> dict[str, torch.Tensor]:
    """OpenCLIP layout (SD 2.x with the default prefix; SDXL's second encoder: conditioner.embedders.1.model.).

    q/k/v are fused into in_proj_*, the projection is stored transposed. `extra_layer` adds the unused last
    layer SD 2.x files carry (SD 2 conditions on the penultimate layer; diffusers' config has one layer less).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        layer = re.match(r"encoder\.layers\.(\d+)\.(.+)", key)
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif layer:
            index, rest = layer.groups()
            fused = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if fused:
                qkv.setdefault((index, fused.group(2)), {})[fused.group(1)] = value
                continue
            for ours, theirs in _OPEN_CLIP_LAYER:
                rest = rest.replace(ours, theirs)
            out[f"{prefix}transformer.resblocks.{index}.{rest}"] = value
        else:
            raise KeyError(f"no open_clip name for text encoder weight {key}")
    for (index, kind), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    if extra_layer:
        last = max(int(k.split(".resblocks.")[1].split(".")[0]) for k in out if ".resblocks." in k)
        for key in [k for k in out if f".resblocks.{last}." in k]:
            out[key.replace(f".resblocks.{last}.", f".resblocks.{last + 1}.")] = torch.randn_like(out[key])
        width = out[prefix + "positional_embedding"].shape[1]
        out.setdefault(
            prefix + "text_projection", torch.randn(width, width, dtype=out[prefix + "positional_embedding"].dtype)
        )
    return out


def components_to_original(
    unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any = None
) -> dict[str, torch.Tensor]:
    """SD 1.x / 2.x / XL components as one original-layout state dict (tensors shared, not copied).

    The text encoder layout follows the family: SDXL when `text_encoder_2` is given; OpenCLIP (SD 2.x) when the
    encoder uses gelu (OpenAI CLIP uses quick_gelu); else OpenAI CLIP (SD 1.x).
    """
    state: dict[str, torch.Tensor] = {}
    unet_state = unet_to_original(unet.state_dict(), dict(unet.config))
    state.update({f"model.diffusion_model.{k}": v for k, v in unet_state.items()})
    vae_state = vae_to_original(vae.state_dict(), dict(vae.config))
    state.update({f"first_stage_model.{k}": v for k, v in vae_state.items()})
    if text_encoder_2 is not None:
        state.update(text_encoder_to_original(text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_original(text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    elif text_encoder.config.hidden_act == "gelu":
        state.update(open_clip_to_original(text_encoder.state_dict(), extra_layer=True))
    else:
        state.update(text_encoder_to_original(text_encoder.state_dict()))
    # Training leftovers present in real checkpoints; loaders must ignore them.
    state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    return state


def pipeline_to_original(pipe: Any) -> dict[str, torch.Tensor]:
    """A whole pipeline as one original-layout state dict (contiguous CPU copies)."""
    state = components_to_original(pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def write_safetensors(pipe: Any, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(pipeline_to_original(pipe), str(path))
    return path


def write_ckpt(pipe: Any, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """A .ckpt as A1111 saves them: {"state_dict": ..., plus `extra` top-level entries (global_step, ...)}."""
    torch.save({"state_dict": pipeline_to_original(pipe), **(extra or {})}, str(path))
    return path
