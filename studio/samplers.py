"""The one sampler registry: A1111 names, short aliases (Quick Kit, ComfyUI) -> diffusers scheduler + options.

Names are matched case-insensitively, with `_` and `-` treated as spaces. Each generation builds
its own scheduler with `make_scheduler(name, base_config)`; the shared pipeline is never mutated.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from studio.types import RequestError


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # A1111 display name, also what infotexts record
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {}, ("dpmpp 2m", "k dpmpp 2m")),
    SamplerSpec(
        "DPM++ 2M Karras",
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True},
        ("dpmpp 2m karras", "k dpmpp 2m karras"),
    ),
    SamplerSpec(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        ("dpmpp 2m sde", "k dpmpp 2m sde"),
    ),
    SamplerSpec(
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        ("dpmpp 2m sde karras", "k dpmpp 2m sde karras"),
    ),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("dpmpp sde", "k dpmpp sde")),
    SamplerSpec(
        "DPM++ SDE Karras",
        "DPMSolverSDEScheduler",
        {"use_karras_sigmas": True},
        ("dpmpp sde karras", "k dpmpp sde karras"),
    ),
    SamplerSpec("DPM++ 2S a", "DPMSolverSinglestepScheduler", {}, ("dpmpp 2s a", "dpmpp 2s ancestral")),
    SamplerSpec(
        "Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler ancestral", "k euler a", "k euler ancestral")
    ),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, ("eular", "k euler")),
    SamplerSpec("Euler Karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, ("k euler karras",)),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, ("k lms",)),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}, ("k lms karras",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, ("k heun",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("dpm 2", "k dpm 2", "k dpm2")),
    SamplerSpec(
        "DPM2 Karras", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, ("dpm 2 karras", "k dpm 2 karras")
    ),
    SamplerSpec(
        "DPM2 a",
        "KDPM2AncestralDiscreteScheduler",
        {},
        ("dpm 2 ancestral", "dpm2 ancestral", "k dpm 2 a", "k dpm 2 ancestral"),
    ),
    SamplerSpec(
        "DPM2 a Karras",
        "KDPM2AncestralDiscreteScheduler",
        {"use_karras_sigmas": True},
        ("dpm 2 a karras", "k dpm 2 a karras"),
    ),
    SamplerSpec("DDIM", "DDIMScheduler", {}, ()),
    SamplerSpec("DDPM", "DDPMScheduler", {}, ()),
    SamplerSpec("PNDM", "PNDMScheduler", {}, ("plms",)),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, ("uni pc", "unipc multistep")),
    SamplerSpec("DEIS", "DEISMultistepScheduler", {}, ()),
    SamplerSpec("LCM", "LCMScheduler", {}, ()),
)

DEFAULT_SAMPLER = "Euler a"


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name.strip().lower()))


_BY_KEY: dict[str, SamplerSpec] = {}
for _spec in SAMPLERS:
    for _alias in (_spec.name, *_spec.aliases):
        _k = _key(_alias)
        assert _k not in _BY_KEY, f"duplicate sampler alias {_alias!r}"
        _BY_KEY[_k] = _spec


def sampler_names() -> list[str]:
    """The A1111 display names, in the order the UI lists them."""
    return [spec.name for spec in SAMPLERS]


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by any accepted spelling; unknown names raise RequestError listing the valid ones."""
    spec = _BY_KEY.get(_key(name)) if isinstance(name, str) else None
    if spec is None:
        raise RequestError("sampler", name, f"unknown sampler {name!r}; valid samplers: {', '.join(sampler_names())}")
    return spec


def canonical_name(name: str) -> str:
    """The A1111 display name for any accepted spelling (used by GenerationRequest.validate)."""
    return get_sampler(name).name


def make_scheduler(name: str, base_config: Any) -> Any:
    """A fresh diffusers scheduler for `name`, built from the model's own scheduler config.

    Options that the model's config sets and the sampler does not (e.g. prediction_type,
    timestep_spacing) are kept, so v-prediction models stay v-prediction.
    """
    spec = get_sampler(name)
    diffusers = importlib.import_module("diffusers")
    cls = getattr(diffusers, spec.scheduler)
    config = dict(base_config)
    # Leftovers of a previous sampler choice in the saved config must not leak into this one.
    for key in ("use_karras_sigmas", "algorithm_type"):
        config.pop(key, None)
    return cls.from_config(config, **spec.options)
