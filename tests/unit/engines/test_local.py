"""LocalEngine on the demo model: sizes, seeds, shared modules, samplers, cancel, progress, inpaint."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from studio.engine import GenerationCancelled, ModelLoadError
from studio.engines.local import LocalEngine
from studio.samplers import sampler_names
from studio.types import GenerationRequest, RequestError, Task

BASE = GenerationRequest(prompt="a photo of a cat", width=64, height=64, steps=3, seed=1234, sampler="Euler")


@pytest.fixture(scope="module")
def engine():
    eng = LocalEngine("demo", device="cpu")
    eng.load()
    return eng


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_status_reports_demo_on_cpu(engine):
    status = engine.status()
    assert status.loaded and status.is_demo
    assert (status.device, status.dtype) == ("cpu", "float32")


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64), (64, 128)])
def test_sizes(engine, width, height):
    result = engine.generate(BASE.replace(width=width, height=height))
    assert [im.size for im in result.images] == [(width, height)]


def test_same_seed_identical_pixels(engine):
    a = engine.generate(BASE).images[0]
    b = engine.generate(BASE).images[0]
    assert a.tobytes() == b.tobytes()
    c = engine.generate(BASE.replace(seed=4321)).images[0]
    assert a.tobytes() != c.tobytes()


def test_image_i_has_seed_plus_i_and_reproduces_alone(engine):
    run = engine.generate(BASE.replace(seed=500, count=3))
    assert run.seeds == [500, 501, 502]
    alone = engine.generate(BASE.replace(seed=501)).images[0]
    assert run.images[1].tobytes() == alone.tobytes()
    assert "Seed: 501" in run.infotexts[1]


def test_random_seed_is_reported(engine):
    result = engine.generate(BASE.replace(seed=-1))
    assert result.request.seed == result.seeds[0] >= 0
    again = engine.generate(BASE.replace(seed=result.seeds[0])).images[0]
    assert again.tobytes() == result.images[0].tobytes()


def test_tasks_share_modules(engine):
    pipes = engine.pipelines
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        ids = {id(getattr(pipes[task], name)) for task in Task}
        assert len(ids) == 1, name


def test_shared_pipeline_scheduler_never_mutated(engine):
    pipe = engine.pipelines[Task.TXT2IMG]
    before = pipe.scheduler
    config = dict(before.config)
    engine.generate(BASE.replace(sampler="DPM++ 2M Karras"))
    assert pipe.scheduler is before
    assert dict(pipe.scheduler.config) == config


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_runs(engine, sampler):
    result = engine.generate(BASE.replace(sampler=sampler, steps=4))
    assert result.images[0].size == (64, 64)
    assert f"Sampler: {sampler}" in result.infotexts[0]


def test_img2img_size_and_resize_note(engine):
    source = Image.new("RGB", (80, 72), (200, 30, 30))
    result = engine.generate(BASE.replace(image=source, strength=0.6, steps=5, width=64, height=64))
    assert result.images[0].size == (64, 64)
    assert any(w.startswith("image: resized from 80x72") for w in result.warnings)
    assert "Denoising strength: 0.6" in result.infotexts[0]


def test_img2img_rgba_input_is_converted(engine):
    source = Image.new("RGBA", (64, 64), (0, 200, 0, 128))
    assert engine.generate(BASE.replace(image=source, strength=0.5, steps=4)).images[0].size == (64, 64)


def test_img2img_too_few_steps_is_an_error_naming_strength(engine):
    with pytest.raises(RequestError) as info:
        engine.generate(BASE.replace(image=Image.new("RGB", (64, 64)), strength=0.2, steps=2))
    assert info.value.field == "strength"


def test_inpaint_keeps_unmasked_pixels(engine):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = engine.generate(BASE.replace(image=source, mask=mask, strength=1.0, steps=4, mask_blur=0))
    out = pixels(result.images[0])
    src = pixels(source)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], src[outside])
    assert not np.array_equal(out[~outside], src[~outside])


def test_inpaint_mask_other_size_is_resized_and_noted(engine):
    mask = Image.new("L", (32, 32), 255)
    result = engine.generate(BASE.replace(image=Image.new("RGB", (64, 64)), mask=mask, strength=1.0, steps=3))
    assert result.images[0].size == (64, 64)
    assert any(w.startswith("mask: resized from 32x32") for w in result.warnings)


def test_inpaint_empty_mask_is_refused(engine):
    with pytest.raises(RequestError) as info:
        engine.generate(BASE.replace(image=Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 64), 0)))
    assert info.value.field == "mask"


def test_progress_reports_every_step(engine):
    seen: list[tuple[int, int]] = []
    engine.generate(BASE.replace(steps=3, count=2), on_progress=lambda s, t: seen.append((s, t)))
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]


def test_cancel_stops_between_steps_and_keeps_finished_images(engine):
    token = threading.Event()
    steps: list[int] = []

    def progress(step: int, total: int) -> None:
        steps.append(step)
        if step == 5:  # during the second image (3 steps each)
            token.set()

    with pytest.raises(GenerationCancelled) as info:
        engine.generate(BASE.replace(count=3), on_progress=progress, cancel=token)
    assert max(steps) == 5
    assert len(info.value.partial.images) == 1
    assert info.value.partial.seeds == [1234]


def test_long_prompts_are_encoded_whole_not_truncated(engine):
    """A1111's "infinite prompt length": 120 tokens are two 75-token chunks, and the second one counts."""
    long = "red cat " * 60
    result = engine.generate(BASE.replace(prompt=long))
    assert not any("tokens" in w for w in result.warnings)
    cut = engine.generate(BASE.replace(prompt="red cat " * 37 + "red")).images[0]  # the first 75 tokens alone
    assert result.images[0].tobytes() != cut.tobytes()


