"""A1111's img2img image handling before generation: the resize modes and the inverted mask (Pillow only).

`resize_mode` says how an init image whose size differs from width x height is fitted (A1111's labels):
0 "Just resize" (stretch), 1 "Crop and resize" (scale to cover, centre crop), 2 "Resize and fill" (scale to fit,
centre, the bands filled by stretching the image's edge rows or columns), 3 "Just resize (latent upscale)", which
the studio does as a plain resize, with a warning. The mask gets the same treatment as the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

LANCZOS = 1  # PIL.Image.Resampling.LANCZOS, without importing Pillow at module import


def invert(mask: Image.Image) -> Image.Image:
    """A1111's "Inpaint not masked": the mask's white and black swapped."""
    from PIL import ImageOps

    return ImageOps.invert(mask.convert("L"))


def resize(
    image: Image.Image, mask: Image.Image | None, size: tuple[int, int], mode: int
) -> tuple[Image.Image, Image.Image | None, str | None]:
    """(image, mask, warning) fitted to `size` by `mode`; unchanged when the image already has that size."""
    if image.size == size:
        if mask is not None and mask.size != size:
            mask = mask.resize(size, resample=LANCZOS)
        return image, mask, None
    note = None
    if mode == 3:
        note = "resize_mode 3 (latent upscale): the init image was resized in pixels (Lanczos), not in latent space"
    fit = {1: _crop_and_resize, 2: _resize_and_fill}.get(mode, _just_resize)
    return fit(image, size), (fit(mask, size) if mask is not None else None), note


def _just_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.resize(size, resample=LANCZOS)


def _crop_and_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale so the image covers `size`, then cut the centre."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), LANCZOS)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def _resize_and_fill(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale so the image fits in `size`, centre it, and fill the bands by stretching its outermost rows/columns."""
    from PIL import Image as PILImage

    width, height = size
    scale = min(width / image.width, height / image.height)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), LANCZOS)
    canvas = PILImage.new(image.mode, size)
    left, top = (width - fitted.width) // 2, (height - fitted.height) // 2
    canvas.paste(fitted, (left, top))
    if top > 0:  # bands above and below
        canvas.paste(fitted.crop((0, 0, fitted.width, 1)).resize((fitted.width, top)), (left, 0))
        bottom = height - top - fitted.height
        if bottom > 0:
            edge = fitted.crop((0, fitted.height - 1, fitted.width, fitted.height))
            canvas.paste(edge.resize((fitted.width, bottom)), (left, top + fitted.height))
    if left > 0:  # bands left and right
        canvas.paste(fitted.crop((0, 0, 1, fitted.height)).resize((left, fitted.height)), (0, top))
        right = width - left - fitted.width
        if right > 0:
            edge = fitted.crop((fitted.width - 1, 0, fitted.width, fitted.height))
            canvas.paste(edge.resize((right, fitted.height)), (left + fitted.width, top))
    return canvas
