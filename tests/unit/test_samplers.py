"""The sampler registry: A1111 sampler names and schedule types, aliases, fresh schedulers, errors naming the field."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from studio.samplers import (
    SAMPLERS,
    SCHEDULE_OPTIONS,
    SCHEDULES,
    canonical_name,
    get_sampler,
    make_scheduler,
    normalize,
    sampler_names,
    scheduler_names,
)
from studio.testing.servers import REPO
from studio.types import RequestError

REQUIRED = [
    "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 3M SDE", "DPM++ SDE", "DDIM", "UniPC", "LMS", "Heun",
    "DPM2", "DPM2 a", "PNDM", "LCM",
]
QUICK_KIT = {"euler_a": "Euler a", "eular": "Euler", "heun": "Heun", "lms": "LMS", "dpm2": "DPM2",
             "dpm2_a": "DPM2 a", "ddim": "DDIM"}


@pytest.fixture(scope="module")
def sd_config():
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         prediction_type="v_prediction").config


def test_required_names_present():
    assert set(REQUIRED) <= set(sampler_names())
    assert scheduler_names()[:5] == ["Automatic", "Uniform", "Karras", "Exponential", "SGM Uniform"]


@pytest.mark.parametrize(("alias", "name"), [*QUICK_KIT.items(), ("EULER A", "Euler a"), ("uni-pc", "UniPC"),
                                             ("k_dpmpp_3m_sde", "DPM++ 3M SDE")])
def test_aliases_case_insensitive(alias, name):
    assert canonical_name(alias) == name


@pytest.mark.parametrize(("old", "pair"), [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("dpmpp_2m_karras", ("DPM++ 2M", "Karras")),
    ("k_dpmpp_2m_sde_karras", ("DPM++ 2M SDE", "Karras")),
    ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
    ("DPM2 a Karras", ("DPM2 a", "Karras")),
    ("LMS Exponential", ("LMS", "Exponential")),
])
def test_old_combined_names_are_split_into_sampler_and_schedule_type(old, pair):
    assert normalize(old) == pair
    assert normalize(old, "Automatic") == pair
    assert normalize(old, pair[1].lower()) == pair  # saying the same schedule twice is fine


def test_schedule_types_by_label_and_api_name():
    assert normalize("DPM++ 2M", "karras") == ("DPM++ 2M", "Karras")
    assert normalize("Euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert normalize("Euler", "SGMUniform") == ("Euler", "SGM Uniform")
    assert normalize("euler_a") == ("Euler a", "Automatic")


@pytest.mark.parametrize(("sampler", "scheduler", "field", "says"), [
    ("k_fancy", "Automatic", "sampler", "valid samplers: DPM++ 2M"),
    ("Euler", "Polyfancy", "scheduler", "valid schedule types: Automatic, Uniform, Karras"),
    ("Euler a", "Karras", "scheduler", "the Euler a sampler cannot use the Karras schedule type"),
    ("DPM++ 2M Karras", "Exponential", "scheduler", "already says Karras"),
    ("", "Automatic", "sampler", "must be a sampler name"),
])
def test_bad_names_are_errors_naming_the_field(sampler, scheduler, field, says):
    with pytest.raises(RequestError) as info:
        normalize(sampler, scheduler)
    assert info.value.field == field
    assert says in str(info.value)


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(RequestError) as info:
        get_sampler("k_fancy")
    assert info.value.field == "sampler"
    for name in REQUIRED:
        assert name in str(info.value)


def test_schedule_option_table_matches_diffusers():
    """SCHEDULE_OPTIONS is static (validation must not import diffusers); it must say what diffusers accepts."""
    import diffusers

    options = {option for schedule in SCHEDULES for option in schedule.options}
    for class_name, supported in SCHEDULE_OPTIONS.items():
        accepted = set(inspect.signature(getattr(diffusers, class_name).__init__).parameters)
        assert supported == options & accepted, class_name


def test_validating_a_sampler_does_not_import_diffusers():
    code = ("import sys; from studio.samplers import normalize; normalize('DPM++ 2M Karras', 'Automatic'); "
            "print(sorted(m for m in ('diffusers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sampler_names())
def test_every_sampler_builds_a_fresh_scheduler_keeping_model_options(name, sd_config):
    a = make_scheduler(name, "Automatic", sd_config)
    b = make_scheduler(name, "Automatic", sd_config)
    assert a is not b
    assert type(a).__name__ == get_sampler(name).scheduler
    # The model's own options survive (a v-prediction model stays v-prediction).
    assert a.config.prediction_type == "v_prediction"
    assert a.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_every_usable_schedule_type_builds(spec, sd_config):
    for schedule in SCHEDULES:
        if all(option in SCHEDULE_OPTIONS[spec.scheduler] for option in schedule.options):
            scheduler = make_scheduler(spec.name, schedule.name, sd_config)
            for option, value in schedule.options.items():
                assert scheduler.config[option] == value


def test_schedule_options_applied_and_not_leaked(sd_config):
    karras = make_scheduler("DPM++ 2M", "Karras", sd_config)
    assert karras.config.use_karras_sigmas is True
    plain = make_scheduler("DPM++ 2M", "Automatic", karras.config)
    assert plain.config.use_karras_sigmas is False
    sde = make_scheduler("DPM++ 2M SDE Karras", "Automatic", sd_config)
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.use_karras_sigmas is True
    three = make_scheduler("DPM++ 3M SDE", "Exponential", sd_config)
    assert three.config.solver_order == 3 and three.config.use_exponential_sigmas is True
    two = make_scheduler("DPM++ 2M", "Automatic", three.config)
    assert two.config.solver_order == 2 and two.config.algorithm_type == "dpmsolver++"
    assert make_scheduler("Euler", "SGM Uniform", sd_config).config.timestep_spacing == "trailing"
