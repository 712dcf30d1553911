"""The torch engine's speed settings (studio.engines.tuning) on the demo model, CPU.

Each setting must leave the image what the default engine makes at the same seed, within MAX_DIFF / MEAN_DIFF: at most
2 of 255 on any channel of any pixel and at most 0.5 on average (measured on the demo at 64², 4 Euler steps: sdpa
0 / 0, fuse_qkv 0 / 0, channels_last max 1 / mean 0.0001, compile max 1 / mean 0.0002; SDPA over classic attention
max 1 / mean 0.0001). Each test also checks the setting is really in effect, so a setting that silently did nothing
would fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

from studio import engines
from studio.config import ConfigError, EngineSettings, load_serving_settings, load_settings, ray_settings_from_args
from studio.engine import ModelLoadError
from studio.engines.local import LocalEngine
from studio.engines.tuning import Tuning, apply_tuning, default_tuning
from studio.types import GenerationRequest, Task

REQUEST = GenerationRequest(prompt="a photo of a cat", width=64, height=64, steps=4, seed=1234, sampler="Euler")
MAX_DIFF, MEAN_DIFF = 2, 0.5  # of 255


def demo_engine(**kwargs) -> LocalEngine:
    engine = LocalEngine("demo", device="cpu", **kwargs)
    engine.load()
    return engine


def pixels(engine: LocalEngine, request: GenerationRequest = REQUEST) -> np.ndarray:
    return np.asarray(engine.generate(request).images[0].convert("RGB"), dtype=np.int16)


def assert_close(image: np.ndarray, reference: np.ndarray) -> None:
    diff = np.abs(image - reference)
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (int(diff.max()), float(diff.mean()))


@pytest.fixture(scope="module")
def default_engine() -> LocalEngine:
    return demo_engine()


@pytest.fixture(scope="module")
def reference(default_engine) -> np.ndarray:
    return pixels(default_engine)


def processors(pipe) -> set[type]:
    return {type(p) for module in (pipe.unet, pipe.vae) for p in module.attn_processors.values()}


def test_cpu_default_applies_nothing(default_engine):
    assert default_tuning("cpu") == Tuning()
    assert default_engine.status().details["tuning"] == "none (diffusers defaults)"
    weight = default_engine.pipelines[Task.TXT2IMG].unet.conv_in.weight
    assert not weight.is_contiguous(memory_format=torch.channels_last)


def test_cuda_defaults_are_the_fast_settings_and_compile_is_opt_in():
    assert default_tuning("cuda").enabled() == ("sdpa", "channels_last", "tf32")
    assert default_tuning("cuda", compile_unet=True).compile_unet
    assert default_tuning("cpu", compile_unet=True).enabled() == ("compile_unet",)


def _in_effect(name: str, pipe) -> bool:
    if name == "sdpa":
        return processors(pipe) == {AttnProcessor2_0}
    if name == "fuse_qkv":
        return processors(pipe) == {FusedAttnProcessor2_0} and any(hasattr(m, "to_qkv") for m in pipe.unet.modules())
    if name == "channels_last":
        return all(
            module.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
            and not module.conv_in.weight.is_contiguous()
            for module in (pipe.unet, pipe.vae.encoder, pipe.vae.decoder)
        )
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["sdpa", "channels_last", "fuse_qkv"])
def test_setting_keeps_the_default_pixels(name, reference):
    engine = demo_engine(tuning=Tuning.of([name]))
    assert engine.status().details["tuning"] == name
    assert _in_effect(name, engine.pipelines[Task.TXT2IMG])
    assert_close(pixels(engine), reference)


def test_sdpa_replaces_classic_attention_within_tolerance():
    """diffusers picks SDPA by default on torch 2; `sdpa` pins it over a pipeline that carries the classic one."""
    engine = demo_engine()
    pipe = engine.pipelines[Task.TXT2IMG]
    for module in (pipe.unet, pipe.vae):
        module.set_attn_processor(AttnProcessor())
    classic = pixels(engine)
    assert apply_tuning(pipe, Tuning(sdpa=True), "cpu") == Tuning(sdpa=True)
    assert processors(pipe) == {AttnProcessor2_0}
    assert_close(pixels(engine), classic)


def test_all_cpu_settings_together_keep_the_pixels(reference):
    engine = demo_engine(tuning=Tuning(sdpa=True, channels_last=True, fuse_qkv=True, tf32=True))
    assert engine.status().details["tuning"] == "sdpa, channels_last, fuse_qkv"  # tf32 is CUDA only
    assert_close(pixels(engine), reference)


@pytest.mark.slow
def test_compile_keeps_the_default_pixels(reference):
    """torch.compile (inductor, C++ on a CPU): ~10 s with a warm inductor cache, ~2 min cold on 2 cores."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    engine = demo_engine(compile_unet=True)
    assert engine.status().details["tuning"] == "compile_unet"
    unet = engine.pipelines[Task.TXT2IMG].unet
    assert unet._compiled_call_impl is not None  # nn.Module.compile: the UNet keeps its class and config
    assert_close(pixels(engine), reference)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before  # the UNet really ran compiled


