"""What an A1111 user expects, through LocalEngine on the demo model: prompt weighting, long prompts, LoRA tags,
clip skip, VAE choice, hires fix and schedule types, each changing (or not changing) the pixels as it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.engines.local import LocalEngine
from studio.models.demo_extras import build_demo_lora, build_demo_vae
from studio.types import GenerationRequest, RequestError

BASE = GenerationRequest(prompt="a red fox in snow", width=64, height=64, steps=3, seed=77, sampler="Euler")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_demo_lora(root / "Lora" / "fox.safetensors", seed=1)
    build_demo_lora(root / "Lora" / "snow.safetensors", seed=2)
    build_demo_vae(root / "VAE" / "warm.safetensors")
    return root


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> LocalEngine:
    eng = LocalEngine("demo", device="cpu", models_dir=models_dir)
    eng.load()
    return eng


def run(engine: LocalEngine, **changes: object) -> bytes:
    return engine.generate(BASE.replace(**changes)).images[0].tobytes()


@pytest.fixture(scope="module")
def plain(engine: LocalEngine) -> bytes:
    return run(engine)


def test_weight_one_is_the_plain_prompt_and_other_weights_are_not(engine: LocalEngine, plain: bytes) -> None:
    assert run(engine, prompt="(a red fox:1.0) in snow") == plain
    assert run(engine, prompt="a (red fox:1.4) in snow") != plain
    assert run(engine, prompt=r"a \(red fox\) in snow") != run(engine, prompt="a (red fox) in snow")


def test_a_150_token_prompt_is_not_its_first_75_tokens(engine: LocalEngine) -> None:
    words = [f"word{i}" for i in range(150)]
    whole = engine.generate(BASE.replace(prompt=" ".join(words)))
    assert not whole.warnings
    assert whole.images[0].tobytes() != run(engine, prompt=" ".join(words[:75]))
    assert run(engine, prompt="a red fox BREAK in snow") != run(engine, prompt="a red fox in snow")


def test_lora_tags_apply_per_request_and_leave_nothing_behind(engine: LocalEngine, plain: bytes) -> None:
    with_lora = engine.generate(BASE.replace(prompt="a red fox in snow <lora:fox:0.8>"))
    assert with_lora.images[0].tobytes() != plain
    assert "Lora hashes: \"fox: " in with_lora.infotexts[0]
    assert run(engine, prompt="a red fox in snow <lora:fox:0>") == plain  # weight 0 = no tag
    assert run(engine) == plain  # after a LoRA request, a request without tags is as before any LoRA
    both = run(engine, prompt="a red fox in snow <lora:fox:0.8> <lora:snow>")
    assert both not in (plain, with_lora.images[0].tobytes())


def test_an_unknown_lora_is_a_warning_naming_it_and_the_image_is_still_made(engine: LocalEngine, plain: bytes) -> None:
    result = engine.generate(BASE.replace(prompt="a red fox in snow <lora:nosuch:1>"))
    assert any("nosuch" in w for w in result.warnings)
    assert result.images[0].tobytes() == plain


def test_clip_skip(engine: LocalEngine, plain: bytes) -> None:
    assert run(engine, clip_skip=1) == plain
    two = engine.generate(BASE.replace(clip_skip=2))
    assert two.images[0].tobytes() != plain
    assert "Clip skip: 2" in two.infotexts[0]


def test_vae_choice_changes_the_decode_only_and_is_recorded(engine: LocalEngine, plain: bytes) -> None:
    warm = engine.generate(BASE.replace(vae="warm.safetensors"))
    assert warm.images[0].tobytes() != plain
    assert "VAE: warm.safetensors" in warm.infotexts[0] and "VAE hash: " in warm.infotexts[0]
    assert run(engine, vae="Automatic") == plain  # the model's own VAE was never replaced
    with pytest.raises(RequestError) as info:
        engine.generate(BASE.replace(vae="nope.safetensors"))
    assert info.value.field == "vae" and "warm.safetensors" in str(info.value)


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos", "None"])
def test_hires_fix_gives_the_target_size_with_the_same_seed(engine: LocalEngine, upscaler: str) -> None:
    steps: list[tuple[int, int]] = []
    request = BASE.replace(hires_scale=2.0, hires_upscaler=upscaler, hires_steps=2, hires_strength=0.5)
    result = engine.generate(request, on_progress=lambda step, total: steps.append((step, total)))
    assert result.images[0].size == (128, 128)
    assert steps[-1] == (5, 5)  # steps + hires steps, as A1111 counts them
    assert engine.generate(request).images[0].tobytes() == result.images[0].tobytes()
    assert "Hires upscaler: " + upscaler in result.infotexts[0] or upscaler == "Latent"


def test_hires_resize_to_both_sides_and_an_unknown_upscaler(engine: LocalEngine) -> None:
    request = BASE.replace(width=64, height=96, hires_resize_x=128, hires_resize_y=112, hires_steps=2)
    assert engine.generate(request).images[0].size == (128, 112)
    with pytest.raises(RequestError) as info:
        engine.generate(BASE.replace(hires_scale=2.0, hires_upscaler="4x-Nope"))
    assert info.value.field == "hires_upscaler" and "Latent (bicubic)" in str(info.value)


def test_schedule_types_change_the_sampling(engine: LocalEngine) -> None:
    karras = engine.generate(BASE.replace(sampler="DPM++ 2M", scheduler="Karras"))
    assert "Sampler: DPM++ 2M" in karras.infotexts[0] and "Schedule type: Karras" in karras.infotexts[0]
    assert karras.images[0].tobytes() == run(engine, sampler="DPM++ 2M Karras")  # the old combined name
    assert karras.images[0].tobytes() != run(engine, sampler="DPM++ 2M")


def test_weighting_lora_clip_skip_and_hires_together_reproduce_from_the_infotext(engine: LocalEngine) -> None:
    from studio import metadata

    request = BASE.replace(
        prompt="a (red fox:1.3) in [snow] <lora:fox:0.7>", clip_skip=2, hires_scale=1.5, hires_steps=2, seed=5
    )
    first = engine.generate(request)
    fields = metadata.request_fields(metadata.parse_infotext(first.infotexts[0]))
    assert fields["loras"] == {"fox": 0.7} and fields["clip_skip"] == 2 and fields["hires_scale"] == 1.5
    again = engine.generate(metadata.request_from_fields(fields))
    assert again.images[0].tobytes() == first.images[0].tobytes()
    assert np.asarray(again.images[0]).shape == (96, 96, 3)
