"""Hires fix: A1111's two-pass text to image, as a plan the engine runs and the upscale step between the passes.

What A1111 1.9 does, and so what this module tells the engine to do (learnt from A1111's docs and code; none copied):

1. First pass: text to image at width x height. Latent upscalers need its latents (``output_type="latent"``);
   every other upscaler needs the decoded image.
2. Upscale to A1111's "upscale to" size (`HiresGeometry.cover`): width x height times ``hires_scale``, or the
   resize size. With both ``hires_resize_x`` and ``_y`` the first pass is scaled to *cover* that size (aspect kept)
   and centre-cropped to it (A1111 crops whole latent cells: ``truncate // 2`` before, the rest after).
   Latent upscalers interpolate the latents (`upscale_latents`); ``None`` resizes the image once with Lanczos;
   ``Lanczos``/``Nearest`` resize with that filter then fix the size with Lanczos; model files run up to three
   times until the image is at least the target size, then Lanczos to it (`upscale_image`).
3. Second pass: image to image at the target size with the same seed (a fresh generator), the same sampler,
   prompt and CFG. A1111 runs exactly ``hires_steps or steps`` denoising steps: its schedule has
   ``int(steps / min(strength, 0.999))`` steps and the pass starts ``steps`` from its end. diffusers'
   img2img runs ``int(num_inference_steps * strength)`` steps, so the plan gives it that schedule length and the
   strength that makes the product exactly the step count (`HiresPlan.second_pass_args`).
   Progress total per image, as A1111 counts it: ``steps + (hires_steps or steps)``.

ESRGAN-family files run through spandrel (optional extra `studio.upscalers.EXTRA`): `SpandrelLoader` imports it
lazily and reads weights safely (safetensors, or ``torch.load(weights_only=True)``); tests inject a stub loader.
Images go to the network as RGB in [0, 1], the layout the networks were trained on and the one spandrel documents.
(A1111 flips them to BGR first; we do not copy that quirk.) Large images run in 192-pixel tiles overlapping by 8
(A1111's defaults), averaged where they overlap.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from studio import upscalers
from studio.types import GenerationRequest, RequestError
from studio.upscalers import UpscalerKind, UpscalerSpec

logger = logging.getLogger(__name__)

LATENT_FACTOR = 8  # pixels per latent cell (the VAE scale factor of SD 1.x/2.x/XL)
A1111_MAX_STRENGTH = 0.999  # A1111 caps the denoising strength here when it sizes the second pass's schedule
MAX_MODEL_PASSES = 3  # A1111 runs an upscaler model at most three times to reach the target size
TILE_SIZE = 192  # A1111's ESRGAN tile size and overlap defaults
TILE_OVERLAP = 8

Size = tuple[int, int]  # (width, height)
Box = tuple[int, int, int, int]  # (left, top, right, bottom)


@dataclass(frozen=True)
class HiresGeometry:
    """Sizes of a hires-fix run, in pixels: `cover` is what the first pass is upscaled to, `box` the part kept."""

    first: Size
    cover: Size
    box: Box

    @property
    def target(self) -> Size:
        """The final image size (always a multiple of 8; equals GenerationRequest.hires_size())."""
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    @property
    def cropped(self) -> bool:
        return self.box != (0, 0, *self.cover)

    def latent_cover(self, factor: int = LATENT_FACTOR) -> Size:
        """The size latents are interpolated to (A1111: the upscale-to size floor-divided by the factor)."""
        return self.cover[0] // factor, self.cover[1] // factor

    def latent_box(self, factor: int = LATENT_FACTOR) -> Box:
        left, top, right, bottom = self.box
        return left // factor, top // factor, right // factor, bottom // factor


def target_crop(width: int, height: int, resize_x: int, resize_y: int) -> HiresGeometry:
    """Both resize sides given: scale width x height to cover resize_x x resize_y (aspect kept), centre-crop.

    The side that fits is exact, the other is floor-scaled (A1111's ``hr_upscale_to``); the excess is cut in whole
    8-pixel latent cells, half (rounded down) before and the rest after, as A1111 truncates its latents.
    """
    if width * resize_y < resize_x * height:  # first pass narrower than the target: the widths match
        cover = (resize_x, resize_x * height // width)
    else:
        cover = (resize_y * width // height, resize_y)
    left = (cover[0] - resize_x) // LATENT_FACTOR // 2 * LATENT_FACTOR
    top = (cover[1] - resize_y) // LATENT_FACTOR // 2 * LATENT_FACTOR
    return HiresGeometry((width, height), cover, (left, top, left + resize_x, top + resize_y))


def hires_geometry(request: GenerationRequest) -> HiresGeometry:
    """The sizes of `request`'s hires fix (A1111's hr_upscale_to rules; the target is floored to the latent grid)."""
    width, height = request.width, request.height
    x, y = request.hires_resize_x, request.hires_resize_y
    if x and y:
        return target_crop(width, height, x, y)
    if x:
        cover = (x, x * height // width)
    elif y:
        cover = (y * width // height, y)
    else:
        cover = (int(width * request.hires_scale), int(height * request.hires_scale))
    target = (cover[0] // LATENT_FACTOR * LATENT_FACTOR, cover[1] // LATENT_FACTOR * LATENT_FACTOR)
    return HiresGeometry((width, height), cover, (0, 0, *target))


@dataclass(frozen=True)
class HiresPlan:
    """Everything the engine needs to run one hires-fix image (the same plan serves every image of a run)."""

    upscaler: UpscalerSpec
    geometry: HiresGeometry
    first_steps: int
    second_steps: int  # denoising steps the second pass runs: hires_steps, or steps when that is 0
    schedule_steps: int  # the second pass's schedule length: int(second_steps / min(strength, 0.999))
    strength: float  # img2img `strength` with int(schedule_steps * strength) == second_steps exactly
    denoising_strength: float  # the request's hires_strength (what the infotext records)

    @property
    def first_output_type(self) -> Literal["latent", "np"]:
        """The first pass's diffusers `output_type`: latents for latent upscalers, else decoded pixels."""
        return "latent" if self.upscaler.is_latent else "np"

    @property
    def total_steps(self) -> int:
        """Progress total for one image (A1111: steps + (hires_steps or steps))."""
        return self.first_steps + self.second_steps

    def first_pass_args(self) -> dict[str, Any]:
        """Text-to-image keyword arguments of the first pass (the engine adds prompt, CFG, generator, callbacks)."""
        width, height = self.geometry.first
        return {
            "width": width,
            "height": height,
            "num_inference_steps": self.first_steps,
            "output_type": self.first_output_type,
        }

    def second_pass_args(self, image: torch.Tensor | Image.Image) -> dict[str, Any]:
        """Image-to-image keyword arguments of the second pass, given `upscale()`'s result. The engine adds the
        prompt, CFG, a *new* generator seeded with the image's seed, callbacks and output_type."""
        return {"image": image, "strength": self.strength, "num_inference_steps": self.schedule_steps}


