"""CPU fast path: the UNet, VAE and text encoder of a loaded diffusers pipeline run as OpenVINO compiled models.

Why this shape: the studio's request flow (validation, per-call scheduler, CPU-seeded noise per image, img2img and
inpaint via `from_pipe`, progress and cancel) lives in LocalEngine and diffusers. Instead of a second pipeline
implementation, `OpenVINOAccelerator` is LocalEngine's post-load hook: `apply_openvino()` converts the three networks
once with plain `openvino.convert_model` (cached on disk, see studio.engines.openvino_ir) and redirects the modules'
calls into the compiled models (studio.engines.openvino_modules). Every pipeline sharing those modules therefore runs
OpenVINO with the scheduler, seeds and sampler code untouched; the torch weights are released afterwards, so the
process does not hold both copies.

- Precision: "bf16" (the default) runs OpenVINO's bf16 inference where the CPU computes bf16 natively — decided
  from the CPU's own flags (avx512_bf16 or AMX, see `cpu_bf16`), not from OpenVINO's capability list, which also
  says BF16 on AVX-512 CPUs that only emulate it. It is the only setting that reaches ~2x over torch fp32 on such
  CPUs. Everywhere else it runs "f32", exact to ~1e-5 of torch (the decision and its reason are logged and shown in
  the report). Lambda's CPUs vary between cold starts, so this is decided per process, on the CPU it runs on.
- Prepared models: a folder written by `python -m studio.models export-openvino MODEL DIR`
  (studio.engines.openvino_export) carries its IR; its networks are compiled from that IR, never converted, and
  `load_prepared_pipeline` builds the whole pipeline from it without the torch weights.
- Supported: SD 1.x / 2.x pipelines (4- or 9-channel UNets). SDXL, LCM-distilled UNets (timestep_cond), ControlNet
  residuals, IP-Adapter, LoRA scaling and clip-skip are refused with a message rather than run wrongly.

Built by `studio.engines.build()` for `EngineSettings(kind="openvino")`; `apply_openvino(pipes, cache, precision)`
also works on already-loaded pipelines.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from diffusers import DiffusionPipeline

from studio.config import DEFAULT_OPENVINO_STATIC_SHAPES, Device, OpenVINOWeights, Precision, cache_dir, parse_enum
from studio.engine import ModelLoadError
from studio.engines.local import AcceleratorStatus
from studio.engines.openvino_export import COMPONENTS, ExportManifest, manifest_for, read_manifest
from studio.engines.openvino_int8 import WEIGHT_NOTES, calibration_for
from studio.engines.openvino_ir import (
    TraceSpec,
    ir_path,
    module_fingerprint,
    text_encoder_specs,
    unet_specs,
    vae_specs,
    weight_format,
)
from studio.engines.openvino_modules import (
    CompiledNetwork,
    install_text_encoder,
    install_unet,
    install_vae,
    is_openvino_module,
    networks,
    release_before_decoding,
    release_weights,
    set_static_shapes,
)
from studio.engines.openvino_pages import MAPPED_WEIGHTS
from studio.engines.openvino_static import STATIC_NETWORKS, StaticSource
from studio.engines.openvino_warm import find_entry, ir_dirs_of, warm_key, weightless_components, write_entry
from studio.types import Task

logger = logging.getLogger(__name__)

_DEVICE = "CPU"  # the OpenVINO device the networks are compiled for
SPECS: dict[str, Callable[[Any], list[TraceSpec]]] = {
    "unet": unet_specs,
    "text_encoder": text_encoder_specs,
    "vae": vae_specs,
}

__all__ = [
    "OpenVINOAccelerator",
    "OpenVINOReport",
    "apply_openvino",
    "cpu_bf16",
    "default_cache_dir",
    "is_openvino_module",
    "load_prepared_pipeline",
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
    prepared: bool = False  # the IR came from a prepared export (studio.engines.openvino_export), not the cache


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
    precision_reason: str = ""  # why this precision: the CPU's bf16 flags (or their absence)
    warm: bool = False  # built from the warm IR cache (studio.engines.openvino_warm): no torch weights were read
    weights: str = ""  # the IR weight format asked for (studio.engines.openvino_ir.weight_format): fp16, fp32, int8

    @property
    def cache_hits(self) -> int:
        return sum(c.cache_hit for c in self.components)

    def summary(self) -> str:
        def origin(c: ComponentReport) -> str:
            return " (prepared)" if c.prepared else " (cached)" if c.cache_hit else ""

        parts = ", ".join(f"{c.name}{origin(c)}" for c in self.components)
        warm = " from the warm IR cache (no torch weights)" if self.warm else ""
        notes = f"{self.precision}{WEIGHT_NOTES.get(self.weights, '')}"
        return f"OpenVINO {self.version.split('-')[0]}, {notes}: {parts}{warm} in {self.seconds:.1f}s"

    def merge(self, other: OpenVINOReport) -> OpenVINOReport:
        """This report with `other`'s networks (e.g. a dedicated inpainting model converted after the base)."""
        self.components += other.components
        self.warnings += [w for w in other.warnings if w not in self.warnings]
        self.seconds = round(self.seconds + other.seconds, 2)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_supported(pipe: DiffusionPipeline) -> None:
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


