"""Fakes shared by tests and the bench (never used by the product)."""

from __future__ import annotations

import threading
import time
from typing import Any


class FakeEngine:
    """A fast, deterministic studio.engine.Engine: image i is a solid colour derived from its seed.

    `load_gate` (an Event) makes load() block until set; `load_error` makes it fail; `fail_with` makes
    generate() raise; `delay` sleeps per step (honouring cancel). Records the requests it saw.
    """

    backend = "local"

    def __init__(
        self,
        *,
        load_gate: threading.Event | None = None,
        load_error: str | None = None,
        fail_with: Exception | None = None,
        delay: float = 0.0,
        model: str = "fake",
        loaded: bool = False,
    ):
        self.load_gate = load_gate
        self.load_error = load_error
        self.fail_with = fail_with
        self.delay = delay
        self.model = model
        self.loaded = loaded
        self.loading = False
        self.error: str | None = None
        self.requests: list[Any] = []
        self.cancelled = threading.Event()

    def load(self, model: str | None = None) -> None:
        from studio.engine import ModelLoadError

        self.loading = True
        try:
            if self.load_gate is not None:
                self.load_gate.wait()
            if self.load_error:
                self.error = self.load_error
                raise ModelLoadError(self.load_error)
            self.loaded = True
        finally:
            self.loading = False

    def status(self) -> Any:
        from studio.engine import EngineStatus

        return EngineStatus(
            backend="local", model=self.model, loaded=self.loaded, loading=self.loading, error=self.error
        )

    def samplers(self) -> list[str]:
        from studio.samplers import sampler_names

        return sampler_names()

    def generate(self, request: Any, on_progress: Any = None, cancel: Any = None, preview: Any = None) -> Any:
        from PIL import Image

        from studio.engine import GenerationCancelled
        from studio.types import GenerationResult

        request = request.validate().with_resolved_seed()
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        for step in range(request.steps):
            if cancel is not None and cancel.is_set():
                self.cancelled.set()
                raise GenerationCancelled()
            if self.delay:
                time.sleep(self.delay)
            if on_progress is not None:
                on_progress(step + 1, request.steps)
            if preview is not None and preview.wanted(step + 1, request.steps):
                shade = (step + 1) * 255 // request.steps
                picture = Image.new("RGB", (request.width // 8, request.height // 8), (shade, 0, 0))
                preview.show(picture, step + 1, request.steps)
        images = []
        for seed in request.seeds():
            colour = (seed % 251, (seed * 7) % 253, (seed * 13) % 255)
            images.append(Image.new("RGB", (request.width, request.height), colour))
        infotexts = [f"{request.prompt}\nSteps: {request.steps}, Seed: {s}" for s in request.seeds()]
        return GenerationResult(
            images=images,
            seeds=request.seeds(),
            infotexts=infotexts,
            request=request,
            model=self.model,
            backend="local",
            timings={"generate": 0.001},
        )