def exact_strength(steps: int, schedule_steps: int) -> float:
    """The smallest strength s with int(schedule_steps * s) == steps (diffusers' img2img step count)."""
    strength = steps / schedule_steps
    while int(schedule_steps * strength) < steps:
        strength = math.nextafter(strength, math.inf)
    return strength


def plan_hires(
    request: GenerationRequest, models_dir: Path | None = None, *, max_schedule_steps: int = 1000
) -> HiresPlan:
    """The plan for a validated hires request (`request.hires` true). RequestError names the field for an unknown
    upscaler or a second pass whose schedule would be longer than the scheduler's `max_schedule_steps` (its
    ``num_train_timesteps``)."""
    if not request.hires:
        raise ValueError("plan_hires needs a request with hires fix on (hires_scale > 1 or a resize size)")
    spec = upscalers.get(request.hires_upscaler, models_dir)
    second = request.hires_steps or request.steps
    schedule = int(second / min(request.hires_strength, A1111_MAX_STRENGTH))
    if schedule > max_schedule_steps:
        raise RequestError(
            "hires_strength",
            request.hires_strength,
            f"{second} hires steps at denoising strength {request.hires_strength:g} need a {schedule}-step schedule "
            f"(A1111 runs hires steps / strength); the scheduler has {max_schedule_steps}: raise hires_strength or "
            "lower hires_steps",
        )
    return HiresPlan(
        upscaler=spec,
        geometry=hires_geometry(request),
        first_steps=request.steps,
        second_steps=second,
        schedule_steps=schedule,
        strength=exact_strength(second, schedule),
        denoising_strength=request.hires_strength,
    )


class UpscaleModel(Protocol):
    """An upscaling network: (1, 3, H, W) float RGB in [0, 1] on the CPU → (1, 3, H*scale, W*scale), same range."""

    scale: int

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


