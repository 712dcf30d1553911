"""Hires fix: sizes and crop, the latent and image upscalers, ESRGAN wiring (stub loader, no spandrel here), the
second pass's step arithmetic, and real two-pass runs on the demo model."""

from __future__ import annotations

import builtins
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoPipelineForImage2Image
from PIL import Image

from studio import models, upscalers
from studio.engines import hires
from studio.samplers import make_scheduler
from studio.types import GenerationRequest, RequestError


def hires_request(**changes: Any) -> GenerationRequest:
    """A small validated txt2img request with hires fix on (x2 unless the changes give a scale or resize size)."""
    base: dict[str, Any] = {"prompt": "a red fox in snow", "steps": 6, "width": 64, "height": 64, "seed": 7}
    base["sampler"] = "Euler"
    if not {"hires_scale", "hires_resize_x", "hires_resize_y"} & changes.keys():
        base["hires_scale"] = 2.0
    return GenerationRequest(**{**base, **changes}).validate()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def gradient(width: int, height: int) -> Image.Image:
    """Random pixels (a fixed seed): every resampling filter leaves its own mark on them."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# Sizes -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (512, 768), (768, 512), (504, 776), (520, 512), (832, 1216)])
@pytest.mark.parametrize(
    "fields",
    [
        {"hires_scale": 1.25},
        {"hires_scale": 1.5},
        {"hires_scale": 2.0},
        {"hires_scale": 2.3},
        {"hires_resize_x": 1000 // 8 * 8},
        {"hires_resize_y": 1024},
        {"hires_resize_x": 1024, "hires_resize_y": 1024},
        {"hires_resize_x": 512, "hires_resize_y": 1024},
        {"hires_resize_x": 1024, "hires_resize_y": 256},
    ],
)
def test_geometry_target_is_the_requests_hires_size(size: tuple[int, int], fields: dict[str, Any]) -> None:
    request = GenerationRequest("x", width=size[0], height=size[1], **fields)
    geometry = hires.hires_geometry(request)
    assert geometry.target == request.hires_size()
    assert geometry.first == size
    left, top, right, bottom = geometry.box
    assert 0 <= left and 0 <= top and right <= geometry.cover[0] and bottom <= geometry.cover[1]
    assert left % 8 == 0 and top % 8 == 0


@pytest.mark.parametrize(
    ("first", "resize", "cover", "box"),
    [
        ((512, 768), (1024, 1024), (1024, 1536), (0, 256, 1024, 1280)),  # taller: widths match, centre rows kept
        ((768, 512), (1024, 1024), (1536, 1024), (256, 0, 1280, 1024)),  # wider: heights match
        ((512, 512), (1024, 1024), (1024, 1024), (0, 0, 1024, 1024)),  # same aspect: nothing cut
        ((512, 776), (512, 1024), (675, 1024), (80, 0, 592, 1024)),  # cover not a multiple of 8 (A1111 floors)
        ((512, 512), (256, 128), (256, 256), (0, 64, 256, 192)),  # smaller than the first pass
    ],
)
def test_both_sides_scale_to_cover_then_centre_crop(
    first: tuple[int, int], resize: tuple[int, int], cover: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    geometry = hires.target_crop(*first, *resize)
    assert (geometry.cover, geometry.box, geometry.target) == (cover, box, resize)
    assert geometry.cropped == (box != (0, 0, *cover))


@pytest.mark.parametrize(
    ("first", "resize"), [((512, 776), (512, 1024)), ((512, 512), (1024, 488)), ((8, 64), (64, 64))]
)
def test_latent_crop_cuts_whole_cells_half_before_the_rest_after(
    first: tuple[int, int], resize: tuple[int, int]
) -> None:
    """A1111 truncates (cover - target) // 8 latent cells: truncate // 2 before, (truncate + 1) // 2 after."""
    geometry = hires.target_crop(*first, *resize)
    cells_w, cells_h = geometry.latent_cover()
    left, top, right, bottom = geometry.latent_box()
    truncate_x = (geometry.cover[0] - resize[0]) // 8
    truncate_y = (geometry.cover[1] - resize[1]) // 8
    assert (left, cells_w - right) == (truncate_x // 2, (truncate_x + 1) // 2)
    assert (top, cells_h - bottom) == (truncate_y // 2, (truncate_y + 1) // 2)
    assert (right - left, bottom - top) == (resize[0] // 8, resize[1] // 8)


# Latent upscalers ------------------------------------------------------------------------------------------------


@pytest.fixture
def latents() -> torch.Tensor:
    return torch.randn((1, 4, 8, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", upscalers.upscaler_names()[:6])
def test_each_latent_mode_is_torch_interpolate_with_its_settings(name: str, latents: torch.Tensor) -> None:
    spec = upscalers.get(name)
    out = hires.upscale_latents(latents, (24, 16), spec)
    assert out.shape == (1, 4, 16, 24)
    expected = F.interpolate(latents, size=(16, 24), mode=spec.mode, antialias=spec.antialias)
    assert torch.equal(out, expected)


def test_nearest_modes_only_copy_values_and_differ_from_the_smooth_ones(latents: torch.Tensor) -> None:
    get = upscalers.get
    nearest = hires.upscale_latents(latents, (18, 12), get("Latent (nearest)"))
    exact = hires.upscale_latents(latents, (18, 12), get("Latent (nearest-exact)"))
    assert torch.isin(nearest, latents).all() and torch.isin(exact, latents).all()
    assert not torch.equal(nearest, exact)  # at 1.5x they pick different source cells
    at_2x = [hires.upscale_latents(latents, (24, 16), get(n)) for n in ("Latent (nearest)", "Latent (nearest-exact)")]
    assert torch.equal(*at_2x)  # at whole multiples they agree
    bilinear = hires.upscale_latents(latents, (24, 16), get("Latent"))
    bicubic = hires.upscale_latents(latents, (24, 16), get("Latent (bicubic)"))
    assert not torch.isin(bilinear, latents).all()
    assert (bilinear - bicubic).abs().max() > 1e-3 and (bilinear - at_2x[0]).abs().max() > 1e-3


def test_antialias_matters_where_it_should(latents: torch.Tensor) -> None:
    get = upscalers.get
    up = {n: hires.upscale_latents(latents, (24, 16), get(n)) for n in upscalers.upscaler_names()[:4]}
    # Enlarging: the antialiased bilinear kernel is plain bilinear; bicubic's antialiased kernel is a different cubic.
    torch.testing.assert_close(up["Latent (antialiased)"], up["Latent"], atol=1e-5, rtol=0)
    assert (up["Latent (bicubic antialiased)"] - up["Latent (bicubic)"]).abs().max() > 1e-2
    # Shrinking (a resize smaller than the first pass): antialiasing averages instead of sampling.
    down = {n: hires.upscale_latents(latents, (6, 4), get(n)) for n in ("Latent", "Latent (antialiased)")}
    assert (down["Latent"] - down["Latent (antialiased)"]).abs().max() > 1e-2


def test_half_precision_latents_keep_their_dtype(latents: torch.Tensor) -> None:
    out = hires.upscale_latents(latents.to(torch.bfloat16), (24, 16), upscalers.get("Latent (bicubic antialiased)"))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 4, 16, 24)


def test_upscale_crops_latents_to_the_target() -> None:
    request = hires_request(width=64, height=96, hires_resize_x=128, hires_resize_y=128)
    plan = hires.plan_hires(request)
    first = torch.arange(4 * 12 * 8, dtype=torch.float32).reshape(1, 4, 12, 8)
    out = hires.upscale(plan, first)
    assert out.shape == (1, 4, 16, 16)
    full = F.interpolate(first, size=(24, 16), mode="bilinear")  # cover 128x192 → 16x24 cells, keep rows 4..20
    assert torch.equal(out, full[..., 4:20, :])


# Image upscalers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest"])
@pytest.mark.parametrize("size", [(128, 192), (675, 1024), (100, 150), (32, 48)])
def test_pil_upscalers_give_the_asked_size(name: str, size: tuple[int, int]) -> None:
    out = hires.upscale_image(gradient(64, 96), size, upscalers.get(name))
    assert out.size == size and out.mode == "RGB"


def test_none_is_one_lanczos_resize_and_nearest_is_blocky() -> None:
    image = gradient(64, 96)
    none = hires.upscale_image(image, (128, 192), upscalers.get("None"))
    assert np.array_equal(pixels(none), pixels(image.resize((128, 192), Image.Resampling.LANCZOS)))
    nearest = pixels(hires.upscale_image(image, (128, 192), upscalers.get("Nearest")))
    assert np.array_equal(nearest, np.repeat(np.repeat(pixels(image), 2, axis=0), 2, axis=1))
    lanczos = pixels(hires.upscale_image(image, (128, 192), upscalers.get("Lanczos")))
    assert np.abs(lanczos - nearest).max() > 10


def test_shrinking_is_a_lanczos_resize_whatever_the_upscaler() -> None:
    image = gradient(64, 96)
    expected = pixels(image.resize((32, 48), Image.Resampling.LANCZOS))
    for name in ("Nearest", "Lanczos", "None"):
        assert np.array_equal(pixels(hires.upscale_image(image, (32, 48), upscalers.get(name))), expected)


def test_decoded_numpy_output_converts_like_diffusers() -> None:
    array = np.random.default_rng(1).random((1, 16, 24, 3), dtype=np.float32)
    image = hires.to_image(array)
    assert image.size == (24, 16)
    assert np.array_equal(np.asarray(image), (array[0] * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="one decoded RGB image"):
        hires.to_image(np.zeros((2, 16, 24, 3)))


# ESRGAN-family models through a stub loader ----------------------------------------------------------------------


class StubModel:
    """Nearest-neighbour x`scale` (local, so tiled and whole runs agree); records what it was given."""

    def __init__(self, scale: int):
        self.scale = scale
        self.inputs: list[torch.Tensor] = []

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        assert image.ndim == 4 and image.shape[:2] == (1, 3) and image.dtype == torch.float32
        self.inputs.append(image.clone())
        return image.repeat_interleave(self.scale, dim=2).repeat_interleave(self.scale, dim=3)


class StubLoader:
    def __init__(self, scale: int = 4):
        self.model = StubModel(scale)
        self.paths: list[Path] = []

    def load(self, path: Path) -> StubModel:
        self.paths.append(Path(path))
        return self.model


@pytest.fixture
def esrgan_dir(tmp_path: Path) -> Path:
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / "4x-Stub.pth").write_bytes(b"not read by the stub")
    return tmp_path


def test_model_upscaler_runs_through_the_injected_loader(esrgan_dir: Path) -> None:
    plan = hires.plan_hires(hires_request(hires_upscaler="4x-Stub"), esrgan_dir)
    assert plan.upscaler.kind is upscalers.UpscalerKind.MODEL and plan.first_output_type == "np"
    loader = StubLoader(scale=4)
    model = hires.load_upscale_model(plan.upscaler, loader)
    assert loader.paths == [esrgan_dir / "ESRGAN" / "4x-Stub.pth"]
    first = gradient(64, 64)
    out = hires.upscale(plan, first, model)
    assert out.size == (128, 128)
    assert len(loader.model.inputs) == 1  # x4 reaches x2 in one pass, then Lanczos down to the size
    four_x = first.resize((256, 256), Image.Resampling.NEAREST)
    assert np.array_equal(pixels(out), pixels(four_x.resize((128, 128), Image.Resampling.LANCZOS)))


@pytest.mark.parametrize(("model_scale", "size", "passes"), [(2, (80, 80), 3), (4, (32, 32), 1), (1, (32, 32), 1)])
def test_model_runs_until_big_enough_at_most_three_times(model_scale: int, size: tuple[int, int], passes: int) -> None:
    model = StubModel(model_scale)
    spec = upscalers.UpscalerSpec("stub", upscalers.UpscalerKind.MODEL, path=Path("stub.pth"))
    out = hires.upscale_image(gradient(16, 16), size, spec, model)  # small: no tiling, one call per pass
    assert out.size == size and len(model.inputs) == passes


def test_model_input_is_rgb_in_unit_range() -> None:
    model = StubModel(2)
    hires.run_upscale_model(model, Image.new("RGB", (16, 8), (255, 0, 0)))
    seen = model.inputs[0]
    assert seen.shape == (1, 3, 8, 16)
    assert seen[0, 0].min() == 1.0 and seen[0, 1:].max() == 0.0


def test_large_images_run_in_overlapping_tiles_with_the_same_result() -> None:
    image = gradient(400, 300)
    tiled_model, whole_model = StubModel(2), StubModel(2)
    tiled = hires.run_upscale_model(tiled_model, image, tile=192, overlap=8)
    whole = hires.run_upscale_model(whole_model, image, tile=0)
    assert len(whole_model.inputs) == 1 and len(tiled_model.inputs) == 6  # 3 columns x 2 rows
    assert all(t.shape[-1] <= 192 and t.shape[-2] <= 192 for t in tiled_model.inputs)
    assert tiled.size == (800, 600) and np.array_equal(pixels(tiled), pixels(whole))


def test_a_model_upscaler_needs_its_model() -> None:
    spec = upscalers.UpscalerSpec("stub", upscalers.UpscalerKind.MODEL, path=Path("stub.pth"))
    with pytest.raises(ValueError, match="load_upscale_model"):
        hires.upscale_image(gradient(8, 8), (16, 16), spec)


def _spandrel_importable() -> bool:
    try:
        import spandrel  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_spandrel_importable(), reason="spandrel works on this host")
def test_without_the_extra_a_model_upscaler_is_an_error_naming_it(esrgan_dir: Path) -> None:
    spec = upscalers.get("4x-Stub", esrgan_dir)
    with pytest.raises(RequestError) as caught:
        hires.load_upscale_model(spec, hires.SpandrelLoader())
    err = caught.value
    assert (err.field, err.value) == ("hires_upscaler", "4x-Stub")
    assert "'upscalers' extra" in str(err) and "pip install 'sd-studio[upscalers]'" in str(err)


def test_a_torchvision_mismatch_at_import_is_the_same_error(esrgan_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__
    attempts: list[str] = []

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "spandrel":
            attempts.append(name)
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.delitem(sys.modules, "spandrel", raising=False)
    loader = hires.SpandrelLoader()
    spec = upscalers.get("4x-Stub", esrgan_dir)
    for _ in range(2):
        with pytest.raises(RequestError, match="torchvision::nms does not exist") as caught:
            hires.load_upscale_model(spec, loader)
        assert "'upscalers' extra" in str(caught.value)
    assert attempts == ["spandrel"]  # the failure is remembered, not retried per request


def test_other_load_failures_name_the_upscaler(esrgan_dir: Path) -> None:
    class Broken:
        def load(self, path: Path) -> Any:
            raise ValueError("unsupported architecture")

    with pytest.raises(RequestError, match="cannot load .*4x-Stub.pth: unsupported architecture") as caught:
        hires.load_upscale_model(upscalers.get("4x-Stub", esrgan_dir), Broken())
    assert caught.value.field == "hires_upscaler"


def test_non_model_upscalers_need_no_loader() -> None:
    assert hires.load_upscale_model(upscalers.get("Latent"), StubLoader()) is None
    assert hires.load_upscale_model(upscalers.get("Lanczos"), StubLoader()) is None


class _FakeDescriptor:
    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state
        self.scale, self.input_channels, self.supports_half = 2, 3, True
        self.purpose, self.architecture = "SR", types.SimpleNamespace(name="ESRGAN")
        self.device, self.dtype, self.calls = torch.device("cpu"), torch.float32, []

    def eval(self) -> _FakeDescriptor:
        self.calls.append("eval")
        return self

    def to(self, device: str) -> _FakeDescriptor:
        self.calls.append(f"to {device}")
        return self

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@pytest.fixture
def fake_spandrel(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """A stand-in `spandrel` module: checks the real loader's wiring without the library."""
    loaded: list[dict[str, torch.Tensor]] = []

    class ModelLoader:
        def load_from_state_dict(self, state: dict[str, torch.Tensor]) -> _FakeDescriptor:
            loaded.append(state)
            return _FakeDescriptor(state)

    module = types.ModuleType("spandrel")
    module.ModelLoader, module.ImageModelDescriptor = ModelLoader, _FakeDescriptor
    monkeypatch.setitem(sys.modules, "spandrel", module)
    return loaded


def test_spandrel_loader_reads_weights_safely_and_caches(tmp_path: Path, fake_spandrel: list) -> None:
    from safetensors.torch import save_file

    weights = {"conv.weight": torch.ones(2, 2)}
    files = [tmp_path / "a.safetensors", tmp_path / "b.pth", tmp_path / "c.pth"]
    save_file(weights, str(files[0]))
    torch.save(weights, files[1])
    torch.save(weights, files[2])
    loader = hires.SpandrelLoader(cache_size=2)
    first = loader.load(files[0])
    assert torch.equal(fake_spandrel[0]["conv.weight"], weights["conv.weight"])
    assert first.descriptor.calls == ["eval", "to cpu"] and first.scale == 2
    assert loader.load(files[0]) is first and len(fake_spandrel) == 1  # cached
    loader.load(files[1])
    loader.load(files[2])  # evicts a.safetensors (cache of 2)
    assert loader.load(files[0]) is not first and len(fake_spandrel) == 4
    out = first(torch.zeros(1, 3, 4, 4))
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.float32


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pickled code ran",))


def test_pickled_code_in_an_upscaler_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.ones(1), "payload": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth: refused"):
        hires.read_state_dict(path)
    assert "pickled code ran" not in capsys.readouterr().out


# The plan --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "hires_steps", "strength", "second", "schedule"),
    [(20, 0, 0.7, 20, 28), (20, 10, 0.6, 10, 16), (8, 5, 0.6, 5, 8), (20, 0, 1.0, 20, 20), (30, 15, 0.35, 15, 42)],
)
def test_second_pass_runs_a1111s_step_count(
    steps: int, hires_steps: int, strength: float, second: int, schedule: int
) -> None:
    """A1111: hires_steps (or steps) denoising steps, from a schedule of int(steps / min(strength, 0.999))."""
    plan = hires.plan_hires(hires_request(steps=steps, hires_steps=hires_steps, hires_strength=strength))
    assert (plan.first_steps, plan.second_steps, plan.schedule_steps) == (steps, second, schedule)
    assert int(plan.schedule_steps * plan.strength) == second and 0 < plan.strength <= 1
    assert plan.total_steps == steps + second
    assert plan.denoising_strength == strength


def test_exact_strength_for_every_step_count() -> None:
    for steps in range(1, 151):
        for strength in (0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.33, 0.45, 0.5, 0.55, 0.7, 0.75, 0.9, 0.95, 0.999, 1.0):
            schedule = int(steps / min(strength, 0.999))
            exact = hires.exact_strength(steps, schedule)
            assert int(schedule * exact) == steps and 0 < exact <= 1, (steps, strength)


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DDIM", "UniPC", "LMS"])
def test_diffusers_img2img_takes_exactly_the_planned_steps(sampler: str, demo_pipes: tuple) -> None:
    _, img2img = demo_pipes
    plan = hires.plan_hires(hires_request(steps=20, hires_steps=7, hires_strength=0.45, sampler=sampler))
    scheduler = make_scheduler(sampler, "Automatic", img2img.scheduler.config)
    scheduler.set_timesteps(plan.schedule_steps)
    call = type(img2img).from_pipe(img2img, scheduler=scheduler)
    timesteps, count = call.get_timesteps(plan.schedule_steps, plan.strength, "cpu")
    assert count == plan.second_steps == len(timesteps) == 7


def test_plan_outputs_and_arguments() -> None:
    latent = hires.plan_hires(hires_request(width=64, height=96, hires_upscaler="Latent (bicubic)"))
    assert latent.first_output_type == "latent"
    assert latent.first_pass_args() == {"width": 64, "height": 96, "num_inference_steps": 6, "output_type": "latent"}
    image = hires.plan_hires(hires_request(hires_upscaler="None"))
    assert image.first_output_type == "np"
    marker = object()
    assert image.second_pass_args(marker) == {  # type: ignore[arg-type]
        "image": marker,
        "strength": image.strength,
        "num_inference_steps": image.schedule_steps,
    }


def test_plan_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(RequestError) as caught:
        hires.plan_hires(hires_request(hires_upscaler="4x-Missing"), tmp_path)
    assert caught.value.field == "hires_upscaler" and "Latent (nearest-exact)" in str(caught.value)
    with pytest.raises(RequestError) as caught:
        hires.plan_hires(hires_request(steps=100, hires_strength=0.05), max_schedule_steps=1000)
    assert caught.value.field == "hires_strength" and "2000-step schedule" in str(caught.value)
    with pytest.raises(ValueError, match="hires fix on"):
        hires.plan_hires(GenerationRequest("x").validate())


# Real two-pass runs on the demo model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_pipes() -> tuple:
    pipe = models.load_pipeline(models.DEMO_SOURCE)
    pipe.set_progress_bar_config(disable=True)
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return pipe, img2img


def fresh_scheduler(request: GenerationRequest, pipe: Any) -> Any:
    return make_scheduler(request.sampler, request.scheduler, pipe.scheduler.config)


def two_pass(pipes: tuple, request: GenerationRequest, models_dir: Path | None = None, loader: Any = None) -> tuple:
    """What the engine runs for one hires image: plan → first pass → upscale → img2img with a fresh same-seed
    generator. Returns the final image and the number of denoising callbacks of each pass."""
    txt2img, img2img = pipes
    plan = hires.plan_hires(request, models_dir, max_schedule_steps=txt2img.scheduler.config.num_train_timesteps)
    model = hires.load_upscale_model(plan.upscaler, loader) if loader is not None else None
    counts = [0, 0]

    def common(index: int) -> dict[str, Any]:
        def on_step(*_: Any) -> dict:
            counts[index] += 1
            return {}

        return {
            "prompt": request.prompt,
            "guidance_scale": request.cfg_scale,
            "generator": torch.Generator("cpu").manual_seed(request.seed),
            "callback_on_step_end": on_step,
        }

    # Each pass gets its own light pipeline with a fresh scheduler (the shared ones are never changed).
    first_pipe = type(txt2img).from_pipe(txt2img, scheduler=fresh_scheduler(request, txt2img))
    first_pipe.set_progress_bar_config(disable=True)
    first = first_pipe(**common(0), **plan.first_pass_args()).images
    second_pipe = type(img2img).from_pipe(img2img, scheduler=fresh_scheduler(request, img2img))
    second_pipe.set_progress_bar_config(disable=True)
    upscaled = hires.upscale(plan, first, model)
    image = second_pipe(**common(1), output_type="pil", **plan.second_pass_args(upscaled)).images[0]
    return image, counts, plan


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_two_pass_run_gives_the_target_size_deterministically(demo_pipes: tuple, upscaler: str) -> None:
    request = hires_request(width=64, height=96, hires_upscaler=upscaler, hires_steps=4, hires_strength=0.6)
    image, counts, plan = two_pass(demo_pipes, request)
    assert image.size == request.hires_size() == (128, 192)
    assert counts == [plan.first_steps, plan.second_steps] == [6, 4]
    again, _, _ = two_pass(demo_pipes, request)
    assert np.array_equal(pixels(image), pixels(again))
    other_seed, _, _ = two_pass(demo_pipes, request.replace(seed=8))
    assert np.abs(pixels(image) - pixels(other_seed)).max() > 0


def test_both_sides_resize_crops_to_the_exact_size(demo_pipes: tuple) -> None:
    request = hires_request(width=64, height=96, hires_resize_x=128, hires_resize_y=112, hires_upscaler="Latent")
    image, _, plan = two_pass(demo_pipes, request)
    assert plan.geometry.cover == (128, 192) and image.size == (128, 112)
    image_path, _, _ = two_pass(demo_pipes, request.replace(hires_upscaler="Nearest"))
    assert image_path.size == (128, 112)


def test_the_upscaler_choice_changes_the_pixels(demo_pipes: tuple) -> None:
    request = hires_request(hires_strength=0.5)
    results = {
        name: pixels(two_pass(demo_pipes, request.replace(hires_upscaler=name))[0])
        for name in ("Latent", "Latent (nearest)", "Lanczos", "Nearest")
    }
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(results[a] - results[b]).max() > 0, (a, b)


def test_esrgan_stub_through_a_real_two_pass_run(demo_pipes: tuple, esrgan_dir: Path) -> None:
    loader = StubLoader(scale=4)
    request = hires_request(hires_upscaler="4x-Stub", hires_scale=1.5)
    image, counts, _ = two_pass(demo_pipes, request, esrgan_dir, loader)
    assert image.size == (96, 96) and counts == [6, 6]
    assert len(loader.paths) == 1 and len(loader.model.inputs) == 1
