"""The A1111 API on the real studio (demo model), driven by the clients people use: webuiapi, and the exact request
bodies Open WebUI and SillyTavern send. The API and the UI share one engine queue and one set of pixels."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from studio.models import demo_model_dir
from studio.models.demo_extras import build_demo_vae
from studio.testing.browser import start_studio

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdapi")
    models = root / "models"
    models.mkdir()
    os.symlink(demo_model_dir(), models / "second")  # a second checkpoint to switch to (same weights, own title)
    build_demo_vae(models / "VAE" / "warm.safetensors")
    running = start_studio(root)
    yield running
    running.close()


@pytest.fixture
def api(studio):
    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(studio.url.rstrip("/").rsplit(":", 1)[1]),
                               sampler="Euler a", steps=3)  # fmt: skip
    client.util_wait_for_ready(check_interval=0.2)
    return client


def base(studio) -> str:
    return studio.url + "sdapi/v1"


def picture(size=(96, 64)) -> Image.Image:
    image = Image.new("RGB", size, (200, 40, 30))
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=(30, 60, 210))
    return image


def decoded(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_txt2img_batch_seeds_and_infotext(api):
    result = api.txt2img(prompt="a red fox", seed=42, width=64, height=64, batch_size=2)
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert result.info["seed"] == 42 and result.info["all_seeds"] == [42, 43]
    assert result.info["infotexts"][1].startswith("a red fox\nSteps: 3, Sampler: Euler a")
    assert "Seed: 43" in result.images[1].info["parameters"]  # the PNG carries its infotext
    assert result.parameters["seed"] == 42 and result.parameters["batch_size"] == 2
    random = api.txt2img(prompt="a red fox", seed=-1, width=64, height=64, batch_size=2)
    assert random.parameters["seed"] == -1
    first = random.info["seed"]
    assert first >= 0 and random.info["all_seeds"] == [first, first + 1]


def test_img2img_and_inpaint_with_a_mask(api):
    made = api.img2img(images=[picture()], prompt="a cat", denoising_strength=0.6, width=64, height=64, seed=3)
    assert made.images[0].size == (64, 64) and made.info["denoising_strength"] == 0.6
    mask = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(mask).rectangle((60, 16, 83, 39), fill=255)
    painted = api.img2img(images=[picture()], mask_image=mask, prompt="a cat", width=64, height=64, seed=3,
                          mask_blur=0, denoising_strength=0.9)  # fmt: skip
    out, before = np.asarray(painted.images[0]), np.asarray(picture())
    assert out.shape[:2] == (64, 96)  # inpaint_full_res (A1111's API default): only the masked area, pasted back
    keep = np.asarray(mask) == 0
    assert (out[keep] == before[keep]).all() and (out[~keep] != before[~keep]).any()
    whole = api.img2img(images=[picture()], mask_image=mask, prompt="a cat", width=64, height=64, seed=3,
                        inpaint_full_res=False, inpainting_fill=1)  # fmt: skip
    assert whole.images[0].size == (64, 64)


def test_png_info_reads_the_infotext_back(api):
    made = api.txt2img(prompt="a (red:1.2) fox", seed=7, width=64, height=64)
    info = api.png_info(made.image)
    assert info.info == made.info["infotexts"][0]
    assert info.parameters["Seed"] == 7 and info.parameters["Prompt"] == "a (red:1.2) fox"


def test_lists_clients_read(api):
    names = {model["title"]: model for model in api.get_sd_models()}
    assert any(title.startswith("demo [") for title in names) and "second" in names
    assert set(names[next(iter(names))]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert {"Euler a", "DPM++ 2M", "DPM++ 3M SDE"} <= set(api.util_get_sampler_names())
    assert {"automatic", "karras", "exponential"} <= set(api.util_get_scheduler_names())
    assert [u["name"] for u in api.get_upscalers()][:3] == ["None", "Lanczos", "Nearest"]
    assert api.get_latent_upscale_modes()[0] == {"name": "Latent"}
    assert api.get_sd_vae() == [{"model_name": "warm.safetensors", "filename": api.get_sd_vae()[0]["filename"]}]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}


def test_options_switch_the_model_and_unknown_titles_are_named(api, studio):
    options = api.get_options()
    current = options["sd_model_checkpoint"]
    assert current in api.util_get_model_names() and current.startswith("demo [")
    try:
        assert api.set_options({"sd_model_checkpoint": "second"}) is None
        switched = api.get_options()["sd_model_checkpoint"]
        assert switched.startswith("second [") and switched in api.util_get_model_names()
        made = api.txt2img(prompt="x", seed=1, width=64, height=64)
        assert made.info["sd_model_name"] == "second"
    finally:
        api.set_options({"sd_model_checkpoint": current})
    assert api.util_get_current_model() == current
    refused = requests.post(f"{base(studio)}/options", json={"sd_model_checkpoint": "no-such-model"}, timeout=30)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"] and "no-such-model" in refused.text


def test_override_settings_apply_to_one_request_and_are_restored(api, studio):
    before = api.get_options()
    made = api.txt2img(prompt="x", seed=5, width=64, height=64, override_settings={
        "sd_model_checkpoint": "second", "CLIP_stop_at_last_layers": 2, "sd_vae": "warm.safetensors"})  # fmt: skip
    text = made.info["infotexts"][0]
    assert "Clip skip: 2" in text and "VAE: warm.safetensors" in text and "Model: second" in text
    assert api.get_options() == before  # model, clip skip and VAE restored


def test_save_images_adds_to_history_only_when_asked(api, studio):
    history = studio.controller.store.history
    count = len(history())
    api.txt2img(prompt="not kept", seed=11, width=64, height=64)
    assert len(history()) == count
    api.txt2img(prompt="kept", seed=12, width=64, height=64, save_images=True)
    entries = history()
    assert len(entries) == count + 1 and entries[0].seed == 12 and Path(entries[0].path).is_file()


def test_progress_during_a_run_interrupt_and_wait_for_ready(studio, api):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=api.txt2img(
        prompt="a long run", seed=21, width=64, height=64, steps=150, n_iter=3)))  # fmt: skip
    thread.start()
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["job_count"] == 3 and progress["state"]["sampling_step"] > 2:
            seen = progress
            break
        time.sleep(0.02)
    assert seen is not None, "the run never showed up in /progress"
    assert seen["state"]["job"] == "txt2img" and 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0
    preview = seen["current_image"] or api.get_progress()["current_image"]  # the live preview (every 2 steps)
    assert preview is not None, "no live preview in /progress"
    assert Image.open(io.BytesIO(base64.b64decode(preview))).size == (8, 8)  # latent resolution of 64x64
    skipped = requests.get(f"{base(studio)}/progress", params={"skip_current_image": "true"}, timeout=10).json()
    assert skipped["current_image"] is None and skipped["state"]["job"] == "txt2img"
    assert api.skip() == {}
    while api.get_progress()["state"]["job_no"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.interrupt() == {}
    thread.join(60)
    api.util_wait_for_ready(check_interval=0.1)
    warnings = box["result"].info["warnings"]
    assert any(w.startswith("skipped: batch 1 of 3") for w in warnings), warnings
    assert any(w.startswith("interrupted: batch 2 of 3") for w in warnings), warnings
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_progress_reports_a_ui_job_and_interrupt_stops_it(studio, api):
    from gradio_client import Client

    client = Client(studio.url, verbose=False)
    try:
        job = client.submit(prompt="from the UI", seed=31, width=64, height=64, steps=150, count=2, api_name="/txt2img")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and api.get_progress()["state"]["sampling_step"] < 2:
            time.sleep(0.02)
        state = api.get_progress()["state"]
        assert state["job"] == "txt2img" and state["sampling_steps"] == 300
        api.interrupt()
        with pytest.raises(Exception, match="(?i)stopped"):
            job.result(timeout=60)
    finally:
        client.close()


def test_same_seed_gives_the_same_pixels_through_sdapi_and_the_gradio_api(studio):
    from gradio_client import Client

    body = {"prompt": "a lighthouse", "negative_prompt": "fog", "sampler_name": "Euler a", "steps": 4, "cfg_scale": 7,
            "seed": 1234, "width": 64, "height": 64}  # fmt: skip
    made = requests.post(f"{base(studio)}/txt2img", json=body, timeout=60).json()
    client = Client(studio.url, verbose=False)
    try:
        gallery, _ = client.predict(prompt="a lighthouse", negative_prompt="fog", sampler="Euler a", steps=4,
                                    cfg_scale=7, seed=1234, width=64, height=64, api_name="/txt2img")  # fmt: skip
    finally:
        client.close()
    path = gallery[0]["image"] if isinstance(gallery[0]["image"], str) else gallery[0]["image"]["path"]
    ui = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(decoded(made["images"][0]).convert("RGB")), ui)


# ---- other clients' exact request bodies -----------------------------------------------------------------------------
def test_open_webui_sequence(studio):
    """Open WebUI (backend/open_webui/routers/images.py): verify with GET options, set the model by posting back the
    whole options dict, list sd-models, then txt2img with prompt, batch_size, width, height, steps, negative_prompt."""
    url = studio.url.rstrip("/")
    headers = {"authorization": "Basic "}  # what it sends with no AUTOMATIC1111_API_AUTH configured
    verify = requests.get(url=f"{url}/sdapi/v1/options", headers=headers, timeout=30)
    verify.raise_for_status()
    models = requests.get(url=f"{url}/sdapi/v1/sd-models", headers=headers, timeout=30).json()
    choices = [{"id": model["title"], "name": model["model_name"]} for model in models]
    chosen = next(choice["id"] for choice in choices if choice["name"] == "second")
    options = requests.get(url=f"{url}/sdapi/v1/options", headers=headers, timeout=30).json()
    original = options["sd_model_checkpoint"]
    try:
        if chosen != options["sd_model_checkpoint"]:
            options["sd_model_checkpoint"] = chosen
            posted = requests.post(url=f"{url}/sdapi/v1/options", json=options, headers=headers, timeout=60)
            assert posted.status_code == 200
        data = {"prompt": "a watercolor fox", "batch_size": 2, "width": 64, "height": 64, "steps": 3,
                "negative_prompt": "blurry"}  # fmt: skip
        r = requests.post(url=f"{url}/sdapi/v1/txt2img", json=data, headers=headers, timeout=120)
        res = r.json()
        assert r.status_code == 200 and len(res["images"]) == 2
        assert isinstance(res["info"], str) and json.loads(res["info"])["sd_model_name"] == "second"
        assert all(not image.startswith("data:") for image in res["images"])
    finally:
        requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": original}, timeout=60)


def sillytavern_body(studio, **changes):
    """SillyTavern's generateAutoImage body (public/scripts/extensions/stable-diffusion/index.js), forwarded by its
    server as is (url and auth included)."""
    body = {
        "url": studio.url.rstrip("/"), "auth": "", "prompt": "a portrait of a knight", "negative_prompt": "lowres",
        "sampler_name": "DPM++ 2M", "scheduler": "karras", "steps": 3, "cfg_scale": 7, "width": 64, "height": 64,
        "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2,
        "hr_additional_modules": [], "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 77,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "warm.safetensors"},
        "override_settings_restore_afterwards": True, "clip_skip": 2, "save_images": True, "send_images": True,
        "do_not_save_grid": False, "do_not_save_samples": False,
    }  # fmt: skip
    body.update(changes)
    return body


def test_sillytavern_txt2img(studio):
    history = studio.controller.store.history
    count = len(history())
    r = requests.post(f"{base(studio)}/txt2img", json=sillytavern_body(studio),
                      headers={"Content-Type": "application/json", "Authorization": ""}, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    text = info["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text and "Clip skip: 2" in text
    assert "VAE: warm.safetensors" in text and info["warnings"] == []
    assert len(history()) == count + 1  # save_images: true
    assert requests.get(f"{base(studio)}/options", timeout=30).json()["CLIP_stop_at_last_layers"] == 1  # restored


def test_sillytavern_default_scheduler_is_refused_naming_it(studio):
    """SillyTavern's untouched default schedule type is "normal", which the studio does not have: a 422 naming the
    field and listing the valid ones, never a silent substitute."""
    r = requests.post(f"{base(studio)}/txt2img", json=sillytavern_body(studio, scheduler="normal"), timeout=60)
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "scheduler"] and "Karras" in detail["msg"]


def test_engine_side_refusals_name_the_a1111_field(studio):
    r = requests.post(f"{base(studio)}/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                      "enable_hr": True, "hr_upscaler": "Nope"}, timeout=60)  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "hr_upscaler"]
    r = requests.post(f"{base(studio)}/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                      "override_settings": {"sd_vae": "missing.safetensors"}}, timeout=60)  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "override_settings", "sd_vae"]