class UpscaleModelLoader(Protocol):
    def load(self, path: Path) -> UpscaleModel:
        """Load the network in `path`; MissingExtra when its library is not usable here."""
        ...


class MissingExtra(ImportError):
    """The optional upscaler library (spandrel) cannot be imported here."""


def upscale_latents(latents: torch.Tensor, size: Size, spec: UpscalerSpec) -> torch.Tensor:
    """Interpolate (B, C, h, w) latents to `size` = (width, height) in latent cells, with the spec's mode/antialias.

    Computed in float32 (CPU float16/bfloat16 have no antialiased kernels) and returned in the latents' dtype.
    """
    if not spec.is_latent:
        raise ValueError(f"{spec.name} is not a latent upscaler")
    width, height = size
    upscaled = F.interpolate(latents.float(), size=(height, width), mode=spec.mode, antialias=spec.antialias)
    return upscaled.to(latents.dtype)


def upscale_image(image: Image.Image, size: Size, spec: UpscalerSpec, model: UpscaleModel | None = None) -> Image.Image:
    """Resize a decoded first pass to `size` = (width, height) the way A1111's upscaler of that name does.

    ``None`` (and any upscaler when the image shrinks): one Lanczos resize. Otherwise the upscaler's own step
    (Lanczos, Nearest, or the model) runs until the image is at least the scaled size floored to 8 (at most three
    times, stopping when a step changes nothing), then Lanczos fixes the size exactly.
    """
    image = image.convert("RGB")
    if spec.kind is UpscalerKind.LATENT:
        raise ValueError(f"{spec.name} upscales latents, not images")
    if spec.kind is UpscalerKind.MODEL and model is None:
        raise ValueError(f"{spec.name} needs its model: load it with load_upscale_model() first")
    scale = max(size[0] / image.width, size[1] / image.height)
    if spec.name != upscalers.NONE and scale > 1:
        image = _upscale_steps(image, scale, _step(spec, scale, model))
    if image.size != size:
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    return image


ImageStep = Callable[[Image.Image], Image.Image]


def _step(spec: UpscalerSpec, scale: float, model: UpscaleModel | None) -> ImageStep:
    """One application of the upscaler: the model, or a PIL resize by `scale` with the upscaler's filter."""
    if model is not None:
        return lambda image: run_upscale_model(model, image)
    resample = Image.Resampling.NEAREST if spec.mode == "nearest" else Image.Resampling.LANCZOS
    return lambda image: image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)


def _upscale_steps(image: Image.Image, scale: float, step: ImageStep) -> Image.Image:
    """A1111's loop: step until at least the scaled size floored to 8 (or no change), then Lanczos to that size."""
    dest = (int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8)
    for _ in range(MAX_MODEL_PASSES):
        before = image.size
        image = step(image)
        if image.size == before or (image.width >= dest[0] and image.height >= dest[1]):
            break
    if image.size != dest:
        image = image.resize(dest, resample=Image.Resampling.LANCZOS)
    return image


def run_upscale_model(
    model: UpscaleModel, image: Image.Image, tile: int = TILE_SIZE, overlap: int = TILE_OVERLAP
) -> Image.Image:
    """One pass of an upscaling network over an RGB image (tiled when larger than `tile`)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        output = run_tiled(model, tensor, tile, overlap)
    pixels = output[0].permute(1, 2, 0).clamp(0, 1).float().cpu().numpy()
    return Image.fromarray((pixels * 255.0).round().astype(np.uint8))


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def run_tiled(model: UpscaleModel, tensor: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Run `model` over (1, C, H, W) in tiles of `tile` pixels overlapping by `overlap`, averaging the overlaps."""
    _, _, height, width = tensor.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return model(tensor)
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    tile_h, tile_w = min(tile, height), min(tile, width)
    output: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    scale = 1
    for top in _tile_starts(height, tile_h, overlap):
        for left in _tile_starts(width, tile_w, overlap):
            piece = model(tensor[..., top : top + tile_h, left : left + tile_w])
            if output is None:
                scale = piece.shape[-1] // tile_w
                output = piece.new_zeros((1, piece.shape[1], height * scale, width * scale))
                weight = piece.new_zeros((1, 1, height * scale, width * scale))
            window = (..., slice(top * scale, (top + tile_h) * scale), slice(left * scale, (left + tile_w) * scale))
            output[window] += piece
            weight[window] += 1
    return output / weight


