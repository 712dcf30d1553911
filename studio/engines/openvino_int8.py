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
ranges calibrated once on UNet inputs the conversion makes itself (`unet_calibration`); attention is one
ScaledDotProductAttention op in the IR and stays bf16. Faster (SD 1.5 at 512², one step: 1.65 s against 2.12 s here)
and less exact (the UNet output's mean difference from f32 is 4.6 % against 2.9 % with int8 weights): the bench's
`openvino_vs_torch.hybrid` and `accuracy_demo`.

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
INT8_NETWORKS = frozenset({"unet", "text_encoder"})  # the VAE's networks keep fp16 weights
HYBRID_RECIPE = 2  # part of the hybrid IR's cache key: bump when its calibration or quantized scope changes
HYBRID_NETWORKS = frozenset({"unet"})  # the text encoder runs once per image: int8 weights only
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
    """What the IR cache and the warm entries key on for `weights`: the weight format, versioned for int8-hybrid."""
    return f"{weights}.{HYBRID_RECIPE}" if weights == HYBRID else weights


def wants_int8(network: str, weights: str) -> bool:
    """True when `network` ("unet", "text_encoder", "vae_decoder", ...) gets int8 weights in IR of `weights`."""
    return weights in (INT8, HYBRID) and network in INT8_NETWORKS


def wants_hybrid(network: str, weights: str) -> bool:
    """True when `network` is quantized in NNCF's hybrid mode (int8 activations too) in IR of `weights`."""
    return weights == HYBRID and network in HYBRID_NETWORKS


def network_weights(network: str, weights: str) -> str:
    """The weight format of `network`'s own IR when the engine asks for `weights`: the networks int8 leaves alone
    share the fp16 IR, and those hybrid mode leaves at int8 weights share the int8 one."""
    if wants_hybrid(network, weights):
        return HYBRID
    if weights in (INT8, HYBRID):
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


def quantize_hybrid(model: Any, calibration: list[list[Any]]) -> Any:
    """`model` (the UNet) in NNCF's hybrid mode: int8 MatMul weights (`compress_int8`), then its convolutions but
    `SENSITIVE_CONVOLUTIONS` (and any MatMul of two activations) quantized, int8 weights and activations, with ranges
    from `calibration` (lists of the model's inputs in order). SmoothQuant off, as optimum-intel does for diffusion."""
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = compress_int8(model)
    ignored = [*_weighted_matmuls(model), *_sensitive_convolutions(model)]
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


def calibration_for(pipe: Any, unet: Any) -> Callable[[], list[list[Any]]]:
    """What makes `unet`'s calibration inputs from `pipe` (called only if the hybrid IR is converted)."""
    return lambda: unet_calibration(pipe.tokenizer, pipe.text_encoder, unet.config.in_channels)
