"""OpenVINO compiled networks, and the redirection of a diffusers module's calls into them.

The UNet's and the text encoder's `forward` and the VAE's `encode`/`decode` are replaced *inside the same module
objects*, so every pipeline sharing those modules (txt2img, img2img, inpaint, the per-call copies) runs OpenVINO
with the scheduler, seeds and sampler code untouched. Arguments the compiled graphs cannot honour are refused with
an EngineError rather than ignored. Afterwards the torch weights can be released (`release_weights`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import openvino as ov
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from transformers import CLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from studio.config import DEFAULT_OPENVINO_STATIC_SHAPES
from studio.engine import EngineError
from studio.engines.openvino_pages import MAPPED_WEIGHTS
from studio.engines.openvino_static import STATIC_NETWORKS, StaticSource, StaticVariant, StaticVariants

_MARK = "_studio_openvino"  # attribute set on modules whose calls were redirected to OpenVINO
_DONE_BEFORE_DECODE = "_studio_openvino_done_before_decode"  # a VAE's: networks whose buffers it releases first


class CompiledNetwork:
    """One OpenVINO network: its dynamic-shape compiled model with its own infer request, and its static variants.

    Calls are serialised with a lock (an InferRequest is not re-entrant; LocalEngine runs one generation at a
    time anyway). Outputs are copied out of OpenVINO's buffers, which the next inference overwrites.
    """

    def __init__(
        self,
        name: str,
        compiled: ov.CompiledModel | None,
        *,
        source: StaticSource | None = None,
        static_shapes: int | None = None,
    ):
        """`source` (the ov.Model `compiled` was compiled from, with its core and config) lets the network compile
        static-shape variants of itself per input shape (studio.engines.openvino_static); `static_shapes` is how
        many to keep (None: DEFAULT_OPENVINO_STATIC_SHAPES for the networks in STATIC_NETWORKS, else 0).

        `compiled` None (needs a `source`) compiles the dynamic model only when a call needs it: with static variants
        on, calls run static variants (`_static_variant`) and the dynamic model is needed only if one fails to
        compile, or when the variants are turned off (`set_static_shapes(0)` compiles it then). Not compiling it
        saves its compile (1.8 s) and its graph (~85 MB) for an SD 1.5 UNet."""
        if compiled is None and source is None:
            raise ValueError(f"{name}: a network without a compiled model needs a source to compile it from")
        self.name = name
        self._compiled = compiled
        self._request = compiled.create_infer_request() if compiled is not None else None
        self.lock = threading.Lock()
        self.calls = 0
        self.static_calls = 0  # calls served by a static variant
        self.dynamic_calls = 0  # calls served by the dynamic model (its weights are packed on the first one)
        self.seconds = 0.0
        self.compile_seconds = 0.0  # of the dynamic model, when it was compiled on first use
        self.source = source
        self.static: StaticVariants | None = None
        if static_shapes is None:
            static_shapes = DEFAULT_OPENVINO_STATIC_SHAPES if name in STATIC_NETWORKS else 0
        self.set_static_shapes(static_shapes)

    def set_static_shapes(self, keep: int) -> None:
        """Keep at most `keep` static-shape variants (0: dynamic only). Needs a `source` to be more than 0."""
        if keep < 0:
            raise ValueError(f"static variants to keep: must be 0 (off) or more, got {keep}")
        if self.static is not None:
            self.static.set_keep(keep)
        elif keep > 0 and self.source is not None:
            self.static = StaticVariants.from_source(self.name, self.source, keep)
        if keep == 0:
            with self.lock:
                self._dynamic()  # every call runs it from now on: compile it now, not in the next request

    @property
    def compiled(self) -> ov.CompiledModel | None:
        """The dynamic-shape compiled model; None while no call has needed it (looking does not compile it)."""
        return self._compiled

    @property
    def request(self) -> ov.InferRequest | None:
        """The dynamic model's infer request (None while it is not compiled); calls go through `__call__`."""
        return self._request

    def _dynamic(self) -> tuple[ov.CompiledModel, ov.InferRequest]:
        """The dynamic model and its request, compiling them on first use; the caller holds `self.lock`."""
        if self._compiled is None or self._request is None:
            assert self.source is not None
            started = time.perf_counter()
            with MAPPED_WEIGHTS.packing():
                self._compiled = self.source.compile_dynamic()
            self._request = self._compiled.create_infer_request()
            self.compile_seconds += time.perf_counter() - started
        return self._compiled, self._request

    def _static_variant(self, shapes: tuple[tuple[int, ...], ...]) -> StaticVariant | None:
        """The static variant to run `shapes` on, or None for the dynamic model.

        While the dynamic model has never run, a missing variant is compiled right here: the dynamic model packs
        its weights on its first inference, which costs about as long as compiling the static variant (SD 1.5 UNet,
        bench/openvino_static.py), so the first image is not slower, and the dynamic model never holds a second copy
        of the weights. Once the dynamic model has run, it serves new shapes while their variant compiles in the
        background (`__call__` queues it)."""
        assert self.static is not None
        variant = self.static.get(shapes)
        if variant is None and self.dynamic_calls == 0:
            variant = self.static.ensure(shapes)
        return variant

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        started = time.perf_counter()
        inputs = [np.require(a, requirements="C") for a in arrays]  # keeps 0-d arrays 0-d
        shapes = tuple(tuple(int(d) for d in a.shape) for a in inputs)
        static = self.static
        variant = self._static_variant(shapes) if static is not None else None
        with self.lock:
            compiled, request = self._dynamic() if variant is None else (variant.compiled, variant.request)
            first = (self.dynamic_calls if variant is None else variant.calls) == 0
            # On a first call the plugin packs its weights: keep the IR's mapped pages out of RSS meanwhile.
            with MAPPED_WEIGHTS.packing() if first else contextlib.nullcontext():
                request.infer(inputs)
            count = len(compiled.outputs)
            outputs = [np.array(request.get_output_tensor(i).data, copy=True) for i in range(count)]
            self.calls += 1
            if variant is not None:
                variant.calls += 1
                self.static_calls += 1
            else:
                self.dynamic_calls += 1
            self.seconds += time.perf_counter() - started
        if static is not None and variant is None:
            static.want(shapes)  # compiles in the background, outside the lock; this shape's next calls use it
        return outputs

    def release_memory(self) -> None:
        """Give back the memory OpenVINO holds for intermediate results between calls (the dynamic model's and every
        static variant's); the packed weights stay. The next call allocates it again (fresh pages: ~0.1 s for the
        ~0.5 GB of an SD 1.5 VAE decode at 512²)."""
        with self.lock:
            if self._compiled is not None:
                self._compiled.release_memory()
            for variant in self.static.variants() if self.static is not None else ():
                variant.compiled.release_memory()

    @property
    def precision(self) -> str:
        """The inference precision OpenVINO actually uses for this model ("bf16", "f32", ...), read back from a
        compiled model (without one yet, the precision the network is compiled with)."""
        variants = self.static.variants() if self.static is not None else []
        compiled = self._compiled or next((v.compiled for v in variants), None)
        if compiled is None:
            assert self.source is not None
            return str(self.source.config.get("INFERENCE_PRECISION_HINT", "?"))
        try:
            value = compiled.get_property("INFERENCE_PRECISION_HINT")
        except Exception:  # older plugins may not report it
            return "?"
        text = value.to_string() if hasattr(value, "to_string") else str(value)
        return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(text, text)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").contiguous().numpy()