_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The x86 feature flags of this CPU from /proc/cpuinfo (None where that file is missing or has no flags line,
    e.g. macOS, Windows or ARM)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def cpu_bf16(core: ov.Core | None = None, *, flags: set[str] | None = None) -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the reason in words), from its avx512_bf16 / amx_bf16 flags.

    OpenVINO's OPTIMIZATION_CAPABILITIES lists BF16 on every AVX-512 CPU, including those that only emulate it (slower
    than f32), so the CPU's own flags decide; without readable flags (not Linux x86), OpenVINO's list is used.
    """
    flags = _cpu_flags() if flags is None else flags
    if flags is not None:
        found = [flag for flag in _NATIVE_BF16_FLAGS if flag in flags]
        if found:
            return True, f"the CPU has {' and '.join(found)}"
        return False, "the CPU has no avx512_bf16 or AMX (bf16 would be emulated, slower than f32)"
    core = core or ov.Core()
    capabilities = core.get_property(_DEVICE, "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return True, "OpenVINO reports BF16 for this CPU (its flags are not readable here)"
    return False, "OpenVINO reports no BF16 for this CPU"


def _compile_config(precision: Precision, supports_bf16: bool) -> tuple[dict[str, str], Precision, list[str]]:
    notes: list[str] = []
    effective = precision
    if precision is Precision.BF16 and not supports_bf16:
        effective = Precision.F32
        notes.append("this CPU has no native bf16 (AVX512-BF16/AMX): OpenVINO runs f32 instead of bf16")
    config = {"INFERENCE_PRECISION_HINT": effective.value, "PERFORMANCE_HINT": "LATENCY"}
    return config, effective, notes


def _new_report(
    precision: Precision, folder: Path, core: ov.Core, weights: str = "auto"
) -> tuple[OpenVINOReport, dict[str, str]]:
    """The report of one load and the compile config, with the precision decided for this CPU (and logged)."""
    supports_bf16, reason = cpu_bf16(core)
    config, effective, notes = _compile_config(precision, supports_bf16)
    report = OpenVINOReport(
        requested_precision=precision.value,
        precision=effective.value,
        version=ov.get_version(),
        cache_dir=str(folder),
        warnings=notes,
        precision_reason=reason,
        weights=weight_format(precision.value, weights),
    )
    logger.info("OpenVINO precision %s (%s requested): %s", effective.value, precision.value, reason)
    for note in notes:
        logger.warning("%s", note)
    return report, config


def _modules_to_convert(
    pipes: Iterable[DiffusionPipeline],
) -> list[tuple[str, torch.nn.Module, ExportManifest | None, DiffusionPipeline]]:
    """(attribute, module, the prepared export it came from or None, its pipeline) for every UNet / text encoder /
    VAE of `pipes`, each shared module once."""
    seen: set[int] = set()
    todo: list[tuple[str, torch.nn.Module, ExportManifest | None, DiffusionPipeline]] = []
    for pipe in pipes:
        check_supported(pipe)
        manifest = manifest_for(pipe)
        for attr in SPECS:
            module = getattr(pipe, attr, None)
            if module is None or id(module) in seen or is_openvino_module(module):
                continue
            seen.add(id(module))
            todo.append((attr, module, manifest, pipe))
    return todo


def _compile_ir(
    name: str,
    xml: Path,
    core: ov.Core,
    config: dict[str, str],
    report: OpenVINOReport,
    *,
    cache_hit: bool = True,
    convert_seconds: float = 0.0,
    prepared: bool = False,
) -> CompiledNetwork:
    """Compile one IR file for the CPU and record it in `report` with where it came from."""
    started = time.perf_counter()
    try:
        MAPPED_WEIGHTS.add(xml.with_suffix(".bin"))
        model = core.read_model(str(xml))  # kept for static-shape variants: its weights stay memory-mapped, shared
        source = StaticSource(model, core, _DEVICE, config)
        if name in STATIC_NETWORKS and DEFAULT_OPENVINO_STATIC_SHAPES > 0:  # runs static variants: dynamic on demand
            network = CompiledNetwork(name, None, source=source)
        else:
            with MAPPED_WEIGHTS.packing():
                network = CompiledNetwork(name, core.compile_model(model, _DEVICE, config), source=source)
    except Exception as exc:
        raise ModelLoadError(f"OpenVINO could not compile the {name} ({xml}): {type(exc).__name__}: {exc}") from exc
    report.components.append(
        ComponentReport(
            name=name,
            key=xml.parent.name,
            ir_dir=str(xml.parent),
            compile_seconds=round(time.perf_counter() - started, 2),
            precision=network.precision,
            cache_hit=cache_hit,
            convert_seconds=convert_seconds,
            prepared=prepared,
        )
    )
    return network


def _compile_module(
    attr: str,
    module: torch.nn.Module,
    core: ov.Core,
    config: dict[str, str],
    report: OpenVINOReport,
    cache: Path,
    manifest: ExportManifest | None = None,
    pipe: DiffusionPipeline | None = None,
) -> dict[str, CompiledNetwork]:
    """The compiled networks of one module, recorded in `report`: from the prepared export's IR when `manifest`
    vouches for it, else converted (`pipe` calibrates a hybrid or full int8 UNet) or read from the cache."""
    if manifest is not None:
        prepared = manifest.ir_files(attr)
        if prepared:
            return {name: _compile_ir(name, xml, core, config, report, prepared=True) for name, xml in prepared.items()}
    fingerprint = module_fingerprint(module)
    compiled: dict[str, CompiledNetwork] = {}
    for spec in SPECS[attr](module):
        try:
            calib = calibration_for(pipe, attr, module) if pipe is not None else None
            xml, hit, convert_seconds = ir_path(spec, module, fingerprint, cache, report.weights, report.version, calib)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO could not convert the {spec.name}: {type(exc).__name__}: {exc}") from exc
        compiled[spec.name] = _compile_ir(
            spec.name, xml, core, config, report, cache_hit=hit, convert_seconds=round(convert_seconds, 2)
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
    weights: OpenVINOWeights | str = OpenVINOWeights.AUTO,
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
    core = ov.Core()
    weights = parse_enum(OpenVINOWeights, "openvino_weights", weights)
    report, config = _new_report(precision, folder, core, weights.value)
    for attr, module, manifest, pipe in _modules_to_convert(pipes):
        if manifest is None or not manifest.ir_files(attr):
            folder.mkdir(parents=True, exist_ok=True)  # only when something may be converted into the cache
        _install(attr, module, _compile_module(attr, module, core, config, report, folder, manifest, pipe))
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

    def __init__(
        self,
        precision: Precision | str = Precision.BF16,
        cache: Path | str | None = None,
        static_shapes: int = DEFAULT_OPENVINO_STATIC_SHAPES,
        weights: OpenVINOWeights | str = OpenVINOWeights.AUTO,
    ):
        self.precision = parse_enum(Precision, "precision", precision)
        self.weights = parse_enum(OpenVINOWeights, "openvino_weights", weights)  # --openvino-weights
        self.static_shapes = static_shapes  # static-shape UNet variants kept (studio.engines.openvino_static)
        self.cache = Path(cache) if cache is not None else None
        self.report: OpenVINOReport | None = None
        self._prepared: OpenVINOReport | None = None  # set by load_pipeline, consumed by the next apply

    def load_pipeline(self, source: Any, device: str, dtype: torch.dtype) -> DiffusionPipeline | None:
        """Pre-load hook: the text-to-image pipeline with its networks already on OpenVINO. `source` is a
        studio.models.ModelSource.

        - A prepared export (a diffusers folder with openvino/manifest.json) is built from its IR alone, without
          reading its torch weights (`load_prepared_pipeline`); one whose weights were replaced since the export
          returns None and loads as usual (`apply` converts it).
        - Any other model found in the warm IR cache (studio.engines.openvino_warm) is built the same way from its
          warm entry: no torch weights are read.
        - Otherwise its torch weights are loaded, converted (or their IR read from the cache), released, and a
          warm entry is written so that the next load is warm.
        """
        location = Path(str(getattr(source, "location", "")))
        manifest = read_manifest(location)
        if manifest is not None:
            if _stale_components(manifest):  # weights replaced since the export: `apply` converts those again
                return None
            pipe, self._prepared = load_prepared_pipeline(location, self.precision)
            return pipe
        key = self._warm_key(source)  # None: no local files yet (a hub model not in the local cache)
        return self._load_warm(source, key) or self._load_and_convert(source, key, device, dtype)

    @property
    def weight_format(self) -> str:
        """The IR weight format this engine loads: fp16, fp32 or int8 (studio.engines.openvino_ir.weight_format)."""
        return weight_format(self.precision.value, self.weights.value)

    def _cache_dir(self) -> Path:
        return self.cache if self.cache is not None else default_cache_dir()

    def _warm_key(self, source: Any) -> str | None:
        return warm_key(source, self.weight_format, ov.get_version())

    def _load_warm(self, source: Any, key: str | None) -> DiffusionPipeline | None:
        entry = find_entry(self._cache_dir(), key) if key is not None else None
        if entry is None:
            return None
        try:
            pipe, self._prepared = load_prepared_pipeline(entry.folder, self.precision, warm=True)
        except ModelLoadError as exc:
            logger.warning("%s: warm OpenVINO entry %s unusable (%s); converting again", source, entry.folder, exc)
            return None
        return pipe

    def _load_and_convert(self, source: Any, key: str | None, device: str, dtype: torch.dtype) -> DiffusionPipeline:
        from studio import models  # looked up on the module: the bench counts weight loads by patching it

        pipe = models.load_pipeline(source, device=device, dtype=dtype)
        report = apply_openvino([pipe], self.cache, self.precision, weights=self.weights)
        key = key or self._warm_key(source)  # after the load a hub model is in the local cache
        if key is not None:
            try:
                write_entry(
                    self._cache_dir(),
                    key,
                    pipe,
                    ir_dirs_of(report.components, COMPONENTS),
                    source_name=str(source),
                    weight_format=self.weight_format,
                    precision=self.precision.value,
                    openvino_version=report.version,
                )
            except Exception as exc:  # the model is loaded; only the next load is slower. Said in Settings.
                note = f"the warm IR cache entry was not written ({type(exc).__name__}: {exc}); the next load reads "
                report.warnings.append(note + "the torch weights again")
                logger.warning("%s: %s", source, report.warnings[-1])
        self._prepared = report
        return pipe

    def model_hash(self, source: Any) -> str | None:
        """The UNet hash the export recorded (a cold start then hashes nothing: ~7 s for SD 1.5, measured)."""
        manifest = read_manifest(Path(str(getattr(source, "location", ""))))
        return manifest.model_hash if manifest is not None and manifest.model_hash else None

    def apply(self, pipelines: Mapping[Task, DiffusionPipeline]) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None and not _modules_to_convert(pipelines.values()):
            self.report = prepared  # load_pipeline compiled every network already
        else:
            report = apply_openvino(pipelines.values(), self.cache, self.precision, weights=self.weights)
            self.report = prepared.merge(report) if prepared is not None else report  # e.g. a separate inpaint model
        set_static_shapes(pipelines.values(), self.static_shapes)
        release_before_decoding(pipelines.values())

    def status(self) -> AcceleratorStatus:
        report = self.report
        if report is None:
            return AcceleratorStatus(details={"accelerator": f"OpenVINO ({self.precision}), not loaded yet"})
        details = {"accelerator": report.summary()}
        if report.precision_reason:
            details["precision"] = f"{report.precision}: {report.precision_reason}"
        if report.warnings:
            details["openvino"] = "; ".join(report.warnings)
        return AcceleratorStatus(dtype=report.precision, details=details)


def _stale_components(manifest: Any) -> list[str]:
    """The exported components whose torch weights are present and no longer the exported ones (a cheap sampled
    digest, ~1 MB read per file). An export without weight files (IR only) has none."""
    stale = []
    for module in ("unet", "text_encoder", "vae"):
        folder = manifest.folder / module
        has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
        if has_weights and not manifest.ir_files(module, verify_weights=True):
            stale.append(module)
    return stale


def load_prepared_pipeline(
    folder: Path | str, precision: Precision | str = Precision.BF16, *, core: ov.Core | None = None, warm: bool = False
) -> tuple[DiffusionPipeline, OpenVINOReport]:
    """A text-to-image pipeline running on the IR of a prepared export, built without its torch weights.

    The modules are made from the folder's configs on the meta device and given empty weights; their calls go to
    the networks compiled from openvino/ (precision decided for this CPU). What a cold start then reads is the IR
    only: no torch weights, no conversion, no fingerprint. Raises ModelLoadError naming what is missing.
    `warm`: `folder` is a warm entry of the IR cache (studio.engines.openvino_warm), not a prepared export.
    """
    import diffusers
    from transformers import CLIPTokenizer

    started = time.perf_counter()
    manifest = read_manifest(Path(folder))
    if manifest is None:
        raise ModelLoadError(
            f"{folder}: not a prepared OpenVINO model (no openvino/manifest.json); prepare one with "
            "`python -m studio.models export-openvino MODEL DIR`"
        )
    precision = parse_enum(Precision, "precision", precision)
    core = core or ov.Core()
    report, config = _new_report(precision, manifest.folder / "openvino", core, manifest.weights)  # the IR's
    try:
        modules = weightless_components(manifest.folder)
        index = json.loads((manifest.folder / "model_index.json").read_text())
        scheduler_class = getattr(diffusers, index["scheduler"][1])
        scheduler = scheduler_class.from_pretrained(manifest.folder / "scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(manifest.folder / "tokenizer")
    except Exception as exc:
        raise ModelLoadError(f"{manifest.folder}: cannot build the pipeline: {type(exc).__name__}: {exc}") from exc
    for attr, module in modules.items():
        files = manifest.ir_files(attr, verify_weights=False)
        if not files:
            raise ModelLoadError(f"{manifest.folder}: the export has no IR for its {attr}; export it again")
        _install(
            attr,
            module,
            {name: _compile_ir(name, xml, core, config, report, prepared=not warm) for name, xml in files.items()},
        )
    pipe = diffusers.StableDiffusionPipeline(
        **modules,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.register_to_config(_name_or_path=str(manifest.folder))
    pipe.set_progress_bar_config(disable=True)
    check_supported(pipe)
    report.seconds = round(time.perf_counter() - started, 2)
    report.warm = warm
    logger.info("%s%s", report.summary(), "" if warm else " (from the prepared IR, no torch weights)")
    return pipe, report
