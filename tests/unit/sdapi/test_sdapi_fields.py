"""The A1111 -> GenerationRequest translation: A1111's defaults and rules, errors naming the A1111 field, and
nothing the studio cannot do dropped silently."""

from __future__ import annotations

import base64
import io
import logging

import pytest
from PIL import Image

from studio.sdapi import ApiError
from studio.sdapi.fields import IMG2IMG, TXT2IMG, ApiOptions, translate, unknown_fields_logged
from studio.types import AUTOMATIC, Limits

LIMITS = Limits(max_count=8, max_steps=150)


def tx(payload: dict, kind: str = TXT2IMG, options: ApiOptions | None = None):
    return translate(payload, kind, options or ApiOptions(), LIMITS)


def png64(size=(64, 64), colour="red", mode="RGB", prefix: bool = False) -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{encoded}" if prefix else encoded


def refused(payload: dict, kind: str = TXT2IMG) -> dict:
    with pytest.raises(ApiError) as caught:
        tx(payload, kind)
    assert caught.value.status == 422, caught.value.body
    return caught.value.body["detail"][0]


def test_a1111_api_defaults():
    t = tx({"prompt": "a fox"})
    r = t.request
    assert (r.steps, r.sampler, r.scheduler, r.cfg_scale, r.width, r.height, r.seed) == (
        50, "Euler", AUTOMATIC, 7.0, 512, 512, -1
    )  # fmt: skip
    assert t.n_iter == 1 and t.batch_size == 1 and t.send_images and not t.save_images
    assert t.parameters["seed"] == -1 and t.parameters["steps"] == 50 and t.parameters["sampler_index"] == "Euler"
    assert t.warnings == []


def test_null_means_default_and_unknown_fields_are_ignored_and_logged_once(caplog):
    caplog.set_level(logging.DEBUG, logger="studio.sdapi.fields")
    payload = {"prompt": "x", "steps": None, "url": "http://127.0.0.1:7860", "auth": "", "clip_skip": 2, "x_y": 1}
    t = tx(payload)
    tx(payload)
    assert t.request.steps == 50 and t.request.clip_skip == 1  # top-level clip_skip is not A1111's: ignored
    assert {"url", "auth", "clip_skip", "x_y"} <= unknown_fields_logged()
    assert sum("'x_y'" in record.getMessage() for record in caplog.records) <= 1


def test_sampler_name_wins_over_sampler_index_and_combined_names_split():
    assert tx({"sampler_name": "DPM++ 2M", "sampler_index": "Euler a"}).request.sampler == "DPM++ 2M"
    assert tx({"sampler_index": "Euler a"}).request.sampler == "Euler a"
    split = tx({"sampler_name": "DPM++ 2M Karras"}).request
    assert (split.sampler, split.scheduler) == ("DPM++ 2M", "Karras")
    assert tx({"sampler_name": "DPM++ 2M", "scheduler": "karras"}).request.scheduler == "Karras"
    detail = refused({"sampler_index": "Nope"})
    assert detail["loc"] == ["body", "sampler_index"] and "unknown sampler" in detail["msg"]
    assert refused({"sampler_name": "Nope"})["loc"] == ["body", "sampler_name"]


@pytest.mark.parametrize(
    ("payload", "loc", "text"),
    [
        ({"width": 100}, ["body", "width"], "multiple of 8"),
        ({"steps": "ten"}, ["body", "steps"], "whole number"),
        (
            {"steps": 151},
            ["body", "steps"],
            "between 1 and 150, got 151 (this studio's limit, set by STUDIO_MAX_STEPS)",
        ),
        ({"width": 4096}, ["body", "width"], "(this studio's limit, set by STUDIO_MAX_WIDTH)"),
        ({"cfg_scale": "high"}, ["body", "cfg_scale"], "number"),
        (
            {"batch_size": 9},
            ["body", "batch_size"],
            "between 1 and 8, got 9 (this studio's limit, set by STUDIO_MAX_COUNT)",
        ),
        ({"batch_size": 4, "n_iter": 3}, ["body", "n_iter"], "4 x 3 = 12 images"),
        ({"n_iter": 0}, ["body", "n_iter"], "at least 1"),
        ({"enable_hr": True, "hr_scale": 9}, ["body", "hr_scale"], "between 1 and 8"),
        ({"enable_hr": "yes"}, ["body", "enable_hr"], "true or false"),
        (
            {"override_settings": {"CLIP_stop_at_last_layers": 13}},
            ["body", "override_settings", "CLIP_stop_at_last_layers"],
            "between 1 and 12",
        ),
        ({"override_settings": {"samples_format": "jpg"}}, ["body", "override_settings", "samples_format"], "PNG"),
        ({"override_settings": "x"}, ["body", "override_settings"], "object"),
        ({"script_name": "x/y plot"}, ["body", "script_name"], "not found"),
        ({"alwayson_scripts": {"ControlNet": {"args": []}}}, ["body", "alwayson_scripts", "ControlNet"], "not found"),
    ],
)
def test_wrong_values_are_422_naming_the_a1111_field(payload, loc, text):
    detail = refused({"prompt": "x", **payload})
    assert detail["loc"] == loc and text in detail["msg"], detail
    assert detail["type"] == "value_error"


