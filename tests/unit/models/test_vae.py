"""studio.models.vae: VAE discovery and names as A1111 has them, A1111's VAE hash, safe offline loading; demo VAE."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from studio.engine import ModelLoadError
from studio.models import demo_model_dir, vae
from studio.models.__main__ import main
from studio.models.demo_extras import build_demo_vae


@pytest.fixture(scope="module")
def demo_vae() -> AutoencoderKL:
    """The demo model's own VAE (what a VAE file replaces)."""
    return AutoencoderKL.from_pretrained(demo_model_dir() / "vae").eval()


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_vae(tmp_path_factory.mktemp("vae") / "demo-vae.safetensors")


def _decode(model: AutoencoderKL) -> torch.Tensor:
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(0))
    with torch.inference_mode():
        return model.decode(latents).sample


def test_discover_names_files_by_file_name_like_a1111(tmp_path: Path) -> None:
    root = tmp_path / "models" / "VAE"
    for relative in ("b.safetensors", "a.pt", "sub/c.ckpt", "notes.txt", ".hidden.safetensors"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"x")
    found = vae.discover_vaes(tmp_path / "models")
    assert [(f.name, f.relative) for f in found] == [
        ("a.pt", "a.pt"),
        ("b.safetensors", "b.safetensors"),
        ("c.ckpt", "sub/c.ckpt"),
    ]
    assert vae.discover_vaes(tmp_path / "nothing") == []


def test_find_by_file_name_path_or_unique_stem(tmp_path: Path) -> None:
    root = tmp_path / "VAE"
    for relative in ("x.safetensors", "x.pt", "sub/y.safetensors"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"x")
    found = vae.discover_vaes(tmp_path)
    assert vae.find_vae("x.pt", found).relative == "x.pt"
    assert vae.find_vae("sub/y.safetensors", found).name == "y.safetensors"
    assert vae.find_vae("y.safetensors", found).name == "y.safetensors"
    assert vae.find_vae("y", found).name == "y.safetensors"  # one file has that stem
    assert vae.find_vae("x", found) is None  # two do: no guess
    assert vae.find_vae("z.safetensors", found) is None


def test_hash_is_the_first_10_hex_of_the_files_sha256(vae_file: Path) -> None:
    assert vae.vae_hash(vae_file) == hashlib.sha256(vae_file.read_bytes()).hexdigest()[:10]


def test_demo_vae_has_the_original_ldm_layout_and_is_deterministic(vae_file: Path, tmp_path: Path) -> None:
    state = load_file(str(vae_file))
    assert "encoder.down.0.block.0.norm1.weight" in state
    assert "decoder.mid.attn_1.q.weight" in state and state["decoder.mid.attn_1.q.weight"].ndim == 4
    assert not any("down_blocks" in key or "resnets" in key for key in state)
    assert build_demo_vae(tmp_path / "again.safetensors").read_bytes() == vae_file.read_bytes()


def test_a_vae_file_loads_offline_into_the_models_vae_and_changes_pixels(
    vae_file: Path, demo_vae: AutoencoderKL
) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loaded = vae.load_vae(vae_file, like=demo_vae)
    assert isinstance(loaded, AutoencoderKL) and loaded is not demo_vae
    assert dict(loaded.config) == dict(demo_vae.config)  # the model's own config (scaling factor included)
    assert loaded.dtype == demo_vae.dtype and loaded.device == demo_vae.device
    own, chosen = _decode(demo_vae), _decode(loaded)
    assert (own - chosen).abs().mean() > 0.05
    # The encoder is the demo's: the file's weights arrived under the right names, none left random.
    assert torch.equal(loaded.encoder.conv_in.weight, demo_vae.encoder.conv_in.weight)
    assert torch.equal(_decode(vae.load_vae(vae_file, like=demo_vae)), chosen)


def test_pt_prefixed_and_diffusers_layouts_load_the_same_weights(
    vae_file: Path, demo_vae: AutoencoderKL, tmp_path: Path
) -> None:
    expected = _decode(vae.load_vae(vae_file, like=demo_vae))
    pt = build_demo_vae(tmp_path / "demo-vae.pt")  # A1111's .pt: {"state_dict": {...}}
    prefixed = tmp_path / "whole.safetensors"  # a checkpoint's VAE part, plus other weights to ignore
    state = load_file(str(vae_file))
    save_file({**{f"first_stage_model.{k}": v for k, v in state.items()}, "model.x": torch.ones(1)}, str(prefixed))
    diffusers_layout = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(vae.load_vae(vae_file, like=demo_vae).state_dict(), str(diffusers_layout))
    leftovers = tmp_path / "leftovers.safetensors"  # training files carry loss.* weights
    save_file({**state, "loss.logvar": torch.zeros(1)}, str(leftovers))
    for path in (pt, prefixed, diffusers_layout, leftovers):
        assert torch.equal(_decode(vae.load_vae(path, like=demo_vae)), expected), path.name


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/studio-vae-pwned",))


def test_a_pt_vae_with_pickled_code_is_refused_and_never_run(demo_vae: AutoencoderKL, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.ones(1)}, "callback": _Payload()}, evil)
    marker = Path("/tmp/studio-vae-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="evil.pt: refused to load: .*pickled code"):
        vae.load_vae(evil, like=demo_vae)
    assert not marker.exists()


def test_files_that_do_not_fit_are_named_errors(vae_file: Path, demo_vae: AutoencoderKL, tmp_path: Path) -> None:
    state = load_file(str(vae_file))
    wrong = dict(state, **{"decoder.conv_out.weight": torch.zeros(3, 64, 3, 3)})
    save_file(wrong, str(tmp_path / "wrong-shape.safetensors"))
    with pytest.raises(ModelLoadError, match="wrong-shape.safetensors: does not fit this model's VAE"):
        vae.load_vae(tmp_path / "wrong-shape.safetensors", like=demo_vae)
    del state["decoder.conv_out.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelLoadError, match=r"partial.safetensors: does not fit .*1 weights missing"):
        vae.load_vae(tmp_path / "partial.safetensors", like=demo_vae)
    save_file({"lora_unet_x.alpha": torch.ones(())}, str(tmp_path / "a-lora.safetensors"))
    with pytest.raises(ModelLoadError, match="a-lora.safetensors: holds no VAE weights"):
        vae.load_vae(tmp_path / "a-lora.safetensors", like=demo_vae)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="junk.safetensors: not a valid .safetensors"):
        vae.load_vae(tmp_path / "junk.safetensors", like=demo_vae)


def test_cli_builds_the_demo_vae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "models" / "VAE" / "demo.safetensors"
    assert main(["build-demo-vae", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert [f.name for f in vae.discover_vaes(tmp_path / "models")] == ["demo.safetensors"]
    assert main(["build-demo-vae", str(tmp_path / "demo.bin")]) == 1
    assert "a VAE file ends in .safetensors, .pt or .ckpt" in capsys.readouterr().err
