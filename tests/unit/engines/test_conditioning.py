"""studio.engines.conditioning on real CLIP components: the demo model (SD 1.x) and a tiny random SDXL pipeline.

Embedding-level checks; the engine's pixel-level versions live with LocalEngine's tests.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from studio import models
from studio.engines.conditioning import (
    PromptEmbeds,
    check_clip_skip,
    clip_skip_applies,
    encode_prompts,
    is_sdxl,
    supports_clip_skip,
)
from studio.types import RequestError

FOX = "a red fox in snow"
# 160 CLIP tokens without commas (no backtrack): the first 75 words are one token each
LONG_WORDS = [f"word{i}" for i in range(40)]


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return models.load_pipeline(models.DEMO_SOURCE)


def diffusers_embeds(pipe, prompt: str, negative: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, "cpu", 1, True, negative)


def ids_of(pipe, text: str) -> list[int]:
    return pipe.tokenizer(text, add_special_tokens=False)["input_ids"]


def long_prompt(pipe, tokens: int) -> str:
    """A comma-free prompt of exactly `tokens` CLIP tokens."""
    text, i = "", 0
    while len(ids_of(pipe, text)) < tokens:
        text = f"{text} fox".strip() if i % 2 else f"{text} snow".strip()
        i += 1
    assert len(ids_of(pipe, text)) == tokens
    return text


# ---- identical to diffusers for plain prompts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [(FOX, ""), ("a photo of a cat", "blurry, ugly"), ("", ""), ("a cat, sitting, on a mat", "dog")],
)
def test_plain_prompt_is_bit_identical_to_diffusers(pipe, prompt, negative):
    ours = encode_prompts(pipe, prompt, negative, clip_skip=1)
    positive, uncond = diffusers_embeds(pipe, prompt, negative or None)
    assert torch.equal(ours.prompt_embeds, positive)
    assert torch.equal(ours.negative_prompt_embeds, uncond)
    assert (ours.chunks, ours.warnings) == (1, [])
    assert ours.kwargs().keys() == {"prompt_embeds", "negative_prompt_embeds"}


def test_exactly_75_tokens_is_one_chunk_identical_to_diffusers(pipe):
    prompt = long_prompt(pipe, 75)
    ours = encode_prompts(pipe, prompt)
    assert ours.prompt_chunks == 1
    assert torch.equal(ours.prompt_embeds, diffusers_embeds(pipe, prompt)[0])


def test_pipeline_takes_the_embeds_and_gives_the_same_pixels(pipe):
    args = dict(num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=7.0)
    own = pipe(prompt=FOX, negative_prompt="blurry", generator=torch.Generator().manual_seed(3), **args).images
    embeds = encode_prompts(pipe, FOX, "blurry")
    ours = pipe(**embeds.kwargs(), generator=torch.Generator().manual_seed(3), **args).images
    assert np.array_equal(own, ours)


# ---- weights -----------------------------------------------------------------------------------------------------


def test_weight_one_equals_no_weight(pipe):
    a = encode_prompts(pipe, "(a red fox:1.0) in snow").prompt_embeds
    assert torch.equal(a, encode_prompts(pipe, FOX).prompt_embeds)


def test_weight_changes_the_embedding(pipe):
    plain = encode_prompts(pipe, FOX).prompt_embeds
    weighted = encode_prompts(pipe, "a (red fox:1.4) in snow").prompt_embeds
    assert not torch.equal(plain, weighted)
    assert not torch.equal(weighted, encode_prompts(pipe, "a (red fox:0.6) in snow").prompt_embeds)
    assert not torch.equal(plain, encode_prompts(pipe, "a (red fox) in snow").prompt_embeds)
    assert not torch.equal(plain, encode_prompts(pipe, "a [red fox] in snow").prompt_embeds)


def test_escaped_parentheses_are_text(pipe):
    escaped = encode_prompts(pipe, r"a \(red fox\) in snow").prompt_embeds
    assert not torch.equal(escaped, encode_prompts(pipe, "a (red fox) in snow").prompt_embeds)
    assert torch.equal(escaped, diffusers_embeds(pipe, "a (red fox) in snow")[0])  # literally "(red fox)"


def test_demo_encoder_weights_scale_only_the_weighted_tokens(pipe):
    """The demo's final layer norm has no bias: its chunk mean is float noise, so no mean rescale (see _emphasize)."""
    plain = encode_prompts(pipe, FOX).prompt_embeds[0]
    weighted = encode_prompts(pipe, "a (red fox:1.4) in snow").prompt_embeds[0]
    # tokens: 0 start, 1 "a", 2 "red", 3 "fox", 4 "in", 5 "snow", then end/padding
    torch.testing.assert_close(weighted[2:4], plain[2:4] * 1.4, rtol=0, atol=1e-6)
    assert torch.equal(weighted[:2], plain[:2]) and torch.equal(weighted[4:], plain[4:])


