"""The LCM preset (studio.presets): its values, the LCM-LoRA tag it adds once, and what it says."""

from __future__ import annotations

import pytest

from studio.presets import LCM, apply_preset, preset_lora
from studio.samplers import SAMPLERS
from studio.types import RequestError


def test_lcm_values_are_in_the_ranges_lcm_needs_and_name_a_real_sampler():
    assert LCM.sampler in {spec.name for spec in SAMPLERS}
    assert 4 <= LCM.steps <= 8 and 1 <= LCM.cfg_scale <= 2


def test_the_first_lcm_lora_is_added_once_and_named_in_the_notice():
    loras = ["detail", "lcm/LCM-lora-sdxl", "lcm/lcm-lora-sdv1-5"]
    assert preset_lora(LCM, loras) == "lcm/lcm-lora-sdv1-5"
    applied = apply_preset("LCM", "a cat", loras)
    assert (applied.sampler, applied.steps, applied.cfg_scale) == ("LCM", 6, 1.5)
    assert applied.prompt == "a cat <lora:lcm/lcm-lora-sdv1-5:1>"
    assert "lcm/lcm-lora-sdv1-5" in applied.notice
    again = apply_preset("LCM", applied.prompt, loras)
    assert again.prompt == applied.prompt, "the tag is not added twice"
    assert apply_preset("LCM", "a cat <lora:lcm/lcm-lora-sdv1-5:0.7>", loras).prompt.count("<lora:") == 1


def test_without_an_lcm_lora_the_prompt_stays_and_the_notice_says_where_to_put_one():
    applied = apply_preset("LCM", "a cat ", ["detail"])
    assert applied.prompt == "a cat " and "models/Lora" in applied.notice and "lcm-lora-sdv1-5" in applied.notice


def test_a_malformed_tag_is_a_prompt_error_and_unknown_presets_are_refused():
    with pytest.raises(RequestError) as caught:
        apply_preset("LCM", "a cat <lora:x:heavy>", ["lcm-lora-sdv1-5"])
    assert caught.value.field == "prompt"
    with pytest.raises(KeyError):
        apply_preset("Turbo", "a cat", [])