def load_upscale_model(spec: UpscalerSpec, loader: UpscaleModelLoader) -> UpscaleModel | None:
    """The network of a model-file upscaler (None for the others). Call it before the first pass so a missing
    extra or a broken file fails before any denoising. Errors are RequestErrors naming ``hires_upscaler``."""
    if spec.kind is not UpscalerKind.MODEL:
        return None
    try:
        return loader.load(spec.path)
    except MissingExtra as err:
        raise RequestError(
            "hires_upscaler",
            spec.name,
            f"{spec.name!r} is an ESRGAN-family model file; running it needs the optional "
            f"'{upscalers.EXTRA}' extra, not installed here: {upscalers.INSTALL_HINT}. ({err})",
        ) from err
    except RequestError:
        raise
    except Exception as err:
        raise RequestError("hires_upscaler", spec.name, f"cannot load {spec.path}: {err}") from err


def upscale(plan: HiresPlan, first_output: Any, model: UpscaleModel | None = None) -> torch.Tensor | Image.Image:
    """The first pass's output (latents, or decoded pixels as a PIL image / numpy array in [0, 1]) → the second
    pass's `image`: upscaled to the cover size and cropped to the target."""
    geometry = plan.geometry
    if plan.upscaler.is_latent:
        if not isinstance(first_output, torch.Tensor) or first_output.ndim != 4:
            raise ValueError(f"{plan.upscaler.name} needs the first pass's latents (output_type='latent')")
        upscaled = upscale_latents(first_output, geometry.latent_cover(), plan.upscaler)
        left, top, right, bottom = geometry.latent_box()
        return upscaled[..., top:bottom, left:right]
    image = upscale_image(to_image(first_output), geometry.cover, plan.upscaler, model)
    return image.crop(geometry.box) if geometry.cropped else image


def to_image(output: Any) -> Image.Image:
    """A decoded first pass as a PIL image: PIL as is; a numpy (H, W, 3) or (1, H, W, 3) array in [0, 1] converted
    the way diffusers' numpy_to_pil does."""
    if isinstance(output, Image.Image):
        return output
    if isinstance(output, list) and len(output) == 1:
        return to_image(output[0])
    array = np.asarray(output)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected one decoded RGB image, got an array of shape {array.shape}")
    return Image.fromarray((array * 255).round().astype(np.uint8))


class _SpandrelModel:
    """A spandrel ImageModelDescriptor behind the UpscaleModel protocol (CPU float32 in and out)."""

    def __init__(self, descriptor: Any):
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        result = self.descriptor(image.to(device=self.descriptor.device, dtype=self.descriptor.dtype))
        return result.float().cpu()


def read_state_dict(path: Path) -> dict[str, Any]:
    """Weights of an upscaler file: safetensors, or a pickle read with torch.load(weights_only=True) so that
    pickled code is refused, never run."""
    import pickle

    from studio.models.single_file import ckpt_safe_globals

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(ckpt_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"{path.name}: refused: it is not plain weights (pickled code?): {reason}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path.name}: holds a {type(state).__name__}, not weights")
    return state


class SpandrelLoader:
    """Loads ESRGAN-family files with spandrel, imported on first use; keeps the last `cache_size` networks."""

    def __init__(self, device: str = "cpu", half: bool = False, cache_size: int = 2):
        self.device = device
        self.half = half
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int, int], UpscaleModel] = OrderedDict()
        self._import_error: str | None = None

    def _spandrel(self) -> Any:
        if self._import_error is not None:
            raise MissingExtra(self._import_error)
        try:
            import spandrel
        except Exception as err:  # not installed, or torchvision not matching torch ("torchvision::nms does not exist")
            self._import_error = f"importing spandrel failed: {type(err).__name__}: {err}"
            raise MissingExtra(self._import_error) from err
        return spandrel

    def load(self, path: Path) -> UpscaleModel:
        path = Path(path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        spandrel = self._spandrel()
        descriptor = spandrel.ModelLoader().load_from_state_dict(read_state_dict(path))
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3:
            raise ValueError(
                f"{path.name}: a {descriptor.architecture.name} {descriptor.purpose} model, not an RGB image upscaler"
            )
        descriptor.eval().to(self.device)
        if self.half and descriptor.supports_half:
            descriptor.half()
        model = _SpandrelModel(descriptor)
        self._cache[key] = model
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        logger.info("loaded upscaler %s (%s, x%d)", path.name, descriptor.architecture.name, model.scale)
        return model
