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


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: txt2img, img2img or inpaint. Frozen; derive variants with `replace()`.

    Conventions (A1111's): image i of a run has seed `seed + i`; `seed == -1` means random
    (resolved by `with_resolved_seed()` and reported back). Mask: white = repaint.
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

    @property
    def task(self) -> Task:
        if self.mask is not None:
            return Task.INPAINT
        if self.image is not None:
            return Task.IMG2IMG
        return Task.TXT2IMG

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

    def validate(self, limits: Limits = DEFAULT_LIMITS, samplers: Any = None) -> GenerationRequest:
        """Check every field; return self (normalised types) or raise RequestError naming the field.

        `samplers` is an optional callable name -> canonical name that raises RequestError for
        unknown names (studio.samplers.canonical_name); when given, the sampler is normalised.
        """
        if not isinstance(self.prompt, str):
            raise RequestError("prompt", self.prompt, f"must be text, got {type(self.prompt).__name__}")
        if not isinstance(self.negative_prompt, str):
            raise RequestError(
                "negative_prompt", self.negative_prompt, f"must be text, got {type(self.negative_prompt).__name__}"
            )
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if len(text) > limits.max_prompt_chars:
                raise RequestError(
                    name,
                    f"<{len(text)} characters>",
                    f"is {len(text)} characters; the limit is {limits.max_prompt_chars}",
                )
        if not isinstance(self.sampler, str) or not self.sampler.strip():
            raise RequestError("sampler", self.sampler, f"must be a sampler name, got {_short(self.sampler)}")
        sampler = samplers(self.sampler) if samplers is not None else self.sampler

        steps = _require_int("steps", self.steps)
        if not 1 <= steps <= limits.max_steps:
            raise RequestError("steps", steps, f"must be between 1 and {limits.max_steps}, got {steps}")
        cfg = _require_float("cfg_scale", self.cfg_scale)
        if not limits.min_cfg_scale <= cfg <= limits.max_cfg_scale:
            raise RequestError(
                "cfg_scale", cfg, f"must be between {limits.min_cfg_scale:g} and {limits.max_cfg_scale:g}, got {cfg:g}"
            )
        seed = _require_int("seed", self.seed)
        if not -1 <= seed <= MAX_SEED:
            raise RequestError("seed", seed, f"must be -1 (random) or between 0 and {MAX_SEED}, got {seed}")
        dims = {}
        for name, maximum in (("width", limits.max_width), ("height", limits.max_height)):
            value = _require_int(name, getattr(self, name))
            if value < 8:
                raise RequestError(name, value, f"must be at least 8, got {value}")
            if value % 8:
                raise RequestError(name, value, f"must be a multiple of 8, got {value}")
            if value > maximum:
                raise RequestError(name, value, f"must be at most {maximum}, got {value}")
            dims[name] = value
        if dims["width"] * dims["height"] > limits.max_pixels:
            raise RequestError(
                "width",
                dims["width"],
                f"{dims['width']}x{dims['height']} is more than the {limits.max_pixels} pixel limit",
            )
        count = _require_int("count", self.count)
        if not 1 <= count <= limits.max_count:
            raise RequestError("count", count, f"must be between 1 and {limits.max_count}, got {count}")
        strength = _require_float("strength", self.strength)
        if not 0.0 < strength <= 1.0:
            raise RequestError("strength", strength, f"must be greater than 0 and at most 1, got {strength:g}")
        mask_blur = _require_int("mask_blur", self.mask_blur)
        if not 0 <= mask_blur <= 64:
            raise RequestError("mask_blur", mask_blur, f"must be between 0 and 64, got {mask_blur}")
        if self.mask is not None and self.image is None:
            raise RequestError("image", None, "inpainting needs an image to paint on (a mask was given without one)")
        for name in ("image", "mask"):
            img = getattr(self, name)
            if img is not None and not hasattr(img, "convert"):
                raise RequestError(name, type(img).__name__, f"must be an image, got {type(img).__name__}")
        return dataclasses.replace(
            self,
            sampler=sampler,
            steps=steps,
            cfg_scale=cfg,
            seed=seed,
            width=dims["width"],
            height=dims["height"],
            count=count,
            strength=strength,
            mask_blur=mask_blur,
        )


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
