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
