"""int8 weights for the OpenVINO IR (`--openvino-weights int8`), through NNCF's data-free weight compression.

What it changes: the MatMul (and embedding) weights of the UNet and the text encoder are stored int8 with a scale and
zero point per output channel (NNCF's INT8_ASYM). OpenVINO's CPU plugin keeps those weights int8 in memory and
decompresses them inside its FullyConnected kernels, so the packed weights of SD 1.5 shrink by ~0.4 GB while the
activations stay bf16 (or f32). Convolutions are left in fp16: the plugin would unpack int8 convolution weights to
f32 at compile time, which *doubles* their memory (measured: 4.0 GB of anonymous memory for an all-int8 SD 1.5 UNet
against 2.1 GB fp16). The VAE stays fp16 as well (it is nearly all convolutions, and it decides the pixels).

Measured on SD 1.5 (random weights, 512², 2 threads, bf16, `python -m bench --only openvino`): the default engine's
`openvino_vs_torch` fields are int8's; the demo model's pixel differences against torch are in `accuracy_demo.bf16`
(int8) beside `accuracy_demo.bf16:fp16`.

`--openvino-weights int8-hybrid` goes further on the UNet (NNCF's hybrid mode, as optimum-intel quantizes diffusion
models): the MatMul weights as above, and the convolutions run in int8 (VNNI / AMX-INT8 kernels) with activation
ranges calibrated once on UNet inputs the conversion makes itself (`unet_calibration`); so are the query and key of
attention's ScaledDotProductAttention ops (the CPU runs those as int8 subgraphs). Faster (SD 1.5 at 512², one step:
1.65 s against 2.12 s here) and less exact (the UNet output's mean difference from f32 is 4.6 % against 2.9 % with
int8 weights): the bench's `openvino_vs_torch.hybrid` and `accuracy_demo`.

`--openvino-weights int8-full` also quantizes the UNet's linear layers (NNCF's full quantization, as the OpenVINO
notebooks quantize SD's UNet), so they run int8 kernels too: SD 1.5 at 512², one step 1.36 s against hybrid's 1.57 s
and the default's 2.13 s, UNet output 4.9 % from f32 (`python -m bench --only openvino`: `openvino_vs_torch.full`,
`accuracy_demo.bf16:int8-full`).

NNCF is imported only while an IR is converted (warm loads read the compressed IR and never import it), with
openvino_telemetry hidden so that NNCF picks its own no-op telemetry stub: the studio makes no network calls of its
own.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from studio.engine import ModelLoadError

INT8 = "int8"
HYBRID = "int8-hybrid"  # int8 weights, and int8 weights and activations for the UNet's convolutions
FULL = "int8-full"  # int8 weights and activations for the UNet's convolutions and linear layers
INT8_NETWORKS = frozenset({"unet", "text_encoder"})  # the VAE's networks keep fp16 weights
# Part of a calibrated IR's cache key: bump when its calibration or quantized scope changes.
HYBRID_RECIPE = 2
FULL_RECIPE = 1
# Networks with int8 activations too. The text encoder runs once per image: int8 weights only. The VAE decoder
# stays fp16 although it is most of an image's fixed cost (SD 1.5 at 512²: 3.0 s, 1.8 s int8): int8 activations
# there took the demo model's pixels far out of the bf16 bounds (mean 5.6 against 0.3 levels, max 95; even with
# every convolution and MatMul left bf16, its quantized upsampling alone gave mean 2.9, max 62).
CALIBRATED_NETWORKS = frozenset({"unet"})
WEIGHT_NOTES = {  # what the OpenVINO report's summary says of each int8 format
    INT8: " with int8 MatMul weights",
    HYBRID: " with int8 weights and int8 UNet convolutions",
    FULL: " with int8 weights and an int8 UNet (convolutions and linear layers)",
}
NNCF_PIN = "nncf==3.4.0"  # as requirements.txt pins it


@contextlib.contextmanager
def _telemetry_hidden() -> Iterator[None]:
    """While importing NNCF, `import openvino_telemetry` fails, so NNCF installs its no-op stub."""
    saved = sys.modules.get("openvino_telemetry", ...)
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # makes the import raise ImportError
    try:
        yield
    finally:
        if saved is ...:
            del sys.modules["openvino_telemetry"]
        else:
            sys.modules["openvino_telemetry"] = saved


def _nncf() -> Any:
    if sys.modules.get("nncf") is not None:
        return sys.modules["nncf"]
    try:
        with _telemetry_hidden():
            import nncf
    except ImportError as exc:
        raise ModelLoadError(
            f"--openvino-weights int8 needs NNCF to compress the weights once: pip install {NNCF_PIN} ({exc})"
        ) from exc
    return nncf


def recipe(weights: str) -> str:
    """What the IR cache and the warm entries key on for `weights`: the weight format, versioned for the calibrated
    ones (int8-hybrid, int8-full)."""
    version = {HYBRID: HYBRID_RECIPE, FULL: FULL_RECIPE}.get(weights)
    return weights if version is None else f"{weights}.{version}"


def wants_int8(network: str, weights: str) -> bool:
    """True when `network` ("unet", "text_encoder", "vae_decoder", ...) gets int8 weights in IR of `weights`."""
    return weights in (INT8, HYBRID, FULL) and network in INT8_NETWORKS


def wants_calibration(network: str, weights: str) -> bool:
    """True when `network` gets int8 activations too (int8-hybrid, int8-full), calibrated, in IR of `weights`."""
    return weights in (HYBRID, FULL) and network in CALIBRATED_NETWORKS


def network_weights(network: str, weights: str) -> str:
    """The weight format of `network`'s own IR when the engine asks for `weights`: the networks int8 leaves alone
    share the fp16 IR, and those the calibrated modes leave at int8 weights share the int8 one."""
    if wants_calibration(network, weights):
        return weights
    if weights in (INT8, HYBRID, FULL):
        return INT8 if wants_int8(network, weights) else "fp16"
    return weights


def compress_int8(model: Any) -> Any:
    """`model` (an openvino.Model, read from its fp16 IR) with its MatMul and embedding weights int8 per output channel
    (asymmetric), the other weights as they were. Data-free: no calibration images are needed."""
    nncf = _nncf()
    return nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(types=["Convolution", "GroupConvolution"], validate=False),
    )


def _weighted_matmuls(model: Any) -> list[str]:
    """Names of the MatMuls whose one input is a weight (a Constant, possibly behind NNCF's decompression chain):
    they keep int8 weights with bf16 activations (hybrid mode quantizes MatMuls of two activations only)."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        for port in range(2):
            node = op.input_value(port).get_node()
            while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
                node = node.input_value(0).get_node()
            if node.get_type_name() == "Constant":
                names.append(op.get_friendly_name())
                break
    return names


# Convolutions that stay bf16 in hybrid mode: the UNet's first and last (latents in and noise out) and the 1x1 skip
# projections of its ResNet blocks (every up block's: they take the concatenated skip connections). With them int8
# the demo model's pixels left the bf16 bounds (inpaint: max 125, mean 3.2 levels against torch); without, max 56,
# mean 1.5 (`python -m bench --only openvino`'s accuracy_demo tasks, /tmp/probe/hyb_variants.py).
SENSITIVE_CONVOLUTIONS = re.compile(r"\.(conv_in|conv_out|conv_shortcut)/")


def _sensitive_convolutions(model: Any) -> list[str]:
    return [
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution" and SENSITIVE_CONVOLUTIONS.search(op.get_friendly_name())
    ]


def quantize(model: Any, weights: str, calibration: list[list[Any]]) -> Any:
    """`model` (the UNet) quantized for `weights`, int8 weights and activations with ranges from `calibration` (lists
    of the model's inputs in order), but for `SENSITIVE_CONVOLUTIONS`:
    - int8-hybrid (NNCF's hybrid mode): int8 MatMul weights (`compress_int8`) with bf16 activations, the convolutions
      and the MatMuls of two activations (attention's) quantized;
    - int8-full (NNCF's full quantization): the linear layers quantized as well, with symmetric int8 weights, so the
      CPU runs them as int8 FullyConnected kernels (SD 1.5 at 512²: a step's linear layers in 0.27 s, 0.49 s
      hybrid)."""
    if weights == HYBRID:
        model = compress_int8(model)
        return _quantize(model, calibration, [*_weighted_matmuls(model), *_sensitive_convolutions(model)])
    if weights == FULL:
        return _quantize(model, calibration, _sensitive_convolutions(model))
    raise ValueError(f"weights: {weights!r} is not a calibrated format ({HYBRID}, {FULL})")


def _quantize(model: Any, calibration: list[list[Any]], ignored: list[str]) -> Any:
    """nncf.quantize of `model` but the ops named `ignored`; SmoothQuant off, as optimum-intel does for diffusion."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # not a line for each of the ~200 ops it leaves alone
    try:
        return nncf.quantize(
            model,
            nncf.Dataset(calibration),
            subset_size=len(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)  # off (convolutions: off by default)
            ),
        )
    finally:
        nncf_log.setLevel(level)


# What the hybrid UNet is calibrated on: the text encoder's states for these prompts (and the empty negative prompt),
# at timesteps across the schedule, with unit-variance latents (what every sampler's scaled model input is).
CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "portrait of an old fisherman, detailed skin, 85mm, soft light",
    "a castle on a cliff at sunset, oil painting",
    "a bowl of fruit on a wooden table, still life",
    "city street at night in the rain, neon signs, cinematic",
    "a cute corgi puppy in a field of flowers",
    "isometric fantasy village, digital art, highly detailed",
    "watercolor landscape with mountains and a lake",
)
CALIBRATION_SAMPLES = 16
CALIBRATION_LATENT = 32  # 256 px: a quarter of 512²'s cost per sample, ranges that hold at every size


def unet_calibration(
    tokenizer: Any,
    text_encoder: Any,
    channels: int,
    samples: int = CALIBRATION_SAMPLES,
    latent: int = CALIBRATION_LATENT,
) -> list[list[Any]]:
    """Guided-step inputs (sample, timestep, encoder_hidden_states) for `quantize_hybrid`, from the pipeline's own
    tokenizer and text encoder (torch or already OpenVINO): batch 2 (negative, positive), deterministic (seeded)."""
    import numpy as np
    import torch

    tokens = tokenizer(
        ["", *CALIBRATION_PROMPTS], padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        states = text_encoder(tokens)[0].float().numpy()
    rng = np.random.default_rng(0)
    timesteps = np.linspace(999, 1, samples)
    return [
        [
            rng.standard_normal((2, channels, latent, latent), dtype=np.float32),
            np.array(round(float(t)), dtype=np.float32),
            np.stack([states[0], states[1 + i % len(CALIBRATION_PROMPTS)]]),
        ]
        for i, t in enumerate(timesteps)
    ]


def calibration_for(pipe: Any, attr: str, module: Any) -> Callable[[], list[list[Any]]] | None:
    """What makes the calibration inputs of `pipe`'s `attr` ("unet", "text_encoder", "vae") from `pipe`, called only
    if a calibrated IR is converted; None where no network of `attr` is calibrated."""
    if attr != "unet":
        return None
    return lambda: unet_calibration(pipe.tokenizer, pipe.text_encoder, module.config.in_channels)
