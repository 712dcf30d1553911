"""A1111 features reach a remote engine: the serving app (with its own --models-dir holding the same LoRA and VAE
files) makes pixel-identical images to the local engine for a request using weighting, a LoRA, clip skip, a VAE,
a schedule type and hires fix; and a name only the local side has is refused by the server, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio import remote
from studio.engines.local import LocalEngine
from studio.models.demo_extras import build_demo_lora, build_demo_vae
from studio.testing.servers import ServingProcess, single_threaded_torch
from studio.types import GenerationRequest, RequestError

REQUEST = GenerationRequest(
    prompt="a (lighthouse:1.3) on a cliff, [fog] BREAK sunset <lora:harbour:0.7>",
    negative_prompt="blurry",
    sampler="DPM++ 2M",
    scheduler="Karras",
    steps=3,
    seed=2024,
    width=64,
    height=64,
    clip_skip=2,
    vae="harbour-vae.safetensors",
    hires_scale=1.5,
    hires_upscaler="Latent (bicubic)",
    hires_steps=2,
    hires_strength=0.6,
)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("a1111-models")
    build_demo_lora(root / "Lora" / "harbour.safetensors", seed=3)
    build_demo_vae(root / "VAE" / "harbour-vae.safetensors")
    return root


@pytest.fixture(scope="module")
def server(models_dir: Path):
    with ServingProcess("--models-dir", str(models_dir), model="demo") as process:
        yield process


def test_remote_and_local_make_the_same_pixels_with_every_a1111_feature(server, models_dir: Path) -> None:
    with single_threaded_torch():
        local_engine = LocalEngine("demo", device="cpu", models_dir=models_dir)
        local_engine.load()
        local = local_engine.generate(REQUEST)
    result = remote.http_engine(server.url).generate(REQUEST)
    assert result.images[0].size == (96, 96)
    assert result.images[0].tobytes() == local.images[0].tobytes()
    assert result.infotexts == local.infotexts
    for key in ("Schedule type: Karras", "Clip skip: 2", "VAE: harbour-vae.safetensors", 'Lora hashes: "harbour: ',
                "Hires upscaler: Latent (bicubic)", "Denoising strength: 0.6"):
        assert key in result.infotexts[0], key


def test_a_file_the_server_does_not_have_is_refused_by_name(server) -> None:
    with pytest.raises(RequestError) as info:
        remote.http_engine(server.url).generate(REQUEST.replace(vae="elsewhere.safetensors"))
    assert info.value.field == "vae" and "harbour-vae.safetensors" in str(info.value)
    unknown_lora = remote.http_engine(server.url).generate(REQUEST.replace(prompt="a lighthouse <lora:nowhere:1>"))
    assert any("nowhere" in warning for warning in unknown_lora.warnings)
