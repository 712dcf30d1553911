"""studio.models.loading: the demo, offline single-file loading (safe .ckpt), hub models and their errors."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from studio import models
from studio.engine import ModelLoadError
from studio.models import ModelSource
from studio.testing.checkpoints import write_ckpt, write_safetensors


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _generate(pipe, seed: int, size: int = 64) -> np.ndarray:
    image = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    assert image.size == (size, size)
    return np.asarray(image)


def _assert_same_weights(expected, actual) -> None:
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(expected, name).state_dict(), getattr(actual, name).state_dict()
        assert want.keys() == got.keys(), name
        different = [key for key in want if not torch.equal(want[key], got[key])]
        assert not different, f"{name}: {different[:5]}"


@pytest.fixture(scope="module")
def demo_pipe():
    return models.load_pipeline(models.DEMO_SOURCE)


def test_demo_loads_and_generates_deterministically(demo_pipe):
    assert type(demo_pipe).__name__ == "StableDiffusionPipeline"
    assert demo_pipe.safety_checker is None
    assert demo_pipe.vae_scale_factor == 8
    assert not models.is_inpaint_unet(demo_pipe)
    first = _generate(demo_pipe, seed=7)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, _generate(demo_pipe, seed=7))
    assert not np.array_equal(first, _generate(demo_pipe, seed=8))


def test_inpaint_demo_has_a_nine_channel_unet():
    source = models.resolve_model("demo-inpaint", Path("no-models-here"))
    assert source.is_demo and source.name == "demo-inpaint"
    folder = models.demo_model_dir(inpaint=True)
    assert folder != models.demo_model_dir()
    pipe = models.load_pipeline(source)
    assert pipe.unet.config.in_channels == 9
    assert models.is_inpaint_unet(pipe)
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert models.model_hash(source) == _sha256(unet_file)[:10] != models.model_hash(models.DEMO_SOURCE)


def test_single_safetensors_loads_back_identical(demo_pipe, tmp_path):
    path = write_safetensors(demo_pipe, tmp_path / "demo-as-file.safetensors")
    assert models.checkpoint_config_type(path) == "demo"
    source = models.resolve_model(str(path), tmp_path)
    pipe = models.load_pipeline(source)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    _assert_same_weights(demo_pipe, pipe)
    assert np.array_equal(_generate(demo_pipe, seed=3), _generate(pipe, seed=3))
    assert models.model_hash(source) == _sha256(path)[:10]


def test_single_ckpt_loads_back_identical(demo_pipe, tmp_path):
    # numpy scalars like A1111/Lightning checkpoints carry; plain weights_only=True would reject them.
    path = write_ckpt(demo_pipe, tmp_path / "demo-as-file.ckpt", {"global_step": np.int64(470000), "epoch": 6})
    pipe = models.load_pipeline(models.resolve_model(str(path), tmp_path))
    _assert_same_weights(demo_pipe, pipe)
    assert np.array_equal(_generate(demo_pipe, seed=5), _generate(pipe, seed=5))


def test_single_file_inpaint_demo_is_detected(tmp_path):
    inpaint = models.load_pipeline(models.DEMO_INPAINT_SOURCE)
    path = write_safetensors(inpaint, tmp_path / "inpaint.safetensors")
    assert models.checkpoint_config_type(path) == "demo-inpaint"
    pipe = models.load_pipeline(models.resolve_model(str(path), tmp_path))
    assert models.is_inpaint_unet(pipe)
    _assert_same_weights(inpaint, pipe)


class _Marker:
    """Unpickling this would create a file: proof that code from the checkpoint ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_ckpt_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _Marker(marker)}, str(path))
    with pytest.raises(ModelLoadError) as err:
        models.load_pipeline(models.resolve_model(str(path), tmp_path))
    message = str(err.value)
    assert message.startswith(
        "evil.ckpt: refused to load: the checkpoint contains pickled code that is not plain tensors"
    )
    assert "open" in message  # names what it refused
    assert not marker.exists()


