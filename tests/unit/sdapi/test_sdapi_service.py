"""SdapiService over the studio's controller with a fake engine: batches and seeds, info, saving, Skip/Interrupt
and errors in A1111's shapes."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image

from studio.engine import EngineError, EngineNotReady
from studio.gallery import OutputStore
from studio.imagemeta import read_infotext
from studio.jobs import JobTracker
from studio.sdapi import ApiError, SdapiService, StudioHost
from studio.testing.fakes import FakeEngine
from studio.types import Limits
from studio.ui.controller import StudioController

BODY = {"prompt": "a fox", "steps": 4, "width": 64, "height": 64, "seed": 100}


def service_for(tmp_path, engine: FakeEngine) -> tuple[SdapiService, StudioController]:
    controller = StudioController(engine=engine, store=OutputStore(tmp_path))
    return SdapiService(StudioHost(controller, Limits(max_count=8), tmp_path / "models")), controller


def images_of(answer: dict) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in answer["images"]]


def test_batches_seeds_info_and_parameters(tmp_path):
    service, controller = service_for(tmp_path, FakeEngine(loaded=True))
    answer = service.txt2img({**BODY, "seed": -1, "batch_size": 2, "n_iter": 2})
    info = json.loads(answer["info"])
    first = info["seed"]
    assert info["all_seeds"] == [first, first + 1, first + 2, first + 3]
    assert answer["parameters"]["seed"] == -1 and info["batch_size"] == 2
    assert len(info["infotexts"]) == 4 and info["all_prompts"] == ["a fox"] * 4
    pictures = images_of(answer)
    assert len(pictures) == 4 and read_infotext(pictures[2]) == info["infotexts"][2]
    assert [r.count for r in controller.engine.requests] == [2, 2]  # one engine call per batch
    assert controller.store.history() == []  # save_images defaults to false


def test_save_images_true_saves_like_the_ui_and_send_images_false_returns_none(tmp_path):
    service, controller = service_for(tmp_path, FakeEngine(loaded=True))
    answer = service.txt2img({**BODY, "batch_size": 2, "save_images": True, "send_images": False})
    assert answer["images"] == []
    assert sorted(entry.seed for entry in controller.store.history()) == [100, 101]


def run_in_thread(function, *args):
    box: dict = {}

    def target():
        try:
            box["value"] = function(*args)
        except Exception as exc:  # noqa: BLE001 (handed to the test)
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def wait_for_step(service: SdapiService, job_no: int = 0) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = service.progress()
        if state["state"]["job_no"] == job_no and state["state"]["sampling_step"] >= 1:
            return state
        time.sleep(0.005)
    raise TimeoutError("the job did not start")


def test_progress_skip_and_interrupt(tmp_path):
    service, _ = service_for(tmp_path, FakeEngine(loaded=True, delay=0.02))
    thread, box = run_in_thread(service.txt2img, {**BODY, "steps": 40, "n_iter": 3})
    state = wait_for_step(service)
    assert state["state"]["job"] == "txt2img" and state["state"]["job_count"] == 3 and 0 < state["progress"] < 1
    assert state["current_image"] is None
    assert service.skip() == {}
    wait_for_step(service, job_no=1)
    assert service.interrupt() == {}
    thread.join(10)
    info = json.loads(box["value"]["info"])
    assert info["all_seeds"] == []  # the fake makes a batch's images at its end: both batches were cut short
    assert any(w.startswith("skipped: batch 1 of 3") for w in info["warnings"])
    assert any(w.startswith("interrupted: batch 2 of 3") for w in info["warnings"])
    assert any("batches 3 to 3 were not run" in w for w in info["warnings"])
    assert service.progress()["state"]["job_count"] == 0


def test_engine_failures_answer_in_a1111s_shape(tmp_path):
    service, _ = service_for(tmp_path, FakeEngine(loaded=True, fail_with=EngineError("CUDA out of memory")))
    with pytest.raises(ApiError) as caught:
        service.txt2img(BODY)
    assert caught.value.status == 500
    assert caught.value.body == {"error": "EngineError", "detail": "CUDA out of memory", "body": "",
                                 "errors": "CUDA out of memory"}  # fmt: skip
    service, _ = service_for(tmp_path, FakeEngine(loaded=True, fail_with=EngineNotReady("model x is still loading")))
    with pytest.raises(ApiError) as caught:
        service.txt2img(BODY)
    assert caught.value.status == 503 and "still loading" in caught.value.body["detail"]


def test_options_accept_unknown_keys_and_keep_clip_skip_for_api_requests(tmp_path):
    service, controller = service_for(tmp_path, FakeEngine(loaded=True))
    assert service.set_options({"CLIP_stop_at_last_layers": 2, "some_extension_option": [1, 2], "sd_vae": "None",
                                "samples_format": "png", "sd_checkpoint_hash": "stale"}) is None  # fmt: skip
    assert service.get_options()["CLIP_stop_at_last_layers"] == 2
    service.txt2img(BODY)
    assert controller.engine.requests[-1].clip_skip == 2
    for bad, loc in (({"CLIP_stop_at_last_layers": 0}, "CLIP_stop_at_last_layers"), ({"sd_vae": "missing.pt"},
                     "sd_vae"), ({"samples_format": "jpg"}, "samples_format"), ([1], None)):  # fmt: skip
        with pytest.raises(ApiError) as caught:
            service.set_options(bad)
        assert caught.value.status == 422
        assert caught.value.body["detail"][0]["loc"] == (["body", loc] if loc else ["body"])
    assert service.get_options()["CLIP_stop_at_last_layers"] == 2  # a refused POST changes nothing


def test_png_info(tmp_path):
    from studio.imagemeta import png_bytes

    service, _ = service_for(tmp_path, FakeEngine(loaded=True))
    text = (
        "a fox\nNegative prompt: blur\n"
        "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 100, Size: 64x48"
    )
    made = base64.b64encode(png_bytes(Image.new("RGB", (64, 48)), text)).decode()
    info = service.png_info({"image": "data:image/png;base64," + made})
    assert info["info"] == text
    parameters = info["parameters"]
    assert (parameters["Prompt"], parameters["Negative prompt"], parameters["Seed"]) == ("a fox", "blur", 100)
    assert (parameters["Sampler"], parameters["Schedule type"], parameters["Size-1"]) == ("DPM++ 2M", "Karras", 64)
    assert service.png_info({"image": ""}) == {"info": "", "items": {}, "parameters": {}}
    with pytest.raises(ApiError) as caught:
        service.png_info({"image": base64.b64encode(b"text").decode()})
    assert caught.value.body["detail"][0]["loc"] == ["body", "image"]


def test_progress_returns_the_live_preview_as_current_image(tmp_path):
    engine = FakeEngine(loaded=True, delay=0.02)
    controller = StudioController(engine=engine, store=OutputStore(tmp_path), jobs=JobTracker(preview_every=2))
    service = SdapiService(StudioHost(controller, Limits(max_count=8), tmp_path / "models"))
    assert service.get_options()["live_previews_enable"] is True
    assert service.get_options()["show_progress_every_n_steps"] == 2
    thread, _ = run_in_thread(service.txt2img, {**BODY, "steps": 60, "width": 128, "height": 64})
    deadline = time.monotonic() + 10
    while (state := service.progress())["current_image"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    preview = Image.open(io.BytesIO(base64.b64decode(state["current_image"])))
    assert preview.format == "PNG" and preview.size == (16, 8)  # latent resolution of 128x64
    assert service.progress(skip_current_image=True)["current_image"] is None
    service.interrupt()
    thread.join(10)


def test_options_turn_live_previews_off_and_on(tmp_path):
    engine = FakeEngine(loaded=True, delay=0.01)
    controller = StudioController(engine=engine, store=OutputStore(tmp_path), jobs=JobTracker(preview_every=2))
    service = SdapiService(StudioHost(controller, Limits(max_count=8), tmp_path / "models"))
    service.set_options({"live_previews_enable": False})
    assert controller.jobs.preview_every == 0
    assert service.get_options()["live_previews_enable"] is False
    assert service.get_options()["show_progress_every_n_steps"] == 2  # kept for when they come back
    thread, _ = run_in_thread(service.txt2img, {**BODY, "steps": 30})
    wait_for_step(service)
    assert service.progress()["current_image"] is None
    thread.join(10)
    service.set_options({"live_previews_enable": True, "show_progress_every_n_steps": 5})
    assert controller.jobs.preview_every == 5
    for key, bad in (("live_previews_enable", "yes"), ("show_progress_every_n_steps", 2.5)):
        with pytest.raises(ApiError) as caught:
            service.set_options({key: bad})
        assert caught.value.status == 422 and key in json.dumps(caught.value.body)


def test_taesd_through_the_options_like_a1111s_decode_method(tmp_path):
    """A1111's sd_vae_decode_method "TAESD" (and the studio's VAE name) choose the tiny VAE for API requests;
    "Full" goes back to the model's own; anything else is a 422 naming the option."""
    service, controller = service_for(tmp_path, FakeEngine(loaded=True))
    service.set_options({"sd_vae_decode_method": "TAESD"})
    assert service.get_options()["sd_vae"] == "Approx (TAESD)"
    assert service.get_options()["sd_vae_decode_method"] == "TAESD"
    service.txt2img(BODY)
    assert controller.engine.requests[-1].vae == "Approx (TAESD)"
    service.set_options({"sd_vae_decode_method": "Full"})
    assert service.get_options()["sd_vae"] == "Automatic" and service.get_options()["sd_vae_decode_method"] == "Full"
    service.set_options({"sd_vae": "Approx (TAESD)"})
    assert service.get_options()["sd_vae_decode_method"] == "TAESD"
    with pytest.raises(ApiError) as caught:
        service.set_options({"sd_vae_decode_method": "Approx NN"})
    assert caught.value.status == 422 and caught.value.body["detail"][0]["loc"] == ["body", "sd_vae_decode_method"]
