"""StudioController: images are saved before they are shown, including those finished before a Stop or a failure."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.engine import EngineError, EngineStatus, GenerationCancelled
from studio.gallery import OutputStore
from studio.types import GenerationRequest, GenerationResult
from studio.ui.controller import StudioController

REQ = GenerationRequest(prompt="x", width=64, height=64, seed=5, count=3)


def partial_result() -> GenerationResult:
    return GenerationResult(
        images=[Image.new("RGB", (64, 64), "red")], seeds=[5], infotexts=["x\nSteps: 20, Seed: 5, Size: 64x64"],
        request=REQ,
    )


class FailingEngine:
    def __init__(self, error: EngineError):
        self.error = error

    def generate(self, request, on_progress=None, cancel=None):
        raise self.error

    def status(self) -> EngineStatus:
        return EngineStatus(backend="fake")

    def samplers(self) -> list[str]:
        return ["Euler"]


@pytest.mark.parametrize("error", [EngineError("boom"), GenerationCancelled("stopped")])
def test_finished_images_are_saved_when_a_run_ends_early(tmp_path, error):
    error.partial = partial_result()
    controller = StudioController(engine=FailingEngine(error), store=OutputStore(tmp_path))
    with pytest.raises(type(error)):
        controller.generate(REQ, session="s")
    history = controller.store.history()
    assert len(history) == 1 and history[0].seed == 5
    assert error.partial.paths and Image.open(error.partial.paths[0]).size == (64, 64)


def test_failure_without_images_saves_nothing(tmp_path):
    controller = StudioController(engine=FailingEngine(EngineError("boom")), store=OutputStore(tmp_path))
    with pytest.raises(EngineError):
        controller.generate(REQ)
    assert controller.store.history() == []


def test_stop_without_a_run_reports_nothing_running(tmp_path):
    controller = StudioController(engine=FailingEngine(EngineError("x")), store=OutputStore(tmp_path))
    assert controller.stop("nobody") is False
