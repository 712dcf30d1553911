"""The one place form values become a GenerationRequest."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.types import RequestError, Task
from studio.ui.widgets import insert_lora_tag, to_request


def test_form_values_become_a_request():
    request = to_request("a fox", None, "Euler a", 20.0, 7.5, -1.0, 512.0, 384.0, 2.0)
    assert (request.prompt, request.negative_prompt, request.sampler) == ("a fox", "", "Euler a")
    assert (request.steps, request.seed, request.width, request.height, request.count) == (20, -1, 512, 384, 2)
    assert all(type(v) is int for v in (request.steps, request.seed, request.width, request.height, request.count))
    assert request.cfg_scale == 7.5 and request.task is Task.TXT2IMG


def test_task_fields_are_passed_on():
    image, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64))
    request = to_request("", "", "Euler", 4, 7, 1, 64, 64, 1, image=image, mask=mask, strength=1.0, mask_blur=4.0)
    assert request.task is Task.INPAINT and request.strength == 1 and request.mask_blur == 4
    assert request.image is image and request.mask is mask


@pytest.mark.parametrize(("position", "value", "field"), [(3, 4.5, "steps"), (6, "64", "width"), (8, True, "count")])
def test_bad_values_reach_validation_unchanged(position, value, field):
    values = ["x", "", "Euler", 4, 7, 1, 64, 64, 1]
    values[position] = value
    with pytest.raises(RequestError, match=field):
        to_request(*values).validate()


def test_a1111_fields_are_passed_on_for_validation():
    request = to_request(
        "a fox",
        "",
        "DPM++ 2M Karras",
        20,
        7,
        1,
        512,
        512,
        1,
        scheduler="Automatic",
        clip_skip=2.0,
        vae="x.pt",
        hires_scale=2.0,
        hires_upscaler="Lanczos",
        hires_steps=0.0,
        hires_strength=0.5,
        hires_resize_x=0.0,
        hires_resize_y=0.0,
    ).validate()
    assert (request.sampler, request.scheduler, request.clip_skip, request.vae) == ("DPM++ 2M", "Karras", 2, "x.pt")
    assert type(request.clip_skip) is int and request.hires_size() == (1024, 1024)
    with pytest.raises(RequestError, match="^clip_skip"):
        to_request("x", "", "Euler", 4, 7, 1, 64, 64, 1, clip_skip=1.5).validate()


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [(None, "<lora:ink:1>"), ("", "<lora:ink:1>"), ("a cat", "a cat <lora:ink:1>"), ("a cat, ", "a cat, <lora:ink:1>")],
)
def test_insert_lora_tag(prompt, expected):
    assert insert_lora_tag(prompt, "ink") == expected


def test_insert_lora_tag_without_a_choice_says_so():
    import gradio as gr

    with pytest.raises(gr.Error, match="Choose a LoRA"):
        insert_lora_tag("a cat", None)
