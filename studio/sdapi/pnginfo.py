"""`/sdapi/v1/png-info`, and infotexts as A1111 names their parameters (also used for `info`'s
extra_generation_params). Parsing is studio.metadata's; only the key names are A1111's here."""

from __future__ import annotations

import io
from typing import Any

from studio import metadata
from studio.sdapi.errors import invalid

# studio.metadata's snake_case names -> A1111's parameter names (as parse_generation_parameters gives them).
A1111_NAMES = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "steps": "Steps", "sampler": "Sampler",
    "scheduler": "Schedule type", "cfg_scale": "CFG scale", "image_cfg_scale": "Image CFG scale", "seed": "Seed",
    "width": "Size-1", "height": "Size-2", "model_hash": "Model hash", "model": "Model", "vae_hash": "VAE hash",
    "vae": "VAE", "denoising_strength": "Denoising strength", "mask_blur": "Mask blur", "clip_skip": "Clip skip",
    "hires_scale": "Hires upscale", "hires_steps": "Hires steps", "hires_upscaler": "Hires upscaler",
    "hires_resize_x": "Hires resize-1", "hires_resize_y": "Hires resize-2", "lora_hashes": "Lora hashes",
    "variation_seed": "Variation seed", "variation_seed_strength": "Variation seed strength", "backend": "Backend",
}  # fmt: skip
# The keys `info` reports in their own fields rather than in extra_generation_params.
_STANDARD = frozenset(
    {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size-1", "Size-2", "Model hash", "Model"}
    | {"VAE hash", "VAE", "Denoising strength", "Clip skip", "Version"}
)
MAX_PIXELS = 64 * 1024 * 1024  # an image read only for its metadata may be large, not unbounded


def parameters(infotext: str) -> dict[str, Any]:
    """An infotext's parameters under A1111's names (numbers as numbers)."""
    return {A1111_NAMES.get(key, key): value for key, value in metadata.parse_infotext(infotext).items()}


def extra_generation_params(infotext: str) -> dict[str, Any]:
    """The parameters `info` does not have a field for (Schedule type, Hires ..., Lora hashes, Mask blur, ...)."""
    return {key: value for key, value in parameters(infotext).items() if key not in _STANDARD}


def png_info(payload: Any) -> dict[str, Any]:
    """{info: the infotext ("" when none), items: the image's other text chunks, parameters: parsed}."""
    from PIL import Image, UnidentifiedImageError

    from studio.imagemeta import read_infotext
    from studio.sdapi.fields import image_bytes

    if not isinstance(payload, dict):
        raise invalid((), "must be a JSON object with an image", type(payload).__name__)
    value = payload.get("image")
    if value is None or (isinstance(value, str) and not value.strip()):
        return {"info": "", "items": {}, "parameters": {}}
    data = image_bytes("image", value)
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise invalid("image", f"is {image.width}x{image.height}, more than {MAX_PIXELS} pixels", "<image>")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise invalid("image", "is not an image Pillow can read (PNG, JPEG, WebP, ...)", "<bytes>") from None
    infotext = read_infotext(image) or ""
    items = {key: text for key, text in image.info.items() if isinstance(text, str) and key != "parameters"}
    return {"info": infotext, "items": items, "parameters": parameters(infotext) if infotext else {}}
