"""The sampler registry: A1111 names and aliases, fresh schedulers, a helpful error for unknown names."""

from __future__ import annotations

import pytest

from studio.samplers import canonical_name, get_sampler, make_scheduler, sampler_names
from studio.types import RequestError

REQUIRED = [
    "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DPM++ SDE Karras", "DDIM", "UniPC",
    "LMS", "Heun", "DPM2", "DPM2 a", "PNDM", "LCM",
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


@pytest.mark.parametrize(("alias", "name"), [*QUICK_KIT.items(), ("EULER A", "Euler a"), ("dpmpp_2m_karras",
                         "DPM++ 2M Karras"), ("k_dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras"), ("uni-pc", "UniPC")])
def test_aliases_case_insensitive(alias, name):
    assert canonical_name(alias) == name


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(RequestError) as info:
        get_sampler("k_fancy")
    assert info.value.field == "sampler"
    for name in REQUIRED:
        assert name in str(info.value)


@pytest.mark.parametrize("name", sampler_names())
def test_every_sampler_builds_a_fresh_scheduler_keeping_model_options(name, sd_config):
    a = make_scheduler(name, sd_config)
    b = make_scheduler(name, sd_config)
    assert a is not b
    assert type(a).__name__ == get_sampler(name).scheduler
    # The model's own options survive (a v-prediction model stays v-prediction).
    assert a.config.prediction_type == "v_prediction"
    assert a.config.beta_schedule == "scaled_linear"


def test_karras_option_applied_and_not_leaked(sd_config):
    karras = make_scheduler("DPM++ 2M Karras", sd_config)
    assert karras.config.use_karras_sigmas is True
    plain = make_scheduler("DPM++ 2M", karras.config)
    assert plain.config.use_karras_sigmas is False
    sde = make_scheduler("DPM++ 2M SDE Karras", sd_config)
    assert sde.config.algorithm_type == "sde-dpmsolver++"
