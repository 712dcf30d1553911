"""The Engine protocol every backend implements, and its error types.

The UI and the serving app depend only on this module and studio.types; `studio.engines.build()` makes engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from studio.types import GenerationRequest, GenerationResult

ProgressCallback = Callable[[int, int], None]  # (step done, total steps) over the whole run


@dataclass(frozen=True)
class LivePreview:
    """Asks an engine for live previews (A1111's "Live previews"): every `every` sampling steps, a cheap picture of
    the image forming, made from the latents without extra weights, goes to `show(image, step, total)` (a PIL
    image at latent resolution; steps count over the whole run like ProgressCallback). An engine that cannot see
    its latents (a remote one) shows none."""

    every: int
    show: Callable[[Any, int, int], None]

    def wanted(self, step: int, total: int) -> bool:
        """Whether the step just finished (1-based over the run) gets a preview: every `every` steps, never the
        last one (the finished image follows at once)."""
        return self.every > 0 and step < total and step % self.every == 0


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


class EngineError(RuntimeError):
    """The engine could not produce a result (load failure, backend failure, remote error).

    `partial` holds the images of the run that were finished before the failure (or None), so they are not lost.
    """

    def __init__(self, message: str = "", partial: GenerationResult | None = None):
        super().__init__(message)
        self.partial = partial


class ModelLoadError(EngineError):
    """The model could not be loaded; the message says which model and why."""


class EngineNotReady(EngineError):
    """No model is loaded (still loading, or loading failed)."""


class GenerationCancelled(EngineError):
    """The user pressed Stop. `partial` holds the images finished before the stop (may be None)."""

    def __init__(self, message: str = "generation stopped", partial: GenerationResult | None = None):
        super().__init__(message, partial)


@dataclass
class EngineStatus:
    """What Settings shows and /ping reports."""

    backend: str  # a studio.config.Backend value: "local", "http" or "sagemaker"
    model: str = ""  # display name of the model (or endpoint / URL)
    loaded: bool = False
    loading: bool = False
    error: str | None = None
    device: str = ""
    dtype: str = ""
    is_demo: bool = False
    details: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    def load(self, model: str | None = None) -> None:
        """Make the engine ready: load the weights (local) or check the target is reachable (remote). Blocking.

        `model` switches a local engine to another model (the previous one stays in use if that fails); remote
        engines refuse it with an EngineError. Raises ModelLoadError / EngineError with a message for the user.
        """
        ...

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        preview: LivePreview | None = None,
    ) -> GenerationResult:
        """Validate, run and return all images; raise RequestError / EngineError / GenerationCancelled. With
        `preview`, a local engine shows the image forming while it samples."""
        ...

    def status(self) -> EngineStatus: ...

    def samplers(self) -> list[str]:
        """Sampler names this engine accepts (A1111 display names)."""
        ...