def test_a_non_object_body_is_refused():
    with pytest.raises(ApiError) as caught:
        translate(["prompt"], TXT2IMG, ApiOptions(), LIMITS)
    assert caught.value.status == 422 and caught.value.body["detail"][0]["loc"] == ["body"]


def test_hires_fix_fields_and_their_a1111_defaults():
    off = tx({"enable_hr": False, "hr_scale": 2, "denoising_strength": 0.3}).request
    assert not off.hires
    on = tx({"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 5, "width": 64, "height": 64}).request
    assert (on.hires_scale, on.hires_upscaler, on.hires_steps, on.hires_strength) == (2.0, "Latent", 5, 0.7)
    sized = tx({"enable_hr": True, "hr_resize_x": 128, "hr_resize_y": 96, "denoising_strength": 0.4,
                "hr_upscaler": "Lanczos", "width": 64, "height": 64}).request  # fmt: skip
    assert sized.hires_size() == (128, 96) and sized.hires_strength == 0.4 and sized.hires_upscaler == "Lanczos"
    noop = tx({"enable_hr": True, "hr_scale": 1})
    assert not noop.request.hires and "hr_scale 1" in noop.warnings[0]


def test_override_settings_and_options():
    t = tx({"override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "None", "sd_model_checkpoint": "m [1]"}})
    assert (t.request.clip_skip, t.request.vae, t.model, t.restore) == (2, AUTOMATIC, "m [1]", True)
    assert t.persist == {}
    kept = tx({"override_settings": {"CLIP_stop_at_last_layers": 3}, "override_settings_restore_afterwards": False})
    assert kept.persist == {"clip_skip": 3, "vae": AUTOMATIC}
    assert tx({}, options=ApiOptions(clip_skip=2, vae="x.safetensors")).request.clip_skip == 2
    other = tx({"override_settings": {"eta_noise_seed_delta": 31337, "forge_additional_modules": []}})
    assert other.warnings == ["override_settings.eta_noise_seed_delta is not supported here and was ignored"]


@pytest.mark.parametrize(
    ("payload", "warned"),
    [
        ({"restore_faces": True}, "restore_faces"),
        ({"tiling": True}, "tiling"),
        ({"subseed_strength": 0.5}, "variation seeds"),
        ({"styles": ["Cinematic"]}, "styles"),
        ({"s_churn": 0.3}, "s_churn"),
        ({"sampler_name": "Euler a", "eta": 0.5}, "eta=0.5"),
        ({"sampler_name": "DDIM", "eta": 1.0}, "DDIM runs with eta 0"),
        ({"enable_hr": True, "hr_scale": 2, "hr_prompt": "other", "width": 64, "height": 64}, "hr_prompt"),
    ],
)
def test_what_cannot_be_reproduced_is_a_warning(payload, warned):
    warnings = tx({"prompt": "x", **payload}).warnings
    assert any(warned in w for w in warnings), warnings


def test_neutral_values_clients_always_send_are_silent():
    """webuiapi and SillyTavern send these on every call; at these values they change nothing."""
    t = tx({"prompt": "x", "restore_faces": False, "tiling": False, "styles": [], "subseed": -1,
            "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0, "eta": 1.0, "s_churn": 0,
            "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "sampler_name": "Euler a", "script_args": [],
            "alwayson_scripts": {}, "do_not_save_samples": False, "hr_sampler_name": None, "hr_prompt": "",
            "hr_additional_modules": [], "enable_hr": False, "hr_upscaler": "Latent",
            "firstphase_width": 0})  # fmt: skip
    assert t.warnings == []


def test_img2img_fields():
    t = tx({"init_images": [png64((64, 64), prefix=True)], "width": 64, "height": 64}, IMG2IMG)
    r = t.request
    assert r.image.size == (64, 64) and r.mask is None and r.strength == 0.75
    assert t.parameters["init_images"] is None  # not echoed unless include_init_images
    echoed = tx({"init_images": [png64()], "width": 64, "height": 64, "include_init_images": True}, IMG2IMG)
    assert echoed.parameters["init_images"] == [png64()]


def test_inpaint_fields_follow_a1111s_api_defaults():
    t = tx({"init_images": [png64((96, 64))], "mask": png64((96, 64), "white", "L"), "width": 64, "height": 64},
           IMG2IMG)  # fmt: skip
    r = t.request
    assert (r.inpaint_only_masked, r.inpaint_padding, r.masked_content, r.mask_blur) == (True, 0, "fill", 4)
    assert r.image.size == (96, 64)  # "Only masked" crops the full-size image: not resized here
    whole = tx({"init_images": [png64((96, 64))], "mask": png64((96, 64), "white", "L"), "width": 64, "height": 64,
                "inpaint_full_res": False, "inpainting_fill": 1, "mask_blur": 0, "inpainting_mask_invert": 1},
               IMG2IMG).request  # fmt: skip
    assert (whole.inpaint_only_masked, whole.masked_content, whole.mask_blur) == (False, "original", 0)
    assert whole.image.size == (64, 64) and whole.mask.getextrema() == (0, 0)  # resized; white mask inverted
    assert refused({"init_images": [png64()], "mask": png64(), "inpainting_fill": 4}, IMG2IMG)["loc"] == [
        "body", "inpainting_fill"]  # fmt: skip
    assert refused({"init_images": [png64()], "mask": png64(), "mask_blur_x": 2, "mask_blur_y": 5}, IMG2IMG)[
        "loc"] == ["body", "mask_blur_y"]  # fmt: skip
    padding = refused({"init_images": [png64()], "mask": png64(), "inpaint_full_res_padding": -1}, IMG2IMG)
    assert padding["loc"] == ["body", "inpaint_full_res_padding"]


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({}, ["body", "init_images"]),
        ({"init_images": []}, ["body", "init_images"]),
        ({"init_images": [png64(), png64()]}, ["body", "init_images"]),
        ({"init_images": ["not base64!"]}, ["body", "init_images", "0"]),
        ({"init_images": [base64.b64encode(b"not an image").decode()]}, ["body", "init_images", "0"]),
        ({"init_images": [png64()], "mask": "data:image/png,xyz"}, ["body", "mask"]),
        ({"init_images": [png64()], "width": 100}, ["body", "width"]),
        ({"init_images": [png64()], "resize_mode": 7}, ["body", "resize_mode"]),
        ({"init_images": [png64()], "denoising_strength": 0}, ["body", "denoising_strength"]),
    ],
)
def test_bad_img2img_input_names_the_field(payload, loc):
    assert refused(payload, IMG2IMG)["loc"] == loc


@pytest.mark.parametrize(("mode", "expected"), [(0, (255, 0, 0)), (1, (255, 0, 0)), (2, (255, 0, 0))])
def test_resize_modes_fit_the_init_image(mode, expected):
    """A 128x64 red-left / blue-right image into 64x64: stretch, crop the centre, or fit and fill the bands."""
    image = Image.new("RGB", (128, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 64, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    t = tx({"init_images": [encoded], "width": 64, "height": 64, "resize_mode": mode}, IMG2IMG)
    fitted = t.request.image
    assert fitted.size == (64, 64)
    left = fitted.getpixel((2, 32))
    assert max(abs(a - b) for a, b in zip(left, expected, strict=True)) < 40
    if mode == 2:  # fit: the image is 64x32 in the middle, the bands above and below repeat its edge rows
        assert max(abs(a - b) for a, b in zip(fitted.getpixel((2, 2)), expected, strict=True)) < 40
    if mode == 1:  # crop: the centre column band is the red/blue border
        assert fitted.getpixel((62, 32))[2] > 200


def test_latent_upscale_resize_mode_is_a_warning():
    t = tx({"init_images": [png64((96, 64))], "width": 64, "height": 64, "resize_mode": 3}, IMG2IMG)
    assert any("latent upscale" in w for w in t.warnings)


def test_override_decode_method_chooses_taesd_for_one_request():
    t = tx({"override_settings": {"sd_vae_decode_method": "TAESD"}})
    assert t.request.vae == "Approx (TAESD)"
    back = tx(
        {"override_settings": {"sd_vae_decode_method": "Full"}}, options=ApiOptions(clip_skip=1, vae="Approx (TAESD)")
    )
    assert back.request.vae == AUTOMATIC
    kept = tx({"override_settings": {"sd_vae_decode_method": "Full"}}, options=ApiOptions(clip_skip=1, vae="x.pt"))
    assert kept.request.vae == "x.pt"
    with pytest.raises(ApiError) as caught:
        tx({"override_settings": {"sd_vae_decode_method": "fast"}})
    assert caught.value.body["detail"][0]["loc"] == ["body", "override_settings", "sd_vae_decode_method"]
