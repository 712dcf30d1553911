"""LocalEngine: Stable Diffusion on this machine with Hugging Face diffusers.

Weights load once (`load()`); the text-to-image pipeline is built once and the img2img and
inpaint pipelines are derived from it with `from_pipe`, so all three share the same modules.
A request runs in studio.engines.generation (prompt syntax, LoRAs, VAE, hires fix): every call gets
its own scheduler and its own light pipeline object, so the shared pipelines are never mutated per
request. Noise comes from a CPU generator per image, seeded `seed + i`, so any image of a run can be
reproduced alone (A1111's convention). One generation runs at a time (the run lock).

An `Accelerator` (e.g. studio.engines.openvino.OpenVINOAccelerator) hooks into loading: it may build the
pipeline itself (from a prepared export, without torch weights), gets the freshly built pipelines of every
load (and may make their modules run elsewhere), may know the model hash, and adds its status details. The
request flow above stays the same for every accelerator.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline

from studio import models
from studio.config import Backend, Device, parse_enum
from studio.engine import (
    CancelToken,
    EngineNotReady,
    EngineStatus,
    LivePreview,
    ModelLoadError,
    ProgressCallback,
)
from studio.engines.generation import Generation, Model
from studio.engines.tuning import Tuning, apply_tuning, default_tuning
from studio.models import ModelSource
from studio.samplers import sampler_names
from studio.types import DEFAULT_LIMITS, GenerationRequest, GenerationResult, Limits, Task

logger = logging.getLogger(__name__)

LOAD_WAIT_SECONDS = 600.0  # a Generate pressed while the first model loads waits for it instead of failing


class _StopRequested(Exception):
    """Raised inside the diffusers step callback to leave the denoising loop at once."""


@dataclass
class AcceleratorStatus:
    """What an accelerator adds to EngineStatus: the precision its networks compute in, and details for Settings."""

    dtype: str | None = None  # replaces the torch dtype in the status once a model is loaded
    details: dict[str, str] = field(default_factory=dict)


class Accelerator(Protocol):
    """A post-load hook: makes a loaded model's networks run on another runtime (see module docstring)."""

    name: str  # for messages ("OpenVINO")
    device: Device  # where the accelerated networks run; the torch weights are loaded there first

    def load_pipeline(self, source: ModelSource, device: str, dtype: torch.dtype) -> DiffusionPipeline | None:
        """Pre-load hook: the text-to-image pipeline built the accelerator's own way (e.g. from a prepared export,
        without reading torch weights), or None to load `source` as usual."""
        ...

    def apply(self, pipelines: Mapping[Task, DiffusionPipeline]) -> None:
        """Called once per load with the new model's task pipelines, before any generation uses them. Changes them
        in place; raises ModelLoadError (the previous model then stays in use)."""
        ...

    def model_hash(self, source: ModelSource) -> str | None:
        """A1111's "Model hash" when the accelerator already knows it (recorded at export), else None (hash the
        weights: several seconds for a full-size model)."""
        ...

    def status(self) -> AcceleratorStatus: ...


@dataclass
class _Loaded:
    """One loaded model: the three task pipelines (sharing modules) and what Settings shows."""

    source: ModelSource
    pipes: dict[Task, DiffusionPipeline]
    device: str
    dtype: torch.dtype
    inpaint_source: ModelSource | None
    model_hash: str | None = None
    tuning: Tuning | None = None  # the speed settings applied (None: an accelerator runs the networks)


def pick_device(requested: Device) -> tuple[str, torch.dtype]:
    """auto → CUDA (fp16) when present, else CPU (fp32). Asking for cuda without one is an error."""
    if requested is Device.CUDA and not torch.cuda.is_available():
        raise ModelLoadError(
            "device: cuda was requested but torch sees no CUDA GPU (torch.cuda.is_available() is False)"
        )
    if requested in (Device.AUTO, Device.CUDA) and torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