def test_guided_steps_batch_the_unconditional_and_conditional_halves(default_engine):
    """Batched CFG is what diffusers already does: one UNet call of batch 2 per step (batch 1 without guidance)."""
    unet = default_engine.pipelines[Task.TXT2IMG].unet
    batches: list[int] = []
    handle = unet.register_forward_pre_hook(lambda _module, args: batches.append(int(args[0].shape[0])))
    try:
        default_engine.generate(REQUEST.replace(cfg_scale=7.0))
        guided, batches[:] = list(batches), []
        default_engine.generate(REQUEST.replace(cfg_scale=1.0))
    finally:
        handle.remove()
    assert guided == [2] * REQUEST.steps
    assert batches == [1] * REQUEST.steps


def test_unknown_or_invalid_settings_are_named():
    with pytest.raises(ConfigError, match=r"'turbo'.*sdpa, channels_last, fuse_qkv, tf32, compile_unet"):
        Tuning.of(["sdpa", "turbo"])
    with pytest.raises(ConfigError, match="channels_last.*'yes'"):
        Tuning(channels_last="yes")


class _FakeAccelerator:
    name = "OpenVINO"
    device = "cpu"


def test_openvino_gets_no_torch_settings():
    with pytest.raises(ModelLoadError, match="compile_unet"):
        LocalEngine("demo", accelerator=_FakeAccelerator(), compile_unet=True)
    with pytest.raises(ModelLoadError, match="channels_last"):
        LocalEngine("demo", accelerator=_FakeAccelerator(), tuning=Tuning(channels_last=True))
    with pytest.raises(ConfigError, match="--compile"):
        engines.build(EngineSettings(kind="openvino", compile_unet=True))


def test_compile_flag_and_variable():
    assert load_settings([], environ={}).engine.compile_unet is False
    assert load_settings(["--compile"], environ={}).engine.compile_unet is True
    assert load_settings([], environ={"STUDIO_COMPILE": "1"}).engine.compile_unet is True
    assert load_serving_settings([], environ={"STUDIO_COMPILE": "false"}).engine.compile_unet is False
    assert ray_settings_from_args({"compile": "false"}, environ={}).serving.engine.compile_unet is False
    assert ray_settings_from_args({"compile": "true"}, environ={}).serving.engine.compile_unet is True
    with pytest.raises(ConfigError, match="STUDIO_COMPILE"):
        load_settings([], environ={"STUDIO_COMPILE": "sometimes"})


def test_build_passes_compile_to_the_torch_engine():
    assert engines.build(EngineSettings(model="demo", compile_unet=True)).compile_unet is True
    assert engines.build(EngineSettings(model="demo")).compile_unet is False
