"""The one sampler registry: A1111 sampler names and schedule types → a diffusers scheduler with its options.

A1111 1.9 splits what older versions called "DPM++ 2M Karras" into a sampler ("DPM++ 2M") and a schedule type
("Karras"); `normalize(sampler, scheduler)` accepts both spellings and returns the split, canonical pair. Names are
matched case-insensitively, with `_` and `-` treated as spaces, and the Quick Kit / ComfyUI / k-diffusion aliases
work too. Each generation builds its own scheduler with `make_scheduler(sampler, scheduler, base_config)`; the
shared pipeline is never mutated. Unknown names, and schedule types a sampler cannot use, are RequestErrors naming
the field and listing what is valid — never silently replaced.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from studio.types import AUTOMATIC, RequestError


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # A1111 display name, also what infotexts record
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScheduleSpec:
    """An A1111 schedule type: the scheduler options that give its sigmas/timesteps."""

    name: str  # A1111 label, as in the infotext's "Schedule type"
    api_name: str  # A1111's /sdapi/v1/schedulers "name"
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {}, ("dpmpp 2m", "k dpmpp 2m")),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("dpmpp sde", "k dpmpp sde")),
    SamplerSpec(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
        ("dpmpp 2m sde", "k dpmpp 2m sde"),
    ),
    SamplerSpec(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        ("dpmpp 3m sde", "k dpmpp 3m sde"),
    ),
    SamplerSpec("DPM++ 2S a", "DPMSolverSinglestepScheduler", {}, ("dpmpp 2s a", "dpmpp 2s ancestral")),
    SamplerSpec(
        "Euler a", "EulerAncestralDiscreteScheduler", {}, ("euler ancestral", "k euler a", "k euler ancestral")
    ),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, ("eular", "k euler")),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, ("k lms",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, ("k heun",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("dpm 2", "k dpm 2", "k dpm2")),
    SamplerSpec(
        "DPM2 a",
        "KDPM2AncestralDiscreteScheduler",
        {},
        ("dpm 2 ancestral", "dpm2 ancestral", "k dpm 2 a", "k dpm 2 ancestral"),
    ),
    SamplerSpec("DDIM", "DDIMScheduler", {}, ()),
    SamplerSpec("DDPM", "DDPMScheduler", {}, ()),
    SamplerSpec("PNDM", "PNDMScheduler", {}, ("plms",)),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, ("uni pc", "unipc multistep")),
    SamplerSpec("DEIS", "DEISMultistepScheduler", {}, ()),
    SamplerSpec("LCM", "LCMScheduler", {}, ()),
)

SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec(AUTOMATIC, "automatic", {}),  # the model's own scheduler settings (what the sampler does by default)
    ScheduleSpec("Uniform", "uniform", {"timestep_spacing": "linspace"}),
    ScheduleSpec("Karras", "karras", {"use_karras_sigmas": True}),
    ScheduleSpec("Exponential", "exponential", {"use_exponential_sigmas": True}),
    ScheduleSpec("SGM Uniform", "sgm_uniform", {"timestep_spacing": "trailing"}, ("sgmuniform",)),
    ScheduleSpec("Beta", "beta", {"use_beta_sigmas": True}),
)

DEFAULT_SAMPLER = "Euler a"
DEFAULT_SCHEDULER = AUTOMATIC
# Options a previous sampler or schedule choice may have left in a saved scheduler config: never inherited.
_CHOICE_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "algorithm_type", "solver_order")
# Schedule types that older names carry as a suffix ("DPM++ 2M Karras", "k_lms_karras").
_SUFFIX_SCHEDULES = ("karras", "exponential")


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name.strip().lower()))


def _index(specs: tuple[Any, ...], kind: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for spec in specs:
        names = (spec.name, *spec.aliases) + ((spec.api_name,) if kind == "schedule" else ())
        for alias in names:
            key = _key(alias)
            assert table.get(key, spec) is spec, f"duplicate {kind} alias {alias!r}"
            table[key] = spec
    return table


_SAMPLER_BY_KEY: dict[str, SamplerSpec] = _index(SAMPLERS, "sampler")
_SCHEDULE_BY_KEY: dict[str, ScheduleSpec] = _index(SCHEDULES, "schedule")


def sampler_names() -> list[str]:
    """The A1111 sampler names, in the order the UI lists them."""
    return [spec.name for spec in SAMPLERS]


def scheduler_names() -> list[str]:
    """The schedule types (A1111 labels), "Automatic" first."""
    return [spec.name for spec in SCHEDULES]


def get_sampler(name: str) -> SamplerSpec:
    """Look a sampler up by any accepted spelling; unknown names raise RequestError listing the valid ones."""
    spec = _SAMPLER_BY_KEY.get(_key(name)) if isinstance(name, str) else None
    if spec is None:
        raise RequestError("sampler", name, f"unknown sampler {name!r}; valid samplers: {', '.join(sampler_names())}")
    return spec


def get_schedule(name: str) -> ScheduleSpec:
    spec = _SCHEDULE_BY_KEY.get(_key(name)) if isinstance(name, str) else None
    if spec is None:
        raise RequestError(
            "scheduler", name, f"unknown schedule type {name!r}; valid schedule types: {', '.join(scheduler_names())}"
        )
    return spec


def canonical_name(name: str) -> str:
    """The A1111 display name of a sampler for any accepted spelling (without a schedule suffix)."""
    return get_sampler(name).name


def _split_suffix(name: str) -> tuple[SamplerSpec, ScheduleSpec] | None:
    """ "DPM++ 2M Karras" → (DPM++ 2M, Karras): the pre-1.9 combined spelling."""
    key = _key(name) if isinstance(name, str) else ""
    for suffix in _SUFFIX_SCHEDULES:
        if key.endswith(" " + suffix) and key[: -len(suffix) - 1] in _SAMPLER_BY_KEY:
            return _SAMPLER_BY_KEY[key[: -len(suffix) - 1]], _SCHEDULE_BY_KEY[suffix]
    return None


_SIGMAS = frozenset({"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"})
_SPACING = frozenset({"timestep_spacing"})
# The schedule options each diffusers class accepts (read from diffusers 0.42's signatures; a test keeps this table
# true). Static, so validating a request never imports diffusers or torch: a remote-only studio validates too.
SCHEDULE_OPTIONS: dict[str, frozenset[str]] = {
    "EulerDiscreteScheduler": _SIGMAS | _SPACING,
    "EulerAncestralDiscreteScheduler": _SPACING,
    "DPMSolverMultistepScheduler": _SIGMAS | _SPACING,
    "DPMSolverSDEScheduler": _SIGMAS | _SPACING,
    "DPMSolverSinglestepScheduler": _SIGMAS,
    "LMSDiscreteScheduler": _SIGMAS | _SPACING,
    "HeunDiscreteScheduler": _SIGMAS | _SPACING,
    "KDPM2DiscreteScheduler": _SIGMAS | _SPACING,
    "KDPM2AncestralDiscreteScheduler": _SIGMAS | _SPACING,
    "DDIMScheduler": _SPACING,
    "DDPMScheduler": _SPACING,
    "PNDMScheduler": _SPACING,
    "UniPCMultistepScheduler": _SIGMAS | _SPACING,
    "DEISMultistepScheduler": _SIGMAS | _SPACING,
    "LCMScheduler": _SPACING,
}


assert all(spec.scheduler in SCHEDULE_OPTIONS for spec in SAMPLERS)


def _usable(sampler: SamplerSpec, schedule: ScheduleSpec) -> bool:
    return all(option in SCHEDULE_OPTIONS[sampler.scheduler] for option in schedule.options)


def _check_supported(sampler: SamplerSpec, schedule: ScheduleSpec) -> None:
    if not _usable(sampler, schedule):
        usable = [s.name for s in SCHEDULES if _usable(sampler, s)]
        raise RequestError(
            "scheduler",
            schedule.name,
            f"the {sampler.name} sampler cannot use the {schedule.name} schedule type; "
            f"with {sampler.name} use one of: {', '.join(usable)}",
        )


def normalize(sampler: str, scheduler: str = AUTOMATIC) -> tuple[str, str]:
    """The canonical (sampler, schedule type) for what a request gave; RequestError names the field.

    An old combined name ("DPM++ 2M Karras") is split; if the request also names a different schedule type, that
    contradiction is an error rather than a guess.
    """
    if not isinstance(sampler, str) or not sampler.strip():
        raise RequestError("sampler", sampler, f"must be a sampler name, got {sampler!r}")
    schedule = get_schedule(scheduler)
    split = None if _key(sampler) in _SAMPLER_BY_KEY else _split_suffix(sampler)
    if split is None:
        spec = get_sampler(sampler)
    else:
        spec, named = split
        if schedule.name not in (AUTOMATIC, named.name):
            raise RequestError(
                "scheduler", scheduler, f"the sampler name {sampler!r} already says {named.name}, not {schedule.name}"
            )
        schedule = named
    _check_supported(spec, schedule)
    return spec.name, schedule.name


def make_scheduler(sampler: str, scheduler: str, base_config: Any) -> Any:
    """A fresh diffusers scheduler for `sampler` + `scheduler`, built from the model's own scheduler config.

    Options that the model's config sets and the choice does not (e.g. prediction_type, timestep_spacing under
    "Automatic") are kept, so v-prediction models stay v-prediction.
    """
    name, schedule_name = normalize(sampler, scheduler)
    spec, schedule = get_sampler(name), get_schedule(schedule_name)
    cls = getattr(importlib.import_module("diffusers"), spec.scheduler)
    config = {key: value for key, value in dict(base_config).items() if key not in _CHOICE_OPTIONS}
    return cls.from_config(config, **spec.options, **schedule.options)
