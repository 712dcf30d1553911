"""studio.models: sources, the demo model, offline single-file loading (safe .ckpt), hub errors, hashes."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from studio import models
from studio.engine import ModelLoadError
from studio.models import ModelSource
from studio.testing.checkpoints import write_ckpt, write_safetensors

REPO = Path(__file__).resolve().parents[1]


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


# --- tokenizer ----------------------------------------------------------------------------------------------------


def test_clip_tokenizer_matches_real_clip_ids():
    tokenizer = models.clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    padded = tokenizer("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, 49407, 49407]


def test_clip_tokenizer_open_clip_pad_token():
    tokenizer = models.clip_tokenizer(pad_token="!")
    assert tokenizer.pad_token == "!" and tokenizer.pad_token_id == 0
    assert tokenizer("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]


# --- demo model ---------------------------------------------------------------------------------------------------


def test_demo_build_is_byte_identical_across_processes(tmp_path):
    rng_before = torch.get_rng_state()
    here = models.build_demo(tmp_path / "in-process")
    assert torch.equal(torch.get_rng_state(), rng_before), "build_demo must not disturb the global RNG"
    # A second build in a fresh process, through the CLI.
    subprocess.run(
        [sys.executable, "-m", "studio.models", "build-demo", str(tmp_path / "cli")],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    there = tmp_path / "cli"
    weights = sorted(p.relative_to(here) for p in here.rglob("*.safetensors"))
    assert [str(p) for p in weights] == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    for relative in weights:
        assert _sha256(here / relative) == _sha256(there / relative), relative
    # Built atomically: nothing but the two finished folders is left behind, readable per the umask.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli", "in-process"]
    umask = models._current_umask()
    assert (here / "unet").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (here / weights[1]).stat().st_mode & 0o777 == 0o666 & ~umask
    index = json.loads((here / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    scheduler = json.loads((here / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (
        0.00085,
        0.012,
        "scaled_linear",
    )
    assert scheduler["skip_prk_steps"] is True and scheduler["steps_offset"] == 1


def test_build_demo_refuses_to_replace_a_foreign_folder(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        models.build_demo(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


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


def test_demo_model_dir_builds_once_under_concurrency(tmp_path, monkeypatch):
    """Parallel callers (threads here; flock also serialises processes) build the demo exactly once."""
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    builds = []

    def slow_fake_build(target: Path, inpaint: bool = False) -> Path:
        builds.append(target)
        time.sleep(0.3)  # long enough for the other threads to reach the lock
        tmp = target.with_name(".building")
        tmp.mkdir()
        (tmp / "model_index.json").write_text("{}")
        tmp.rename(target)
        return target

    monkeypatch.setattr(models, "build_demo", slow_fake_build)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: models.demo_model_dir(), range(4)))
    assert builds == [tmp_path / "cache" / f"demo-{models.DEMO_VERSION}"]
    assert results == builds * 4


# --- resolve / discover -------------------------------------------------------------------------------------------


def _models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "my-diffusers").mkdir(parents=True)
    (root / "my-diffusers" / "model_index.json").write_text("{}")
    (root / "alpha.safetensors").write_bytes(b"x")
    (root / "Beta.ckpt").write_bytes(b"x")
    (root / "alpha.vae.safetensors").write_bytes(b"x")  # a sidecar VAE, not a model
    (root / "readme.txt").write_text("not a model")
    (root / ".hidden.safetensors").write_bytes(b"x")
    (root / "sdxl").mkdir()
    (root / "sdxl" / "gamma.safetensors").write_bytes(b"x")
    (root / "sdxl" / "deeper").mkdir()
    (root / "sdxl" / "deeper" / "too-deep.safetensors").write_bytes(b"x")
    (root / "empty-folder").mkdir()
    return root


def test_discover_models_finds_folders_and_files(tmp_path):
    root = _models_dir(tmp_path)
    found = models.discover_models(root)
    assert [(s.kind, s.name) for s in found] == [
        ("single_file", "alpha"),
        ("single_file", "Beta"),
        ("diffusers", "my-diffusers"),
        ("single_file", "sdxl/gamma"),
    ]
    assert Path(found[0].location) == (root / "alpha.safetensors").absolute()
    assert models.discover_models(tmp_path / "missing") == []


def test_discover_models_disambiguates_same_stem(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"x")
    (tmp_path / "m.ckpt").write_bytes(b"x")
    assert [s.name for s in models.discover_models(tmp_path)] == ["m.ckpt", "m.safetensors"]


def test_resolve_model_each_kind(tmp_path, monkeypatch):
    root = _models_dir(tmp_path)
    empty = tmp_path / "no-models"
    assert models.resolve_model(None, empty).is_demo
    assert models.resolve_model("", empty) == models.DEMO_SOURCE
    assert models.resolve_model("demo", root).is_demo
    assert models.resolve_model(None, root).name == "alpha"  # the first discovered model

    folder = models.resolve_model(str(root / "my-diffusers"), empty)
    assert (folder.kind, folder.name) == ("diffusers", "my-diffusers")
    single = models.resolve_model(str(root / "Beta.ckpt"), empty)
    assert (single.kind, single.name, single.location) == ("single_file", "Beta", str(root / "Beta.ckpt"))
    assert models.resolve_model("alpha.safetensors", root).kind == "single_file"  # relative to the models folder
    assert models.resolve_model("sdxl/gamma", root).location == str(root / "sdxl" / "gamma.safetensors")
    assert models.resolve_model("beta", root).name == "Beta"  # case-insensitive when unambiguous
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alpha").mkdir()  # an unrelated folder in the working directory does not shadow a model name
    assert models.resolve_model("alpha", root).kind == "single_file"

    hub = models.resolve_model("stabilityai/stable-diffusion-2-1", root)
    assert (hub.kind, hub.location, hub.name) == (
        "hub",
        "stabilityai/stable-diffusion-2-1",
        "stabilityai/stable-diffusion-2-1",
    )


@pytest.mark.parametrize(
    "spec",
    ["/nonexistent/model.safetensors", "no-such-model", "models/missing.safetensors", "a/b/c"],
)
def test_resolve_model_error_names_spec_and_accepted_forms(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError) as err:
        models.resolve_model(spec, tmp_path / "models")
    message = str(err.value)
    assert repr(spec) in message
    assert "demo" in message and "model_index.json" in message and ".safetensors" in message and "hub id" in message


def test_resolve_model_rejects_non_models(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        models.resolve_model(str(tmp_path / "folder"), tmp_path)
    with pytest.raises(ModelLoadError, match=r"\.safetensors or \.ckpt"):
        models.resolve_model(str(tmp_path / "notes.txt"), tmp_path)


# --- single files -------------------------------------------------------------------------------------------------


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


def _fake_shapes(conv_in=(320, 4, 3, 3), context=768, **extra) -> dict[str, tuple[int, ...]]:
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": conv_in,
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    }
    shapes.update(extra)
    return shapes


def test_checkpoint_config_type_for_real_families(tmp_path):
    path = tmp_path / "model.safetensors"
    xl = {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    assert models.checkpoint_config_type(path, _fake_shapes()) == "sd-v1"
    assert models.checkpoint_config_type(path, _fake_shapes(conv_in=(320, 9, 3, 3))) == "sd-v1-inpainting"
    assert models.checkpoint_config_type(path, _fake_shapes(context=1024)) == "sd-v2-768-v"
    assert models.checkpoint_config_type(path, _fake_shapes((320, 9, 3, 3), 1024)) == "sd-v2-inpainting"
    assert models.checkpoint_config_type(path, _fake_shapes(context=2048, **xl)) == "sdxl-base"
    assert models.checkpoint_config_type(path, _fake_shapes((320, 9, 3, 3), 2048, **xl)) == "sdxl-inpainting"
    # SD 2.x 512 base vs 768-v is not visible in the weights: an A1111 sidecar yaml decides.
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert models.checkpoint_config_type(path, _fake_shapes(context=1024)) == "sd-v2-768-v"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert models.checkpoint_config_type(path, _fake_shapes(context=1024)) == "sd-v2-base"
    refiner = {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)}
    with pytest.raises(ModelLoadError, match="xl_refiner"):
        models.checkpoint_config_type(path, _fake_shapes(conv_in=(384, 4, 3, 3), context=1280, **refiner))


@pytest.mark.parametrize(
    ("config", "unet", "vae", "encoders"),
    [  # parameter counts of the published models: a wrong number in a shipped config changes them
        ("sd-v1", 859_520_964, 83_653_863, {"text_encoder": 123_060_480}),
        ("sd-v1-inpainting", 859_535_364, 83_653_863, {"text_encoder": 123_060_480}),
        ("sd-v2-768-v", 865_910_724, 83_653_863, {"text_encoder": 340_387_840}),
        ("sd-v2-base", 865_910_724, 83_653_863, {"text_encoder": 340_387_840}),
        ("sd-v2-inpainting", 865_925_124, 83_653_863, {"text_encoder": 340_387_840}),
        ("sdxl-base", 2_567_463_684, 83_653_863, {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
        ("sdxl-inpainting", 2_567_478_084, 83_653_863, {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
    ],
)
def test_shipped_configs_build_the_published_architectures(config, unet, vae, encoders):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = models.CONFIGS_DIR / config

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        assert (
            count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))) == unet
        )
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))) == vae
        for name, expected in encoders.items():
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            assert count(cls(CLIPTextConfig.from_pretrained(folder, subfolder=name))) == expected


def test_sdxl_config_folder_is_assembled_with_both_tokenizers():
    from transformers import CLIPTokenizer

    folder = models.shipped_config_dir("sdxl-base")
    first = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    second = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    assert (first.pad_token, second.pad_token) == ("<|endoftext|>", "!")
    assert first("a photo of a cat").input_ids == second("a photo of a cat").input_ids
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert (folder / "unet" / "config.json").read_bytes() == (
        models.CONFIGS_DIR / "sdxl-base" / "unet" / "config.json"
    ).read_bytes()
    assert models.shipped_config_dir("sdxl-base") == folder  # built once, reused
    with pytest.raises(ModelLoadError, match="no shipped config"):
        models.shipped_config_dir("sd-v9")


# --- hub, hashes, errors ------------------------------------------------------------------------------------------


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


def test_model_hash_of_a_diffusers_folder_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights v1")
    source = ModelSource("diffusers", str(folder), "model")
    assert models.model_hash(source) == hashlib.sha256(b"weights v1").hexdigest()[:10]
    cache = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert [entry["sha256"] for entry in cache.values()] == [hashlib.sha256(b"weights v1").hexdigest()]
    weights.write_bytes(b"weights v2 changed")  # new size and mtime: hashed again
    assert models.model_hash(source) == hashlib.sha256(b"weights v2 changed").hexdigest()[:10]
    assert models.model_hash(ModelSource("diffusers", str(tmp_path / "nothing"), "nothing")) == ""


def test_demo_hash_is_its_unet_weights():
    unet = models.demo_model_dir() / "unet" / "diffusion_pytorch_model.safetensors"
    assert models.model_hash(models.DEMO_SOURCE) == _sha256(unet)[:10]


def test_cli_list(tmp_path, capsys):
    root = _models_dir(tmp_path)
    assert models.main(["list", str(root)]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["alpha", "Beta", "my-diffusers", "sdxl/gamma"]


def test_importing_studio_models_is_light():
    heavy = "('torch', 'diffusers', 'transformers', 'safetensors')"
    code = f"import sys, studio.models; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


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
