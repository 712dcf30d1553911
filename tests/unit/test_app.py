"""app.py, the composition root: the Settings tab's backend switch builds engines through studio.engines.build."""

from __future__ import annotations

import pytest

import app
from studio.config import EngineSettings
from studio.engine import EngineError
from studio.testing.fakes import FakeEngine


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[EngineSettings, FakeEngine]]:
    """engines.build replaced by one that records the settings it was given and returns a FakeEngine."""
    seen: list[tuple[EngineSettings, FakeEngine]] = []

    def build(settings: EngineSettings) -> FakeEngine:
        engine = FakeEngine(model=settings.target or "default")
        seen.append((settings, engine))
        return engine

    monkeypatch.setattr(app.engines, "build", build)
    return seen


def test_remote_backends_are_built_from_the_same_settings(built):
    settings = EngineSettings(model="demo", device="cpu")
    switch = app.EngineSwitch(settings)
    switch("http", "http://127.0.0.1:8080")
    switch("sagemaker", "sd-1")
    assert [(s.backend, s.target) for s, _ in built] == [("http", "http://127.0.0.1:8080"), ("sagemaker", "sd-1")]
    assert all(s.limits is settings.limits and s.device == "cpu" for s, _ in built)


def test_the_local_engine_is_kept_when_switching_back(built):
    local = FakeEngine(loaded=True)
    switch = app.EngineSwitch(EngineSettings(), local)
    switch("http", "http://127.0.0.1:8080")
    assert switch("local", "") is local and not built[1:]
    loads: list[str | None] = []
    local.load = loads.append  # switching back with a model loads it into the same engine
    assert switch("local", "other-model") is local and loads == ["other-model"]


def test_a_first_local_engine_is_built_and_loaded(built):
    switch = app.EngineSwitch(EngineSettings(model="demo"))
    engine = switch("local", "")
    assert built[0][0].model == "demo" and engine.loaded
    assert switch("local", "") is engine and len(built) == 1


@pytest.mark.parametrize(("backend", "needle"), [("http", "url"), ("sagemaker", "endpoint"), ("ftp", "backend")])
def test_a_switch_without_a_target_or_to_no_backend_says_what_is_missing(built, backend, needle):
    with pytest.raises((EngineError, ValueError), match=needle):
        app.EngineSwitch(EngineSettings())(backend, "")
    assert not built


def test_the_forms_list_the_lora_vae_and_upscaler_files_in_the_models_dir(tmp_path):
    for relative in (
        "Lora/fubuki.safetensors",
        "Lora/a/ink.safetensors",
        "Lora/b/ink.safetensors",
        "VAE/mse.safetensors",
        "VAE/kl.pt",
        "ESRGAN/4x-UltraSharp.pth",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    settings = EngineSettings(models_dir=tmp_path)
    # Two files share the stem "ink": their paths under Lora/ tell them apart (a <lora:a/ink> tag finds it).
    assert app.list_loras(settings) == ["a/ink", "b/ink", "fubuki"]
    assert app.list_vaes(settings) == ["kl.pt", "mse.safetensors"]  # A1111's VAE names: the file names
    upscalers = app.list_upscalers(settings)
    assert upscalers[0] == "Latent" and "Lanczos" in upscalers and "4x-UltraSharp" in upscalers
    empty = EngineSettings(models_dir=tmp_path / "missing")
    assert app.list_loras(empty) == [] and app.list_vaes(empty) == [] and "Latent" in app.list_upscalers(empty)


def test_create_studio_injects_the_listing_functions(built, tmp_path, monkeypatch):
    from studio.config import Settings

    (tmp_path / "models" / "Lora").mkdir(parents=True)
    (tmp_path / "models" / "Lora" / "fubuki.safetensors").write_bytes(b"x")
    monkeypatch.setattr(app, "load_in_background", lambda engine: None)
    settings = Settings(engine=EngineSettings(model="demo", models_dir=tmp_path / "models"), outputs=tmp_path / "out")
    blocks, controller = app.create_studio(settings)
    assert controller.list_loras() == ["fubuki"] and controller.list_vaes() == []
    assert "Latent" in controller.list_upscalers()
