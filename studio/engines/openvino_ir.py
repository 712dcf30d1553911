"""Converting a pipeline's networks to OpenVINO IR, once, with a content-keyed cache on disk.

Conversion (30-65 s and several GB of RAM for an SD 1.5 UNet) happens once: the IR is cached under
``<cache>/<component>-<key>/`` where the key hashes the module's weights and config, the component, the
input-shape spec, the weight format (`weight_format`: fp32 for f32; for bf16 int8 MatMul weights,
studio.engines.openvino_int8, and fp16 for the rest), the OpenVINO version and
`IR_FORMAT_VERSION`. The IR has dynamic batch/height/width, so one cache entry serves every size. Parallel
processes build an entry once (a file lock) and readers never see half of one (it is published by a rename).

The UNet is traced with latent sizes that are not multiples of its down-sampling factor, so the traced graph
keeps diffusers' explicit `upsample_size` path and works for every size (multiples of 8 px), like torch. Its GEGLU
feed-forward layers are traced as two linear layers (`TwoLinearGEGLU`), so the graph has no split for the CPU plugin's
slow reference kernel, and its GroupNorms as per-channel reductions (`ChannelGroupNorm`), which keep the
convolutions' channels-last layout instead of a reorder on each side.

Telemetry: openvino's model converter would send usage events to Google Analytics; it is switched to OpenVINO's
own no-op stub while converting (traffic stays local).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.activations import GEGLU
from transformers import CLIPTextModel

from studio.engine import ModelLoadError
from studio.engines.openvino_int8 import (
    INT8,
    compress_int8,
    network_weights,
    quantize,
    recipe,
    wants_calibration,
    wants_int8,
)
from studio.engines.openvino_pages import MappedWeights
from studio.fs import file_lock, staged_dir

logger = logging.getLogger(__name__)

Calibration = Callable[[], list[list[Any]]]  # the UNet's calibration inputs, made only when it is converted
# Bump when the wrappers or conversion settings change, so old IR is not reused. 2: GEGLU traced as TwoLinearGEGLU;
# 3: GroupNorm as ChannelGroupNorm; 4: that in the UNet only (CHANNEL_GROUP_NORM_NETWORKS).
IR_FORMAT_VERSION = 4
# Where GroupNorm is traced as ChannelGroupNorm. Not the VAE: its decoder was 7 % faster so (SD 1.5 at 512², 2 cores,
# Zen 5: 3.09 -> 2.88 s) but peaked ~90 MB higher (704 -> 796 MB), and that decode is the engine's memory peak.
CHANNEL_GROUP_NORM_NETWORKS = frozenset({"unet"})


class TwoLinearGEGLU(torch.nn.Module):
    """diffusers' GEGLU — one Linear whose output is cut in half, `value * gelu(gate)` — as two Linears over views of
    the halves of the same weight and bias: the same arithmetic, no copy of the weights.

    Traced, the IR has two MatMuls where GEGLU gives one MatMul and a VariadicSplit. OpenVINO's CPU plugin runs that
    split with a reference kernel: SD 1.5 at 512² (batch 2, bf16, int8 weights, 2 cores), ~1-2 % of a UNet step
    (0.025-0.047 s of 1.9-2.4 s in PERF_COUNT); both IRs' step times, interleaved, are in the issue notes."""

    def __init__(self, geglu: GEGLU):
        super().__init__()
        proj = geglu.proj
        half = proj.out_features // 2
        # On the meta device: no weights are allocated and initialised only to be replaced by the views below.
        self.value = torch.nn.Linear(proj.in_features, half, bias=proj.bias is not None, device="meta")
        self.gate = torch.nn.Linear(proj.in_features, half, bias=proj.bias is not None, device="meta")
        weight = proj.weight.detach()
        self.value.weight = torch.nn.Parameter(weight[:half], requires_grad=False)
        self.gate.weight = torch.nn.Parameter(weight[half:], requires_grad=False)
        if proj.bias is not None:
            bias = proj.bias.detach()
            self.value.bias = torch.nn.Parameter(bias[:half], requires_grad=False)
            self.gate.bias = torch.nn.Parameter(bias[half:], requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value(hidden_states) * torch.nn.functional.gelu(self.gate(hidden_states))


class ChannelGroupNorm(torch.nn.Module):
    """torch's GroupNorm (affine, on [N, C, ...]) computed from per-channel means over the spatial axes, averaged per
    group: mean, then the variance of the centred input (two passes, as GroupNorm itself: E[x²] - E[x]² would cancel
    catastrophically in bf16 once a group's mean is ~30x its spread), then one scale and shift.

    Why: traced as is, GroupNorm becomes a reshape to [N, groups, -1] that OpenVINO's CPU plugin runs in the plain
    layout, with a reorder from and back to the convolutions' channels-last layout on each side. These reductions
    and element-wise ops keep that layout. SD 1.5, bf16, 2 cores (Zen 5): UNet step 2.2 % faster, its output vs
    torch f32 about as close as before (relative mean difference 0.033 against 0.032)."""

    def __init__(self, norm: torch.nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        n, c, groups = x.shape[0], x.shape[1], norm.num_groups
        axes = tuple(range(2, x.dim()))
        per_channel, affine = (n, c) + (1,) * len(axes), (1, c) + (1,) * len(axes)

        def group_mean(values: torch.Tensor) -> torch.Tensor:  # per-channel means -> their group's mean, per channel
            means = values.mean(dim=axes, keepdim=True).reshape(n, groups, c // groups).mean(-1, keepdim=True)
            return means.expand(n, groups, c // groups).reshape(per_channel)

        centred = x - group_mean(x)
        scale = torch.rsqrt(group_mean(centred * centred) + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.reshape(affine)
        out = centred * scale
        return out + norm.bias.reshape(affine) if norm.bias is not None else out


@contextlib.contextmanager
def traceable(module: torch.nn.Module, *, group_norm: bool = True) -> Iterator[int]:
    """While tracing: `module`'s GEGLU layers (exactly diffusers' class, over a plain Linear) swapped for
    `TwoLinearGEGLU` and, with `group_norm`, its GroupNorms for `ChannelGroupNorm`; put back afterwards (the torch
    modules are the pipeline's own). Yields how many were swapped."""
    swaps: list[tuple[Callable[[torch.nn.Module], bool], Callable[[Any], torch.nn.Module]]] = [
        (lambda m: type(m) is GEGLU and type(m.proj) is torch.nn.Linear, TwoLinearGEGLU),
    ]
    if group_norm:
        swaps.append((lambda m: type(m) is torch.nn.GroupNorm, ChannelGroupNorm))
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module, torch.nn.Module]] = []
    for parent in module.modules():
        for name, child in parent.named_children():
            for wanted, replacement in swaps:
                if wanted(child):
                    swapped.append((parent, name, child, replacement(child)))
                    break
    try:
        for parent, name, _, replacement in swapped:
            setattr(parent, name, replacement)
        yield len(swapped)
    finally:
        for parent, name, child, _ in swapped:
            setattr(parent, name, child)


class UNetWrapper(torch.nn.Module):
    """The UNet with plain tensor inputs and output (what convert_model traces)."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class TextEncoderWrapper(torch.nn.Module):
    """The text encoder's last hidden state."""

    def __init__(self, text_encoder: CLIPTextModel):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class VaeDecoderWrapper(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class VaeEncoderWrapper(torch.nn.Module):
    """Returns the posterior's moments (mean and log-variance); sampling stays in torch with the generator."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image, return_dict=False)[0].parameters


_WRAPPERS: dict[str, type[torch.nn.Module]] = {
    "unet": UNetWrapper,
    "text_encoder": TextEncoderWrapper,
    "vae_decoder": VaeDecoderWrapper,
    "vae_encoder": VaeEncoderWrapper,
}


@dataclass(frozen=True)
class TraceSpec:
    """How one network is traced: example inputs and the (partly dynamic) input shapes of the IR."""

    name: str  # unet, text_encoder, vae_decoder, vae_encoder
    example: tuple[torch.Tensor, ...]
    shapes: list[list[int]]  # -1 = dynamic; [] = scalar

    @property
    def shape_key(self) -> str:
        return ";".join("x".join(str(d) for d in s) or "scalar" for s in self.shapes)


def unet_specs(unet: UNet2DConditionModel) -> list[TraceSpec]:
    """Latent example sizes are odd (never multiples of the UNet's down-sampling factor), so diffusers takes its
    explicit `upsample_size` path while tracing and the graph stays valid for every size."""
    cfg = unet.config
    cross = cfg.cross_attention_dim
    if isinstance(cross, list | tuple):
        cross = cross[0]
    example = (torch.randn(2, cfg.in_channels, 37, 45), torch.tensor(500.0), torch.randn(2, 77, cross))
    return [TraceSpec("unet", example, [[-1, cfg.in_channels, -1, -1], [], [-1, -1, cross]])]


def text_encoder_specs(text_encoder: CLIPTextModel) -> list[TraceSpec]:
    length = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    return [TraceSpec("text_encoder", (torch.zeros(2, length, dtype=torch.long),), [[-1, -1]])]


def vae_specs(vae: AutoencoderKL) -> list[TraceSpec]:
    latent = vae.config.latent_channels
    channels = vae.config.in_channels
    return [
        TraceSpec("vae_decoder", (torch.randn(1, latent, 9, 11),), [[-1, latent, -1, -1]]),
        TraceSpec("vae_encoder", (torch.randn(1, channels, 72, 88),), [[-1, channels, -1, -1]]),
    ]


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the module's class, config and every weight (names, shapes, dtypes and bytes).

    Content-based, so it is right for every model source (folder, single file, hub, in-memory) and for
    components swapped in by hand (another VAE). About 1-3 s for a full SD 1.5 pipeline.
    """
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
def no_telemetry() -> Iterator[None]:
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


def _convert(
    spec: TraceSpec, module: torch.nn.Module, xml: Path, weights: str, calibrate: Calibration | None = None
) -> None:
    """Trace `module` with `spec`, set the dynamic input shapes and save the IR to `xml` with `weights` ("fp32",
    "fp16", "int8", "int8-hybrid" or "int8-full": studio.engines.openvino_int8; the last two are calibrated on
    `calibrate()`)."""
    wrapper = _WRAPPERS[spec.name](module).eval()
    rewrites = traceable(module, group_norm=spec.name in CHANNEL_GROUP_NORM_NETWORKS)
    with torch.inference_mode(False), torch.no_grad(), no_telemetry(), warnings.catch_warnings(), rewrites:
        # The tracer warns about every shape-dependent Python branch; the traced paths are the intended ones.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(wrapper, example_input=spec.example)
    model.reshape({model.inputs[i]: ov.PartialShape(shape) for i, shape in enumerate(spec.shapes)})
    if not wants_int8(spec.name, weights):
        ov.save_model(model, str(xml), compress_to_fp16=weights != "fp32")
        del model
        gc.collect()
        return
    calibrated = wants_calibration(spec.name, weights)
    if calibrated and calibrate is None:
        raise ModelLoadError(f"--openvino-weights {weights}: the {spec.name} needs calibration inputs to quantize")
    # NNCF works on the fp16 IR, read back from disk: `ov.save_model` does not make the other weights fp16 once NNCF
    # has touched a model (SD 1.5's UNet IR was 2.5 GB with f32 convolutions, 1.4 GB so), and making them fp16 in
    # memory first peaked at 6.2 GB for a cold SD 1.5 UNet (this way 5.5 GB; 4.7 GB with f32 convolutions).
    fp16 = xml.with_name("fp16.xml")
    ov.save_model(model, str(fp16), compress_to_fp16=True)
    del model
    gc.collect()
    pages = MappedWeights()  # its mapped pages are read once (by NNCF, then to save them): not kept resident
    pages.add(fp16.with_suffix(".bin"))
    with pages.packing():
        model = ov.Core().read_model(str(fp16))
        model = quantize(model, weights, calibrate()) if calibrated and calibrate else compress_int8(model)
        ov.save_model(model, str(xml), compress_to_fp16=False)
        del model
        gc.collect()
    fp16.unlink()
    fp16.with_suffix(".bin").unlink()


def _complete(folder: Path) -> bool:
    return (folder / "model.xml").is_file() and (folder / "model.bin").is_file()


def weight_format(precision: str, weights: str = "auto") -> str:
    """The IR's weight format: `weights` (--openvino-weights) unless it is "auto", which means fp32 for "f32"
    inference and int8 otherwise: bf16 inference with int8 MatMul weights (studio.engines.openvino_int8) is as close
    to f32 as with fp16 weights, in 0.4 GB less memory for SD 1.5."""
    if weights != "auto":
        return weights
    return "fp32" if precision == "f32" else INT8


def ir_path(
    spec: TraceSpec,
    module: torch.nn.Module,
    fingerprint: str,
    cache: Path,
    weights: str,
    version: str,
    calibrate: Calibration | None = None,
) -> tuple[Path, bool, float]:
    """The IR for this network in weight format `weights` (`weight_format`), converting and caching it if needed:
    (xml path, cache hit, convert seconds). `calibrate` makes the calibration inputs of a calibrated (int8-hybrid or
    int8-full) network."""
    weights = network_weights(spec.name, weights)
    key = ir_key(fingerprint, spec.name, spec.shape_key, recipe(weights), version)  # a new recipe, a new entry
    folder = cache / f"{spec.name}-{key}"
    xml = folder / "model.xml"
    if _complete(folder):
        return xml, True, 0.0
    with file_lock(cache / f".{spec.name}-{key}.lock"):
        if _complete(folder):
            return xml, True, 0.0
        started = time.perf_counter()
        logger.info("converting %s to OpenVINO IR (%s weights; one-off, cached in %s)", spec.name, weights, folder)
        meta = {
            "component": spec.name,
            "fingerprint": fingerprint,
            "shapes": spec.shapes,
            "weights": weights,
            "openvino": version,
            "format": IR_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # Under the lock, an existing folder is an incomplete leftover of ours (complete ones returned above).
        with staged_dir(folder, replace=lambda leftover: not _complete(leftover)) as tmp:
            _convert(spec, module, tmp / "model.xml", weights, calibrate)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        seconds = time.perf_counter() - started
        logger.info("converted %s in %.1fs", spec.name, seconds)
        return xml, False, seconds
