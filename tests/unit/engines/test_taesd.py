"""The "Approx (TAESD)" VAE (studio.models.taesd through VaeCache and the engine): found in MODELS_DIR/VAE-approx/
as a diffusers folder or as A1111's split files (loaded to the same weights), recorded in the infotext, deterministic
for a seed, and a clear `vae` error saying where to put missing weights (or the encoder an img2img needs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio import engines
from studio.config import EngineSettings
from studio.engines.adapters import VaeCache
from studio.models.demo_extras import build_demo_taesd
from studio.models.taesd import TAESD, find_taesd, load_taesd
from studio.types import GenerationRequest, RequestError

REQUEST = GenerationRequest(prompt="a lighthouse", width=64, height=64, steps=2, seed=5, vae=TAESD)


def engine_with(models_dir: Path):
    engine = engines.build(EngineSettings(model="demo", models_dir=models_dir))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def folder_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("taesd-folder")
    build_demo_taesd(root, layout="folder", seed=3)
    return root


@pytest.fixture(scope="module")
def engine(folder_models: Path):
    return engine_with(folder_models)


def test_taesd_decodes_the_image_and_is_named_in_the_infotext(engine) -> None:
    result = engine.generate(REQUEST)
    again = engine.generate(REQUEST)
    own = engine.generate(REQUEST.replace(vae="Automatic"))
    assert result.images[0].size == (64, 64)
    assert "VAE: Approx (TAESD)" in result.infotexts[0] and "VAE hash" not in result.infotexts[0]
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(again.images[0]))
    differs = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(own.images[0], dtype=int)).mean()
    assert differs > 3, "TAESD must decode, not the model's own VAE"
    assert "VAE:" not in own.infotexts[0]


def test_img2img_encodes_with_taesd(engine) -> None:
    init = Image.new("RGB", (64, 64), (30, 120, 220))
    result = engine.generate(REQUEST.replace(image=init, strength=0.5))
    assert result.images[0].size == (64, 64) and "VAE: Approx (TAESD)" in result.infotexts[0]


def test_a1111_split_files_load_the_same_weights_as_the_folder(tmp_path: Path, folder_models: Path) -> None:
    build_demo_taesd(tmp_path, layout="a1111", seed=3)
    files = find_taesd(tmp_path, offline=True)
    folder = find_taesd(folder_models, offline=True)
    assert files.kind == "files" and files.decoder.name == "taesd_decoder.safetensors"
    assert files.encoder.name == "taesd_encoder.pth" and folder.kind == "folder"
    from_files, from_folder = load_taesd(files), load_taesd(folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(from_files.decode(latents).sample, from_folder.decode(latents).sample)
        assert torch.equal(from_files.encode(image).latents, from_folder.encode(image).latents)


def test_missing_weights_say_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = engine_with(tmp_path)
    with pytest.raises(RequestError) as caught:
        engine.generate(REQUEST)
    assert caught.value.field == "vae" and caught.value.value == TAESD
    message = str(caught.value)
    assert str(tmp_path / "VAE-approx" / "taesd") in message and "taesd_decoder.pth" in message


def test_decoder_only_draws_but_an_img2img_asks_for_the_encoder(tmp_path: Path) -> None:
    build_demo_taesd(tmp_path, layout="a1111", encoder=False)
    engine = engine_with(tmp_path)
    assert engine.generate(REQUEST).images[0].size == (64, 64)
    with pytest.raises(RequestError) as caught:
        engine.generate(REQUEST.replace(image=Image.new("RGB", (64, 64))))
    assert caught.value.field == "vae" and "taesd_encoder.pth" in str(caught.value)


def test_files_that_are_not_taesd_are_a_vae_error(tmp_path: Path, engine) -> None:
    from safetensors.torch import save_file

    approx = tmp_path / "VAE-approx"
    approx.mkdir()
    save_file({"0.weight": torch.zeros(3)}, str(approx / "taesd_decoder.safetensors"))
    with pytest.raises(RequestError) as caught:
        VaeCache(tmp_path).taesd(engine.pipelines[next(iter(engine.pipelines))], encode=False)
    assert caught.value.field == "vae" and "not a TAESD decoder" in str(caught.value)


def test_a_demo_taesd_never_replaces_real_weights(tmp_path: Path) -> None:
    real = tmp_path / "VAE-approx" / "taesd"
    real.mkdir(parents=True)
    (real / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        build_demo_taesd(tmp_path, layout="folder")
    assert (real / "config.json").read_text() == "{}"


def test_taesd_runs_beside_the_openvino_unet(folder_models: Path) -> None:
    pytest.importorskip("openvino")
    # The session's default IR cache: the demo is converted once per test run, not once per test.
    settings = EngineSettings(model="demo", models_dir=folder_models, kind="openvino", precision="f32")
    engine = engines.build(settings)
    engine.load()
    result = engine.generate(REQUEST)
    assert result.images[0].size == (64, 64) and "VAE: Approx (TAESD)" in result.infotexts[0]


def test_a_failed_hub_download_also_says_where_to_put_the_weights(tmp_path: Path, monkeypatch) -> None:
    """Online (no HF_HUB_OFFLINE) but the hub cannot be reached: the error still says where the files go."""
    from studio.models import taesd

    weights = taesd.find_taesd(tmp_path, offline=False)
    assert weights.kind == "hub" and weights.location == "madebyollin/taesd"

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr("diffusers.AutoencoderTiny.from_pretrained", unreachable)
    with pytest.raises(taesd.ModelLoadError) as caught:
        taesd.load_taesd(weights)
    assert "couldn't connect" in str(caught.value) and str(tmp_path / "VAE-approx" / "taesd") in str(caught.value)


def test_the_models_cli_writes_a_demo_taesd(tmp_path: Path, capsys) -> None:
    from studio.models.__main__ import main as models_main

    assert models_main(["build-demo-taesd", str(tmp_path), "--a1111", "--decoder-only"]) in (0, None)
    found = find_taesd(tmp_path, offline=True)
    assert found.kind == "files" and found.encoder is None and str(found.decoder) in capsys.readouterr().out