@pytest.fixture(scope="module")
def biased_pipe(pipe) -> StableDiffusionPipeline:
    """The demo with a final layer-norm bias, so its outputs have a real mean like a trained CLIP's."""
    encoder = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        encoder.final_layer_norm.bias.copy_(torch.linspace(-0.5, 1.5, encoder.config.hidden_size))
    return StableDiffusionPipeline(**{**pipe.components, "text_encoder": encoder})


def test_weighting_restores_the_chunk_mean(biased_pipe):
    plain = encode_prompts(biased_pipe, FOX).prompt_embeds
    weighted = encode_prompts(biased_pipe, "a (red fox:1.4) in snow").prompt_embeds
    torch.testing.assert_close(weighted.mean(), plain.mean())
    ratio = weighted[0] / plain[0]  # every token rescaled; the weighted ones by 1.4 more
    factor = ratio[0].mean()
    assert not torch.isclose(factor, torch.tensor(1.0))
    torch.testing.assert_close(ratio[2:4], torch.full_like(ratio[2:4], 1.4 * factor.item()), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ratio[5:], torch.full_like(ratio[5:], factor.item()), rtol=1e-4, atol=1e-4)


# ---- chunks ------------------------------------------------------------------------------------------------------


def test_long_prompt_is_encoded_in_chunks(pipe):
    prompt = long_prompt(pipe, 150)
    ours = encode_prompts(pipe, prompt)
    assert (ours.prompt_chunks, ours.prompt_embeds.shape[1], ours.warnings) == (2, 154, [])
    ids = ids_of(pipe, prompt)
    first, second = pipe.tokenizer.decode(ids[:75]), pipe.tokenizer.decode(ids[75:])
    assert torch.equal(ours.prompt_embeds[:, :77], diffusers_embeds(pipe, first)[0])
    assert torch.equal(ours.prompt_embeds[:, 77:], diffusers_embeds(pipe, second)[0])
    truncated = encode_prompts(pipe, first).prompt_embeds
    assert truncated.shape[1] == 77 and not torch.equal(ours.prompt_embeds[:, 77:], truncated)


def test_comma_backtrack_on_real_tokens(pipe):
    head = long_prompt(pipe, 70)
    ours = encode_prompts(pipe, f"{head}, red fox in deep snow")  # the comma is token 71: the phrase moves
    assert ours.prompt_chunks == 2
    assert torch.equal(ours.prompt_embeds[:, :77], diffusers_embeds(pipe, f"{head},")[0])
    assert torch.equal(ours.prompt_embeds[:, 77:], diffusers_embeds(pipe, "red fox in deep snow")[0])


def test_break_starts_a_new_chunk(pipe):
    ours = encode_prompts(pipe, "a red fox BREAK in snow")
    assert (ours.prompt_chunks, ours.prompt_embeds.shape[1]) == (2, 154)
    assert torch.equal(ours.prompt_embeds[:, :77], diffusers_embeds(pipe, "a red fox")[0])
    assert torch.equal(ours.prompt_embeds[:, 77:], diffusers_embeds(pipe, "in snow")[0])


def test_negative_is_padded_to_the_prompt_chunks_and_back(pipe):
    empty = diffusers_embeds(pipe, "")[0]
    ours = encode_prompts(pipe, "a red fox BREAK in snow BREAK at night", "blurry")
    assert (ours.prompt_chunks, ours.negative_chunks, ours.chunks) == (3, 1, 3)
    assert ours.negative_prompt_embeds.shape == ours.prompt_embeds.shape == (1, 231, 32)
    assert torch.equal(ours.negative_prompt_embeds[:, :77], diffusers_embeds(pipe, "blurry")[0])
    assert torch.equal(ours.negative_prompt_embeds[:, 77:154], empty)
    assert torch.equal(ours.negative_prompt_embeds[:, 154:], empty)
    back = encode_prompts(pipe, FOX, "blurry BREAK ugly")
    assert (back.prompt_chunks, back.negative_chunks) == (1, 2)
    assert torch.equal(back.prompt_embeds[:, 77:], empty)


def test_long_prompt_runs_through_the_pipeline(pipe):
    embeds = encode_prompts(pipe, long_prompt(pipe, 150), "blurry")
    args = dict(num_inference_steps=2, height=64, width=64, output_type="np", num_images_per_prompt=2)
    images = pipe(**embeds.kwargs(), generator=torch.Generator().manual_seed(3), **args).images
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()


# ---- clip skip ---------------------------------------------------------------------------------------------------


