"""CPU fast path: the UNet, VAE and text encoder of a loaded diffusers pipeline run as OpenVINO compiled models.

Why this shape: the studio's request flow (validation, per-call scheduler, CPU-seeded noise per image, img2img and
inpaint via `from_pipe`, progress and cancel) lives in LocalEngine and diffusers. Instead of a second pipeline
implementation, `apply_openvino()` converts the three networks once with plain `openvino.convert_model` and then
swaps their `forward` (UNet, text encoder) and `encode`/`decode` (VAE) for calls into the compiled models *inside
the same module objects*. Every pipeline that shares those modules (txt2img, img2img, inpaint, the per-call
`from_pipe` copies) therefore runs OpenVINO with the scheduler, seeds and sampler code untouched; the torch weights
are released afterwards, so the process does not hold both copies.

- Conversion (30-65 s and several GB of RAM for an SD 1.5 UNet) happens once: the IR is cached on disk under
  ``<cache>/openvino/<component>-<key>/`` where the key hashes the module's weights and config, the component,
  the input-shape spec, the weight format (fp32 for f32, fp16-compressed for bf16), the OpenVINO version and
  `IR_FORMAT_VERSION`. The IR has dynamic batch/height/width, so one cache entry serves every size.
- Precision: "bf16" (the default) runs OpenVINO's bf16 inference on CPUs with native bf16 (AVX512-BF16 / AMX)
  — the only setting that reaches ~2x over torch fp32 on such CPUs; "f32" is exact to ~1e-5 of torch (and is what
  bf16 falls back to on CPUs without native bf16, with a warning in the report).
- The VAE encoder returns the posterior's moments and the sampling stays in torch with the request's generator,
  so img2img/inpaint draw exactly the same noise as the torch engine.
- The UNet is traced with latent sizes that are not multiples of its down-sampling factor, so the traced graph
  keeps diffusers' explicit `upsample_size` path and works for every size (multiples of 8 px), like torch.

Supported: SD 1.x / 2.x pipelines (4- or 9-channel UNets). SDXL, LCM-distilled UNets (timestep_cond), ControlNet
residuals, IP-Adapter, LoRA scaling and clip-skip are refused with a message rather than run wrongly.

`openvino` is imported lazily (never at module import). Telemetry: openvino's model converter would send usage
events to Google Analytics; it is switched to OpenVINO's own no-op stub while converting (traffic stays local).

Plug-in points: `OpenVINOEngine` (a LocalEngine that applies this after loading) or, for custom set-ups,
`apply_openvino(pipes, cache_dir, precision)` on already-loaded pipelines.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.engine import EngineError, EngineStatus, ModelLoadError
from studio.local_engine import LocalEngine
from studio.models import file_lock

logger = logging.getLogger(__name__)

PRECISIONS = ("bf16", "f32")
DEFAULT_PRECISION = "bf16"
IR_FORMAT_VERSION = 1  # bump when the wrappers or conversion settings change, so old IR is not reused
_DEVICE = "CPU"
_MARK = "_studio_openvino"  # attribute set on modules whose calls were redirected to OpenVINO


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when it is not installed (imports openvino)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.get_version()


def is_available() -> bool:
    """True when the `openvino` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def check_precision(precision: str) -> str:
    """Normalise a precision name ("bf16", "f32"; "fp32"/"float32"/"bfloat16" accepted) or raise ValueError."""
    value = str(precision).strip().lower()
    value = {"fp32": "f32", "float32": "f32", "bfloat16": "bf16"}.get(value, value)
    if value not in PRECISIONS:
        raise ValueError(f"openvino precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return value


def default_cache_dir() -> Path:
    """``studio.models.cache_dir()/openvino`` ($STUDIO_CACHE/openvino, else ~/.cache/sd-studio/openvino)."""
    from studio.models import cache_dir

    return cache_dir() / "openvino"


# ---------------------------------------------------------------------------------------------------------------------
# Reports


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


# ---------------------------------------------------------------------------------------------------------------------
# Compiled models


class CompiledNetwork:
    """One OpenVINO compiled model with its own infer request.

    Calls are serialised with a lock (an InferRequest is not re-entrant; LocalEngine runs one generation at a
    time anyway). Outputs are copied out of OpenVINO's buffers, which the next inference overwrites.
    """

    def __init__(self, name: str, compiled: Any):
        self.name = name
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, *arrays: Any) -> list[Any]:
        import numpy as np

        started = time.perf_counter()
        with self.lock:
            self.request.infer([np.require(a, requirements="C") for a in arrays])  # keeps 0-d arrays 0-d
            outputs = [
                np.array(self.request.get_output_tensor(i).data, copy=True) for i in range(len(self.compiled.outputs))
            ]
            self.calls += 1
            self.seconds += time.perf_counter() - started
        return outputs

    @property
    def precision(self) -> str:
        """The inference precision OpenVINO actually uses for this model ("bf16", "f32", ...)."""
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # older plugins may not report it
            return "?"
        text = value.to_string() if hasattr(value, "to_string") else str(value)
        return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(text, text)


