"""Static-shape variants of a dynamic-shape OpenVINO network, compiled on demand in the background and cached.

Why: the studio keeps one IR with dynamic batch/height/width for every size (no export step, no reshape per size),
but OpenVINO's CPU plugin runs a static-shape graph faster (a full-size SD 1.5 UNet step at 512², batch 2: ~13 %
on an AMX Xeon, ~10 % on an AVX512-BF16 EPYC; see bench/openvino_static.py). So the first call of an input shape
runs the dynamic compiled model, and a background thread compiles `model.reshape(that shape)`; later calls of exactly
that shape use the static variant once it is ready. Until the dynamic model has run once, a new shape's variant is
compiled in the calling thread instead (CompiledNetwork._static_variant): that costs about what the dynamic model's
first inference costs anyway (it packs its weights then), and the dynamic model then never holds a copy of them.
A variant is keyed by every input's full shape, so it is only ever used for the shape it was compiled for: a size
never renders as another.

Memory: each static variant holds its own repacked copy of the weights (+1.7 GB for an SD 1.5 UNet in bf16, measured
as RssAnon). Compiling from a clone of the ov.Model the dynamic network was compiled from shares the IR's
memory-mapped weights; reading the IR again would map them a second time (+1.7 GB more RSS). The number of variants
kept is bounded (least recently used first out): `EngineSettings.openvino_static_shapes`, 0 turns this off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import openvino as ov

from studio.engines.openvino_pages import MAPPED_WEIGHTS

logger = logging.getLogger(__name__)

Shapes = tuple[tuple[int, ...], ...]  # the full shape of every input of one call, in input order

# The networks that get static variants by default. The VAE's run at the speed of its dynamic model, but with less
# memory: SD 1.5's decoder at 512² (bf16, alone) peaks at 702 MB instead of 836, and compiles in 0.27 s.
STATIC_NETWORKS = frozenset({"unet", "vae_decoder", "vae_encoder"})


@dataclass(frozen=True)
class StaticSource:
    """What a compiled network needs to compile static variants of itself: the dynamic ov.Model it was compiled
    from (kept, so clones share its memory-mapped weights), the core, the device and the compile config."""

    model: ov.Model
    core: ov.Core
    device: str = "CPU"
    config: Mapping[str, str] = field(default_factory=dict)

    def compile_dynamic(self) -> ov.CompiledModel:
        """The model compiled as it is (dynamic shapes)."""
        return self.core.compile_model(self.model, self.device, dict(self.config))

    def compile(self, shapes: Shapes) -> ov.CompiledModel:
        """The model compiled for exactly `shapes` (one shape per input)."""
        model = self.model.clone()
        if len(shapes) != len(model.inputs):
            raise ValueError(f"{len(model.inputs)} inputs, got {len(shapes)} shapes")
        model.reshape({port: ov.PartialShape(list(shape)) for port, shape in zip(model.inputs, shapes, strict=True)})
        return self.core.compile_model(model, self.device, dict(self.config))


@dataclass
class StaticVariant:
    """One compiled static-shape model with its own infer request."""

    shapes: Shapes
    compiled: ov.CompiledModel
    request: ov.InferRequest
    compile_seconds: float
    calls: int = 0


class StaticVariants:
    """The static variants of one network: at most `keep`, least recently used evicted first.

    `get(shapes)` returns a ready variant or None (the caller then runs its dynamic model and calls `want(shapes)`,
    or compiles it in its own thread with `ensure(shapes)`). `want` queues a compile; one background thread per
    network compiles the queue in order, outside every lock of the caller, so inference never waits for it. A shape
    whose compile failed is not tried again (the dynamic model keeps serving it; the failure is logged).
    """

    def __init__(self, name: str, compile_shapes: Callable[[Shapes], ov.CompiledModel], keep: int):
        if keep < 0:
            raise ValueError(f"static variants to keep: must be 0 (off) or more, got {keep}")
        self.name = name
        self.keep = keep
        self._compile = compile_shapes
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._ready: OrderedDict[Shapes, StaticVariant] = OrderedDict()
        self._queue: list[Shapes] = []
        self._compiling: Shapes | None = None
        self._failed: dict[Shapes, str] = {}
        self._thread: threading.Thread | None = None
        self.compiled = 0
        self.evicted = 0
        self.compile_seconds: list[float] = []

    @classmethod
    def from_source(cls, name: str, source: StaticSource, keep: int) -> StaticVariants:
        return cls(name, source.compile, keep)

    def get(self, shapes: Shapes) -> StaticVariant | None:
        with self._lock:
            variant = self._ready.get(shapes)
            if variant is not None:
                self._ready.move_to_end(shapes)
            return variant

    def want(self, shapes: Shapes) -> None:
        """Queue a background compile for `shapes` unless it is ready, queued, failed or variants are off."""
        with self._lock:
            known = shapes in self._ready or shapes in self._queue or shapes in self._failed
            if self.keep == 0 or known or shapes == self._compiling:
                return
            self._queue.append(shapes)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"openvino-static-{self.name}", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._compiling = None
                    self._thread = None
                    self._idle.notify_all()
                    return
                shapes = self._compiling = self._queue.pop(0)
            self._build(shapes)

    def ensure(self, shapes: Shapes) -> StaticVariant | None:
        """The variant for `shapes`, compiled in the calling thread if need be (outside every lock; when the
        background thread is compiling that shape, its result is awaited); None when off or its compile failed."""
        with self._lock:
            self._idle.wait_for(lambda: self._compiling != shapes)
            if self.keep == 0 or shapes in self._failed:
                return None
            if shapes in self._ready:
                self._ready.move_to_end(shapes)
                return self._ready[shapes]
            if shapes in self._queue:
                self._queue.remove(shapes)
        return self._build(shapes)

    def _build(self, shapes: Shapes) -> StaticVariant | None:
        started = time.perf_counter()
        try:
            with MAPPED_WEIGHTS.packing():  # a static compile packs the weights
                compiled = self._compile(shapes)
            variant = StaticVariant(shapes, compiled, compiled.create_infer_request(), time.perf_counter() - started)
        except Exception as exc:  # the dynamic model keeps serving this shape
            logger.warning("OpenVINO %s: no static variant for %s: %s: %s", self.name, shapes, type(exc).__name__, exc)
            with self._lock:
                self._failed[shapes] = f"{type(exc).__name__}: {exc}"
                self._compiling = None if self._compiling == shapes else self._compiling
                self._idle.notify_all()
            return None
        logger.info("OpenVINO %s: static variant for %s compiled in %.1fs", self.name, shapes, variant.compile_seconds)
        with self._lock:
            self._ready[shapes] = variant
            self._ready.move_to_end(shapes)
            self.compiled += 1
            self.compile_seconds.append(round(variant.compile_seconds, 2))
            while len(self._ready) > self.keep:  # a call running the evicted one holds its own reference
                self._ready.popitem(last=False)
                self.evicted += 1
            self._compiling = None if self._compiling == shapes else self._compiling
            self._idle.notify_all()
        return variant

    def variants(self) -> list[StaticVariant]:
        """The compiled variants kept now."""
        with self._lock:
            return list(self._ready.values())

    def set_keep(self, keep: int) -> None:
        """Keep at most `keep` variants from now on (0: none; queued compiles are dropped)."""
        if keep < 0:
            raise ValueError(f"static variants to keep: must be 0 (off) or more, got {keep}")
        with self._lock:
            self.keep = keep
            if keep == 0:
                self._queue.clear()
            while len(self._ready) > keep:
                self._ready.popitem(last=False)
                self.evicted += 1

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no compile is queued or running (tests and the bench); False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: self._thread is None, timeout)

    @property
    def shapes(self) -> list[Shapes]:
        """The shapes with a ready variant, least recently used first."""
        with self._lock:
            return list(self._ready)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "keep": self.keep,
                "ready": [list(map(list, s)) for s in self._ready],
                "pending": len(self._queue) + (self._compiling is not None),
                "failed": {str(s): error for s, error in self._failed.items()},
                "compiled": self.compiled,
                "evicted": self.evicted,
                "compile_seconds": list(self.compile_seconds),
            }
