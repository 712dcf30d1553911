"""Inpainting as A1111 does it: the mask, "Only masked", "Masked content", and pasting the result back.

- **Whole picture** (default): the image and the mask are resized to width x height; the mask is blurred by
  `mask_blur`; the pipeline repaints the white area and the result is composited over the original with that mask.
- **Only masked** (`inpaint_only_masked`, A1111's `inpaint_full_res`): the blurred mask's bounding box, widened by
  `inpaint_padding` pixels and then to the aspect ratio of width x height (diffusers' `get_crop_region`, its port
  of A1111's rule), is cut out of the full-size image, resized to width x height ("resize and fill"), inpainted,
  scaled back into the box and composited over the untouched original: the result keeps the input's size and
  only the masked area gets the full resolution.
- **Masked content** (`masked_content`, A1111's `inpainting_fill`): what the masked area starts from —
  `original` (the image itself, noised by `strength`), `fill` (the masked pixels replaced by colours spread in from
  around them before encoding), `latent noise` (random latents) or `latent nothing` (zero latents). The latent
  modes replace the masked part of the image latents per image, drawing from the image's own generator in the
  order the pipeline itself would, so everything outside the mask stays exactly as in `original`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageFilter

from studio.types import GenerationRequest, RequestError

LATENT_FILLS = ("latent noise", "latent nothing")
# Blur radii of the colour fill, coarse to fine: large holes take their surroundings' average, edges their neighbours.
_FILL_RADII = (64, 16, 4, 1)
# The latent noise of "latent noise" comes from its own generator, seeded from the image's seed by this offset, so it
# is not the noise the pipeline draws itself.
_NOISE_SEED_OFFSET = 0x5EED


@dataclass
class InpaintPlan:
    """How one inpaint request is pasted back: the full-size original and blurred mask it is composited over, the
    box it was generated for (Only masked), and the latent fill to apply per image (None: none)."""

    image: Image.Image
    mask: Image.Image
    crop: tuple[int, int, int, int] | None = None
    latent_fill: str | None = None


def prepare(
    pipe: DiffusionPipeline, request: GenerationRequest, warnings: list[str]
) -> tuple[dict[str, Any], InpaintPlan]:
    """The inpaint pipeline's arguments and the plan to paste the results back (see the module docstring).

    RequestError for an empty mask; a resized image or mask is a warning.
    """
    size = (request.width, request.height)
    image = request.image.convert("RGB")
    mask = request.mask.convert("L")
    if request.inpaint_only_masked:
        if mask.size != image.size:  # the mask is drawn on the image: it must cover it exactly
            warnings.append(
                f"mask: resized from {mask.width}x{mask.height} to the image's {image.width}x{image.height}"
            )
            mask = mask.resize(image.size, resample=Image.Resampling.LANCZOS)
    else:
        if image.size != size:
            warnings.append(f"image: resized from {image.width}x{image.height} to {request.width}x{request.height}")
            image = image.resize(size, resample=Image.Resampling.LANCZOS)
        if mask.size != size:
            warnings.append(f"mask: resized from {mask.width}x{mask.height} to {request.width}x{request.height}")
            mask = mask.resize(size, resample=Image.Resampling.LANCZOS)
    if mask.getextrema()[1] == 0:
        raise RequestError("mask", "empty", "is empty (all black): paint the area to repaint in white")
    if request.mask_blur:
        mask = pipe.mask_processor.blur(mask, blur_factor=request.mask_blur)
    plan = InpaintPlan(image=image, mask=mask)
    work_image, work_mask = image, mask
    if request.inpaint_only_masked:
        plan.crop = pipe.mask_processor.get_crop_region(
            mask, request.width, request.height, pad=request.inpaint_padding
        )
        work_image = pipe.image_processor.resize(image.crop(plan.crop), request.height, request.width, "fill")
        work_mask = pipe.mask_processor.resize(mask.crop(plan.crop), request.height, request.width, "fill").convert("L")
    if request.masked_content != "original":
        work_image = fill_masked(work_image, work_mask)
    if request.masked_content in LATENT_FILLS:
        plan.latent_fill = request.masked_content
    args = {"image": work_image, "mask_image": work_mask, "strength": request.strength, "width": size[0],
            "height": size[1]}  # fmt: skip
    return args, plan


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """`image` with its masked (white) area replaced by colours spread in from the unmasked pixels around it.

    Each pass blurs the unmasked pixels with their coverage as alpha (premultiplied, so the colour is the average of
    the known neighbours) and lays the result over the previous, coarser one; the unmasked pixels stay as they are.
    """
    known = mask.convert("L").point(lambda value: 255 if value < 128 else 0)
    if known.getextrema()[1] == 0:  # everything is masked: there is nothing to spread
        return image
    source = image.convert("RGBA")
    source.putalpha(known)
    premultiplied = source.convert("RGBa")
    average = tuple(int(channel) for channel in _mean_colour(image, known))
    filled = Image.new("RGBA", image.size, (*average, 255))
    for radius in _FILL_RADII:
        layer = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        filled = Image.alpha_composite(filled, layer)
    result = filled.convert("RGB")
    result.paste(image.convert("RGB"), mask=known)
    return result


def _mean_colour(image: Image.Image, known: Image.Image) -> tuple[float, ...]:
    from PIL import ImageStat

    return tuple(ImageStat.Stat(image.convert("RGB"), mask=known).mean)


def masked_latents(
    pipe: DiffusionPipeline,
    args: dict[str, Any],
    generator: torch.Generator,
    seed: int,
    fill: str,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The pipeline arguments that make the masked area start from `fill` ("latent noise" / "latent nothing").

    The image is encoded here with the image's generator, exactly as the pipeline would encode it first; the
    masked latents are replaced; the result goes in as `image` (latents) and the masked image as pixels in
    `masked_image_latents`, which the pipeline encodes with the same generator at the point it always does.
    """
    height, width = args["height"], args["width"]
    device = pipe._execution_device
    pixels = pipe.image_processor.preprocess(args["image"], height=height, width=width).to(torch.float32)
    mask = pipe.mask_processor.preprocess(args["mask_image"], height=height, width=width)
    latents = pipe._encode_vae_image(pixels.to(device=device, dtype=dtype), generator=generator)
    latent_mask = torch.nn.functional.interpolate(mask, size=latents.shape[-2:]).to(device=device, dtype=dtype)
    if fill == "latent noise":
        noise_generator = torch.Generator("cpu").manual_seed((seed + _NOISE_SEED_OFFSET) % 2**63)
        replacement = torch.randn(latents.shape, generator=noise_generator, dtype=torch.float32)
        replacement = replacement.to(device=device, dtype=dtype)
    else:
        replacement = torch.zeros_like(latents)
    return {
        "image": latents * (1 - latent_mask) + replacement * latent_mask,
        "masked_image_latents": pixels * (mask < 0.5),
    }


def paste_back(pipe: DiffusionPipeline, plan: InpaintPlan, generated: Image.Image) -> Image.Image:
    """The generated image composited over the original through the blurred mask (into the crop box for Only
    masked), so nothing outside the mask changes."""
    return pipe.image_processor.apply_overlay(plan.mask, plan.image, generated, crop_coords=plan.crop)