def _numpy(tensor: Any) -> Any:
    return tensor.detach().to("cpu").contiguous().numpy()


# ---------------------------------------------------------------------------------------------------------------------
# Conversion wrappers: torch modules whose forward returns plain tensors (what convert_model traces)


def _wrappers() -> dict[str, Any]:
    """The wrapper classes, defined on first use so that importing this module does not import torch."""
    import torch

    class UNetWrapper(torch.nn.Module):
        def __init__(self, unet: Any):
            super().__init__()
            self.unet = unet

        def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class TextEncoderWrapper(torch.nn.Module):
        def __init__(self, text_encoder: Any):
            super().__init__()
            self.text_encoder = text_encoder

        def forward(self, input_ids: Any) -> Any:
            return self.text_encoder(input_ids, return_dict=False)[0]

    class VaeDecoderWrapper(torch.nn.Module):
        def __init__(self, vae: Any):
            super().__init__()
            self.vae = vae

        def forward(self, latents: Any) -> Any:
            return self.vae.decode(latents, return_dict=False)[0]

    class VaeEncoderWrapper(torch.nn.Module):
        """Returns the posterior's moments (mean and log-variance); sampling stays in torch with the generator."""

        def __init__(self, vae: Any):
            super().__init__()
            self.vae = vae

        def forward(self, image: Any) -> Any:
            return self.vae.encode(image, return_dict=False)[0].parameters

    return {
        "unet": UNetWrapper,
        "text_encoder": TextEncoderWrapper,
        "vae_decoder": VaeDecoderWrapper,
        "vae_encoder": VaeEncoderWrapper,
    }


@dataclass(frozen=True)
class _Spec:
    """How one component is traced: example inputs and the (partly dynamic) input shapes of the IR."""

    name: str
    example: tuple[Any, ...]
    shapes: list[list[int]]  # -1 = dynamic; [] = scalar

    @property
    def shape_key(self) -> str:
        return ";".join("x".join(str(d) for d in s) or "scalar" for s in self.shapes)


def _specs(unet: Any | None, text_encoder: Any | None, vae: Any | None) -> list[tuple[_Spec, Any]]:
    """The trace specs for the present components, with their modules.

    Latent example sizes are odd (never multiples of the UNet's down-sampling factor), so diffusers takes its
    explicit `upsample_size` path while tracing and the graph stays valid for every size.
    """
    import torch

    specs: list[tuple[_Spec, Any]] = []
    if unet is not None:
        cfg = unet.config
        cross = cfg.cross_attention_dim
        if isinstance(cross, list | tuple):
            cross = cross[0]
        example = (
            torch.randn(2, cfg.in_channels, 37, 45),  # odd: never a multiple of the factor
            torch.tensor(500.0),
            torch.randn(2, 77, cross),
        )
        shapes = [[-1, cfg.in_channels, -1, -1], [], [-1, -1, cross]]
        specs.append((_Spec("unet", example, shapes), unet))
    if text_encoder is not None:
        length = int(getattr(text_encoder.config, "max_position_embeddings", 77))
        example = (torch.zeros(2, length, dtype=torch.long),)
        specs.append((_Spec("text_encoder", example, [[-1, -1]]), text_encoder))
    if vae is not None:
        latent = vae.config.latent_channels
        channels = vae.config.in_channels
        specs.append((_Spec("vae_decoder", (torch.randn(1, latent, 9, 11),), [[-1, latent, -1, -1]]), vae))
        specs.append((_Spec("vae_encoder", (torch.randn(1, channels, 72, 88),), [[-1, channels, -1, -1]]), vae))
    return specs


# ---------------------------------------------------------------------------------------------------------------------
# Cache keys