def test_unreadable_single_files_give_clear_errors(tmp_path):
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors: not a valid \.safetensors file"):
        models.load_pipeline(models.resolve_model(str(bad_st), tmp_path))
    bad_ckpt = tmp_path / "broken.ckpt"
    bad_ckpt.write_bytes(b"definitely not a pickle")
    with pytest.raises(ModelLoadError, match=r"broken\.ckpt: not a readable \.ckpt"):
        models.load_pipeline(models.resolve_model(str(bad_ckpt), tmp_path))
    lora = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(ModelLoadError, match=r"lora\.safetensors: not a Stable Diffusion checkpoint"):
        models.load_pipeline(models.resolve_model(str(lora), tmp_path))


def test_hub_id_offline_and_not_cached_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = models.resolve_model("studio-tests/not-a-cached-model", Path("no-models-here"))
    assert source.kind == "hub"
    with pytest.raises(ModelLoadError) as err:
        models.load_pipeline(source)
    message = str(err.value)
    assert message.startswith("studio-tests/not-a-cached-model: ")
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "connected machine" in message and "./models" in message
    assert models.model_hash(source) == ""


def test_hub_id_loads_offline_from_the_local_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # A hub cache entry as `hf download` leaves it: refs/main -> snapshots/<commit>/<files>.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--studio-tests--tiny-demo"
    shutil.copytree(models.demo_model_dir(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = models.resolve_model("studio-tests/tiny-demo", tmp_path)
    pipe = models.load_pipeline(source)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert torch.equal(pipe.unet.conv_in.weight, models.load_pipeline(models.DEMO_SOURCE).unet.conv_in.weight)
    assert models.model_hash(source) == models.model_hash(models.DEMO_SOURCE)


def test_missing_diffusers_folder_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"^gone: .* \(no model_index\.json\)"):
        models.load_pipeline(ModelSource("diffusers", str(tmp_path / "gone"), "gone"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    with pytest.raises(ModelLoadError, match=r"^broken: could not load the model"):
        models.load_pipeline(ModelSource("diffusers", str(broken), "broken"))


@pytest.mark.skipif(
    not os.environ.get("STUDIO_REAL_SIZE_TESTS"),
    reason="opt-in (STUDIO_REAL_SIZE_TESTS=1): real-size random models; SDXL writes a 7 GB file and needs ~14 GB RAM",
)
@pytest.mark.parametrize("config", ["sd-v1", "sd-v2-768-v", "sdxl-base"])
def test_real_size_single_file_round_trip(config, tmp_path):
    """A real-size checkpoint in the original layout (random fp16 weights) loads offline with identical weights."""
    import gc

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from studio.testing.checkpoints import components_to_original

    folder = models.CONFIGS_DIR / config
    torch.manual_seed(0)

    def random_fp16(module):
        module = module.to_empty(device="cpu").half()
        with torch.no_grad():
            for param in module.parameters():
                param.normal_(0, 0.02)
        return module

    def digests(module) -> dict[str, str]:
        return {
            key: hashlib.sha256(value.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for key, value in module.state_dict().items()
        }

    with torch.device("meta"):
        parts = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")),
        }
        if (folder / "text_encoder_2").is_dir():
            config_2 = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2")
            parts["text_encoder_2"] = CLIPTextModelWithProjection(config_2)
    parts = {name: random_fp16(module) for name, module in parts.items()}
    expected = {name: digests(module) for name, module in parts.items()}
    path = tmp_path / f"{config}.safetensors"
    save_file({k: v.contiguous() for k, v in components_to_original(**parts).items()}, str(path))
    del parts
    gc.collect()

    assert models.checkpoint_config_type(path) == config
    pipe = models.load_pipeline(models.resolve_model(str(path), tmp_path), dtype=torch.float16)
    for name, want in expected.items():
        assert digests(getattr(pipe, name)) == want, name
