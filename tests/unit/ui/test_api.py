"""The studio's public gradio API: real parameter names, keyword calls with defaults, and nothing else public.

The UI is built around a FakeEngine (no torch), launched on a free port and driven with gradio_client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from studio.gallery import OutputStore
from studio.testing.fakes import FakeEngine
from studio.testing.servers import free_port
from studio.types import GenerationRequest
from studio.ui import StudioController, build_ui

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

PARAMS = ["prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height", "count"]
# Issue 15's parameters come after the older ones, so positional calls written before them keep working.
A1111 = ["scheduler", "clip_skip", "vae"]
HIRES = ["hires_scale", "hires_upscaler", "hires_steps", "hires_strength", "hires_resize_x", "hires_resize_y"]
PUBLIC = {
    "/txt2img": [*PARAMS, *A1111, *HIRES],
    "/img2img": ["image", *PARAMS, "strength", *A1111],
    "/inpaint": ["image", "mask", *PARAMS, "strength", *A1111],
    "/png_info": ["image"],
    "/history": [],
    "/load_model": ["model"],
    "/use_backend": ["backend", "target"],
}
DEPLOY_ACTIONS = ["/deploy_create", "/deploy_delete", "/deploy_price", "/deploy_list", "/deploy_use"]


class Studio:
    def __init__(self, client: Client, controller: StudioController, api: dict[str, Any]):
        self.client, self.controller, self.api = client, controller, api


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    controller = StudioController(
        engine=FakeEngine(loaded=True),
        store=OutputStore(tmp_path_factory.mktemp("out")),
        list_loras=lambda: ["fubuki", "style/ink"],
        list_vaes=lambda: ["vae-ft-mse.safetensors"],
        list_upscalers=lambda: ["Latent", "Latent (bicubic)", "Lanczos", "4x-UltraSharp"],
    )
    blocks = build_ui(controller)
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    try:
        yield Studio(client, controller, client.view_api(print_info=False, return_format="dict"))
    finally:
        client.close()
        blocks.close()


def parameter_names(studio: Studio, endpoint: str) -> list[str]:
    return [p["parameter_name"] for p in studio.api["named_endpoints"][endpoint]["parameters"]]


@pytest.mark.parametrize("endpoint", list(PUBLIC))
def test_public_endpoints_have_the_documented_parameter_names(studio, endpoint):
    assert parameter_names(studio, endpoint) == PUBLIC[endpoint]


def test_only_the_documented_endpoints_are_public(studio):
    assert set(studio.api["named_endpoints"]) == set(PUBLIC)
    assert not studio.api["unnamed_endpoints"]


@pytest.mark.parametrize("endpoint", DEPLOY_ACTIONS)
def test_deploy_actions_are_not_in_the_api(studio, endpoint):
    """Deploying costs money: the `python -m studio.deploy` CLI scripts it, not the studio's gradio API."""
    assert endpoint not in studio.api["named_endpoints"]
    with pytest.raises(ValueError, match="Cannot find a function"):
        studio.client.predict(api_name=endpoint)


def test_every_parameter_but_the_images_has_a_default(studio):
    for endpoint in ("/txt2img", "/img2img", "/inpaint"):
        required = [p["parameter_name"] for p in studio.api["named_endpoints"][endpoint]["parameters"]
                    if not p["parameter_has_default"]]
        assert required == [name for name in ("image", "mask") if name in PUBLIC[endpoint]], endpoint
    defaults = {p["parameter_name"]: p["parameter_default"] for p in studio.api["named_endpoints"]["/txt2img"]
                ["parameters"]}
    assert defaults == {"prompt": "", "negative_prompt": "", "sampler": "Euler a", "steps": 20, "cfg_scale": 7.0,
                        "seed": -1, "width": 512, "height": 512, "count": 1, "scheduler": "Automatic",
                        "clip_skip": 1, "vae": "Automatic", "hires_scale": 1.0, "hires_upscaler": "Latent",
                        "hires_steps": 0, "hires_strength": 0.7, "hires_resize_x": 0, "hires_resize_y": 0}
    # The API's defaults are GenerationRequest's: a call that gives none of the new parameters makes the same request.
    request_defaults = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    assert all(defaults[name] == request_defaults[name] for name in defaults if name != "prompt")


def test_txt2img_by_keyword_with_defaults(studio):
    engine = studio.controller.engine
    gallery, info = studio.client.predict(prompt="a fox", seed=42, width=64, height=64, steps=4, api_name="/txt2img")
    assert info["seeds"] == [42] and len(gallery) == 1
    request = engine.requests[-1]
    assert (request.prompt, request.negative_prompt, request.sampler) == ("a fox", "", "Euler a")
    assert (request.steps, request.cfg_scale, request.width, request.height, request.count) == (4, 7.0, 64, 64, 1)


def test_an_old_positional_call_still_works(studio):
    """A client written before issue 15 passes the first nine parameters by position."""
    _, info = studio.client.predict("a fox", "", "Euler a", 3, 7, 11, 64, 64, 1, api_name="/txt2img")
    request = studio.controller.engine.requests[-1]
    assert info["seeds"] == [11] and (request.steps, request.seed, request.width) == (3, 11, 64)
    assert (request.scheduler, request.clip_skip, request.vae, request.hires) == ("Automatic", 1, "Automatic", False)


