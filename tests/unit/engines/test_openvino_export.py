"""Prepared OpenVINO models (`python -m studio.models export-openvino`) and the precision chosen per CPU: an export
loads from its own IR without converting (through the engine, and without the torch weights at all), gives the
pixels of the regular conversion, is not trusted once its weights change; bf16 only where the CPU has it."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")

from studio import engines  # noqa: E402
from studio.config import EngineSettings, Precision  # noqa: E402
from studio.engine import ModelLoadError  # noqa: E402
from studio.engines import openvino as ov_engine_module  # noqa: E402
from studio.engines.openvino import OpenVINOAccelerator, cpu_bf16, load_prepared_pipeline, networks  # noqa: E402
from studio.engines.openvino_export import MANIFEST, read_manifest, weights_digest  # noqa: E402
from studio.models import model_hash, resolve_model  # noqa: E402
from studio.models.__main__ import main as models_main  # noqa: E402
from studio.testing.exports import exported_demo  # noqa: E402
from studio.types import GenerationRequest, Task  # noqa: E402

REQUEST = GenerationRequest(prompt="a photo of a cat", width=64, height=64, steps=3, seed=21)


@pytest.fixture(scope="module")
def export():
    return exported_demo("f32")


def engine_on(model, cache, **settings):
    engine = engines.build(
        EngineSettings(model=str(model), kind="openvino", precision="f32", openvino_cache=cache, **settings)
    )
    engine.load()
    return engine


def test_the_export_is_a_diffusers_folder_with_its_ir(export):
    manifest = read_manifest(export)
    assert (export / "model_index.json").is_file() and (export / "unet" / "config.json").is_file()
    assert [c.name for c in manifest.components] == ["unet", "text_encoder", "vae_decoder", "vae_encoder"]
    assert manifest.weights == "fp32" and manifest.source == "demo"
    assert manifest.model_hash == model_hash(resolve_model(str(export), export)) != ""
    for component in manifest.components:
        assert (export / component.ir_dir / "model.xml").is_file() and (
            export / component.ir_dir / "model.bin"
        ).is_file()


def test_the_engine_uses_the_prepared_ir_and_never_converts(export, tmp_path):
    cache = tmp_path / "empty-cache"
    engine = engine_on(export, cache)
    report = engine.accelerator.report
    assert [c.prepared for c in report.components] == [True] * 4
    assert all(c.convert_seconds == 0 for c in report.components)
    assert all(str(export) in c.ir_dir for c in report.components)
    assert not cache.exists(), "nothing may be converted (or even cached) for a prepared model"
    assert "(prepared)" in engine.status().details["accelerator"]


def test_prepared_ir_gives_the_pixels_of_the_regular_conversion(export, tmp_path):
    prepared = engine_on(export, tmp_path / "a")
    converted = engine_on("demo", tmp_path / "b")
    assert not any(c.prepared for c in converted.accelerator.report.components)
    same = prepared.generate(REQUEST).images[0].tobytes() == converted.generate(REQUEST).images[0].tobytes()
    assert same


def test_changed_weights_are_converted_again_not_answered_with_the_old_ir(export, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # other weights, same size and architecture
    weights.write_bytes(bytes(data))
    assert weights_digest(copy / "vae") != weights_digest(export / "vae")
    with caplog.at_level(logging.WARNING, logger="studio.engines.openvino_export"):
        engine = engine_on(copy, tmp_path / "cache")
    origin = {c.name: c.prepared for c in engine.accelerator.report.components}
    assert origin == {"unet": True, "text_encoder": True, "vae_decoder": False, "vae_encoder": False}
    assert "vae weights changed" in caplog.text


def test_the_ir_alone_builds_the_pipeline_without_torch_weights(export, tmp_path):
    """load_prepared_pipeline reads configs + IR only: the torch weight files may be gone."""
    bare = tmp_path / "bare"
    shutil.copytree(export, bare)
    for weights in bare.glob("*/*.safetensors"):
        weights.unlink()
    pipe, report = load_prepared_pipeline(bare, Precision.F32)
    assert report.precision == "f32" and all(c.prepared for c in report.components)
    assert all(networks(module) for module in (pipe.unet, pipe.text_encoder, pipe.vae))
    assert sum(p.numel() for p in pipe.unet.parameters()) == 0
    with pytest.raises(ModelLoadError, match="export-openvino"):
        load_prepared_pipeline(tmp_path, Precision.F32)


def test_the_accelerator_hook_loads_an_export_from_its_ir(export, tmp_path, monkeypatch):
    """An OpenVINO engine on a prepared export builds its pipeline from the IR alone (models.load_pipeline, the
    torch loader, is never called; same pixels) and takes the model hash from the manifest (nothing is hashed);
    other models go through the warm IR cache (tests/unit/engines/test_openvino_warm.py)."""
    from studio import models

    torch_loads = []
    original = models.load_pipeline

    def counting_load_pipeline(source, device="cpu", dtype=None):
        torch_loads.append(source.name)
        return original(source, device=device, dtype=dtype)

    def no_hashing(source):
        raise AssertionError(f"hashed {source.name}: the export's manifest has the hash")

    monkeypatch.setattr(models, "load_pipeline", counting_load_pipeline)
    monkeypatch.setattr(models, "model_hash", no_hashing)
    engine = engines.build(EngineSettings(model=str(export), kind="openvino", precision="f32"))
    engine.load()
    assert torch_loads == [] and engine.status().loaded
    assert [c.prepared for c in engine.accelerator.report.components] == [True] * 4
    result = engine.generate(REQUEST)
    assert f"Model hash: {read_manifest(export).model_hash}" in result.infotexts[0]
    monkeypatch.setattr(models, "load_pipeline", original)
    monkeypatch.undo()
    reference = engine_on(export, tmp_path / "ref")
    assert result.images[0].tobytes() == reference.generate(REQUEST).images[0].tobytes()
    assert set(engine.pipelines) == {Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT}


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
        ({"avx512f", "avx2"}, False),
        (set(), False),
    ],
)
def test_bf16_only_where_the_cpu_computes_it(flags, native):
    supported, reason = cpu_bf16(flags=flags)
    assert supported is native
    assert ("avx512_bf16" in reason or "amx_bf16" in reason) if native else "no avx512_bf16" in reason


def test_the_precision_follows_the_cpu_and_is_logged(export, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ov_engine_module, "cpu_bf16", lambda core=None: (False, "the CPU has no avx512_bf16 (test)"))
    with caplog.at_level(logging.INFO, logger="studio.engines.openvino"):
        pipe, report = load_prepared_pipeline(export, Precision.BF16)
    assert report.requested_precision == "bf16" and report.precision == "f32"
    assert {c.precision for c in report.components} == {"f32"}
    assert "OpenVINO precision f32 (bf16 requested): the CPU has no avx512_bf16 (test)" in caplog.text
    accelerator = OpenVINOAccelerator("bf16")
    accelerator.report = report
    assert accelerator.status().details["precision"] == "f32: the CPU has no avx512_bf16 (test)"


def test_cli_export_openvino(tmp_path, capsys):
    target = tmp_path / "exported"
    assert models_main(["export-openvino", "demo", str(target), "--precision", "f32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(target) and len(lines) == 5
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["precision"] == "f32" and manifest["weights"] == "fp32"
    again = models_main(["export-openvino", "demo", str(target)])  # replaces an earlier export
    assert again == 0 and read_manifest(target).weights == "int8"  # bf16's default weights
    assert models_main(["export-openvino", "demo", str(target), "--weights", "fp16"]) == 0
    assert read_manifest(target).weights == "fp16"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert models_main(["export-openvino", "demo", str(tmp_path / "other")]) == 1  # never overwrites other content
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert "exists" in capsys.readouterr().err


def test_pixels_stay_within_a_level_of_torch(export, tmp_path):
    torch_engine = engines.build(EngineSettings(model="demo", device="cpu"))
    torch_engine.load()
    diff = np.abs(
        np.asarray(engine_on(export, tmp_path / "c").generate(REQUEST).images[0], dtype=np.int16)
        - np.asarray(torch_engine.generate(REQUEST).images[0], dtype=np.int16)
    )
    assert diff.max() <= 2