def module_fingerprint(module: Any) -> str:
    """sha256 over the module's class, config and every weight (names, shapes, dtypes and bytes).

    Content-based, so it is right for every model source (folder, single file, hub, in-memory) and for
    components swapped in by hand (another VAE). About 1-3 s for a full SD 1.5 pipeline.
    """
    import torch

    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_") and k != "transformers_version"}
        digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict(keep_vars=False).items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def ir_key(fingerprint: str, spec_name: str, shape_key: str, weight_format: str, version: str) -> str:
    """The cache key of one IR: model content + component + input shapes + weight format + converter version."""
    text = "|".join([fingerprint, spec_name, shape_key, weight_format, version, str(IR_FORMAT_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@contextlib.contextmanager
def _no_telemetry() -> Iterator[None]:
    """Route the model converter's telemetry to OpenVINO's own no-op stub while converting.

    openvino.tools.ovc sends usage events to Google Analytics unless a consent file says no; the studio must not
    make network calls on its own. The stub is the module ovc itself uses when openvino-telemetry is absent.
    """
    patched: list[tuple[Any, Any]] = []
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

        for module in (convert_impl, telemetry_utils):
            if hasattr(module, "tm"):
                patched.append((module, module.tm))
                module.tm = telemetry_stub
    except ImportError:  # layout changed: conversion still works, just without this guard
        logger.debug("could not disable OpenVINO converter telemetry (module layout changed)")
    try:
        yield
    finally:
        for module, original in patched:
            module.tm = original


def _convert(spec: _Spec, module: Any, xml: Path, compress: bool) -> None:
    """Trace `module` with `spec`, set the dynamic input shapes and save the IR to `xml` (weights in .bin)."""
    import openvino as ov
    import torch

    wrapper = _wrappers()[spec.name](module).eval()
    with torch.inference_mode(False), torch.no_grad(), _no_telemetry(), warnings.catch_warnings():
        # The tracer warns about every shape-dependent Python branch; the traced paths are the intended ones.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(wrapper, example_input=spec.example)
    model.reshape({model.inputs[i]: ov.PartialShape(shape) for i, shape in enumerate(spec.shapes)})
    ov.save_model(model, str(xml), compress_to_fp16=compress)
    del model
    gc.collect()


def _ir_path(
    spec: _Spec, module: Any, fingerprint: str, cache: Path, precision: str, version: str
) -> tuple[Path, bool, float]:
    """The IR for this component, converting and caching it if needed: (xml path, cache hit, convert seconds)."""
    weight_format = "fp32" if precision == "f32" else "fp16"
    key = ir_key(fingerprint, spec.name, spec.shape_key, weight_format, version)
    folder = cache / f"{spec.name}-{key}"
    xml = folder / "model.xml"
    if xml.is_file() and (folder / "model.bin").is_file():
        return xml, True, 0.0
    with file_lock(cache / f".{spec.name}-{key}.lock"):
        if xml.is_file() and (folder / "model.bin").is_file():
            return xml, True, 0.0
        started = time.perf_counter()
        logger.info(
            "converting %s to OpenVINO IR (%s weights; one-off, cached in %s)", spec.name, weight_format, folder
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=cache))
        try:
            _convert(spec, module, tmp / "model.xml", compress=weight_format == "fp16")
            meta = {
                "component": spec.name,
                "fingerprint": fingerprint,
                "shapes": spec.shapes,
                "weights": weight_format,
                "openvino": version,
                "format": IR_FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if folder.exists():  # a leftover without model.bin
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        logger.info("converted %s in %.1fs", spec.name, seconds)
        return xml, False, seconds


# ---------------------------------------------------------------------------------------------------------------------
# Redirecting module calls


def _release_weights(module: Any) -> None:
    """Replace every parameter and buffer by an empty tensor of the same dtype/device, freeing the torch weights.

    `.dtype`, `.device`, `.config` and `.to()` keep working (pipelines read them); the weights now live in the
    OpenVINO compiled model only.
    """
    import torch

    with torch.no_grad():
        for sub in module.modules():
            for param in list(sub._parameters.values()):
                if param is not None:
                    param.data = torch.empty(0, dtype=param.dtype, device=param.device)
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    sub._buffers[name] = torch.empty(0, dtype=buffer.dtype, device=buffer.device)


def _refuse(component: str, **given: Any) -> None:
    used = sorted(name for name, value in given.items() if value is not None and value is not False)
    if used:
        raise EngineError(
            f"the OpenVINO {component} does not support {', '.join(used)}; use the torch engine for this feature"
        )


def _scalar_timestep(timestep: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(timestep, torch.Tensor):
        values = timestep.detach().to("cpu").reshape(-1).to(torch.float32)
        if values.numel() > 1 and not bool((values == values[0]).all()):
            raise EngineError("the OpenVINO UNet takes one timestep per call (got different timesteps in a batch)")
        return np.asarray(float(values[0]), dtype=np.float32)
    return np.asarray(float(timestep), dtype=np.float32)


def _install_unet(unet: Any, network: CompiledNetwork) -> None:
    import torch
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    def forward(
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        class_labels: Any = None,
        timestep_cond: Any = None,
        attention_mask: Any = None,
        cross_attention_kwargs: Any = None,
        added_cond_kwargs: Any = None,
        down_block_additional_residuals: Any = None,
        mid_block_additional_residual: Any = None,
        down_intrablock_additional_residuals: Any = None,
        encoder_attention_mask: Any = None,
        return_dict: bool = True,
    ) -> Any:
        _refuse(
            "UNet",
            class_labels=class_labels,
            timestep_cond=timestep_cond,
            attention_mask=attention_mask,
            cross_attention_kwargs=cross_attention_kwargs or None,
            added_cond_kwargs=added_cond_kwargs or None,
            down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
            down_intrablock_additional_residuals=down_intrablock_additional_residuals,
            encoder_attention_mask=encoder_attention_mask,
        )
        (out,) = network(_numpy(sample.float()), _scalar_timestep(timestep), _numpy(encoder_hidden_states.float()))
        result = torch.from_numpy(out).to(sample.dtype)
        return UNet2DConditionOutput(sample=result) if return_dict else (result,)

    unet.forward = forward
    setattr(unet, _MARK, {"unet": network})


def _install_text_encoder(text_encoder: Any, network: CompiledNetwork) -> None:
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    def forward(
        input_ids: Any = None,
        attention_mask: Any = None,
        position_ids: Any = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        _refuse(
            "text encoder",
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions or None,
            output_hidden_states=output_hidden_states or None,
            **{k: v for k, v in kwargs.items() if v is not None},
        )
        if input_ids is None:
            raise EngineError("the OpenVINO text encoder needs input_ids")
        (hidden,) = network(_numpy(input_ids.to(torch.int64)))
        hidden_states = torch.from_numpy(hidden)
        if return_dict is False:
            return (hidden_states,)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states)

    text_encoder.forward = forward
    setattr(text_encoder, _MARK, {"text_encoder": network})


def _install_vae(vae: Any, decoder: CompiledNetwork, encoder: CompiledNetwork) -> None:
    import torch
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution

    def encode(x: Any, return_dict: bool = True) -> Any:
        (moments,) = encoder(_numpy(x.float()))
        posterior = DiagonalGaussianDistribution(torch.from_numpy(moments).to(x.dtype))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(z: Any, return_dict: bool = True, generator: Any = None) -> Any:
        (image,) = decoder(_numpy(z.float()))
        decoded = torch.from_numpy(image).to(z.dtype)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    vae.encode = encode
    vae.decode = decode
    setattr(vae, _MARK, {"vae_decoder": decoder, "vae_encoder": encoder})


def is_openvino_module(module: Any) -> bool:
    """True when `module`'s calls run on OpenVINO (apply_openvino installed itself there)."""
    return hasattr(module, _MARK)


def networks(module: Any) -> dict[str, CompiledNetwork]:
    """The compiled networks behind an OpenVINO-redirected module ({} for a plain torch module)."""
    return dict(getattr(module, _MARK, {}))


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def _check_supported(pipe: Any) -> None:
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


def _compile_config(precision: str, supports_bf16: bool) -> tuple[dict[str, str], str, list[str]]:
    warnings: list[str] = []
    effective = precision
    if precision == "bf16" and not supports_bf16:
        effective = "f32"
        warnings.append("this CPU has no native bf16 (AVX512-BF16/AMX): OpenVINO runs f32 instead of bf16")
    config = {"INFERENCE_PRECISION_HINT": effective, "PERFORMANCE_HINT": "LATENCY"}
    return config, effective, warnings


def apply_openvino(
    pipes: Iterable[Any],
    cache_dir: Path | str | None = None,
    precision: str = DEFAULT_PRECISION,
    *,
    release_torch_weights: bool = True,
) -> OpenVINOReport:
    """Run the UNet, text encoder and VAE of `pipes` on OpenVINO from now on (in place) and return a report.

    `pipes` are diffusers pipelines (e.g. LocalEngine's txt2img/img2img/inpaint pipelines); modules they share are
    converted once. IR is cached under `cache_dir` (default: `default_cache_dir()`). With `release_torch_weights`
    the torch copies of the weights are dropped afterwards (the modules then only work through OpenVINO).
    Raises ModelLoadError when openvino is missing or the pipeline is not SD 1.x/2.x.
    """
    started = time.perf_counter()
    precision = check_precision(precision)
    try:
        import openvino as ov
    except ImportError:
        raise ModelLoadError("the OpenVINO engine needs the openvino package: pip install openvino") from None
    version = ov.get_version()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    core = ov.Core()
    supports_bf16 = "BF16" in core.get_property(_DEVICE, "OPTIMIZATION_CAPABILITIES")
    config, effective, notes = _compile_config(precision, supports_bf16)
    report = OpenVINOReport(
        requested_precision=precision, precision=effective, version=version, cache_dir=str(cache), warnings=notes
    )
    for note in notes:
        logger.warning("%s", note)

    seen: set[int] = set()
    todo: list[tuple[str, Any]] = []
    for pipe in pipes:
        _check_supported(pipe)
        for attr in ("unet", "text_encoder", "vae"):
            module = getattr(pipe, attr, None)
            if module is None or id(module) in seen or is_openvino_module(module):
                continue
            seen.add(id(module))
            todo.append((attr, module))

    for attr, module in todo:
        specs = _specs(
            module if attr == "unet" else None,
            module if attr == "text_encoder" else None,
            module if attr == "vae" else None,
        )
        fingerprint = module_fingerprint(module)
        compiled: dict[str, CompiledNetwork] = {}
        for spec, target in specs:
            try:
                xml, hit, convert_seconds = _ir_path(spec, target, fingerprint, cache, precision, version)
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
        if attr == "unet":
            _install_unet(module, compiled["unet"])
        elif attr == "text_encoder":
            _install_text_encoder(module, compiled["text_encoder"])
        else:
            _install_vae(module, compiled["vae_decoder"], compiled["vae_encoder"])
        if release_torch_weights:
            _release_weights(module)
    gc.collect()
    report.seconds = round(time.perf_counter() - started, 2)
    logger.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------------------------------
# The engine


class OpenVINOEngine(LocalEngine):
    """LocalEngine on the CPU whose UNet, VAE and text encoder run as OpenVINO compiled models.

    Same request flow, samplers, seeds, img2img and inpaint as LocalEngine (it *is* one); only `_load` differs:
    after the torch pipelines are built, `apply_openvino` converts (or loads from the cache) and swaps the networks.
    `precision` is "bf16" (default, fast on CPUs with native bf16) or "f32" (matches torch to ~1e-5).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        precision: str = DEFAULT_PRECISION,
        openvino_cache: Path | str | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ):
        if device not in ("auto", "cpu"):
            raise ModelLoadError(f"device: the OpenVINO engine runs on the CPU; got {device!r} (use the torch engine)")
        super().__init__(model, device="cpu", **kwargs)
        self.precision = check_precision(precision)
        self.openvino_cache = Path(openvino_cache) if openvino_cache is not None else None
        self.report: OpenVINOReport | None = None

    def _load(self, models: Any, *args: Any, **kwargs: Any) -> Any:
        loaded = super()._load(models, *args, **kwargs)  # the torch pipelines, exactly as LocalEngine builds them
        self.report = apply_openvino(loaded.pipes.values(), self.openvino_cache, self.precision)
        return loaded

    def status(self) -> EngineStatus:
        status = super().status()
        report = self.report
        if status.loaded and report is not None:
            status.dtype = report.precision
            status.details["accelerator"] = report.summary()
            if report.warnings:
                status.details["openvino"] = "; ".join(report.warnings)
        else:
            status.details["accelerator"] = f"OpenVINO ({self.precision}), not loaded yet"
        return status


ENGINES = ("torch", "openvino")


def local_engine_for(engine: str, model: str | None = None, *, precision: str = DEFAULT_PRECISION, **kwargs: Any):
    """The local engine for `engine` ("torch" → LocalEngine, "openvino" → OpenVINOEngine), not loaded yet.

    One call site for app.py / serving.py: ``local_engine_for(settings.engine, settings.model, device=...,
    precision=settings.openvino_precision, ...)``. `precision` is ignored by the torch engine.
    """
    if engine == "torch":
        return LocalEngine(model, **kwargs)
    if engine == "openvino":
        return OpenVINOEngine(model, precision=precision, **kwargs)
    raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
