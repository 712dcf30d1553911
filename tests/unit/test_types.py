"""GenerationRequest validation: every bad field is named with its value; nothing is clamped."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.types import GenerationRequest, Limits, RequestError, Task

OK = GenerationRequest(prompt="a cat", width=64, height=64, steps=2)


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 100}, "height", "multiple of 8"),
        ({"width": 0}, "width", "at least 8"),
        ({"height": -64}, "height", "at least 8"),
        ({"width": 4096}, "width", "at most 2048"),
        ({"steps": 0}, "steps", "between 1 and 150"),
        ({"steps": 151}, "steps", "between 1 and 150"),
        ({"steps": "20"}, "steps", "whole number"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"steps": True}, "steps", "whole number"),
        ({"cfg_scale": 31}, "cfg_scale", "between 0 and 30"),
        ({"cfg_scale": -1}, "cfg_scale", "between 0 and 30"),
        ({"cfg_scale": float("nan")}, "cfg_scale", "finite"),
        ({"cfg_scale": "7"}, "cfg_scale", "number"),
        ({"count": 0}, "count", "between 1 and 16"),
        ({"count": 17}, "count", "between 1 and 16"),
        ({"seed": -2}, "seed", "-1 (random)"),
        ({"seed": 2**32}, "seed", "-1 (random)"),
        ({"strength": 0}, "strength", "greater than 0"),
        ({"strength": 1.5}, "strength", "at most 1"),
        ({"prompt": None}, "prompt", "must be text"),
        ({"prompt": 5}, "prompt", "must be text"),
        ({"negative_prompt": ["x"]}, "negative_prompt", "must be text"),
        ({"sampler": ""}, "sampler", "sampler name"),
        ({"sampler": "Bogus"}, "sampler", "valid samplers"),
        ({"mask_blur": -1}, "mask_blur", "between 0 and 64"),
        ({"prompt": "x" * 20_001}, "prompt", "limit is 20000"),
        ({"scheduler": "Polyfancy"}, "scheduler", "valid schedule types"),
        ({"sampler": "Euler a", "scheduler": "Karras"}, "scheduler", "cannot use the Karras schedule type"),
        ({"clip_skip": 0}, "clip_skip", "between 1 and 12"),
        ({"clip_skip": 13}, "clip_skip", "between 1 and 12"),
        ({"clip_skip": 1.5}, "clip_skip", "whole number"),
        ({"vae": ""}, "vae", "must be a VAE name"),
        ({"hires_scale": 0.5}, "hires_scale", "between 1 and 8"),
        ({"hires_scale": "2"}, "hires_scale", "number"),
        ({"hires_steps": -1}, "hires_steps", "between 0 and 150"),
        ({"hires_strength": 0}, "hires_strength", "greater than 0"),
        ({"hires_resize_x": 100}, "hires_resize_x", "multiple of 8"),
        ({"hires_resize_y": -8}, "hires_resize_y", "multiple of 8"),
        ({"hires_upscaler": None}, "hires_upscaler", "must be an upscaler name"),
        ({"hires_scale": 2.0, "width": 1536}, "hires_scale", "the hires fix size width must be at most 2048"),
        ({"hires_resize_x": 4096}, "hires_resize_x", "the hires fix size width must be at most 2048"),
    ],
)
def test_bad_field_is_named(changes, field, text):
    with pytest.raises(RequestError) as info:
        OK.replace(**changes).validate()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert text in str(info.value)


def test_error_message_shows_the_value():
    with pytest.raises(RequestError, match="got 100"):
        OK.replace(width=100).validate()


def test_valid_request_is_normalised():
    req = OK.replace(sampler="euler_a", width=64.0, cfg_scale=7).validate()
    assert req.sampler == "Euler a"
    assert req.width == 64 and isinstance(req.width, int)
    assert isinstance(req.cfg_scale, float)


def test_limits_are_configurable():
    with pytest.raises(RequestError, match="at most 256"):
        OK.replace(width=512).validate(Limits(max_width=256))
    with pytest.raises(RequestError, match="pixel limit"):
        OK.replace(width=512, height=512).validate(Limits(max_pixels=512 * 256))


def test_task_follows_images():
    img = Image.new("RGB", (64, 64))
    assert OK.task is Task.TXT2IMG
    assert OK.replace(image=img).task is Task.IMG2IMG
    assert OK.replace(image=img, mask=img.convert("L")).task is Task.INPAINT


def test_mask_without_image_is_refused():
    with pytest.raises(RequestError) as info:
        OK.replace(mask=Image.new("L", (64, 64))).validate()
    assert info.value.field == "image"


def test_random_seed_resolves_and_seeds_follow():
    req = OK.replace(seed=-1, count=3).with_resolved_seed()
    assert 0 <= req.seed <= 2**32 - 1
    assert req.seeds() == [req.seed, req.seed + 1, req.seed + 2]
    fixed = OK.replace(seed=42)
    assert fixed.with_resolved_seed() is fixed
    with pytest.raises(RequestError):
        OK.replace(seed=-1).seeds()


def test_old_combined_sampler_names_are_split():
    req = OK.replace(sampler="DPM++ 2M Karras").validate()
    assert (req.sampler, req.scheduler) == ("DPM++ 2M", "Karras")
    req = OK.replace(sampler="dpmpp_2m", scheduler="sgm_uniform").validate()
    assert (req.sampler, req.scheduler) == ("DPM++ 2M", "SGM Uniform")


@pytest.mark.parametrize(
    ("changes", "size"),
    [
        ({}, (64, 64)),
        ({"hires_scale": 2.0}, (128, 128)),
        ({"hires_scale": 1.5, "width": 96}, (144, 96)),
        ({"hires_scale": 1.3}, (80, 80)),  # 83.2 floored to the latent grid
        ({"hires_resize_x": 128}, (128, 128)),
        ({"hires_resize_y": 96, "width": 128}, (192, 96)),
        ({"hires_resize_x": 128, "hires_resize_y": 64}, (128, 64)),
    ],
)
def test_hires_size(changes, size):
    req = OK.replace(**changes).validate()
    assert req.hires is (changes != {})
    assert req.hires_size() == size


def test_hires_fix_is_text_to_image_only_and_checked_against_the_pixel_limit_first():
    img = Image.new("RGB", (64, 64))
    with pytest.raises(RequestError) as info:
        OK.replace(image=img, hires_scale=2.0).validate()
    assert info.value.field == "hires_scale" and "text to image only" in str(info.value)
    with pytest.raises(RequestError) as info:
        OK.replace(width=512, height=512, hires_scale=2.0).validate(Limits(max_pixels=512 * 512))
    assert info.value.field == "hires_scale" and "1024x1024 is more than the 262144 pixel limit" in str(info.value)
