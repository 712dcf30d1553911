"""studio.models.single_file: checkpoint family detection and the shipped offline configs."""

from __future__ import annotations

import json

import pytest
import torch

from studio import models
from studio.engine import ModelLoadError


def _fake_shapes(conv_in=(320, 4, 3, 3), context=768, **extra) -> dict[str, tuple[int, ...]]:
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": conv_in,
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    }
    shapes.update(extra)
    return shapes


def test_checkpoint_config_type_for_real_families(tmp_path):
    path = tmp_path / "model.safetensors"
    xl = {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    assert models.checkpoint_config_type(path, _fake_shapes()) == "sd-v1"
    assert models.checkpoint_config_type(path, _fake_shapes(conv_in=(320, 9, 3, 3))) == "sd-v1-inpainting"
    assert models.checkpoint_config_type(path, _fake_shapes(context=1024)) == "sd-v2-768-v"
    assert models.checkpoint_config_type(path, _fake_shapes((320, 9, 3, 3), 1024)) == "sd-v2-inpainting"
    assert models.checkpoint_config_type(path, _fake_shapes(context=2048, **xl)) == "sdxl-base"
    assert models.checkpoint_config_type(path, _fake_shapes((320, 9, 3, 3), 2048, **xl)) == "sdxl-inpainting"
    # SD 2.x 512 base vs 768-v is not visible in the weights: an A1111 sidecar yaml decides.
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert models.checkpoint_config_type(path, _fake_shapes(context=1024)) == "sd-v2-768-v"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert models.checkpoint_config_type(path, _fake_shapes(context=1024)) == "sd-v2-base"
    refiner = {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    with pytest.raises(ModelLoadError, match="xl_refiner"):
        models.checkpoint_config_type(path, _fake_shapes(conv_in=(384, 4, 3, 3), context=1280, **refiner))


@pytest.mark.parametrize(
    ("config", "unet", "vae", "encoders"),
    [  # parameter counts of the published models: a wrong number in a shipped config changes them
        ("sd-v1", 859_520_964, 83_653_863, {"text_encoder": 123_060_480}),
        ("sd-v1-inpainting", 859_535_364, 83_653_863, {"text_encoder": 123_060_480}),
        ("sd-v2-768-v", 865_910_724, 83_653_863, {"text_encoder": 340_387_840}),
        ("sd-v2-base", 865_910_724, 83_653_863, {"text_encoder": 340_387_840}),
        ("sd-v2-inpainting", 865_925_124, 83_653_863, {"text_encoder": 340_387_840}),
        ("sdxl-base", 2_567_463_684, 83_653_863, {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
        ("sdxl-inpainting", 2_567_478_084, 83_653_863, {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
    ],
)
def test_shipped_configs_build_the_published_architectures(config, unet, vae, encoders):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = models.CONFIGS_DIR / config

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        assert (
            count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))) == unet
        )
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))) == vae
        for name, expected in encoders.items():
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            assert count(cls(CLIPTextConfig.from_pretrained(folder, subfolder=name))) == expected


def test_sdxl_config_folder_is_assembled_with_both_tokenizers():
    from transformers import CLIPTokenizer

    folder = models.shipped_config_dir("sdxl-base")
    first = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    second = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    assert (first.pad_token, second.pad_token) == ("<|endoftext|>", "!")
    assert first("a photo of a cat").input_ids == second("a photo of a cat").input_ids
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert (folder / "unet" / "config.json").read_bytes() == (
        models.CONFIGS_DIR / "sdxl-base" / "unet" / "config.json"
    ).read_bytes()
    assert models.shipped_config_dir("sdxl-base") == folder  # built once, reused
    with pytest.raises(ModelLoadError, match="no shipped config"):
        models.shipped_config_dir("sd-v9")
