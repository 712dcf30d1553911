"""`python -m studio.serving` / `serve`: settings from studio.config, the engine from studio.engines.build with the
model picked by the one rule (uvicorn and the engine factory are replaced, nothing is served or loaded)."""

from __future__ import annotations

import pytest

from studio import engines
from studio.config import ConfigError, EngineKind, load_serving_settings
from studio.serving import __main__ as entry
from studio.testing.fakes import FakeEngine

ENGINE_VARIABLES = ("STUDIO_MODEL", "STUDIO_ENGINE", "STUDIO_DEVICE", "STUDIO_MODELS_DIR")


@pytest.fixture
def served(monkeypatch):
    """Runs entry.main(argv) with engines.build and uvicorn.run recorded instead of done."""
    import uvicorn

    seen: dict = {}

    def build(settings):
        seen["engine_settings"] = settings
        return FakeEngine()

    def run(app, **kwargs):
        seen["app"], seen["run"] = app, kwargs

    monkeypatch.setattr(engines, "build", build)
    monkeypatch.setattr(uvicorn, "run", run)
    for name in (*ENGINE_VARIABLES, "SM_MODEL_DIR", "STUDIO_S3_ALLOWED_PREFIXES"):
        monkeypatch.delenv(name, raising=False)
    return seen


def test_parse_args_ignores_leading_serve():
    settings = load_serving_settings(["serve", "--port", "9000"], environ={})
    assert (settings.port, settings.host, settings.engine.model) == (9000, "0.0.0.0", None)
    assert load_serving_settings([], environ={}).port == 8080


def test_settings_from_env_parse_explicitly():
    settings = load_serving_settings([], {"STUDIO_MAX_BODY_BYTES": "1000", "STUDIO_ALLOW_URLS": "false"})
    assert settings.max_body_bytes == 1000 and settings.allow_urls is False
    assert load_serving_settings([], {"STUDIO_ALLOW_URLS": "1", "STUDIO_MAX_STEPS": "9"}).limits.max_steps == 9
    for env in ({"STUDIO_MAX_BODY_BYTES": "20MB"}, {"STUDIO_ALLOW_URLS": "maybe"}, {"STUDIO_S3_OUTPUT": "bucket"}):
        with pytest.raises(ConfigError):
            load_serving_settings([], env)


def test_main_serves_the_engine_built_from_the_settings(served, monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_ENGINE", "openvino")
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    assert entry.main(["serve", "--port", "9001", "--host", "127.0.0.1", "--openvino-precision", "f32"]) == 0
    chosen = served["engine_settings"]
    assert chosen.kind is EngineKind.OPENVINO and chosen.precision == "f32" and chosen.model == "demo"
    assert served["run"]["port"] == 9001 and served["run"]["host"] == "127.0.0.1"
    assert served["run"]["timeout_keep_alive"] > 60  # beyond SageMaker's invocation timeout
    assert served["app"].state.invoker.engine.model == "fake"


def test_main_picks_the_model_by_the_one_rule(served, monkeypatch, tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    assert entry.main([]) == 0
    assert served["engine_settings"].model == str(tmp_path)
    monkeypatch.setenv("STUDIO_MODEL", "org/repo")
    assert entry.main([]) == 0
    assert served["engine_settings"].model == "org/repo"
    assert entry.main(["--model", "demo"]) == 0
    assert served["engine_settings"].model == "demo"


def test_main_exits_2_on_configuration_errors(served, monkeypatch, tmp_path, caplog):
    assert entry.main(["--engine", "tensorflow"]) == 2
    monkeypatch.setenv("STUDIO_MAX_BODY_BYTES", "lots")
    assert entry.main([]) == 2
    monkeypatch.delenv("STUDIO_MAX_BODY_BYTES")
    (tmp_path / "notes.txt").write_text("not a model")
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    assert entry.main([]) == 2
    assert entry.main(["--engine", "openvino", "--device", "cuda", "--model", "demo"]) == 2
    assert "app" not in served
    assert "STUDIO_MAX_BODY_BYTES" in caplog.text and "no diffusers folder" in caplog.text


def test_the_engine_gets_the_models_dir_for_its_lora_vae_and_esrgan_folders(served, monkeypatch, tmp_path):
    """`--models-dir` / STUDIO_MODELS_DIR reach the engine the serving app builds (its Lora/, VAE/, ESRGAN/)."""
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "empty"))
    assert entry.main(["--models-dir", str(tmp_path)]) == 0
    assert served["engine_settings"].models_dir == tmp_path
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path / "from-env"))
    assert entry.main([]) == 0
    assert served["engine_settings"].models_dir == tmp_path / "from-env"


def test_the_built_local_engine_looks_in_the_models_dir(monkeypatch, tmp_path):
    """Through the real factory: the LocalEngine the serving settings describe has that models_dir."""
    from studio.serving.invoker import engine_settings

    settings = load_serving_settings(["--models-dir", str(tmp_path), "--model", "demo", "--device", "cpu"], environ={})
    engine = engines.build(engine_settings(settings))
    assert engine.models_dir == tmp_path
