"""Where the A1111 API runs: inside the studio (the UI's controller, queue and outputs) or on the serving app (an
engine alone). Both give the service the same small surface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from studio.jobs import Job, JobTracker
from studio.types import GenerationRequest, GenerationResult, Limits

if TYPE_CHECKING:
    from studio.engine import Engine
    from studio.ui.controller import StudioController


class Host(Protocol):
    jobs: JobTracker
    limits: Limits
    models_dir: Path
    keeps_outputs: bool  # whether save_images can save anything

    def engine(self) -> Engine: ...

    def generate(self, request: GenerationRequest, job: Job, *, save: bool) -> GenerationResult: ...

    def load_model(self, spec: str) -> None: ...


@dataclass
class StudioHost:
    """The studio: generations go through the UI's controller (its queue, Stop and outputs/History)."""

    controller: StudioController
    limits: Limits
    models_dir: Path
    keeps_outputs: bool = True

    @property
    def jobs(self) -> JobTracker:
        return self.controller.jobs

    def engine(self) -> Engine:
        return self.controller.engine

    def generate(self, request: GenerationRequest, job: Job, *, save: bool) -> GenerationResult:
        return self.controller.generate(request, session=job.session, save=save, job=job)

    def load_model(self, spec: str) -> None:
        self.controller.load_model(spec)


@dataclass
class EngineHost:
    """The serving app: one engine, its own queue for API jobs, no outputs folder."""

    engine_: Engine
    limits: Limits
    models_dir: Path
    jobs: JobTracker = field(default_factory=JobTracker)
    keeps_outputs: bool = False

    def engine(self) -> Engine:
        return self.engine_

    def generate(self, request: GenerationRequest, job: Job, *, save: bool) -> GenerationResult:
        return self.engine_.generate(
            request, on_progress=job.on_progress(), cancel=job.cancel, preview=job.live_preview()
        )

    def load_model(self, spec: str) -> None:
        self.engine_.load(spec)
