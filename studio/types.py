"""The one request/result type used by the UI, every engine, the wire codec and the serving app.

`GenerationRequest.validate()` is the single place where input is checked. It raises
`RequestError` naming the field and the value; nothing is clamped or "fixed" silently.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Pillow is light, but keep the type import lazy anyway.
    from PIL import Image

MAX_SEED = 2**32 - 1


class Task(StrEnum):
    """What a request asks for; decided by which images are present."""

    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


class RequestError(ValueError):
    """Bad input. `field` names the offending field; str(err) is a message for the user."""

    def __init__(self, field: str, value: Any, message: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Limits:
    """Upper bounds a deployment enforces (configurable, see studio.config)."""

    max_width: int = 2048
    max_height: int = 2048
    max_pixels: int = 2048 * 2048
    max_steps: int = 150
    max_count: int = 16
    min_cfg_scale: float = 0.0
    max_cfg_scale: float = 30.0
    max_prompt_chars: int = 20_000


DEFAULT_LIMITS = Limits()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require_int(name: str, value: Any) -> int:
    # bool is an int subclass; "8" is not a number. Floats with an integral value are accepted (JSON 512.0).
    if isinstance(value, bool):
        raise RequestError(name, value, f"must be a whole number, got {_short(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise RequestError(name, value, f"must be a whole number, got {_short(value)}")


def _require_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(name, value, f"must be a number, got {_short(value)}")
    if value != value or value in (float("inf"), float("-inf")):
        raise RequestError(name, value, f"must be a finite number, got {_short(value)}")
    return float(value)


AUTOMATIC = "Automatic"  # the schedule type / VAE that the sampler / model brings with it (A1111's word)
MAX_CLIP_SKIP = 12
MAX_HIRES_SCALE = 8.0
# Inpaint "Masked content" (A1111's labels, in the order of its API's `inpainting_fill` 0-3): what the masked area
# starts from — its surroundings' colours, the original image, random latent noise, or zero latents.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
MAX_INPAINT_PADDING = 2048  # pixels around the mask ("Only masked padding")


def _floor8(value: float) -> int:
    """A derived size in pixels, floored to a multiple of 8 (the latent grid), as A1111's latent sizes are."""
    return max(8, int(value) // 8 * 8)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: txt2img, img2img or inpaint. Frozen; derive variants with `replace()`.

    Conventions (A1111's): image i of a run has seed `seed + i`; `seed == -1` means random
    (resolved by `with_resolved_seed()` and reported back). Mask: white = repaint.
    The prompt may use A1111's syntax: `(word:1.3)`, `[word]`, `BREAK`, `<lora:name:weight>` tags.
    Hires fix (text to image only) is on when `hires_scale` > 1 or a `hires_resize_x`/`_y` is given.
    Inpainting: `inpaint_only_masked` (A1111's "Only masked") inpaints a crop around the mask, `inpaint_padding`
    pixels wider, at width x height and pastes it back (the result keeps the input image's size);
    `masked_content` is what the masked area starts from (MASKED_CONTENT).
    """

    prompt: str
    negative_prompt: str = ""
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    count: int = 1
    strength: float = 0.75
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    mask: Image.Image | None = field(default=None, compare=False, repr=False)
    mask_blur: int = 4
    scheduler: str = AUTOMATIC  # A1111's "Schedule type": Automatic, Uniform, Karras, Exponential, SGM Uniform, ...
    clip_skip: int = 1  # A1111's meaning: 1 = the last CLIP layer, 2 = the penultimate one
    vae: str = AUTOMATIC  # "Automatic" (the model's own) or a file in MODELS_DIR/VAE/
    hires_scale: float = 1.0  # 1 = hires fix off
    hires_resize_x: int = 0  # 0 = from hires_scale (or from the other side's aspect ratio)
    hires_resize_y: int = 0
    hires_upscaler: str = "Latent"
    hires_steps: int = 0  # 0 = the same as steps
    hires_strength: float = 0.7  # denoising strength of the second pass
    inpaint_only_masked: bool = False  # False: inpaint the whole picture at width x height
    inpaint_padding: int = 32  # pixels added around the mask's box with inpaint_only_masked
    masked_content: str = "original"  # one of MASKED_CONTENT

    @property
    def task(self) -> Task:
        if self.mask is not None:
            return Task.INPAINT
        if self.image is not None:
            return Task.IMG2IMG
        return Task.TXT2IMG

    @property
    def hires(self) -> bool:
        """True when hires fix is asked for."""
        return self.hires_scale != 1.0 or bool(self.hires_resize_x) or bool(self.hires_resize_y)

    def hires_size(self) -> tuple[int, int]:
        """The final (width, height) of a hires-fix run; (width, height) without hires fix.

        With both resize sides given, that size (the first pass is scaled to cover it and centre-cropped, as A1111
        does); with one side, the other keeps the aspect ratio; else width and height times hires_scale. Derived
        sides are floored to a multiple of 8.
        """
        if not self.hires:
            return self.width, self.height
        x, y = self.hires_resize_x, self.hires_resize_y
        if x and y:
            return x, y
        if x:
            return x, _floor8(x * self.height / self.width)
        if y:
            return _floor8(y * self.width / self.height), y
        return _floor8(self.width * self.hires_scale), _floor8(self.height * self.hires_scale)

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def with_resolved_seed(self, rng: random.Random | None = None) -> GenerationRequest:
        """Return a copy whose seed is concrete (a random one when seed == -1)."""
        if self.seed != -1:
            return self
        return self.replace(seed=(rng or random.SystemRandom()).randint(0, MAX_SEED))

    def seeds(self) -> list[int]:
        """The seed of each image: seed, seed+1, ... (call on a resolved request)."""
        if self.seed < 0:
            raise RequestError("seed", self.seed, "resolve the random seed before asking for per-image seeds")
        return [self.seed + i for i in range(self.count)]

    def validate(self, limits: Limits = DEFAULT_LIMITS) -> GenerationRequest:
        """Check every field; return a copy with normalised types and names, or raise RequestError naming the field.

        Sampler and schedule type are normalised by studio.samplers (aliases, old combined names such as
        "DPM++ 2M Karras" split into sampler + schedule type). Nothing is clamped.
        """
        from studio.samplers import normalize

        _check_text(self, limits)
        sampler, scheduler = normalize(self.sampler, self.scheduler)
        numbers = _check_numbers(self, limits)
        _check_size(numbers["width"], numbers["height"], limits)
        normalised = dataclasses.replace(self, sampler=sampler, scheduler=scheduler, **numbers)
        _check_images(normalised)
        _check_hires(normalised, limits)
        _check_inpaint(normalised)
        return normalised


def _check_text(request: GenerationRequest, limits: Limits) -> None:
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if not isinstance(text, str):
            raise RequestError(name, text, f"must be text, got {type(text).__name__}")
        if len(text) > limits.max_prompt_chars:
            raise RequestError(
                name, f"<{len(text)} characters>", f"is {len(text)} characters; the limit is {limits.max_prompt_chars}"
            )
    for name, what in (
        ("sampler", "a sampler name"),
        ("scheduler", "a schedule type"),
        ("vae", "a VAE name"),
        ("hires_upscaler", "an upscaler name"),
    ):
        value = getattr(request, name)
        if not isinstance(value, str) or not value.strip():
            raise RequestError(name, value, f"must be {what}, got {_short(value)}")


def _number_text(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(
            name, value, f"must be between {_number_text(low)} and {_number_text(high)}, got {_number_text(value)}"
        )


def _check_numbers(request: GenerationRequest, limits: Limits) -> dict[str, Any]:
    """Every numeric field, type-checked and range-checked; returns the normalised values."""
    ints = {
        name: _require_int(name, getattr(request, name))
        for name in ("steps", "seed", "width", "height", "count", "mask_blur", "clip_skip")
        + ("hires_resize_x", "hires_resize_y", "hires_steps", "inpaint_padding")
    }
    floats = {
        name: _require_float(name, getattr(request, name))
        for name in ("cfg_scale", "strength", "hires_scale", "hires_strength")
    }
    _in_range("steps", ints["steps"], 1, limits.max_steps)
    _in_range("cfg_scale", floats["cfg_scale"], limits.min_cfg_scale, limits.max_cfg_scale)
    if not -1 <= ints["seed"] <= MAX_SEED:
        raise RequestError("seed", ints["seed"], f"must be -1 (random) or between 0 and {MAX_SEED}, got {ints['seed']}")
    _in_range("count", ints["count"], 1, limits.max_count)
    for name in ("strength", "hires_strength"):
        if not 0.0 < floats[name] <= 1.0:
            raise RequestError(name, floats[name], f"must be greater than 0 and at most 1, got {floats[name]:g}")
    _in_range("mask_blur", ints["mask_blur"], 0, 64)
    _in_range("clip_skip", ints["clip_skip"], 1, MAX_CLIP_SKIP)
    _in_range("hires_scale", floats["hires_scale"], 1.0, MAX_HIRES_SCALE)
    _in_range("hires_steps", ints["hires_steps"], 0, limits.max_steps)
    _in_range("inpaint_padding", ints["inpaint_padding"], 0, MAX_INPAINT_PADDING)
    for name in ("hires_resize_x", "hires_resize_y"):
        if ints[name] < 0 or ints[name] % 8:
            raise RequestError(name, ints[name], f"must be 0 (off) or a positive multiple of 8, got {ints[name]}")
    return {**ints, **floats}


def _check_size(width: int, height: int, limits: Limits, field_name: str = "", what: str = "") -> None:
    """A width x height against the limits. Errors name "width"/"height", or `field_name` with `what` saying which
    size it is (the hires fix's final size is derived from the hires fields)."""
    for name, value, maximum in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        shown, prefix = (field_name, f"{what} {name} ") if what else (name, "")
        if value < 8:
            raise RequestError(shown, value, f"{prefix}must be at least 8, got {value}")
        if value % 8:
            raise RequestError(shown, value, f"{prefix}must be a multiple of 8, got {value}")
        if value > maximum:
            raise RequestError(shown, value, f"{prefix}must be at most {maximum}, got {value}")
    if width * height > limits.max_pixels:
        prefix = f"{what} " if what else ""
        raise RequestError(
            field_name or "width", width, f"{prefix}{width}x{height} is more than the {limits.max_pixels} pixel limit"
        )


def _check_images(request: GenerationRequest) -> None:
    if request.mask is not None and request.image is None:
        raise RequestError("image", None, "inpainting needs an image to paint on (a mask was given without one)")
    for name in ("image", "mask"):
        img = getattr(request, name)
        if img is not None and not hasattr(img, "convert"):
            raise RequestError(name, type(img).__name__, f"must be an image, got {type(img).__name__}")


def _check_hires(request: GenerationRequest, limits: Limits) -> None:
    """Hires fix is text to image only, and its final size is checked against the limits before anything runs."""
    if not request.hires:
        return
    field_name = "hires_scale" if not (request.hires_resize_x or request.hires_resize_y) else "hires_resize_x"
    if request.task is not Task.TXT2IMG:
        raise RequestError(field_name, request.hires_scale, "hires fix applies to text to image only")
    width, height = request.hires_size()
    _check_size(width, height, limits, field_name, what="the hires fix size")


def _check_inpaint(request: GenerationRequest) -> None:
    """The inpaint options: well-formed, and only given (non-default) when there is a mask to inpaint."""
    only_masked = request.inpaint_only_masked
    if not isinstance(only_masked, bool):
        raise RequestError("inpaint_only_masked", only_masked, f"must be true or false, got {_short(only_masked)}")
    if request.masked_content not in MASKED_CONTENT:
        raise RequestError(
            "masked_content",
            request.masked_content,
            f"must be one of {', '.join(MASKED_CONTENT)}, got {_short(request.masked_content)}",
        )
    if request.task is not Task.INPAINT:
        for name in ("inpaint_only_masked", "masked_content"):
            value, default = getattr(request, name), _DEFAULTS[name]
            if value != default:
                raise RequestError(name, value, "applies to inpainting only (no mask was given)")


@dataclass
class GenerationResult:
    """What an engine returns: images in order with their seeds and A1111 infotexts.

    `request` is the resolved request (concrete seed). `warnings` are user-facing notes
    (prompt truncated, mask resized, ...). `timings` are seconds by phase.
    """

    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    request: GenerationRequest
    model: str = ""
    backend: str = "local"
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The JSON info the UI and the gradio API return next to the gallery."""
        return {
            "task": self.request.task.value,
            "seeds": list(self.seeds),
            "infotexts": list(self.infotexts),
            "paths": list(self.paths),
            "model": self.model,
            "backend": self.backend,
            "warnings": list(self.warnings),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
