"""Parameters travelling between tabs: PNG Info -> Text to image restores every field (hires fix, schedule type,
clip skip, VAE), and "Send to" carries them to the other tabs with the sent image's own size."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from studio import metadata
from studio.types import GenerationRequest, Task
from studio.ui.generation import rescan_files, restored_values, sent_values
from studio.ui.pnginfo import SENT_TO_TXT2IMG, read_png_info, send_parameters
from studio.ui.widgets import SENT_FIELDS

ISSUE_INFOTEXT = (Path(__file__).parents[2] / "data" / "a1111_issue15.txt").read_text()


def is_unchanged(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def png_with(path: Path, text: str, size: tuple[int, int] = (64, 96)) -> str:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", size).save(path, pnginfo=info)
    return str(path)


def test_png_info_to_text_to_image_restores_every_field(tmp_path):
    raw, fields = read_png_info(png_with(tmp_path / "card.png", ISSUE_INFOTEXT))
    assert raw.strip() == ISSUE_INFOTEXT.strip()
    *values, accordion, tabs = send_parameters(fields)
    sent = dict(zip(SENT_TO_TXT2IMG, values, strict=True))
    assert sent["prompt"].endswith("<lora:fubuki:1> <lora:space_hopper:1>")
    assert (sent["sampler"], sent["scheduler"], sent["steps"], sent["cfg_scale"]) == ("DPM++ 2M SDE", "Karras", 20, 7)
    assert (sent["width"], sent["height"], sent["seed"]) == (512, 768, 2245042501)
    assert (sent["clip_skip"], sent["vae"]) == (1, "vaeFtMse840000EmaPruned_vae.safetensors")
    assert (sent["hires_scale"], sent["hires_resize_x"], sent["hires_resize_y"]) == (2.0, 0, 0)
    assert (sent["hires_steps"], sent["hires_upscaler"], sent["hires_strength"]) == (10, "R-ESRGAN 4x+ Anime6B", 0.6)
    assert accordion.open is True and tabs.selected == "tab-txt2img"


def test_fields_an_infotext_omits_at_their_default_are_reset(tmp_path):
    """After a hires + clip skip image, pasting a plain one must not leave the hires fix or clip skip on."""
    plain = "a lake\nSteps: 5, Sampler: Euler, CFG scale: 6, Seed: 3, Size: 64x64"
    *values, accordion, _ = send_parameters(read_png_info(png_with(tmp_path / "plain.png", plain))[1])
    sent = dict(zip(SENT_TO_TXT2IMG, values, strict=True))
    defaults = GenerationRequest(prompt="")
    for name in metadata.OMITTED_AT_DEFAULT:
        assert sent[name] == getattr(defaults, name), name
    assert sent["negative_prompt"] == "" and accordion.open is False


def test_fields_an_infotext_always_has_are_left_alone_when_missing():
    values = restored_values({"prompt": "p"}, ["prompt", "steps", "seed", "clip_skip"])
    assert values[0] == "p" and is_unchanged(values[1]) and is_unchanged(values[2]) and values[3] == 1


def test_send_parameters_without_any_says_so():
    with pytest.raises(gr.Error, match="No parameters"):
        send_parameters({})


def test_send_to_img2img_carries_the_fields_and_the_images_own_size(tmp_path):
    request = GenerationRequest(
        prompt="a fox",
        sampler="DPM++ 2M",
        scheduler="Karras",
        clip_skip=2,
        vae="mse.pt",
        width=64,
        height=96,
        hires_scale=2.0,
    ).validate()
    path = tmp_path / "hires.png"
    Image.new("RGB", (128, 192)).save(path)
    info = {"infotexts": [metadata.format_infotext(request, 9)]}
    image, *values, tabs = sent_values(Task.IMG2IMG, [(str(path), "seed 9")], 0, info)
    sent = dict(zip(SENT_FIELDS, values, strict=True))
    assert image == str(path) and tabs.selected == "tab-img2img"
    assert (sent["sampler"], sent["scheduler"], sent["clip_skip"], sent["vae"]) == ("DPM++ 2M", "Karras", 2, "mse.pt")
    assert (sent["width"], sent["height"]) == (128, 192)  # the hires image's size, not the first pass's 64x96


class Lister:
    list_loras = staticmethod(lambda: ["a", "b/c"])
    list_vaes = staticmethod(lambda: ["mse.pt"])
    list_upscalers = staticmethod(lambda: ["Lanczos"])


def test_rescan_lists_the_files_and_keeps_the_default_upscaler():
    loras, vaes, upscalers = rescan_files(Lister())
    assert loras["choices"] == ["a", "b/c"] and vaes["choices"] == ["Automatic", "Approx (TAESD)", "mse.pt"]
    assert upscalers["choices"] == ["Latent", "Lanczos"]


def test_rescan_failure_is_shown():
    class Broken(Lister):
        @staticmethod
        def list_vaes():
            raise PermissionError("models/VAE: permission denied")

    with pytest.raises(gr.Error, match="VAE files: models/VAE: permission denied"):
        rescan_files(Broken())