def test_clip_skip(pipe):
    default = encode_prompts(pipe, FOX, "blurry")
    one = encode_prompts(pipe, FOX, "blurry", clip_skip=1)
    two = encode_prompts(pipe, FOX, "blurry", clip_skip=2)
    assert torch.equal(default.prompt_embeds, one.prompt_embeds)
    assert not torch.equal(one.prompt_embeds, two.prompt_embeds)
    assert not torch.equal(one.negative_prompt_embeds, two.negative_prompt_embeds)
    assert two.warnings == []
    # A1111's "Clip skip: 2": the penultimate layer through the final layer norm (diffusers' clip_skip=1)
    encoder = pipe.text_encoder
    ids = pipe.tokenizer(FOX, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder.final_layer_norm(encoder(ids, output_hidden_states=True).hidden_states[-2])
    assert torch.equal(two.prompt_embeds, expected)
    assert not torch.equal(two.prompt_embeds, encode_prompts(pipe, FOX, clip_skip=3).prompt_embeds)


def test_clip_skip_beyond_the_encoder_is_an_error(pipe):
    layers = pipe.text_encoder.config.num_hidden_layers
    encode_prompts(pipe, FOX, clip_skip=layers)
    for bad in (layers + 1, 0, -1):
        with pytest.raises(RequestError) as err:
            encode_prompts(pipe, FOX, clip_skip=bad)
        assert err.value.field == "clip_skip" and err.value.value == bad


def test_sd2_ignores_clip_skip_with_a_warning(pipe):
    config = CLIPTextConfig(**{**pipe.text_encoder.config.to_dict(), "hidden_act": "gelu"})
    torch.manual_seed(0)
    sd2 = StableDiffusionPipeline(**{**pipe.components, "text_encoder": CLIPTextModel(config).eval()})
    assert not clip_skip_applies(sd2) and clip_skip_applies(pipe)
    one, two = encode_prompts(sd2, FOX, clip_skip=1), encode_prompts(sd2, FOX, clip_skip=2)
    assert torch.equal(one.prompt_embeds, two.prompt_embeds)
    assert one.warnings == [] and "Stable Diffusion 2.x" in two.warnings[0]


def test_openvino_text_encoder_refuses_clip_skip(pipe):
    pytest.importorskip("openvino")
    from studio.engines.openvino_modules import install_text_encoder

    torch_encoder = pipe.text_encoder
    encoder = copy.deepcopy(torch_encoder)

    def network(ids: np.ndarray) -> list[np.ndarray]:  # stands in for the compiled network: last layer only
        with torch.no_grad():
            return [torch_encoder(torch.from_numpy(ids))[0].numpy()]

    install_text_encoder(encoder, network)
    ov_pipe = StableDiffusionPipeline(**{**pipe.components, "text_encoder": encoder})
    assert supports_clip_skip(pipe) and not supports_clip_skip(ov_pipe)
    check_clip_skip(ov_pipe, 1)
    with pytest.raises(RequestError) as err:
        check_clip_skip(ov_pipe, 2)
    assert err.value.field == "clip_skip" and "OpenVINO" in str(err.value)
    with pytest.raises(RequestError):
        encode_prompts(ov_pipe, FOX, clip_skip=2)
    ours = encode_prompts(ov_pipe, "a (red fox:1.2) BREAK in snow", "blurry")
    reference = encode_prompts(pipe, "a (red fox:1.2) BREAK in snow", "blurry")
    torch.testing.assert_close(ours.prompt_embeds, reference.prompt_embeds)


# ---- warnings ----------------------------------------------------------------------------------------------------


def test_unsupported_syntax_is_reported(pipe):
    ours = encode_prompts(pipe, "a [cat:dog:0.5] <hypernet:h:1>", "x AND y")
    text = " | ".join(ours.warnings)
    assert "prompt editing" in text and "hypernet" in text and "negative_prompt: AND" in text
    assert torch.equal(ours.prompt_embeds, encode_prompts(pipe, "a [cat:dog:0.5]").prompt_embeds)  # tag dropped
    leftover = encode_prompts(pipe, FOX, "blurry <lora:x:1>")  # the engine takes LoRA tags out before encoding
    assert "not applied" in leftover.warnings[0]
    assert torch.equal(leftover.negative_prompt_embeds, encode_prompts(pipe, FOX, "blurry ").negative_prompt_embeds)


def test_bad_weight_names_the_field(pipe):
    with pytest.raises(RequestError) as err:
        encode_prompts(pipe, FOX, "(blurry:1.2.3)")
    assert err.value.field == "negative_prompt"


# ---- SDXL --------------------------------------------------------------------------------------------------------


def tiny_sdxl(force_zeros: bool = True) -> StableDiffusionXLPipeline:
    """diffusers' own tiny SDXL test recipe, with the real CLIP tokenizer (SDXL's second one pads with "!")."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 × 8 time ids + 32 pooled
        cross_attention_dim=64,  # 32 + 32 from the two encoders
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    tokenizer, tokenizer_2 = models.clip_tokenizer(), models.clip_tokenizer(pad_token="!")
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=32,
    )
    encoder, encoder_2 = CLIPTextModel(config).eval(), CLIPTextModelWithProjection(config).eval()
    with torch.no_grad():  # trained CLIPs have a final-norm bias (a real mean: the emphasis rescale is exercised)
        for module in (encoder, encoder_2):
            getattr(module, "text_model", module).final_layer_norm.bias.normal_()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
        force_zeros_for_empty_prompt=force_zeros,
    )


@pytest.fixture(scope="module")
def sdxl() -> StableDiffusionXLPipeline:
    return tiny_sdxl()


def sdxl_reference(pipe, prompt: str, negative: str | None) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative)


@pytest.mark.parametrize(("prompt", "negative"), [(FOX, "blurry, ugly"), ("a cat, on a mat", "")])
def test_sdxl_plain_prompt_is_bit_identical_to_diffusers(sdxl, prompt, negative):
    ours = encode_prompts(sdxl, prompt, negative)
    positive, uncond, pooled, uncond_pooled = sdxl_reference(sdxl, prompt, negative or None)
    assert is_sdxl(sdxl) and ours.chunks == 1
    assert torch.equal(ours.prompt_embeds, positive) and ours.prompt_embeds.shape == (1, 77, 64)
    assert torch.equal(ours.negative_prompt_embeds, uncond)
    assert torch.equal(ours.pooled_prompt_embeds, pooled) and pooled.shape == (1, 32)
    assert torch.equal(ours.negative_pooled_prompt_embeds, uncond_pooled)
    assert set(ours.kwargs()) == {
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    }


def test_sdxl_empty_negative_is_zeros_only_when_the_model_says_so(sdxl):
    ours = encode_prompts(sdxl, "a red fox BREAK in snow", "")
    assert ours.negative_prompt_embeds.shape == (1, 154, 64) and not ours.negative_prompt_embeds.any()
    assert not ours.negative_pooled_prompt_embeds.any()
    encoded = encode_prompts(tiny_sdxl(force_zeros=False), FOX, "")
    assert encoded.negative_prompt_embeds.any()


def test_sdxl_long_prompt_pooled_comes_from_the_first_chunk(sdxl):
    ours = encode_prompts(sdxl, "a red fox BREAK in snow", "blurry")
    assert (ours.prompt_chunks, ours.prompt_embeds.shape) == (2, (1, 154, 64))
    first, _, first_pooled, _ = sdxl_reference(sdxl, "a red fox", None)
    second = sdxl_reference(sdxl, "in snow", None)[0]
    assert torch.equal(ours.prompt_embeds[:, :77], first) and torch.equal(ours.prompt_embeds[:, 77:], second)
    assert torch.equal(ours.pooled_prompt_embeds, first_pooled)
    empty = sdxl_reference(sdxl, "", "")[1]  # an encoded empty prompt (not zeroed: a negative was given)
    assert torch.equal(ours.negative_prompt_embeds[:, 77:], empty)


def test_sdxl_weights_and_clip_skip(sdxl):
    plain = encode_prompts(sdxl, FOX)
    weighted = encode_prompts(sdxl, "a (red fox:1.4) in snow")
    assert not torch.equal(plain.prompt_embeds, weighted.prompt_embeds)
    assert torch.equal(plain.pooled_prompt_embeds, weighted.pooled_prompt_embeds)  # weights never touch pooled
    for half in (slice(0, 32), slice(32, 64)):  # the mean is restored per encoder
        torch.testing.assert_close(weighted.prompt_embeds[..., half].mean(), plain.prompt_embeds[..., half].mean())
    skipped = encode_prompts(sdxl, FOX, clip_skip=2)
    assert torch.equal(skipped.prompt_embeds, plain.prompt_embeds)  # A1111: no effect on SDXL
    assert "SDXL" in skipped.warnings[0] and plain.warnings == []
    assert not clip_skip_applies(sdxl)


def test_sdxl_pipeline_takes_the_embeds_and_gives_the_same_pixels(sdxl):
    args = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    own = sdxl(prompt=FOX, negative_prompt="blurry", generator=torch.Generator().manual_seed(5), **args).images
    embeds: PromptEmbeds = encode_prompts(sdxl, FOX, "blurry")
    ours = sdxl(**embeds.kwargs(), generator=torch.Generator().manual_seed(5), **args).images
    assert np.array_equal(own, ours)
    long = encode_prompts(sdxl, "a red fox BREAK in snow BREAK at night", "blurry")
    images = sdxl(**long.kwargs(), generator=torch.Generator().manual_seed(5), **args).images
    assert images.shape == (1, 64, 64, 3) and not np.array_equal(images, ours)
