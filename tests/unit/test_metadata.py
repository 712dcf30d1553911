"""studio.metadata: A1111 infotext format/parse, PNG text chunks, EXIF UserComment."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import struct
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

import studio
from studio import fs
from studio.imagemeta import png_bytes, read_infotext, save_png
from studio.metadata import (
    OMITTED_AT_DEFAULT,
    format_infotext,
    parse_infotext,
    parse_lora_hashes,
    request_fields,
    request_from_fields,
)
from studio.types import GenerationRequest

ISSUE_INFOTEXT = (Path(__file__).parents[1] / "data" / "a1111_issue15.txt").read_text().strip()

VERSION = f"sd-studio {studio.__version__}"


def _image(size: tuple[int, int] = (16, 8), color: str = "red") -> Image.Image:
    return Image.new("RGB", size, color)


def _txt2img(**changes) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a cat", **changes})


def _img2img(**changes) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a cat", "image": _image(), **changes})


def _inpaint(**changes) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a cat", "image": _image(), "mask": Image.new("L", (16, 8), 255), **changes})


# --- A1111's reader, restated from modules/infotext_utils.py (parse_generation_parameters, quote/unquote). ---
# Used to check that A1111 reads what we write. Deliberately the original, unbounded regex.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict[str, str]:
    *lines, lastline = text.strip().split("\n")
    if len(A1111_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    prompt, negative, done = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done = True
            line = line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in A1111_RE_PARAM.findall(lastline):
        if value[:1] == '"' and value[-1:] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        res[key] = value
    return res


# ------------------------------------------------------------------------------------------------ format


def test_format_txt2img_is_exactly_a1111_layout():
    request = _txt2img(negative_prompt="ugly", width=512, height=768, cfg_scale=7.0, steps=20)
    text = format_infotext(request, 123, model="name", model_hash="abcdef1234")
    assert text == (
        "a cat\n"
        "Negative prompt: ugly\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x768, "
        f"Model hash: abcdef1234, Model: name, Version: {VERSION}"
    )


def test_format_omits_empty_negative_model_and_local_backend():
    text = format_infotext(_txt2img(cfg_scale=7.5), 5, backend="local")
    assert text == f"a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 512x512, Version: {VERSION}"
    assert "Negative prompt" not in text


def test_format_task_specific_keys_and_backend_before_extra_before_version():
    txt = format_infotext(_txt2img(strength=0.5), 1)
    assert "Denoising strength" not in txt and "Mask blur" not in txt

    img = format_infotext(_img2img(strength=0.5), 1)
    assert "Denoising strength: 0.5" in img and "Mask blur" not in img

    text = format_infotext(_inpaint(strength=0.75, mask_blur=8), 1, backend="sagemaker", extra={"Hires upscale": 2})
    params = text.splitlines()[-1]
    keys = [part.split(":")[0] for part in params.split(", ")]
    assert keys == [
        "Steps",
        "Sampler",
        "CFG scale",
        "Seed",
        "Size",
        "Denoising strength",
        "Mask blur",
        "Backend",
        "Hires upscale",
        "Version",
    ]
    assert "Denoising strength: 0.75, Mask blur: 8, Backend: sagemaker, Hires upscale: 2" in params


def test_format_quotes_values_like_a1111():
    text = format_infotext(
        _txt2img(), 1, model="my, model: v2", extra={"Lora hashes": "a: 1, b: 2", "Note": 'say "hi"'}
    )
    params = text.splitlines()[-1]
    assert 'Model: "my, model: v2"' in params
    assert 'Lora hashes: "a: 1, b: 2"' in params
    assert r'Note: "say \"hi\""' in params
    assert "Version: sd-studio" in params  # plain values stay unquoted


def test_format_rejects_unreadable_extra_key():
    with pytest.raises(ValueError, match="Bad:key"):
        format_infotext(_txt2img(), 1, extra={"Bad:key": 1})


def test_format_skips_none_extra_values():
    assert "Skipped" not in format_infotext(_txt2img(), 1, extra={"Skipped": None})


def test_format_a1111_19_keys_in_a1111_order():
    request = _txt2img(
        prompt="a fox <lora:fubuki:0.7>",
        sampler="DPM++ 2M SDE",
        scheduler="Karras",
        clip_skip=2,
        vae="vae-ft-mse.safetensors",
        hires_scale=2.0,
        hires_steps=10,
        hires_upscaler="Latent (bicubic)",
        hires_strength=0.55,
        width=512,
        height=768,
    ).validate()
    text = format_infotext(
        request,
        7,
        model="anime",
        model_hash="abcdef1234",
        vae_hash="735e4c3a44",
        lora_hashes={"fubuki": "2a9b5d7e7c1f", "odd, name: x": "0123456789ab"},
    )
    assert text.splitlines()[-1] == (
        "Steps: 20, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 7, Size: 512x768, "
        "Model hash: abcdef1234, Model: anime, VAE hash: 735e4c3a44, VAE: vae-ft-mse.safetensors, "
        "Denoising strength: 0.55, Clip skip: 2, Hires upscale: 2, Hires steps: 10, "
        'Hires upscaler: Latent (bicubic), Lora hashes: "fubuki: 2a9b5d7e7c1f, odd name x: 0123456789ab", '
        f"Version: {VERSION}"
    )
    res = a1111_parse(text)  # A1111 reads it
    assert res["Schedule type"] == "Karras" and res["Hires upscaler"] == "Latent (bicubic)"
    assert parse_lora_hashes(res["Lora hashes"]) == {"fubuki": "2a9b5d7e7c1f", "odd name x": "0123456789ab"}


def test_format_leaves_defaults_out():
    text = format_infotext(_txt2img(hires_strength=0.3, hires_steps=5, hires_upscaler="Lanczos"), 1, vae_hash="ab")
    for key in ("Schedule type", "Clip skip", "VAE", "Denoising strength", "Hires", "Lora hashes"):
        assert key not in text, key
    # Hires resize instead of Hires upscale when a target size is given; Hires steps only when set.
    text = format_infotext(_txt2img(hires_resize_x=1024, width=512, height=768, hires_upscaler="Nearest"), 1)
    assert "Denoising strength: 0.7, Hires resize: 1024x0, Hires upscaler: Nearest, Version" in text
    assert "Hires upscale:" not in text and "Hires steps" not in text
    # The engine may name the VAE it used (e.g. with the extension); without a hash, no "VAE hash".
    assert "VAE: mse.pt, Version" in format_infotext(_txt2img(vae="mse"), 1, vae="mse.pt")


def test_format_splits_an_unvalidated_combined_sampler_name():
    text = format_infotext(_txt2img(sampler="DPM++ 2M Karras"), 1)
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale" in text
    assert "Sampler: Nonsense, CFG" in format_infotext(_txt2img(sampler="Nonsense"), 1)  # never raises


def test_hires_keys_only_for_text_to_image():
    text = format_infotext(_img2img(strength=0.4), 1)
    assert "Denoising strength: 0.4" in text and "Hires" not in text


# -------------------------------------------------------------------------------------------- round trip

ROUND_TRIP_REQUESTS = [
    pytest.param(
        _txt2img(negative_prompt="blurry, lowres", seed=7, cfg_scale=6.5, width=640, height=384), id="txt2img"
    ),
    pytest.param(
        GenerationRequest(
            prompt='line one, (detail:1.2)\nline two: "quoted"\n  indented? no, A1111 strips',
            negative_prompt="",
            sampler="DPM++ 2M Karras",
            steps=33,
            cfg_scale=12.0,
            seed=4294967295,
        ),
        id="multiline-prompt-commas-colons-quotes-empty-negative",
    ),
    pytest.param(_img2img(strength=0.35, negative_prompt="bad\nworse", sampler="DDIM", steps=9), id="img2img"),
    pytest.param(
        _txt2img(
            prompt="a fox, <lora:fubuki:0.7> (snow:1.2)",
            sampler="DPM++ 2M SDE",
            scheduler="Exponential",
            clip_skip=2,
            vae="vae-ft-mse-840000-ema-pruned.safetensors",
            hires_scale=1.5,
            hires_steps=4,
            hires_upscaler="Latent (nearest-exact)",
            hires_strength=0.45,
            width=256,
            height=384,
        ),
        id="txt2img-hires-clip-skip-vae-lora",
    ),
    pytest.param(
        _txt2img(sampler="Euler", scheduler="SGM Uniform", hires_resize_x=640, hires_resize_y=512, width=320),
        id="txt2img-hires-resize",
    ),
    pytest.param(_inpaint(strength=1.0, mask_blur=0, cfg_scale=1.5, width=8, height=16), id="inpaint"),
]


@pytest.mark.parametrize("request_", ROUND_TRIP_REQUESTS)
def test_round_trip_format_parse_rebuilds_the_request(request_: GenerationRequest):
    seed = 98765
    text = format_infotext(request_, seed, model="sd, v1.5", model_hash="0123456789", backend="http")
    params = parse_infotext(text)

    expected_prompt = "\n".join(line.strip() for line in request_.prompt.split("\n"))  # A1111 strips each line
    assert params["prompt"] == expected_prompt
    assert params["negative_prompt"] == request_.negative_prompt
    assert params["model"] == "sd, v1.5"
    assert params["model_hash"] == "0123456789"
    assert params["backend"] == "http"
    assert params["Version"] == VERSION

    fields = request_fields(params)
    rebuilt = request_from_fields(fields).validate()
    expected = request_.replace(seed=seed, prompt=expected_prompt)
    # image/mask are not part of equality; everything the infotext carries must match.
    assert rebuilt == expected.validate()
    assert ("strength" in fields) == (request_.image is not None)
    assert ("mask_blur" in fields) == (request_.mask is not None)
    assert ("hires_strength" in fields) == request_.hires
    assert fields["loras"] == ({"fubuki": 0.7} if "<lora:" in request_.prompt else {})


def test_omitted_at_default_lists_what_the_infotext_leaves_out():
    """Each field in OMITTED_AT_DEFAULT is absent from the infotext of a request that has its default value."""
    text = format_infotext(_txt2img(), 1)
    fields = request_fields(parse_infotext(text))
    defaults = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    for name in OMITTED_AT_DEFAULT:
        assert fields.get(name, defaults[name]) == defaults[name], name
    assert not any(f"{key}:" in text for key in ("Schedule type", "Clip skip", "VAE", "Denoising", "Hires"))


@pytest.mark.parametrize("request_", ROUND_TRIP_REQUESTS)
def test_a1111_reader_reads_what_we_write(request_: GenerationRequest):
    text = format_infotext(request_, 11, model="x, y: z", extra={"Lora hashes": 'n: "q"'})
    res = a1111_parse(text)
    assert res["Negative prompt"] == request_.negative_prompt
    assert res["Steps"] == str(request_.steps)
    sampler, scheduler = request_.validate().sampler, request_.validate().scheduler
    assert res["Sampler"] == sampler
    assert res.get("Schedule type", "Automatic") == scheduler
    assert res["Seed"] == "11"
    assert res["Size"] == f"{request_.width}x{request_.height}"
    assert res["Model"] == "x, y: z"
    assert res["Lora hashes"] == 'n: "q"'
    assert float(res["CFG scale"]) == request_.cfg_scale


def test_round_trip_of_awkward_values():
    values = {"Comma": "a, b", "Colon": "k: v", "Quote": 'say "x"', "Newline": "one\ntwo", "Spaces": "  padded  "}
    params = parse_infotext(format_infotext(_txt2img(), 1, extra=values))
    for key, value in values.items():
        assert params[key] == value


# ------------------------------------------------------------------------------------- A1111's own texts

A1111_HIRES_LORA = """masterpiece, best quality, 1girl, <lora:add_detail:0.8>, looking at viewer,
cherry blossoms, (depth of field:1.2)
Negative prompt: (worst quality, low quality:1.4), lowres,
bad anatomy, watermark
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3405691582, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, \
Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1"""

A1111_IMG2IMG_OLD = """a photo of a castle on a hill, dramatic lighting, 8k
Negative prompt: blurry, watermark
Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234567890, Size: 768x512, Model hash: 9aba26abdf, \
Model: deliberate_v2, Denoising strength: 0.6, Version: v1.6.0"""

A1111_INPAINT = """a red wooden door
Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 512x512, \
Model hash: c6bbc15e32, Model: sd-v1-5-inpainting, Denoising strength: 0.75, Conditional mask weight: 1.0, \
Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Version: v1.10.1"""

A1111_NAI_2022 = """((masterpiece)), best quality, illustration, 1girl
Negative prompt: lowres, bad anatomy, bad hands, text, error, missing fingers
Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 2357391040, Size: 512x704, Model hash: 925997e9, Clip skip: 2, \
ENSD: 31337"""

A1111_XL_ADETAILER = """cinematic photo of an astronaut riding a horse, "dramatic" sky
Negative prompt: embedding:easynegative
Steps: 40, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 5.5, Seed: 17, Size: 1024x1024, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, \
ADetailer model: face_yolov8n.pt, ADetailer prompt: "smiling face, detailed eyes", ADetailer version: 24.9.0, \
TI hashes: "easynegative: c74b4e810b03, bad-hands-5: aa7651be15", Emphasis: No norm, Version: v1.9.4"""


def test_parse_a1111_hires_lora_with_schedule_type():
    params = parse_infotext(A1111_HIRES_LORA)
    assert params["prompt"] == (
        "masterpiece, best quality, 1girl, <lora:add_detail:0.8>, looking at viewer,\n"
        "cherry blossoms, (depth of field:1.2)"
    )
    assert params["negative_prompt"] == "(worst quality, low quality:1.4), lowres,\nbad anatomy, watermark"
    assert params["steps"] == 25
    assert (params["sampler"], params["scheduler"]) == ("DPM++ 2M", "Karras")
    assert params["cfg_scale"] == 7.0 and isinstance(params["cfg_scale"], float)
    assert params["seed"] == 3405691582
    assert (params["width"], params["height"]) == (512, 768)
    assert params["model_hash"] == "6ce0161689"
    assert params["model"] == "v1-5-pruned-emaonly"
    assert params["denoising_strength"] == 0.5
    assert params["hires_scale"] == 2.0 and isinstance(params["hires_scale"], float)
    assert params["hires_steps"] == 10
    assert params["hires_upscaler"] == "Latent"
    assert params["lora_hashes"] == "add_detail: 7c6bad76eb54"
    assert params["Version"] == "v1.10.1"
    assert "Size" not in params


def test_parse_a1111_old_img2img_with_sampler_suffix():
    params = parse_infotext(A1111_IMG2IMG_OLD)
    assert (params["sampler"], params["scheduler"]) == ("DPM++ 2M", "Karras")  # the pre-1.9 name, split
    assert params["cfg_scale"] == 7.5
    assert (params["width"], params["height"]) == (768, 512)
    assert params["denoising_strength"] == 0.6
    assert params["negative_prompt"] == "blurry, watermark"


def test_parse_a1111_inpaint():
    params = parse_infotext(A1111_INPAINT)
    assert params["prompt"] == "a red wooden door"
    assert params["negative_prompt"] == ""
    assert (params["sampler"], params["scheduler"]) == ("Euler a", "Automatic")
    assert params["mask_blur"] == 4
    assert params["Conditional mask weight"] == "1.0"
    assert params["Inpaint area"] == "Only masked"
    assert params["Masked area padding"] == "32"


def test_parse_a1111_2022_without_version():
    params = parse_infotext(A1111_NAI_2022)
    assert params["clip_skip"] == 2
    assert params["ENSD"] == "31337"
    assert params["model_hash"] == "925997e9"
    assert params["seed"] == 2357391040
    assert "Version" not in params


def test_parse_a1111_xl_with_quoted_extension_values():
    params = parse_infotext(A1111_XL_ADETAILER)
    assert params["prompt"] == 'cinematic photo of an astronaut riding a horse, "dramatic" sky'
    assert (params["sampler"], params["scheduler"]) == ("DPM++ 2M SDE", "Exponential")
    assert params["vae_hash"] == "235745af8d"
    assert params["vae"] == "sdxl_vae.safetensors"
    assert params["ADetailer prompt"] == "smiling face, detailed eyes"
    assert params["TI hashes"] == "easynegative: c74b4e810b03, bad-hands-5: aa7651be15"
    assert params["Emphasis"] == "No norm"
    assert params["Version"] == "v1.9.4"


def test_other_schedule_types_do_not_change_the_sampler():
    text = "p\nSteps: 20, Sampler: Euler, Schedule type: Uniform, CFG scale: 7, Seed: 1"
    params = parse_infotext(text)
    assert params["sampler"] == "Euler" and params["scheduler"] == "Uniform"


@pytest.mark.parametrize(
    "text",
    [A1111_HIRES_LORA, A1111_IMG2IMG_OLD, A1111_INPAINT, A1111_NAI_2022, A1111_XL_ADETAILER, ISSUE_INFOTEXT],
    ids=["hires-lora", "img2img-old", "inpaint", "nai-2022", "xl-adetailer", "issue-15"],
)
def test_request_fields_from_a1111_build_a_valid_request(text: str):
    params = parse_infotext(text)
    fields = request_fields(params)
    request = request_from_fields(fields).validate()
    assert request.prompt == params["prompt"]
    assert request.seed == params["seed"]
    assert (request.width, request.height) == (params["width"], params["height"])
    assert request.steps == params["steps"]
    assert request.cfg_scale == params["cfg_scale"]
    assert (request.sampler, request.scheduler) == (params["sampler"], params["scheduler"])
    assert request.clip_skip == params.get("clip_skip", 1)
    assert request.vae == params.get("vae", "Automatic")


def test_request_fields_of_the_issue_infotext():
    """The anime model card's infotext (A1111 1.9.3): every field under the request's names, hires included."""
    fields = request_fields(parse_infotext(ISSUE_INFOTEXT))
    assert fields["prompt"].endswith("motion lines, <lora:fubuki:1> <lora:space_hopper:1>")  # tags stay
    assert fields["negative_prompt"] == "bad fingers"
    assert (fields["sampler"], fields["scheduler"]) == ("DPM++ 2M SDE", "Karras")
    assert (fields["steps"], fields["cfg_scale"], fields["seed"]) == (20, 7.0, 2245042501)
    assert (fields["width"], fields["height"]) == (512, 768)
    assert fields["vae"] == "vaeFtMse840000EmaPruned_vae.safetensors"
    assert (fields["hires_scale"], fields["hires_steps"]) == (2.0, 10)
    assert fields["hires_upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert fields["hires_strength"] == 0.6 and "strength" not in fields  # hires present: its denoising strength
    assert fields["loras"] == {"fubuki": 1.0, "space_hopper": 1.0}
    assert fields["lora_hashes"] == "fubuki: 2a9b5d7e7c1f, space_hopper: 0d7c3e1f9b44"  # quoted commas: one value
    assert parse_lora_hashes(fields["lora_hashes"]) == {"fubuki": "2a9b5d7e7c1f", "space_hopper": "0d7c3e1f9b44"}
    assert fields["Version"] == "v1.9.3"  # unknown keys under their own names
    request = request_from_fields(fields).validate()
    assert request.hires and request.hires_size() == (1024, 1536)
    assert request.hires_strength == 0.6 and request.strength == 0.75


def test_denoising_strength_is_strength_without_hires():
    fields = request_fields(parse_infotext(A1111_IMG2IMG_OLD))
    assert fields["strength"] == 0.6 and "hires_strength" not in fields
    assert fields["loras"] == {}
    # A hires key whose value did not convert still marks the run as a hires one.
    fields = request_fields(parse_infotext("p\nSteps: 2, Seed: 1, Denoising strength: 0.3, Hires upscale: lots"))
    assert fields["hires_strength"] == 0.3 and fields["Hires upscale"] == "lots"


def test_request_fields_take_lora_weights_from_the_prompt():
    fields = request_fields({"prompt": "a <lora:detail:0.75> cat, <lora:style> (x:1.2) <lora:detail:0.5>"})
    assert fields["loras"] == {"detail": 1.25, "style": 1.0}  # A1111 applies both tags of a name: weights add up
    assert fields["prompt"] == "a <lora:detail:0.75> cat, <lora:style> (x:1.2) <lora:detail:0.5>"
    assert request_fields({"prompt": "<lora:te:0.5:0.25> <lyco:old:0.3>"})["loras"] == {"te": 0.5, "old": 0.3}
    # A malformed tag: no loras (the prompt's validation names it when it is used), the rest is still read.
    fields = request_fields({"prompt": "a <lora:x:much> cat", "steps": 3})
    assert "loras" not in fields and fields["steps"] == 3


def test_request_fields_only_takes_present_well_typed_values():
    assert request_fields({}) == {}
    fields = request_fields({"prompt": "x", "steps": "20", "cfg_scale": 7, "Hires upscale": "2", "seed": True})
    assert fields == {"prompt": "x", "cfg_scale": 7.0, "loras": {}, "Hires upscale": "2"}


def test_old_combined_sampler_names_give_sampler_and_scheduler():
    for text, pair in (
        ("p\nSteps: 2, Sampler: DPM++ 2M Karras, Seed: 1", ("DPM++ 2M", "Karras")),
        ("p\nSteps: 2, Sampler: DPM++ SDE Karras, Seed: 1", ("DPM++ SDE", "Karras")),
        ("p\nSteps: 2, Sampler: k_euler_a, Seed: 1", ("Euler a", "Automatic")),
        ("p\nSteps: 2, Sampler: Euler, Schedule type: sgm_uniform, Seed: 1", ("Euler", "SGM Uniform")),
    ):
        params = parse_infotext(text)
        assert (params["sampler"], params["scheduler"]) == pair, text


def test_unknown_sampler_or_schedule_is_kept_as_written_for_validation_to_name():
    params = parse_infotext("p\nSteps: 2, Sampler: Restart, Schedule type: Karras, Seed: 1")
    assert (params["sampler"], params["scheduler"]) == ("Restart", "Karras")
    with pytest.raises(ValueError, match="^sampler: unknown sampler 'Restart'"):
        request_from_fields(request_fields(params)).validate()
    params = parse_infotext("p\nSteps: 2, Sampler: Euler, Schedule type: Align Your Steps, Seed: 1")
    assert (params["sampler"], params["scheduler"]) == ("Euler", "Align Your Steps")
    with pytest.raises(ValueError, match="^scheduler: unknown schedule type 'Align Your Steps'"):
        request_from_fields(request_fields(params)).validate()


def test_parse_without_params_line_gives_prompt_only():
    assert parse_infotext("just a prompt, with: one colon") == {
        "prompt": "just a prompt, with: one colon",
        "negative_prompt": "",
    }
    params = parse_infotext("a prompt\nNegative prompt: bad\nmore bad")
    assert params == {"prompt": "a prompt", "negative_prompt": "bad\nmore bad"}


def test_parse_keeps_unconvertible_known_values_as_text():
    params = parse_infotext("p\nSteps: many, Sampler: Euler, CFG scale: high, Seed: 3, Size: big")
    assert params["Steps"] == "many" and "steps" not in params
    assert params["CFG scale"] == "high"
    assert params["Size"] == "big"
    assert params["seed"] == 3


def test_parse_handles_crlf():
    params = parse_infotext("a\r\nNegative prompt: b\r\nSteps: 3, Sampler: Euler, Seed: 9")
    assert params["prompt"] == "a" and params["negative_prompt"] == "b" and params["steps"] == 3


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   \n\n  ",
        ":::,,,",
        'Steps: "unterminated, Seed: x, Size: 9x, Sampler: "',
        "Negative prompt:",
        "\x00\xff\ufffd",
        "Size: 0x0, Steps: -1, Seed: 99999999999999999999999999, CFG scale: nan",
        '"' * 1000,
        "a b c " * 20_000,
        ("k" * 150 + ": v, ") * 300,
        None,
        123,
        b"Steps: 1, Seed: 2, Size: 8x8",
    ],
)
def test_garbage_never_raises(garbage):
    params = parse_infotext(garbage)
    assert isinstance(params, dict)
    if not isinstance(garbage, str) or not garbage.strip():
        assert params == {}


def test_garbage_does_not_make_a_valid_request_invalid_silently():
    params = parse_infotext("Size: 0x0, Steps: -1, Seed: 99999999999999999999999999, CFG scale: nan")
    fields = request_fields(params)
    with pytest.raises(ValueError):
        request_from_fields(fields, prompt="x").validate()


def test_long_garbage_line_parses_quickly():
    started = time.perf_counter()
    parse_infotext("word " * 13_000)  # ~65k characters without a comma or colon
    assert time.perf_counter() - started < 2.0


# ------------------------------------------------------------------------------------------------ PNG


def test_png_bytes_round_trip_latin1_uses_text_chunk():
    infotext = format_infotext(_txt2img(negative_prompt="café"), 1)
    data = png_bytes(_image((24, 16)), infotext)
    assert b"tEXtparameters\x00" in data
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (24, 16)
        assert read_infotext(image) == infotext


@pytest.mark.parametrize("prompt", ["一只猫, 桜の木 🐱🌸", "emoji only 🚀", 'Ωμέγα: "quoted", ok'])
def test_png_bytes_round_trip_non_latin1_uses_itxt(prompt: str):
    infotext = format_infotext(GenerationRequest(prompt=prompt, negative_prompt="悪い"), 2)
    data = png_bytes(_image(), infotext)
    assert b"iTXtparameters\x00" in data
    with Image.open(io.BytesIO(data)) as image:
        text = read_infotext(image)
    assert text == infotext
    params = parse_infotext(text)
    assert params["prompt"] == prompt and params["negative_prompt"] == "悪い"


def test_png_bytes_converts_modes_png_cannot_store():
    data = png_bytes(Image.new("CMYK", (8, 8)), "p\nSteps: 1, Seed: 1, Size: 8x8")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
        assert read_infotext(image).startswith("p\n")


def test_read_infotext_from_text_chunk_after_image_data():
    # Some writers put text chunks after IDAT; Pillow only sees them via .text after loading.
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG")
    data = buffer.getvalue()
    chunk_data = b"parameters\x00late text\nSteps: 1, Seed: 2, Size: 8x8"
    chunk = struct.pack(">I", len(chunk_data)) + b"tEXt" + chunk_data
    chunk += struct.pack(">I", PngImagePlugin._crc32(b"tEXt" + chunk_data, 0) & 0xFFFFFFFF)
    iend = data.rindex(b"IEND") - 4
    with Image.open(io.BytesIO(data[:iend] + chunk + data[iend:])) as image:
        assert read_infotext(image) == "late text\nSteps: 1, Seed: 2, Size: 8x8"


def test_read_infotext_none_when_absent():
    buffer = io.BytesIO()
    _image().save(buffer, format="PNG")
    with Image.open(buffer) as image:
        assert read_infotext(image) is None
    assert read_infotext(_image()) is None


def test_save_png_writes_atomically_and_leaves_no_temp(tmp_path: Path):
    infotext = format_infotext(_txt2img(prompt="猫"), 3)
    target = tmp_path / "out.png"
    assert save_png(_image((32, 8)), infotext, target) == target
    with Image.open(target) as image:
        assert image.size == (32, 8)
        assert read_infotext(image) == infotext
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert os.stat(target).st_mode & 0o777 == 0o644


def test_save_png_failure_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "out.png"
    save_png(_image(), "old\nSteps: 1, Seed: 1, Size: 8x8", target)
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        save_png(_image(color="blue"), "new\nSteps: 1, Seed: 1, Size: 8x8", target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_png_into_missing_folder_raises(tmp_path: Path):
    with pytest.raises(OSError):
        save_png(_image(), "x", tmp_path / "missing" / "out.png")


# ----------------------------------------------------------------------------------------------- EXIF


def _bigendian_exif_user_comment(comment: bytes) -> bytes:
    """An EXIF block the way piexif.dump writes it for A1111: big-endian TIFF, IFD0 -> Exif IFD -> UserComment."""
    ifd0_offset = 8
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, ifd0_offset + 18) + struct.pack(">I", 0)
    exif_ifd_offset = ifd0_offset + len(ifd0)
    data_offset = exif_ifd_offset + 18
    exif_ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x9286, 7, len(comment), data_offset) + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", ifd0_offset) + ifd0 + exif_ifd + comment
    return b"Exif\x00\x00" + tiff


def _encoded(fmt: str, exif: bytes | Image.Exif) -> Image.Image:
    buffer = io.BytesIO()
    _image((16, 16)).save(buffer, format=fmt, exif=exif)
    buffer.seek(0)
    return Image.open(buffer)


A1111_JPEG_TEXT = A1111_HIRES_LORA.replace("1girl", "1girl, 猫 🐱")


def test_read_infotext_from_a1111_jpeg_user_comment():
    comment = b"UNICODE\x00" + A1111_JPEG_TEXT.encode("utf-16-be")
    with _encoded("JPEG", _bigendian_exif_user_comment(comment)) as image:
        assert image.format == "JPEG"
        assert read_infotext(image) == A1111_JPEG_TEXT
        assert parse_infotext(read_infotext(image))["scheduler"] == "Karras"


@pytest.mark.skipif("WEBP" not in Image.SAVE, reason="Pillow built without WebP")
def test_read_infotext_from_a1111_webp_user_comment():
    comment = b"UNICODE\x00" + A1111_JPEG_TEXT.encode("utf-16-be")
    with _encoded("WEBP", _bigendian_exif_user_comment(comment)) as image:
        assert read_infotext(image) == A1111_JPEG_TEXT


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        (b"UNICODE\x00" + "little endian 猫".encode("utf-16-le"), "little endian 猫"),
        (b"UNICODE\x00" + "\ufeffwith bom".encode("utf-16-le"), "with bom"),
        (b"ASCII\x00\x00\x00plain ascii\x00", "plain ascii"),
        (b"\x00" * 8 + b"undefined code", "undefined code"),
        (b"no prefix at all, utf-8 \xc3\xa9", "no prefix at all, utf-8 é"),
    ],
)
def test_read_infotext_user_comment_encodings(comment: bytes, expected: str):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    with _encoded("JPEG", exif) as image:
        assert read_infotext(image) == expected


def test_read_infotext_ignores_jpeg_without_metadata():
    buffer = io.BytesIO()
    _image().save(buffer, format="JPEG")
    with Image.open(buffer) as image:
        assert read_infotext(image) is None