def release_weights(module: torch.nn.Module) -> None:
    """Replace every parameter and buffer by an empty tensor of the same dtype/device, freeing the torch weights.

    `.dtype`, `.device`, `.config` and `.to()` keep working (pipelines read them); the weights now live in the
    OpenVINO compiled model only.
    """
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


def _scalar_timestep(timestep: torch.Tensor | float | int) -> np.ndarray:
    if isinstance(timestep, torch.Tensor):
        values = timestep.detach().to("cpu").reshape(-1).to(torch.float32)
        if values.numel() > 1 and not bool((values == values[0]).all()):
            raise EngineError("the OpenVINO UNet takes one timestep per call (got different timesteps in a batch)")
        return np.asarray(float(values[0]), dtype=np.float32)
    return np.asarray(float(timestep), dtype=np.float32)


def install_unet(unet: UNet2DConditionModel, network: CompiledNetwork) -> None:
    """From now on `unet(...)` runs `network` (SD 1.x/2.x conditioning only)."""

    def forward(
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
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


def install_text_encoder(text_encoder: CLIPTextModel, network: CompiledNetwork) -> None:
    """From now on `text_encoder(input_ids)` runs `network` (last hidden state only)."""

    def forward(
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor]:
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


def install_vae(vae: AutoencoderKL, decoder: CompiledNetwork, encoder: CompiledNetwork) -> None:
    """From now on `vae.decode` runs `decoder`, and `vae.encode` runs `encoder` for the posterior's moments (the
    sampling stays in torch with the request's generator, so img2img/inpaint draw the torch engine's noise)."""

    def encode(x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        try:
            (moments,) = encoder(_numpy(x.float()))
        finally:
            encoder.release_memory()
        posterior = DiagonalGaussianDistribution(torch.from_numpy(moments).to(x.dtype))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(
        z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        for network in getattr(vae, _DONE_BEFORE_DECODE, ()):  # the UNet's buffers make room for the decoder's
            network.release_memory()
        try:
            (image,) = decoder(_numpy(z.float()))
        finally:
            decoder.release_memory()  # ~0.5 GB at 512², held until the next image otherwise
        decoded = torch.from_numpy(image).to(z.dtype)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    vae.encode = encode
    vae.decode = decode
    setattr(vae, _MARK, {"vae_decoder": decoder, "vae_encoder": encoder})


def release_before_decoding(pipes: Iterable[Any]) -> None:
    """Let each OpenVINO VAE give back its pipelines' UNet buffers before decoding: the UNet has finished that image
    (with hires fix it runs again after the decode, and allocates again). This lowers the peak of an image by the
    UNet's intermediate memory (~0.1 GB for SD 1.5 at 512²)."""
    for pipe in pipes:
        vae, unet = getattr(pipe, "vae", None), getattr(pipe, "unet", None)
        if vae is None or unet is None or not is_openvino_module(vae):
            continue
        linked = getattr(vae, _DONE_BEFORE_DECODE, [])
        linked.extend(n for n in networks(unet).values() if all(n is not other for other in linked))
        setattr(vae, _DONE_BEFORE_DECODE, linked)


def is_openvino_module(module: torch.nn.Module) -> bool:
    """True when `module`'s calls run on OpenVINO (apply_openvino installed itself there)."""
    return hasattr(module, _MARK)


def networks(module: torch.nn.Module) -> dict[str, CompiledNetwork]:
    """The compiled networks behind an OpenVINO-redirected module ({} for a plain torch module)."""
    return dict(getattr(module, _MARK, {}))


def set_static_shapes(pipes: Iterable[Any], keep: int, names: Iterable[str] = STATIC_NETWORKS) -> int:
    """Keep at most `keep` static-shape variants in the networks called `names` of `pipes`' modules (0: off).

    Returns how many networks could take them (those compiled with a StaticSource)."""
    wanted = set(names)
    found = {
        id(network): network
        for pipe in pipes
        for attr in ("unet", "vae", "text_encoder")
        for name, network in networks(getattr(pipe, attr, None)).items()
        if name in wanted and network.source is not None
    }
    for network in found.values():
        network.set_static_shapes(keep)
    return len(found)
