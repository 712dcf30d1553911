"""OpenVINO CPU fast path on the demo model, built through studio.engines.build: f32 matches torch for the same
seed, img2img and inpaint work, the IR cache is reused, unsupported features are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("openvino")

from studio import engines  # noqa: E402
from studio.config import ConfigError, EngineSettings, Precision, load_settings  # noqa: E402
from studio.engine import EngineError, ModelLoadError  # noqa: E402
from studio.engines.local import LocalEngine  # noqa: E402
from studio.engines.openvino import OpenVINOAccelerator, is_openvino_module, networks  # noqa: E402
from studio.types import GenerationRequest, Task  # noqa: E402

# 200x136 px -> 25x17 latents: odd sizes exercise the UNet's explicit upsample-size path.
BASE = GenerationRequest(prompt="a photo of a cat", width=200, height=136, steps=8, seed=77, sampler="DPM++ 2M")
# f32 OpenVINO vs torch fp32 differ by float summation order only (~1e-5 on latents): at most 1 level in 8 bits.
F32_MAX_LEVELS = 2


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def init_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (136, 200, 3), dtype=np.uint8), "RGB")


def center_mask() -> Image.Image:
    mask = Image.new("L", (200, 136), 0)
    mask.paste(255, (60, 40, 140, 96))
    return mask


def openvino_engine(cache, precision: str = "f32", **settings) -> LocalEngine:
    """An OpenVINO engine as every composition root makes one: studio.engines.build(EngineSettings(kind=openvino))."""
    return engines.build(
        EngineSettings(model="demo", kind="openvino", precision=precision, openvino_cache=cache, **settings)
    )


@pytest.fixture(scope="module")
def ir_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-ir")


@pytest.fixture(scope="module")
def torch_engine():
    engine = LocalEngine("demo", device="cpu")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def ov_engine(ir_cache):
    engine = openvino_engine(ir_cache)
    engine.load()
    return engine


def test_f32_txt2img_matches_torch_for_the_same_seed(torch_engine, ov_engine):
    reference = torch_engine.generate(BASE)
    result = ov_engine.generate(BASE)
    a, b = pixels(result.images[0]), pixels(reference.images[0])
    assert result.images[0].size == (200, 136)
    assert result.seeds == reference.seeds == [77]
    assert b.std() > 10  # a real (noisy) image, so closeness means something
    assert np.abs(a - b).max() <= F32_MAX_LEVELS
    assert result.infotexts == reference.infotexts


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_f32_matches_torch_with_other_samplers(torch_engine, ov_engine, sampler):
    request = BASE.replace(sampler=sampler, steps=5)  # ancestral noise and integer timesteps
    diff = np.abs(pixels(ov_engine.generate(request).images[0]) - pixels(torch_engine.generate(request).images[0]))
    assert diff.max() <= F32_MAX_LEVELS


def test_f32_img2img_matches_torch(torch_engine, ov_engine):
    request = BASE.replace(image=init_image(), strength=0.6)
    result = ov_engine.generate(request)
    reference = torch_engine.generate(request)
    assert result.images[0].size == (200, 136)
    assert np.abs(pixels(result.images[0]) - pixels(reference.images[0])).max() <= F32_MAX_LEVELS


def test_f32_inpaint_matches_torch_and_keeps_the_unmasked_area(torch_engine, ov_engine):
    image = init_image()
    request = BASE.replace(image=image, mask=center_mask(), strength=0.8, mask_blur=0)
    result = ov_engine.generate(request)
    reference = torch_engine.generate(request)
    out = pixels(result.images[0])
    assert np.abs(out - pixels(reference.images[0])).max() <= F32_MAX_LEVELS
    corner = (slice(0, 30), slice(0, 40))  # far outside the mask: the original pixels, overlaid back
    assert np.abs(out[corner] - pixels(image)[corner]).max() <= 1
    inside = (slice(50, 86), slice(70, 130))
    assert np.abs(out[inside] - pixels(image)[inside]).mean() > 5  # and the masked area was repainted


def test_modules_are_shared_redirected_and_torch_weights_released(ov_engine):
    pipes = ov_engine.pipelines
    unet = pipes[Task.TXT2IMG].unet
    assert all(p.unet is unet and p.vae is pipes[Task.TXT2IMG].vae for p in pipes.values())
    for module in (unet, pipes[Task.TXT2IMG].vae, pipes[Task.TXT2IMG].text_encoder):
        assert is_openvino_module(module)
        assert sum(p.numel() for p in module.parameters()) == 0  # weights live in OpenVINO only
    assert set(networks(pipes[Task.TXT2IMG].vae)) == {"vae_decoder", "vae_encoder"}
    assert networks(unet)["unet"].calls > 0


def test_unet_ir_is_traced_with_geglu_as_two_matmuls_and_groupnorm_as_reductions(ov_engine, ir_cache):
    import openvino as ov
    from diffusers.models.activations import GEGLU

    from studio.engines.openvino_ir import ChannelGroupNorm, TwoLinearGEGLU

    pipe = ov_engine.pipelines[Task.TXT2IMG]
    geglus = [m for m in pipe.unet.modules() if type(m) is GEGLU]
    assert geglus
    for module in (pipe.unet, pipe.vae):  # the pipeline's own modules are put back after tracing
        assert any(type(m) is torch.nn.GroupNorm for m in module.modules())
        assert not any(isinstance(m, TwoLinearGEGLU | ChannelGroupNorm) for m in module.modules())
    for name in ("unet", "vae_decoder", "vae_encoder"):
        (xml,) = ir_cache.glob(f"{name}-*/model.xml")
        ops = [op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()]
        if name == "unet":
            assert "GroupNormalization" not in ops and "ReduceMean" in ops
            assert "VariadicSplit" not in ops and "Split" not in ops
            assert ops.count("Gelu") == len(geglus)
        else:  # the VAE keeps GroupNorm: rewritten, its decode peaked higher (CHANNEL_GROUP_NORM_NETWORKS)
            assert "GroupNormalization" in ops, name


def test_trace_swaps_compute_what_the_torch_modules_do():
    from diffusers.models.activations import GEGLU

    from studio.engines.openvino_ir import TwoLinearGEGLU, traceable

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    block = torch.nn.ModuleDict({"ff": GEGLU(16, 24), "norm": norm}).eval()
    x = torch.randn(2, 5, 16)
    images = [torch.randn(2, 16, 6, 7) * 3 + 40, torch.randn(2, 16, 30)]  # a mean far above the spread; 3-d input
    with torch.no_grad():
        expected = [block["ff"](x)] + [block["norm"](i) for i in images]
        with traceable(block) as swapped:
            assert swapped == 2 and isinstance(block["ff"], TwoLinearGEGLU)
            ff = block["ff"]
            assert ff.value.weight.data_ptr() + 24 * 16 * 4 == ff.gate.weight.data_ptr()  # views, no copy
            got = [block["ff"](x)] + [block["norm"](i) for i in images]
    assert type(block["ff"]) is GEGLU and block["norm"] is norm
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_status_shows_openvino_and_precision(ov_engine):
    status = ov_engine.status()
    assert status.loaded and status.device == "cpu" and status.dtype == "f32"
    assert "OpenVINO" in status.details["accelerator"]


def test_second_load_reuses_the_cached_ir(ov_engine, ir_cache):
    first = ov_engine.accelerator.report
    assert first is not None and first.cache_hits == 0 and len(first.components) == 4
    files = sorted(ir_cache.glob("*/model.xml"))
    assert len(files) == 4
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = openvino_engine(ir_cache)
    again.load()
    assert again.accelerator.report.cache_hits == 4
    assert all(c.convert_seconds == 0 for c in again.accelerator.report.components)
    assert [f.stat().st_mtime_ns for f in sorted(ir_cache.glob("*/model.xml"))] == mtimes
    same = BASE.replace(steps=3)
    assert again.generate(same).images[0].tobytes() == ov_engine.generate(same).images[0].tobytes()


@pytest.mark.slow
def test_bf16_is_close_to_torch(torch_engine, ir_cache):
    engine = openvino_engine(ir_cache, precision="bf16")
    engine.load()
    assert engine.accelerator.report.cache_hits == 0  # int8/fp16-weight IR: separate cache entries from the f32 ones
    assert engine.accelerator.report.precision in ("bf16", "f32")  # f32 on CPUs without native bf16
    diff = np.abs(pixels(engine.generate(BASE).images[0]) - pixels(torch_engine.generate(BASE).images[0]))
    assert diff.mean() < 3 and diff.max() <= 64


def test_unsupported_unet_features_are_refused(ov_engine):
    import torch

    unet = ov_engine.pipelines[Task.TXT2IMG].unet
    sample = torch.zeros(1, 4, 8, 8)
    hidden = torch.zeros(1, 77, 32)
    with pytest.raises(EngineError, match="cross_attention_kwargs"):
        unet(sample, torch.tensor(10.0), hidden, cross_attention_kwargs={"scale": 0.5})
    out = unet(sample, torch.tensor(10.0), hidden, return_dict=False)[0]
    assert out.shape == (1, 4, 8, 8)


def test_bad_precision_and_device_are_errors():
    assert EngineSettings(precision="FP32").precision is Precision.F32
    with pytest.raises(ValueError, match="bf16, f32"):
        OpenVINOAccelerator(precision="int4")
    with pytest.raises(ValueError, match="bf16, f32"):
        EngineSettings(kind="openvino", precision="int4")
    with pytest.raises(ModelLoadError, match="CPU"):
        LocalEngine("demo", device="cuda", accelerator=OpenVINOAccelerator())
    with pytest.raises(ConfigError, match="CPU"):
        engines.build(EngineSettings(model="demo", kind="openvino", device="cuda"))


def test_sdxl_like_pipelines_are_refused_with_a_message():
    from types import SimpleNamespace

    from studio.engines.openvino import check_supported

    pipe = SimpleNamespace(text_encoder_2=object(), unet=None, vae=None)
    with pytest.raises(ModelLoadError, match="SDXL"):
        check_supported(pipe)


def test_converter_telemetry_is_routed_to_the_stub():
    from openvino.tools.ovc import convert_impl, telemetry_stub

    from studio.engines.openvino_ir import no_telemetry

    original = convert_impl.tm
    with no_telemetry():
        assert convert_impl.tm is telemetry_stub
    assert convert_impl.tm is original


def test_engine_factory_picks_the_engine():
    torch_engine = engines.build(EngineSettings(model="demo", kind="torch", device="cpu"))
    assert type(torch_engine) is LocalEngine and torch_engine.accelerator is None
    ov = engines.build(EngineSettings(model="demo", kind="openvino", precision="f32"))
    assert isinstance(ov, LocalEngine) and isinstance(ov.accelerator, OpenVINOAccelerator)
    assert ov.accelerator.precision is Precision.F32
    with pytest.raises(ValueError, match="torch, openvino"):
        EngineSettings(model="demo", kind="tensorrt")


def test_studio_engine_openvino_reaches_an_openvino_engine_through_build():
    """Defect 2: STUDIO_ENGINE=openvino (and --engine openvino) gives an engine that runs on OpenVINO."""
    for settings in (
        load_settings([], environ={"STUDIO_ENGINE": "openvino", "STUDIO_MODEL": "demo"}).engine,
        load_settings(["--engine", "openvino", "--model", "demo"], environ={}).engine,
    ):
        engine = engines.build(settings)
        assert isinstance(engine.accelerator, OpenVINOAccelerator)
        status = engine.status()
        assert "OpenVINO" in status.details["accelerator"] and not status.loaded


def test_built_openvino_engine_runs_on_openvino(ov_engine):
    """Defect 2, loaded: the engine build() made runs its networks on OpenVINO, and its status says so."""
    status = ov_engine.status()
    assert status.details["accelerator"].startswith("OpenVINO ") and status.dtype == "f32"
    assert all(is_openvino_module(pipe.unet) for pipe in ov_engine.pipelines.values())


@pytest.mark.slow
def test_dedicated_inpainting_model_runs_on_openvino(torch_engine, ir_cache):
    """A 9-channel inpainting UNet (loaded next to the base model) converts too and matches torch."""
    engine = openvino_engine(ir_cache, inpaint_model="demo-inpaint")
    engine.load()
    reference = LocalEngine("demo", device="cpu", inpaint_model="demo-inpaint")
    reference.load()
    unet = engine.pipelines[Task.INPAINT].unet
    assert is_openvino_module(unet) and unet.config.in_channels == 9
    request = BASE.replace(image=init_image(), mask=center_mask(), strength=0.9, steps=5)
    diff = np.abs(pixels(engine.generate(request).images[0]) - pixels(reference.generate(request).images[0]))
    assert diff.max() <= F32_MAX_LEVELS
