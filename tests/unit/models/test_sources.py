"""studio.models.sources: discovery, name resolution, and the one rule for the model a container serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio import models
from studio.engine import ModelLoadError


def test_discover_models_finds_folders_and_files(tmp_path, models_folder):
    root = models_folder
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


def test_resolve_model_each_kind(tmp_path, monkeypatch, models_folder):
    root = models_folder
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


def test_model_source_kind_is_the_model_kind_vocabulary():
    source = models.ModelSource("single_file", "/m/x.safetensors", "x")
    assert source.kind is models.ModelKind.SINGLE_FILE
    assert models.DEMO_SOURCE.kind is models.ModelKind.DEMO and models.DEMO_INPAINT_SOURCE.is_demo
    assert [kind.value for kind in models.ModelKind] == ["demo", "diffusers", "single_file", "hub"]
    with pytest.raises(ValueError):
        models.ModelSource("checkpoint", "x", "x")


# --- which model a container serves -------------------------------------------------------------------------------


def _diffusers_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    return path


def test_serving_model_explicit_beats_files_in_the_model_dir(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert models.serving_model("other.ckpt", tmp_path) == "other.ckpt"
    assert models.serving_model("  demo-inpaint ", tmp_path) == "demo-inpaint"  # trimmed


def test_serving_model_files_in_the_model_dir_beat_the_demo(tmp_path):
    (tmp_path / "code").mkdir()  # the toolkit's code/inference.py is not a model
    (tmp_path / "code" / "inference.py").write_text("")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    for explicit in (None, "", "   "):
        assert models.serving_model(explicit, tmp_path) == str(tmp_path / "model.safetensors")


def test_serving_model_falls_back_to_the_demo(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-code" / "code").mkdir(parents=True)
    (tmp_path / "only-code" / ".hidden").write_text("")
    for model_dir in (tmp_path / "missing", tmp_path / "empty", tmp_path / "only-code"):
        with caplog.at_level("WARNING", logger="studio.models.sources"):
            assert models.serving_model(None, model_dir) == models.DEMO
        assert "serving the built-in demo model" in caplog.text


def test_model_in_dir_finds_each_layout(tmp_path):
    top = _diffusers_folder(tmp_path / "top")
    (top / "unet").mkdir()
    assert models.model_in_dir(top) == str(top)  # model_index.json at the top wins over anything inside
    nested = tmp_path / "nested"
    inner = _diffusers_folder(nested / "my-model")
    assert models.model_in_dir(nested) == str(inner)
    single = tmp_path / "single"
    single.mkdir()
    (single / "Model.CKPT").write_bytes(b"x")
    (single / "notes.txt").write_text("x")
    assert models.model_in_dir(single) == str(single / "Model.CKPT")


def test_model_in_dir_several_checkpoints_is_an_error_not_a_guess(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.ckpt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"several checkpoints \(a\.safetensors, b\.ckpt\).*STUDIO_MODEL"):
        models.model_in_dir(tmp_path)
    with pytest.raises(ModelLoadError, match="several checkpoints"):
        models.serving_model(None, tmp_path)
    assert models.serving_model("a.safetensors", tmp_path) == "a.safetensors"  # explicit settles it


def test_model_in_dir_files_without_a_model_never_fall_back_to_the_demo(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    _diffusers_folder(tmp_path / "one" / "deeper")  # two levels down is not looked for
    with pytest.raises(ModelLoadError, match=r"has files \(one, weights\.bin\) but no diffusers folder"):
        models.serving_model(None, tmp_path)
    _diffusers_folder(tmp_path / "x")
    _diffusers_folder(tmp_path / "y")
    with pytest.raises(ModelLoadError, match="no diffusers folder"):  # two model folders: ambiguous
        models.model_in_dir(tmp_path)


def test_model_in_dir_ignores_the_lora_vae_and_esrgan_folders_a_package_carries(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    for folder, name in (("Lora", "fubuki.safetensors"), ("VAE", "mse.pt"), ("ESRGAN", "4x.pth"), ("code", "x.py")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"x")
    assert models.model_in_dir(tmp_path) == str(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    assert models.model_in_dir(tmp_path) is None  # only those folders: no model here (the demo, or STUDIO_MODEL)
