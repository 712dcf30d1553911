"""The studio as a running gradio app, driven by gradio_client through the public API names."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app import launch  # noqa: E402
from studio.config import load_settings  # noqa: E402
from studio.testing.servers import free_port  # noqa: E402


def start(tmp_path: Path, *args: str):
    port = free_port()
    settings = load_settings(
        ["--port", str(port), "--outputs", str(tmp_path / "outputs"), "--models-dir", str(tmp_path / "models"),
         "--device", "cpu", *args],
        environ={},
    )
    blocks, controller = launch(settings, prevent_thread_lock=True)
    return blocks, controller, f"http://127.0.0.1:{port}/"


def wait_loaded(controller, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = controller.status()
        if status.loaded or (status.error and not status.loading):
            return
        time.sleep(0.1)
    raise TimeoutError("model did not load")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("studio")
    blocks, controller, url = start(tmp, "--model", "demo")
    wait_loaded(controller)
    client = Client(url, verbose=False)
    yield client, controller, tmp
    client.close()
    blocks.close()


PARAMS = dict(prompt="a red fox", negative_prompt="blurry", sampler="euler_a", steps=3, cfg_scale=7, seed=77,
              width=64, height=64, count=2)


def gallery_paths(gallery) -> list[str]:
    return [item["image"] if isinstance(item["image"], str) else item["image"]["path"] for item in gallery]


def test_api_names_are_published(studio):
    client, _, _ = studio
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/txt2img", "/img2img", "/inpaint", "/png_info"} <= names


def test_keyword_call_with_defaults(studio):
    """The public API's parameters have real names; the ones not given take the form's defaults."""
    client, _, _ = studio
    gallery, info = client.predict(prompt="a fox", seed=42, width=64, height=64, steps=4, api_name="/txt2img")
    assert info["seeds"] == [42] and len(gallery) == 1
    text = info["infotexts"][0]
    assert text.startswith("a fox\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x64"), text


def test_txt2img_saves_before_showing_and_png_info_reads_back(studio):
    client, _, tmp = studio
    gallery, info = client.predict(*PARAMS.values(), api_name="/txt2img")
    assert info["seeds"] == [77, 78]
    assert len(gallery) == 2
    saved = [Path(p) for p in info["paths"]]
    assert all(p.is_file() and p.parent.parent == tmp / "outputs" for p in saved)
    for shown, path in zip(gallery_paths(gallery), saved, strict=True):
        with Image.open(shown) as im:
            assert im.size == (64, 64)
            assert "Seed:" in im.info["parameters"]
        with Image.open(path) as im:
            assert im.info["parameters"] == info["infotexts"][saved.index(path)]
    params = client.predict(handle_file(str(saved[1])), api_name="/png_info")
    assert params["prompt"] == "a red fox"
    assert params["negative_prompt"] == "blurry"
    assert (params["seed"], params["steps"], params["width"], params["height"]) == (78, 3, 64, 64)
    assert params["sampler"] == "Euler a"


def test_same_seed_same_pixels_through_the_api(studio):
    client, _, _ = studio
    one = client.predict(*{**PARAMS, "count": 1}.values(), api_name="/txt2img")[0]
    two = client.predict(*{**PARAMS, "count": 1}.values(), api_name="/txt2img")[0]
    a, b = (np.asarray(Image.open(gallery_paths(g)[0])) for g in (one, two))
    assert np.array_equal(a, b)


def test_img2img_and_inpaint(studio, tmp_path):
    client, _, _ = studio
    src = tmp_path / "src.png"
    Image.new("RGB", (64, 64), (10, 120, 200)).save(src)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 32, 32))
    m.save(mask)
    p = {**PARAMS, "count": 1, "steps": 4}
    gallery, info = client.predict(handle_file(str(src)), *p.values(), 0.5, api_name="/img2img")
    assert info["task"] == "img2img" and Image.open(gallery_paths(gallery)[0]).size == (64, 64)
    gallery, info = client.predict(
        handle_file(str(src)), handle_file(str(mask)), *p.values(), 1.0, api_name="/inpaint"
    )
    assert info["task"] == "inpaint" and Image.open(gallery_paths(gallery)[0]).size == (64, 64)
    assert "Denoising strength: 1" in info["infotexts"][0]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [({"width": 100}, "width"), ({"steps": 0}, "steps"), ({"sampler": "nope"}, "sampler"), ({"count": 99}, "count")],
)
def test_invalid_input_is_an_error_naming_the_field(studio, changes, needle):
    client, _, _ = studio
    with pytest.raises(Exception) as info:
        client.predict(*{**PARAMS, **changes}.values(), api_name="/txt2img")
    assert needle in str(info.value)
    # The app keeps serving.
    assert client.predict(*{**PARAMS, "count": 1}.values(), api_name="/txt2img")[1]["seeds"] == [77]


def test_history_survives_restart(studio):
    from studio.gallery import OutputStore

    _, controller, tmp = studio
    before = len(controller.store.history())
    assert before >= 2
    assert len(OutputStore(tmp / "outputs").history()) == before


def test_model_load_failure_keeps_app_up(tmp_path):
    blocks, controller, url = start(tmp_path, "--model", str(tmp_path / "nope.safetensors"))
    try:
        wait_loaded(controller)
        assert "nope.safetensors" in (controller.status().error or "")
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="no model loaded"):
            client.predict(*{**PARAMS, "count": 1}.values(), api_name="/txt2img")
        client.predict("demo", api_name="/load_model")
        assert controller.status().loaded
        assert client.predict(*{**PARAMS, "count": 1}.values(), api_name="/txt2img")[1]["seeds"] == [77]
        client.close()
    finally:
        blocks.close()


def test_settings_lists_every_inservice_endpoint(aws):
    """The Settings tab's endpoint list comes from studio.deploy.inventory: every InService endpoint, sorted, not
    only those SD Studio deployed (any serving container will do)."""
    import boto3

    import app

    sagemaker = boto3.client("sagemaker")
    sagemaker.create_model(
        ModelName="m",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-studio:latest"},
    )
    variant = [{"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.g4dn.xlarge",
                "InitialInstanceCount": 1}]
    sagemaker.create_endpoint_config(EndpointConfigName="c", ProductionVariants=variant)
    sagemaker.create_endpoint(EndpointName="zz-someone-elses", EndpointConfigName="c")
    sagemaker.create_endpoint(
        EndpointName="sd-ours", EndpointConfigName="c", Tags=[{"Key": "sd-studio", "Value": "true"}]
    )
    assert app.list_endpoints() == ["sd-ours", "zz-someone-elses"]