class LocalEngine:
    """The diffusers engine. Thread-safe: one generation at a time; loading swaps models atomically."""

    backend = Backend.LOCAL.value

    def __init__(
        self,
        model: str | None = None,
        *,
        models_dir: Path = Path("models"),
        device: Device | str = Device.AUTO,
        inpaint_model: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        accelerator: Accelerator | None = None,
        tuning: Tuning | None = None,
        compile_unet: bool = False,
    ):
        """`tuning`: the speed settings (studio.engines.tuning); None means the defaults for the device the model
        loads on, plus torch.compile of the UNet when `compile_unet` (`--compile`)."""
        device = parse_enum(Device, "device", device)
        if accelerator is not None and (compile_unet or (tuning is not None and tuning.enabled())):
            raise ModelLoadError(
                f"tuning: the {accelerator.name} engine replaces the torch networks, so torch speed settings "
                f"({'compile_unet' if compile_unet else tuning.describe()}) do not apply (use the torch engine)"
            )
        if accelerator is not None and device not in (Device.AUTO, accelerator.device):
            raise ModelLoadError(
                f"device: the {accelerator.name} engine runs on the {accelerator.device.value.upper()}; got "
                f"{device.value!r} (use the torch engine)"
            )
        self.model_spec = model
        self.models_dir = Path(models_dir)
        self.device_request = accelerator.device if accelerator is not None else device
        self.inpaint_model_spec = inpaint_model
        self.limits = limits
        self.accelerator = accelerator
        self.tuning, self.compile_unet = tuning, compile_unet
        self.generation = Generation(self.models_dir, upscaler_device="cpu")
        self._run_lock = threading.Lock()  # one generation at a time
        self._state_lock = threading.Lock()  # guards _loaded / _loading / _error
        self._loaded: _Loaded | None = None
        self._loading: str | None = None
        self._error: str | None = None
        self._loading_demo = False
        self._idle = threading.Condition(self._state_lock)  # notified when a load ends

    def load(self, model: str | None = None, inpaint_model: str | None = None) -> None:
        """Load `model` (default: the one given at construction). Blocking; raises ModelLoadError.

        On failure the previously loaded model (if any) stays in use and the error is kept for status().
        """
        spec = self.model_spec if model is None else model
        inpaint_spec = self.inpaint_model_spec if inpaint_model is None else inpaint_model
        with self._state_lock:
            self._loading = spec or "default model"
            self._loading_demo = False
            self._error = None
        started = time.perf_counter()
        try:
            source = models.resolve_model(spec, self.models_dir)
            with self._state_lock:  # show the real name (and the demo banner) while the weights load
                self._loading, self._loading_demo = source.name, source.is_demo
            loaded = self._load(source, inpaint_spec)
        except Exception as exc:  # any failure becomes a named load error; the app keeps running
            err = exc if isinstance(exc, ModelLoadError) else ModelLoadError(f"{spec or 'default model'}: {exc}")
            with self._state_lock:
                self._loading = None
                self._error = str(err)
                self._idle.notify_all()
            logger.error("model load failed: %s", err)
            raise err from exc
        with self._state_lock:
            self._loaded = loaded
            self._loading = None
            self._error = None
            self.model_spec, self.inpaint_model_spec = spec, inpaint_spec
            self._idle.notify_all()
        logger.info(
            "loaded %s (%s) on %s/%s in %.1fs",
            loaded.source.name,
            loaded.source.kind,
            loaded.device,
            str(loaded.dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )

    def _load(self, source: ModelSource, inpaint_spec: str | None) -> _Loaded:
        """Build the task pipelines of `source` (plus a dedicated inpainting model), then run the accelerator."""
        device, dtype = pick_device(self.device_request)
        # models.load_pipeline is looked up on the module on purpose: the bench counts weight loads by patching it.
        base = self.accelerator.load_pipeline(source, device, dtype) if self.accelerator is not None else None
        if base is None:
            base = models.load_pipeline(source, device=device, dtype=dtype)
        pipes: dict[Task, DiffusionPipeline] = {}
        if models.is_inpaint_unet(base):
            # A 9-channel UNet only inpaints; text/image-to-image need a base model.
            pipes[Task.INPAINT] = AutoPipelineForInpainting.from_pipe(base, dtype=dtype)
        else:
            pipes[Task.TXT2IMG] = base
            pipes[Task.IMG2IMG] = AutoPipelineForImage2Image.from_pipe(base, dtype=dtype)
            pipes[Task.INPAINT] = AutoPipelineForInpainting.from_pipe(base, dtype=dtype)
        inpaint_source = None
        if inpaint_spec:
            inpaint_source = models.resolve_model(inpaint_spec, self.models_dir)
            inpaint_base = models.load_pipeline(inpaint_source, device=device, dtype=dtype)
            if not models.is_inpaint_unet(inpaint_base):
                raise ModelLoadError(
                    f"inpaint model {inpaint_source.name}: not an inpainting checkpoint (its UNet takes "
                    f"{inpaint_base.unet.config.in_channels} channels, an inpainting UNet takes 9)"
                )
            pipes[Task.INPAINT] = AutoPipelineForInpainting.from_pipe(inpaint_base, dtype=dtype)
        applied = None
        if self.accelerator is not None:
            self.accelerator.apply(pipes)
        else:
            applied = self._tune(pipes, device)
        return _Loaded(
            source=source, pipes=pipes, device=device, dtype=dtype, inpaint_source=inpaint_source, tuning=applied
        )

    def _tune(self, pipes: Mapping[Task, DiffusionPipeline], device: str) -> Tuning:
        """The speed settings on each distinct set of networks (the task pipelines share them); what was applied."""
        tuning = self.tuning if self.tuning is not None else default_tuning(device)
        if self.compile_unet:
            tuning = dataclasses.replace(tuning, compile_unet=True)
        applied: set[str] = set()
        tuned: set[int] = set()
        for pipe in pipes.values():
            if id(pipe.unet) not in tuned:
                tuned.add(id(pipe.unet))
                applied.update(apply_tuning(pipe, tuning, device).enabled())
        return Tuning.of(applied)

    def status(self) -> EngineStatus:
        with self._state_lock:
            loaded, loading, error = self._loaded, self._loading, self._error
        accelerated = self.accelerator.status() if self.accelerator is not None else AcceleratorStatus()
        if loaded is None:
            return EngineStatus(
                backend=self.backend,
                model=loading or (self.model_spec or ""),
                loading=loading is not None,
                error=error,
                is_demo=loading is not None and self._loading_demo,
                details=dict(accelerated.details),
            )
        details = {"source": str(loaded.source.kind), "location": str(loaded.source.location)}
        if loaded.inpaint_source is not None:
            details["inpaint"] = f"dedicated inpainting model {loaded.inpaint_source.name}"
        elif Task.TXT2IMG not in loaded.pipes:
            details["inpaint"] = "this is an inpainting model: only the Inpaint tab works"
        else:
            details["inpaint"] = "base model (no dedicated inpainting checkpoint)"
        if loaded.tuning is not None:
            details["tuning"] = loaded.tuning.describe()
        details.update(accelerated.details)
        return EngineStatus(
            backend=self.backend,
            model=loaded.source.name,
            loaded=True,
            loading=loading is not None,
            error=error,
            device=loaded.device,
            dtype=accelerated.dtype or str(loaded.dtype).removeprefix("torch."),
            is_demo=loaded.source.is_demo,
            details=details,
        )

    def samplers(self) -> list[str]:
        return sampler_names()

    @property
    def pipelines(self) -> dict[Task, DiffusionPipeline]:
        """The shared task pipelines (read-only use: tests check they share modules)."""
        loaded = self._require_loaded()
        return dict(loaded.pipes)

    def _require_loaded(self, wait: float = 0.0) -> _Loaded:
        """The loaded model; with `wait`, a first load still in progress is waited for (Generate during start-up)."""
        with self._state_lock:
            if self._loaded is None and self._loading and wait > 0:
                self._idle.wait_for(lambda: self._loading is None, timeout=wait)
            loaded, loading, error = self._loaded, self._loading, self._error
        if loaded is not None:
            return loaded
        if loading:
            raise EngineNotReady(f"model {loading} is still loading")
        raise EngineNotReady(f"no model loaded{': ' + error if error else ''}")

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        preview: LivePreview | None = None,
    ) -> GenerationResult:
        request = request.validate(self.limits).with_resolved_seed()
        loaded = self._require_loaded(wait=LOAD_WAIT_SECONDS)
        if loaded.model_hash is None:
            known = self.accelerator.model_hash(loaded.source) if self.accelerator is not None else None
            loaded.model_hash = known or models.model_hash(loaded.source)
        model = Model(pipes=loaded.pipes, name=loaded.source.name, hash=loaded.model_hash, backend=self.backend)
        prepared = self.generation.prepare(model, request)  # bad input is refused before waiting for the engine
        with self._run_lock:
            return self.generation.run(model, prepared, on_progress, cancel, preview)
