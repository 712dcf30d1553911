"""CPU fast path: the UNet, VAE and text encoder of a loaded diffusers pipeline run as OpenVINO compiled models.

Why this shape: the studio's request flow (validation, per-call scheduler, CPU-seeded noise per image, img2img and
inpaint via `from_pipe`, progress and cancel) lives in LocalEngine and diffusers. Instead of a second pipeline
implementation, `OpenVINOAccelerator` is LocalEngine's post-load hook: `apply_openvino()` converts the three networks
once with plain `openvino.convert_model` (cached on disk, see studio.engines.openvino_ir) and redirects the modules'
calls into the compiled models (studio.engines.openvino_modules). Every pipeline sharing those modules therefore runs
OpenVINO with the scheduler, seeds and sampler code untouched; the torch weights are released afterwards, so the
process does not hold both copies.

- Precision: "bf16" (the default) runs OpenVINO's bf16 inference on CPUs with native bf16 (AVX512-BF16 / AMX)
  — the only setting that reaches ~2x over torch fp32 on such CPUs; "f32" is exact to ~1e-5 of torch (and is what
  bf16 falls back to on CPUs without native bf16, with a warning in the report).
- Supported: SD 1.x / 2.x pipelines (4- or 9-channel UNets). SDXL, LCM-distilled UNets (timestep_cond), ControlNet
  residuals, IP-Adapter, LoRA scaling and clip-skip are refused with a message rather than run wrongly.

Built by `studio.engines.build()` for `EngineSettings(kind="openvino")`; `apply_openvino(pipes, cache, precision)`
also works on already-loaded pipelines.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from diffusers import DiffusionPipeline

from studio.config import Device, Precision, cache_dir, parse_enum
from studio.engine import ModelLoadError
from studio.engines.local import AcceleratorStatus
from studio.engines.openvino_ir import TraceSpec, ir_path, module_fingerprint, text_encoder_specs, unet_specs, vae_specs
from studio.engines.openvino_modules import (
    CompiledNetwork,
    install_text_encoder,
    install_unet,
    install_vae,
    is_openvino_module,
    networks,
    release_weights,
)
from studio.types import Task

logger = logging.getLogger(__name__)

_DEVICE = "CPU"  # the OpenVINO device the networks are compiled for
_SPECS: dict[str, Callable[[Any], list[TraceSpec]]] = {
    "unet": unet_specs,
    "text_encoder": text_encoder_specs,
    "vae": vae_specs,
}

__all__ = [
    "OpenVINOAccelerator",
    "OpenVINOReport",
    "apply_openvino",
    "default_cache_dir",
    "is_openvino_module",
    "networks",
]


def default_cache_dir() -> Path:
    """Where IR is cached by default: ``studio.config.cache_dir()/openvino``."""
    return cache_dir() / "openvino"


@dataclass
class ComponentReport:
    """What happened to one network: where its IR is, whether it came from the cache, and the timings."""

    name: str  # unet, text_encoder, vae_decoder, vae_encoder
    key: str
    ir_dir: str
    cache_hit: bool
    convert_seconds: float
    compile_seconds: float
    precision: str  # what OpenVINO actually runs, read back from the compiled model


@dataclass
class OpenVINOReport:
    """The result of `apply_openvino`: shown in Settings (via status details) and recorded by the benchmark."""

    requested_precision: str
    precision: str
    version: str
    cache_dir: str
    seconds: float = 0.0
    components: list[ComponentReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def cache_hits(self) -> int:
        return sum(c.cache_hit for c in self.components)

    def summary(self) -> str:
        parts = ", ".join(f"{c.name}{' (cached)' if c.cache_hit else ''}" for c in self.components)
        return f"OpenVINO {self.version.split('-')[0]}, {self.precision}: {parts} in {self.seconds:.1f}s"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_supported(pipe: DiffusionPipeline) -> None:
    unet = getattr(pipe, "unet", None)
    reasons = []
    if getattr(pipe, "text_encoder_2", None) is not None:
        reasons.append("it has a second text encoder (SDXL)")
    if unet is not None:
        cfg = unet.config
        if getattr(cfg, "addition_embed_type", None):
            reasons.append(f"its UNet uses addition_embed_type={cfg.addition_embed_type!r} (SDXL-style conditioning)")
        if getattr(cfg, "time_cond_proj_dim", None):
            reasons.append("its UNet takes a guidance embedding (LCM-distilled)")
        if getattr(cfg, "class_embed_type", None):
            reasons.append(f"its UNet uses class_embed_type={cfg.class_embed_type!r}")
    if getattr(pipe, "vae", None) is not None and type(pipe.vae).__name__ != "AutoencoderKL":
        reasons.append(f"its VAE is a {type(pipe.vae).__name__}, not an AutoencoderKL")
    if reasons:
        raise ModelLoadError(
            "the OpenVINO engine supports Stable Diffusion 1.x/2.x pipelines, but this model cannot run on it: "
            + "; ".join(reasons)
            + ". Use the torch engine (--engine torch) for it."
        )


def _compile_config(precision: Precision, supports_bf16: bool) -> tuple[dict[str, str], Precision, list[str]]:
    notes: list[str] = []
    effective = precision
    if precision is Precision.BF16 and not supports_bf16:
        effective = Precision.F32
        notes.append("this CPU has no native bf16 (AVX512-BF16/AMX): OpenVINO runs f32 instead of bf16")
    config = {"INFERENCE_PRECISION_HINT": effective.value, "PERFORMANCE_HINT": "LATENCY"}
    return config, effective, notes


def _modules_to_convert(pipes: Iterable[DiffusionPipeline]) -> list[tuple[str, torch.nn.Module]]:
    """(attribute, module) for every UNet / text encoder / VAE of `pipes`, each shared module once."""
    seen: set[int] = set()
    todo: list[tuple[str, torch.nn.Module]] = []
    for pipe in pipes:
        _check_supported(pipe)
        for attr in _SPECS:
            module = getattr(pipe, attr, None)
            if module is None or id(module) in seen or is_openvino_module(module):
                continue
            seen.add(id(module))
            todo.append((attr, module))
    return todo


def _compile_module(
    attr: str, module: torch.nn.Module, core: ov.Core, config: dict[str, str], report: OpenVINOReport, cache: Path
) -> dict[str, CompiledNetwork]:
    """The compiled networks of one module (converted or read from the cache), recorded in `report`."""
    fingerprint = module_fingerprint(module)
    compiled: dict[str, CompiledNetwork] = {}
    for spec in _SPECS[attr](module):
        try:
            xml, hit, convert_seconds = ir_path(
                spec, module, fingerprint, cache, report.requested_precision, report.version
            )
            compile_started = time.perf_counter()
            network = CompiledNetwork(spec.name, core.compile_model(core.read_model(str(xml)), _DEVICE, config))
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO could not convert/compile the {spec.name}: {type(exc).__name__}: {exc}"
            ) from exc
        compiled[spec.name] = network
        report.components.append(
            ComponentReport(
                name=spec.name,
                key=xml.parent.name,
                ir_dir=str(xml.parent),
                cache_hit=hit,
                convert_seconds=round(convert_seconds, 2),
                compile_seconds=round(time.perf_counter() - compile_started, 2),
                precision=network.precision,
            )
        )
    return compiled


def _install(attr: str, module: Any, compiled: dict[str, CompiledNetwork]) -> None:
    if attr == "unet":
        install_unet(module, compiled["unet"])
    elif attr == "text_encoder":
        install_text_encoder(module, compiled["text_encoder"])
    else:
        install_vae(module, compiled["vae_decoder"], compiled["vae_encoder"])


def apply_openvino(
    pipes: Iterable[DiffusionPipeline],
    cache: Path | str | None = None,
    precision: Precision | str = Precision.BF16,
    *,
    release_torch_weights: bool = True,
) -> OpenVINOReport:
    """Run the UNet, text encoder and VAE of `pipes` on OpenVINO from now on (in place) and return a report.

    `pipes` are diffusers pipelines (e.g. LocalEngine's txt2img/img2img/inpaint pipelines); modules they share are
    converted once. IR is cached under `cache` (default: `default_cache_dir()`). With `release_torch_weights` the
    torch copies of the weights are dropped afterwards (the modules then only work through OpenVINO).
    Raises ModelLoadError when the pipeline is not SD 1.x/2.x or conversion fails.
    """
    started = time.perf_counter()
    precision = parse_enum(Precision, "precision", precision)
    folder = Path(cache) if cache is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    core = ov.Core()
    supports_bf16 = "BF16" in core.get_property(_DEVICE, "OPTIMIZATION_CAPABILITIES")
    config, effective, notes = _compile_config(precision, supports_bf16)
    report = OpenVINOReport(
        requested_precision=precision.value,
        precision=effective.value,
        version=ov.get_version(),
        cache_dir=str(folder),
        warnings=notes,
    )
    for note in notes:
        logger.warning("%s", note)
    for attr, module in _modules_to_convert(pipes):
        _install(attr, module, _compile_module(attr, module, core, config, report, folder))
        if release_torch_weights:
            release_weights(module)
    gc.collect()
    report.seconds = round(time.perf_counter() - started, 2)
    logger.info("%s", report.summary())
    return report


class OpenVINOAccelerator:
    """LocalEngine's post-load hook for OpenVINO: `LocalEngine(model, accelerator=OpenVINOAccelerator("f32"))`.

    After each load, the new model's networks are converted (or read from the IR cache) and redirected; `report`
    holds what happened to the model in use. `precision` is "bf16" (default, fast on CPUs with native bf16) or "f32"
    (matches torch to ~1e-5).
    """

    name = "OpenVINO"
    device = Device.CPU

    def __init__(self, precision: Precision | str = Precision.BF16, cache: Path | str | None = None):
        self.precision = parse_enum(Precision, "precision", precision)
        self.cache = Path(cache) if cache is not None else None
        self.report: OpenVINOReport | None = None

    def apply(self, pipelines: Mapping[Task, DiffusionPipeline]) -> None:
        self.report = apply_openvino(pipelines.values(), self.cache, self.precision)

    def status(self) -> AcceleratorStatus:
        report = self.report
        if report is None:
            return AcceleratorStatus(details={"accelerator": f"OpenVINO ({self.precision}), not loaded yet"})
        details = {"accelerator": report.summary()}
        if report.warnings:
            details["openvino"] = "; ".join(report.warnings)
        return AcceleratorStatus(dtype=report.precision, details=details)
