"""Prompt conditioning the way A1111 computes it: weighted fragments -> 75-token chunks -> CLIP -> embeddings.

The result goes to the diffusers pipelines as `prompt_embeds` / `negative_prompt_embeds` (+ the pooled embeds for
SDXL), so the prompt never reaches the pipeline's own 77-token encode_prompt.

- Each chunk is `start + up to 75 tokens + end + padding` (the tokenizer's pad token after the end token, which is
  both what diffusers builds and what A1111 feeds CLIP), encoded alone; chunks are concatenated on the token axis.
  A prompt of at most 75 tokens without weights is one chunk encoded exactly as diffusers' encode_prompt encodes
  it, so images made before prompt weighting existed reproduce bit for bit.
- Weights (A1111's default "Original" emphasis): z *= weight per token, then z *= mean(z before) / mean(z after),
  per chunk and per text encoder. Computed in float32, cast back. (Not rescaled when the mean is float noise,
  see _emphasize: the demo model's text encoder.)
- Clip skip, A1111's meaning (1 = last layer): for SD 1.x, n > 1 takes the n-th hidden state from the end through
  the encoder's final layer norm (diffusers' clip_skip = n - 1). A1111 deliberately ignores clip skip for SD 2.x
  (the model's config chooses its layer) and SDXL (both encoders always use their penultimate layer, no final norm)
  — so do we, with a warning, so that A1111 infotexts saying "Clip skip: 2" reproduce.
- The negative prompt is padded with empty-prompt chunks to the prompt's chunk count, or the other way round.
  (A1111 by default runs the two through the UNet separately when their lengths differ; padding is its
  "Pad prompt/negative prompt" option. A diffusers pipeline batches them, so they must have one length.)
- SDXL: the pooled embeds are the second encoder's projected output for the first chunk; an empty negative prompt
  gives zeros when the model's config says force_zeros_for_empty_prompt (as diffusers and A1111 both do).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import get_module_execution_device

from studio import prompts
from studio.types import RequestError

logger = logging.getLogger(__name__)

MEAN_NOISE = 1e-4  # a chunk mean below this fraction of the mean |value| is float noise (see _emphasize)


@dataclass
class PromptEmbeds:
    """The conditioning for one request (batch 1; the pipeline repeats it for num_images_per_prompt)."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    prompt_chunks: int = 1  # chunks the prompt itself needed (before padding)
    negative_chunks: int = 1
    warnings: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        """75-token chunks in both tensors (token axis = chunks × 77)."""
        return max(self.prompt_chunks, self.negative_chunks)

    def kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a diffusers SD / SDXL pipeline call (txt2img, img2img, inpaint)."""
        out = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None and self.negative_pooled_prompt_embeds is not None:
            out["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            out["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return out


@dataclass
class _Encoded:
    hidden: torch.Tensor  # [1, chunks * 77, width]
    pooled: torch.Tensor | None  # [1, projection] for an encoder with a projection (SDXL's second)
    chunks: int


def _encoders(pipe: Any) -> list[tuple[Any, torch.nn.Module]]:
    """(tokenizer, text encoder) pairs in the pipeline's order; SDXL has two, its refiner only the second."""
    pairs = [
        (getattr(pipe, tok, None), getattr(pipe, enc, None))
        for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    ]
    pairs = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
    if not pairs:
        raise RequestError("prompt", type(pipe).__name__, "this pipeline has no CLIP tokenizer and text encoder")
    return pairs


def is_sdxl(pipe: Any) -> bool:
    """SDXL (base or refiner): conditioned by a second, projected text encoder plus pooled embeds."""
    return getattr(pipe, "text_encoder_2", None) is not None


def _is_open_clip(text_encoder: torch.nn.Module) -> bool:
    """SD 2.x's OpenCLIP ViT-H (GELU, 1024 wide) rather than SD 1.x's OpenAI CLIP ViT-L (quick GELU, 768)."""
    config = text_encoder.config
    return getattr(config, "hidden_act", "") == "gelu" or getattr(config, "hidden_size", 0) == 1024


def clip_skip_applies(pipe: Any) -> bool:
    """Whether clip skip changes anything for this model: SD 1.x only, as in A1111 (see the module docstring)."""
    encoder = getattr(pipe, "text_encoder", None)
    return not is_sdxl(pipe) and encoder is not None and not _is_open_clip(encoder)


