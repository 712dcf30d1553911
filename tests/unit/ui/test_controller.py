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

    def generate(self, request, on_progress=None, cancel=None, preview=None):
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


class RecordingEngine(FailingEngine):
    def __init__(self):
        super().__init__(EngineError("unused"))
        self.loads: list[str | None] = []

    def load(self, model=None):
        self.loads.append(model)


def test_load_model_goes_through_the_engine_protocol(tmp_path):
    engine = RecordingEngine()
    controller = StudioController(engine=engine, store=OutputStore(tmp_path))
    controller.load_model(" demo ")
    controller.load_model("")  # blank: the engine's default model
    assert engine.loads == ["demo", None]


def test_switch_backend_replaces_the_engine(tmp_path):
    first, second = RecordingEngine(), RecordingEngine()
    seen: list[tuple[str, str]] = []

    def switch(backend: str, target: str):
        seen.append((backend, target))
        return second

    controller = StudioController(engine=first, store=OutputStore(tmp_path))
    with pytest.raises(EngineError, match="not available"):
        controller.switch_backend("http", "http://x")
    controller.switch_engine = switch
    controller.switch_backend("http", " http://127.0.0.1:8080 ")
    assert controller.engine is second and seen == [("http", "http://127.0.0.1:8080")]


def test_bind_keeps_the_handler_signature_for_gradio():
    """gradio names API parameters after the handler's and injects gr.Request / gr.Progress by hint and default."""
    import inspect

    import gradio as gr
    from gradio import utils

    from studio.ui.controller import bind
    from studio.ui.txt2img import txt2img

    bound = bind(txt2img, object())
    names = [p.name for p in utils.get_positional_input_parameters(bound)]
    old = ["prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height", "count"]
    assert names[:9] == old
    assert names[9:12] == ["scheduler", "clip_skip", "vae"] and names[-1] == "hires_resize_y"
    assert utils.get_type_hints(bound)["request"] is gr.Request
    assert isinstance(inspect.signature(bound).parameters["progress"].default, gr.Progress)
    assert bound.__doc__ == txt2img.__doc__


def test_bind_keeps_generators_generators():
    import inspect

    from studio.ui.controller import bind

    def stream(context, count):
        yield from (f"{context}{i}" for i in range(count))

    def plain(context, value):
        return context + value

    assert inspect.isgeneratorfunction(bind(stream, "x"))
    assert list(bind(stream, "x")(2)) == ["x0", "x1"]
    assert bind(plain, 1)(value=2) == 3
