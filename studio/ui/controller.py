"""StudioController: what the UI handlers (and the A1111 API) call. Holds the active engine, the output store and the
job tracker (studio.jobs) that queues every generation, reports its progress and stops it.

It sees engines only through the studio.engine protocol; app.py injects the function that builds engines for the
backend switch and the functions that list models, LoRA, VAE and upscaler files, so this module never imports torch,
diffusers or boto3 (nor gradio).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.engine import Engine, EngineError, EngineStatus, ProgressCallback
from studio.gallery import OutputStore
from studio.jobs import Job, JobTracker
from studio.types import GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)

# (backend, target) -> a ready Engine; target is a model spec, URL or endpoint name.
EngineSwitch = Callable[[str, str], Engine]


@dataclass
class StudioController:
    engine: Engine
    store: OutputStore
    switch_engine: EngineSwitch | None = None
    list_models: Callable[[], list[str]] = field(default=lambda: [])
    list_endpoints: Callable[[], list[str]] | None = None
    # The files the generation forms offer (names as requests use them), listed by app.py from --models-dir:
    # LoRAs (MODELS_DIR/Lora/), VAEs (MODELS_DIR/VAE/, without "Automatic"), hires upscalers (built-in + ESRGAN/).
    list_loras: Callable[[], list[str]] = field(default=lambda: [])
    list_vaes: Callable[[], list[str]] = field(default=lambda: [])
    list_upscalers: Callable[[], list[str]] = field(default=lambda: [])
    notices: list[str] = field(default_factory=list)  # shown to each browser on page load (e.g. running endpoints)
    # The engine's queue, shared with the A1111 API (studio.serving.sdapi): one job at a time, its progress, Stop.
    jobs: JobTracker = field(default_factory=JobTracker)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def generate(
        self,
        request: GenerationRequest,
        session: str = "",
        on_progress: ProgressCallback | None = None,
        *,
        save: bool = True,
        job: Job | None = None,
    ) -> GenerationResult:
        """Run the request on the active engine and (with `save`) save every image before returning it.

        The run waits its turn in `jobs` unless `job` is given (a caller already holding the engine, e.g. an A1111
        request with several batches). On Stop or a failure part-way, the images finished before it are saved too
        (the error carries them).
        """
        if job is None:
            with self.jobs.run(request.task.value, session=session) as own:
                return self._run(own, request, on_progress, save)
        return self._run(job, request, on_progress, save)

    def _run(
        self, job: Job, request: GenerationRequest, on_progress: ProgressCallback | None, save: bool
    ) -> GenerationResult:
        with self._lock:
            engine = self.engine
        try:
            result = engine.generate(
                request, on_progress=job.on_progress(on_progress), cancel=job.cancel, preview=job.live_preview()
            )
        except EngineError as err:  # GenerationCancelled included
            if save and err.partial is not None and err.partial.images:
                self.store.save(err.partial)
            raise
        if save:
            self.store.save(result)
        return result

    def stop(self, session: str = "") -> bool:
        """Ask this session's generation to stop between steps (or before it starts, if it still waits for the
        engine). False when the session has nothing running."""
        return self.jobs.interrupt(session)

    def status(self) -> EngineStatus:
        return self.engine.status()

    def load_model(self, spec: str) -> EngineStatus:
        """Load another model into the active engine (blank: its default). A remote engine refuses with an
        EngineError; on any failure the error is raised and shown, and the app goes on."""
        self.engine.load(spec.strip() or None)
        return self.engine.status()

    def switch_backend(self, backend: str, target: str) -> EngineStatus:
        """Replace the active engine (local model, HTTP URL or SageMaker endpoint)."""
        if self.switch_engine is None:
            raise EngineError("switching backends is not available in this studio")
        engine = self.switch_engine(backend, target.strip())
        with self._lock:
            self.engine = engine
        status = engine.status()
        # Log the engine's own name, never the raw target: a URL may carry user:password.
        logger.info("switched to %s backend: %s", backend, status.model or backend)
        return status


def bind(handler: Callable[..., Any], context: Any) -> Callable[..., Any]:
    """`handler` with its first parameter (the controller, a store, a callback) filled in by `context`.

    Unlike functools.partial, the result keeps the handler's remaining signature, docstring and type hints: gradio
    names the API's parameters after them and finds `gr.Request` / `gr.Progress` parameters by them. A generator
    handler (streaming its output) stays a generator function, which is how gradio recognises one.
    """
    signature = inspect.signature(handler)
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def bound(*args: Any, **kwargs: Any) -> Any:
            yield from handler(context, *args, **kwargs)

    else:

        @functools.wraps(handler)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return handler(context, *args, **kwargs)

    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
    return bound