def supports_clip_skip(pipe: Any) -> bool:
    """False when the text encoder runs on OpenVINO: its compiled network returns the last layer only."""
    # A module can only have been redirected if the OpenVINO module was imported; checking sys.modules keeps
    # openvino out of torch-only processes.
    openvino_modules = sys.modules.get("studio.engines.openvino_modules")
    encoder = getattr(pipe, "text_encoder", None)
    return openvino_modules is None or encoder is None or not openvino_modules.is_openvino_module(encoder)


def check_clip_skip(pipe: Any, clip_skip: int) -> None:
    """Raise RequestError("clip_skip", …) when this pipeline cannot honour `clip_skip` (call before generating)."""
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 1:
        raise RequestError("clip_skip", clip_skip, "must be a whole number ≥ 1 (1 = the last CLIP layer)")
    if clip_skip == 1 or not clip_skip_applies(pipe):
        return
    if not supports_clip_skip(pipe):
        raise RequestError(
            "clip_skip",
            clip_skip,
            "the OpenVINO engine supports only 1 (its text encoder is compiled for the last layer); "
            "use the torch engine for clip skip",
        )
    layers = pipe.text_encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise RequestError("clip_skip", clip_skip, f"this model's text encoder has {layers} layers: use 1 to {layers}")


def _clip_skip_warning(pipe: Any, clip_skip: int) -> list[str]:
    if clip_skip == 1 or clip_skip_applies(pipe):
        return []
    if is_sdxl(pipe):
        why = "SDXL models (as in A1111: both text encoders always use their penultimate layer)"
    else:
        why = "Stable Diffusion 2.x models (as in A1111: the model's text encoder config chooses its layer)"
    return [f"clip_skip: {clip_skip} has no effect on {why}"]


def _comma_token(tokenizer: Any) -> int | None:
    token = tokenizer.convert_tokens_to_ids(",</w>")
    return None if token is None or token == tokenizer.unk_token_id else token


def _chunk(tokenizer: Any, fragments: list[prompts.Fragment], length: int) -> list[prompts.Chunk]:
    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    return prompts.chunk_prompt(fragments, tokenize, _comma_token(tokenizer), chunk_length=length)