def test_failed_load_keeps_previous_model(engine, tmp_path):
    with pytest.raises(ModelLoadError) as info:
        engine.load(str(tmp_path / "missing.safetensors"))
    assert "missing.safetensors" in str(info.value)
    status = engine.status()
    assert status.loaded and status.is_demo and status.error
    assert engine.generate(BASE).images[0].size == (64, 64)


def test_generate_before_load_is_a_clear_error():
    from studio.engine import EngineNotReady

    with pytest.raises(EngineNotReady, match="no model loaded"):
        LocalEngine("demo", device="cpu").generate(BASE)


def test_dedicated_inpaint_model(tmp_path):
    from studio.models import demo_model_dir

    eng = LocalEngine("demo", device="cpu", inpaint_model=str(demo_model_dir(inpaint=True)))
    eng.load()
    assert eng.pipelines[Task.INPAINT].unet.config.in_channels == 9
    assert eng.pipelines[Task.TXT2IMG].unet.config.in_channels == 4
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    result = eng.generate(BASE.replace(image=Image.new("RGB", (64, 64), "white"), mask=mask, strength=1.0))
    assert result.images[0].size == (64, 64)
    assert "dedicated" in eng.status().details["inpaint"]


def test_generate_during_first_load_waits_for_it():
    eng = LocalEngine("demo", device="cpu")
    loader = threading.Thread(target=eng.load)
    loader.start()
    try:
        assert eng.generate(BASE).images[0].size == (64, 64)
    finally:
        loader.join()


def test_failure_part_way_keeps_finished_images(engine, monkeypatch):
    from studio.engine import EngineError

    pipe = engine.pipelines[Task.TXT2IMG]
    calls = {"n": 0}
    real_forward = pipe.unet.forward

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # the second image (3 steps each) fails
            raise RuntimeError("injected UNet failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", flaky_forward)
    with pytest.raises(EngineError, match="injected UNet failure") as info:
        engine.generate(BASE.replace(count=3))
    assert info.value.partial is not None and info.value.partial.seeds == [1234]
    assert len(info.value.partial.images) == 1


def test_live_previews_come_every_n_steps_at_latent_resolution_and_change_no_pixel(engine):
    from studio.engine import LivePreview

    shown: list[tuple[int, int, tuple[int, int]]] = []
    request = BASE.replace(steps=5, count=2, width=64, height=48)
    preview = LivePreview(every=2, show=lambda image, step, total: shown.append((step, total, image.size)))
    with_previews = engine.generate(request, preview=preview)
    assert [(step, total) for step, total, _ in shown] == [(2, 10), (4, 10), (6, 10), (8, 10)]  # never the last
    assert {size for _, _, size in shown} == {(8, 6)}  # 1/8 of 64x48
    plain = engine.generate(request)
    for a, b in zip(with_previews.images, plain.images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))


def test_live_previews_follow_the_image_forming(engine):
    """The preview is the latents seen through the linear map: late previews differ from early ones."""
    from studio.engine import LivePreview

    shown: list = []
    engine.generate(BASE.replace(steps=6), preview=LivePreview(every=1, show=lambda image, *_: shown.append(image)))
    assert len(shown) == 5 and all(image.mode == "RGB" for image in shown)
    assert not np.array_equal(pixels(shown[0]), pixels(shown[-1]))


def test_live_previews_count_the_hires_second_pass(engine):
    from studio.engine import LivePreview

    steps: list[int] = []
    request = BASE.replace(steps=3, hires_scale=2.0, hires_steps=2, hires_upscaler="Latent")
    engine.generate(request, preview=LivePreview(every=1, show=lambda image, step, total: steps.append(step)))
    assert steps == [1, 2, 3, 4]  # 3 first-pass steps + 2 second-pass steps, the last one without a preview