def test_txt2img_a1111_parameters_by_keyword(studio):
    studio.client.predict(
        prompt="a fox <lora:fubuki:0.7>", sampler="DPM++ 2M SDE", scheduler="Karras", clip_skip=2,
        vae="vae-ft-mse.safetensors", hires_scale=2, hires_upscaler="Latent (bicubic)", hires_steps=3,
        hires_strength=0.45, width=64, height=96, steps=4, seed=8, api_name="/txt2img",
    )
    request = studio.controller.engine.requests[-1]
    assert (request.sampler, request.scheduler, request.clip_skip) == ("DPM++ 2M SDE", "Karras", 2)
    assert request.vae == "vae-ft-mse.safetensors" and request.prompt == "a fox <lora:fubuki:0.7>"
    assert (request.hires_scale, request.hires_upscaler, request.hires_steps) == (2.0, "Latent (bicubic)", 3)
    assert request.hires_strength == 0.45 and request.hires_size() == (128, 192)
    studio.client.predict(prompt="x", width=64, height=64, steps=2, hires_resize_x=128, api_name="/txt2img")
    assert studio.controller.engine.requests[-1].hires_size() == (128, 128)
    # The old combined sampler name is still accepted, and split.
    studio.client.predict(prompt="x", sampler="DPM++ 2M Karras", width=64, height=64, steps=2, api_name="/txt2img")
    assert (studio.controller.engine.requests[-1].sampler, studio.controller.engine.requests[-1].scheduler) == (
        "DPM++ 2M", "Karras")


def test_img2img_and_inpaint_take_scheduler_clip_skip_and_vae(studio, tmp_path: Path):
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "blue").save(source)
    Image.new("L", (64, 64), 255).save(mask)
    common = {"prompt": "a boat", "width": 64, "height": 64, "steps": 2, "scheduler": "Exponential", "clip_skip": 3,
              "vae": "other.pt", "sampler": "Euler"}
    studio.client.predict(image=handle_file(str(source)), api_name="/img2img", **common)
    request = studio.controller.engine.requests[-1]
    assert (request.task, request.scheduler, request.clip_skip) == ("img2img", "Exponential", 3)
    assert request.vae == "other.pt"
    studio.client.predict(image=handle_file(str(source)), mask=handle_file(str(mask)), api_name="/inpaint", **common)
    request = studio.controller.engine.requests[-1]
    assert (request.task, request.scheduler, request.clip_skip) == ("inpaint", "Exponential", 3)
    assert request.vae == "other.pt"


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"clip_skip": 13}, "clip_skip"), ({"scheduler": "Often"}, "scheduler"), ({"hires_scale": 9}, "hires_scale"),
     ({"hires_strength": 0}, "hires_strength"), ({"hires_resize_y": 100}, "hires_resize_y"), ({"vae": ""}, "vae")],
)
def test_bad_a1111_values_are_errors_naming_the_field(studio, changes, field):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=rf"^{field}:"):
        studio.client.predict(prompt="a fox", width=64, height=64, steps=2, api_name="/txt2img", **changes)


def test_img2img_and_inpaint_by_keyword(studio, tmp_path: Path):
    engine = studio.controller.engine
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "blue").save(source)
    Image.new("L", (64, 64), 255).save(mask)
    _, info = studio.client.predict(
        image=handle_file(str(source)), prompt="a boat", width=64, height=64, steps=2, api_name="/img2img"
    )
    assert info["task"] == "img2img" and engine.requests[-1].strength == 0.75
    _, info = studio.client.predict(
        image=handle_file(str(source)), mask=handle_file(str(mask)), prompt="a boat", width=64, height=64, steps=2,
        strength=1.0, api_name="/inpaint",
    )
    assert info["task"] == "inpaint" and engine.requests[-1].strength == 1
    assert engine.requests[-1].mask is not None


def test_png_info_by_keyword(studio, tmp_path: Path):
    from PIL import PngImagePlugin

    text = "a kite\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "kite.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    parameters = studio.client.predict(image=handle_file(str(path)), api_name="/png_info")
    assert (parameters["prompt"], parameters["negative_prompt"], parameters["seed"]) == ("a kite", "fog", 3)


def test_png_info_returns_request_ready_fields(studio, tmp_path: Path):
    from PIL import PngImagePlugin

    text = (Path(__file__).parents[2] / "data" / "a1111_issue15.txt").read_text()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "card.png"
    Image.new("RGB", (64, 96)).save(path, pnginfo=info)
    fields = studio.client.predict(image=handle_file(str(path)), api_name="/png_info")
    assert (fields["sampler"], fields["scheduler"], fields["seed"]) == ("DPM++ 2M SDE", "Karras", 2245042501)
    assert (fields["hires_scale"], fields["hires_steps"], fields["hires_strength"]) == (2, 10, 0.6)
    assert fields["hires_upscaler"] == "R-ESRGAN 4x+ Anime6B" and "strength" not in fields
    assert fields["vae"] == "vaeFtMse840000EmaPruned_vae.safetensors"
    assert fields["loras"] == {"fubuki": 1, "space_hopper": 1}
    assert fields["lora_hashes"] == "fubuki: 2a9b5d7e7c1f, space_hopper: 0d7c3e1f9b44" and fields["Version"] == "v1.9.3"


def test_a_bad_keyword_value_is_an_error_naming_the_field(studio):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="width"):
        studio.client.predict(prompt="a fox", width=100, height=64, steps=2, api_name="/txt2img")
