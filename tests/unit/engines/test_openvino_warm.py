"""The warm IR cache (studio.engines.openvino_warm): the first OpenVINO load of a model converts it and writes a
warm entry; every later load builds the pipeline from that entry's configs + IR without reading the torch weights,
gives the same pixels for every task, and a model whose files changed is converted again, never answered from the
old IR."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino")

from studio import engines, models  # noqa: E402
from studio.config import EngineSettings  # noqa: E402
from studio.engines import openvino as ov_engine_module  # noqa: E402
from studio.engines.openvino_warm import entry_dir, find_entry, warm_key  # noqa: E402
from studio.models import resolve_model  # noqa: E402
from studio.models.demo import demo_model_dir  # noqa: E402
from studio.types import GenerationRequest, Task  # noqa: E402

REQUEST = GenerationRequest(prompt="a red cube", width=64, height=64, steps=3, seed=7)


@pytest.fixture
def torch_loads(monkeypatch):
    """The sources whose torch weights were loaded (models.load_pipeline, the torch loader)."""
    loaded: list[str] = []
    original = models.load_pipeline

    def counting(source, device="cpu", dtype=None):
        loaded.append(source.name)
        return original(source, device=device, dtype=dtype)

    monkeypatch.setattr(models, "load_pipeline", counting)
    return loaded


def engine_on(model, cache):
    engine = engines.build(EngineSettings(model=str(model), kind="openvino", precision="f32", openvino_cache=cache))
    engine.load()
    return engine


def pixels(engine, task=Task.TXT2IMG):
    request = REQUEST
    if task is not Task.TXT2IMG:
        init = Image.new("RGB", (64, 64), (200, 40, 40))
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        request = REQUEST.replace(image=init, mask=mask if task is Task.INPAINT else None)
        assert request.task is task
    return np.asarray(engine.generate(request).images[0])


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A cold OpenVINO load of the demo into a fresh cache (shared by the tests that only read what it wrote)."""
    return engine_on("demo", tmp_path_factory.mktemp("ov"))


def test_the_second_load_is_warm_reads_no_torch_weights_and_gives_the_same_pixels(cold, torch_loads, tmp_path):
    cache = cold.accelerator.cache
    assert not cold.accelerator.report.warm
    key = warm_key(resolve_model("demo", tmp_path), "fp32", cold.accelerator.report.version)
    assert find_entry(cache, key) is not None, "the cold load writes the warm entry"

    warm = engine_on("demo", cache)
    report = warm.accelerator.report
    assert torch_loads == [], "the warm load must not read the torch weights"
    assert report.warm and all(c.cache_hit and not c.prepared for c in report.components)
    assert "from the warm IR cache (no torch weights)" in warm.status().details["accelerator"]
    unet = warm.pipelines[Task.TXT2IMG].unet
    assert sum(p.numel() for p in unet.parameters()) == 0
    for task in (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT):
        np.testing.assert_array_equal(pixels(warm, task), pixels(cold, task), err_msg=task.value)


def test_a_model_whose_weights_changed_is_converted_again(tmp_path, torch_loads):
    folder = tmp_path / "mymodel"
    shutil.copytree(demo_model_dir(), folder)
    cache = tmp_path / "ov"
    before = pixels(engine_on(folder, cache))
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)  # other weights, same size and architecture
    weights.write_bytes(bytes(data))

    changed = engine_on(folder, cache)
    assert torch_loads == ["mymodel", "mymodel"], "changed weights must be read, not answered from the old IR"
    assert not changed.accelerator.report.warm
    assert not np.array_equal(pixels(changed), before)
    assert len([p for p in (cache / "models").iterdir() if p.is_dir()]) == 2  # one entry per model identity


def test_a_single_file_key_covers_the_files_beside_it(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x" * 300_000)
    source = resolve_model(str(model), tmp_path)
    key = warm_key(source, "fp16", "v")
    assert key == warm_key(source, "fp16", "v")
    assert key != warm_key(source, "fp32", "v") and key != warm_key(source, "fp16", "w")
    (tmp_path / "other.safetensors").write_bytes(b"y" * 10)
    assert warm_key(source, "fp16", "v") == key, "another model's file is not part of this one"
    (tmp_path / "m.vae.safetensors").write_bytes(b"z" * 10)  # A1111's VAE beside the model
    with_vae = warm_key(source, "fp16", "v")
    assert with_vae != key
    data = bytearray(model.read_bytes())
    data[150_000] ^= 1  # a byte in a sampled slice
    model.write_bytes(bytes(data))
    assert warm_key(source, "fp16", "v") != with_vae


def test_an_unusable_entry_is_converted_again_and_rewritten(tmp_path, torch_loads, caplog):
    cache = tmp_path / "ov"
    first = pixels(engine_on("demo", cache))
    key = warm_key(resolve_model("demo", tmp_path), "fp32", ov_engine_module.ov.get_version())
    for ir in entry_dir(cache, key).glob("openvino/unet-*/model.bin"):
        ir.unlink()  # e.g. a cache cleaned by hand
    assert find_entry(cache, key) is None
    again = engine_on("demo", cache)
    assert torch_loads == ["demo", "demo"] and not again.accelerator.report.warm
    assert find_entry(cache, key) is not None, "the entry is written again"
    np.testing.assert_array_equal(pixels(engine_on("demo", cache)), first)
    assert torch_loads == ["demo", "demo"]


def test_a_failed_entry_write_is_said_in_settings_and_the_model_still_loads(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ov_engine_module, "write_entry", full_disk)
    engine = engine_on("demo", tmp_path / "ov")
    assert engine.status().loaded and pixels(engine).shape == (64, 64, 3)
    said = engine.status().details["openvino"]
    assert "warm IR cache entry was not written" in said and "No space left on device" in said


def test_the_entry_holds_configs_and_ir_links_but_no_weights(cold, tmp_path):
    cache = cold.accelerator.cache
    key = warm_key(resolve_model("demo", tmp_path), "fp32", cold.accelerator.report.version)
    folder = entry_dir(cache, key)
    assert not list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.ckpt"))
    for part in ("unet/config.json", "vae/config.json", "text_encoder/config.json", "model_index.json"):
        assert (folder / part).is_file(), part
    linked = next(folder.glob("openvino/unet-*/model.bin"))
    original = next(p for p in cache.glob("unet-*/model.bin"))
    assert hashlib.sha256(linked.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