def _chunk_length(tokenizer: Any, encoder: torch.nn.Module) -> int:
    positions = getattr(encoder.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return min(positions, tokenizer.model_max_length) - 2


def _emphasize(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's vector by its weight, then restore the chunk's mean.

    Guard: when either mean is at float-noise level against the values' magnitude (an encoder whose final layer
    norm has no bias, like the random demo model's, averages to ~1e-9), their ratio is noise that could flip or
    blow up the whole embedding; the weighted values are then kept unscaled (A1111's "No norm" emphasis). Real
    CLIP outputs have a clearly non-zero mean, so they always get the rescale.
    """
    if all(w == 1.0 for w in weights):
        return z
    z32 = z.float()
    before = z32.mean()
    weighted = z32 * torch.tensor(weights, dtype=torch.float32, device=z.device).reshape(1, -1, 1)
    after = weighted.mean()
    floor = MEAN_NOISE * z32.abs().mean()
    if before.abs() <= floor or after.abs() <= floor:
        logger.debug("emphasis: chunk mean %.3g is noise against magnitude %.3g; not rescaled", before, floor)
        return weighted.to(z.dtype)
    return (weighted * (before / after)).to(z.dtype)


class _ChunkEncoder:
    """Runs one (tokenizer, text encoder) pair on chunks, selecting the layer clip skip asks for."""

    def __init__(self, tokenizer: Any, encoder: torch.nn.Module, sdxl: bool, clip_skip: int):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.length = _chunk_length(tokenizer, encoder)
        self.sdxl = sdxl
        self.skip = clip_skip  # 1 unless clip skip applies to this model (SD 1.x)
        self.device = get_module_execution_device(encoder)
        self.use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
        self._empty: torch.Tensor | None = None

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The encoder's final layer norm (transformers 5 keeps it on CLIPTextModel itself, 4 on .text_model;
        diffusers' own clip_skip path still looks for .text_model and fails with transformers 5)."""
        return getattr(self.encoder, "text_model", self.encoder).final_layer_norm(hidden)

    def chunks(self, fragments: list[prompts.Fragment]) -> list[prompts.Chunk]:
        return _chunk(self.tokenizer, fragments, self.length)

    def run(self, chunk: prompts.Chunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk -> (hidden [1, 77, width] weighted, pooled [1, projection] or None)."""
        tok, count = self.tokenizer, len(chunk.tokens)
        ids = [tok.bos_token_id, *chunk.tokens, tok.eos_token_id] + [tok.pad_token_id] * (self.length - count)
        kwargs: dict[str, Any] = {}
        if self.use_mask:  # diffusers passes the tokenizer's mask to encoders configured for one
            mask = [1] * (count + 2) + [0] * (self.length - count)
            kwargs["attention_mask"] = torch.tensor([mask], device=self.device)
        if self.sdxl or self.skip > 1:  # OpenVINO text encoders refuse output_hidden_states: ask only if needed
            kwargs["output_hidden_states"] = True
        output = self.encoder(torch.tensor([ids], device=self.device), **kwargs)
        pooled = output[0] if output[0].ndim == 2 else None
        if self.sdxl:
            hidden = output.hidden_states[-2]
        elif self.skip > 1:
            hidden = self.final_norm(output.hidden_states[-self.skip])
        else:
            hidden = output[0]
        return _emphasize(hidden, [1.0, *chunk.weights] + [1.0] * (self.length + 1 - count)), pooled

    def empty(self) -> torch.Tensor:
        """The embedding of an empty chunk (what padding chunks are), computed once per request."""
        if self._empty is None:
            self._empty = self.run(prompts.Chunk())[0]
        return self._empty


def _encode(encoder: _ChunkEncoder, chunks: list[prompts.Chunk], total: int) -> _Encoded:
    hidden, pooled = [], None
    for i, chunk in enumerate(chunks):
        z, chunk_pooled = encoder.run(chunk)
        hidden.append(z)
        pooled = chunk_pooled if i == 0 else pooled
    if total > len(chunks):  # padding chunks (computing the empty chunk costs a whole encoder run)
        hidden += [encoder.empty()] * (total - len(chunks))
    return _Encoded(torch.cat(hidden, dim=1), pooled, len(chunks))


def _join(parts: list[_Encoded], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = parts[0].hidden if len(parts) == 1 else torch.concat([p.hidden for p in parts], dim=-1)
    pooled = parts[-1].pooled  # SDXL: the second encoder's projected output
    return hidden.to(dtype=dtype, device=device), None if pooled is None else pooled.to(dtype=dtype, device=device)


def encode_prompts(pipe: Any, prompt: str, negative_prompt: str = "", clip_skip: int = 1) -> PromptEmbeds:
    """Encode a prompt and its negative with A1111's syntax, chunking, emphasis and clip skip.

    `prompt` must already have its LoRA tags removed (prompts.extract_loras); any other extra-network tag is
    dropped with a warning. Raises RequestError naming "prompt", "negative_prompt" or "clip_skip".
    """
    check_clip_skip(pipe, clip_skip)
    sdxl = is_sdxl(pipe)
    warnings = prompts.syntax_warnings(prompt, "prompt") + prompts.syntax_warnings(negative_prompt, "negative_prompt")
    warnings += _clip_skip_warning(pipe, clip_skip)
    positive = prompts.parse_prompt(prompt, "prompt")
    negative = prompts.parse_prompt(negative_prompt, "negative_prompt")
    zero_negative = sdxl and negative_prompt == "" and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", 0))
    skip = clip_skip if clip_skip_applies(pipe) else 1
    encoders = [_ChunkEncoder(tok, enc, sdxl, skip) for tok, enc in _encoders(pipe)]
    with torch.no_grad():
        planned = [(e, e.chunks(positive), e.chunks(negative)) for e in encoders]
        total = max(max(len(p), 1 if zero_negative else len(n)) for _, p, n in planned)
        pos = [_encode(e, p, total) for e, p, _ in planned]
        neg = None if zero_negative else [_encode(e, n, total) for e, _, n in planned]
    dtype = encoders[-1].encoder.dtype
    # The text encoder's own device, not pipe._execution_device: that walks every module's offload hooks (~8 ms a
    # call on the demo model, measured) and the studio never offloads.
    device = encoders[-1].device
    prompt_embeds, pooled = _join(pos, dtype, device)
    if neg is None:
        negative_embeds = torch.zeros_like(prompt_embeds)
        negative_pooled = None if pooled is None else torch.zeros_like(pooled)
    else:
        negative_embeds, negative_pooled = _join(neg, dtype, device)
    return PromptEmbeds(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        pooled_prompt_embeds=pooled if sdxl else None,
        negative_pooled_prompt_embeds=negative_pooled if sdxl else None,
        prompt_chunks=max(p.chunks for p in pos),
        negative_chunks=1 if neg is None else max(n.chunks for n in neg),
        warnings=warnings,
    )
