"""int8 weights for the OpenVINO IR (`--openvino-weights int8`), through NNCF's data-free weight compression.

What it changes: the MatMul (and embedding) weights of the UNet and the text encoder are stored int8 with a scale and
zero point per output channel (NNCF's INT8_ASYM). OpenVINO's CPU plugin keeps those weights int8 in memory and
decompresses them inside its FullyConnected kernels, so the packed weights of SD 1.5 shrink by ~0.4 GB while the
activations stay bf16 (or f32). Convolutions are left in fp16: the plugin would unpack int8 convolution weights to
f32 at compile time, which *doubles* their memory (measured: 4.0 GB of anonymous memory for an all-int8 SD 1.5 UNet
against 2.1 GB fp16). The VAE stays fp16 as well (it is nearly all convolutions, and it decides the pixels).

Measured on SD 1.5 (random weights, 512², 2 threads, bf16, `python -m bench --only openvino`): see the bench
fields `openvino_vs_torch.int8`; the demo model's pixel differences against torch are in `accuracy_demo.int8`.

NNCF is imported only while an IR is converted (warm loads read the compressed IR and never import it), with
openvino_telemetry hidden so that NNCF picks its own no-op telemetry stub: the studio makes no network calls of its
own.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from openvino._offline_transformations import compress_model_transformation

from studio.engine import ModelLoadError

INT8 = "int8"
INT8_NETWORKS = frozenset({"unet", "text_encoder"})  # the VAE's networks keep fp16 weights
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


def wants_int8(network: str, weights: str) -> bool:
    """True when `network` ("unet", "text_encoder", "vae_decoder", ...) gets int8 weights in IR of `weights`."""
    return weights == INT8 and network in INT8_NETWORKS


def compress_int8(model: Any) -> Any:
    """`model` (an openvino.Model, changed in place and returned) with its MatMul and embedding weights int8 per output
    channel (asymmetric) and its other float weights fp16. Data-free: no calibration images are needed."""
    nncf = _nncf()
    # The other float weights (convolutions, norms, biases) to fp16 first, as `ov.save_model` would: it skips that
    # for a model NNCF has compressed, which left SD 1.5's convolutions f32 (a 2.6 GB IR instead of 1.3 GB).
    compress_model_transformation(model)
    return nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(types=["Convolution", "GroupConvolution"], validate=False),
    )
