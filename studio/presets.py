"""Generation presets: a named sampler, step count and CFG scale (and the LoRA it needs) that one click puts in a
generation tab's form. The request is then an ordinary one: API users send the same fields (see README).

"LCM" is the fast-draft preset CPU users know from FastSD CPU and ComfyUI: the LCM sampler with 6 steps (LCM works
from 4 to 8) at CFG 1.5 (1 to 2). A regular SD 1.5 / SDXL model needs an LCM-LoRA for it (``lcm-lora-sdv1-5`` or
``lcm-lora-sdxl`` in models/Lora): the preset adds the first LoRA file whose name contains "lcm" to the prompt as
``<lora:NAME:1>`` (once), and says so — or says where to put one when there is none. An LCM-distilled checkpoint
needs no LoRA. LoRAs need the torch engine (the OpenVINO engine runs compiled networks).
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.prompts import extract_loras, lora_tag


@dataclass(frozen=True)
class Preset:
    name: str
    sampler: str
    steps: int
    cfg_scale: float
    lora_marker: str = ""  # LoRA files whose name contains this (case-insensitive) are the ones the preset needs


LCM = Preset("LCM", sampler="LCM", steps=6, cfg_scale=1.5, lora_marker="lcm")
PRESETS = {preset.name: preset for preset in (LCM,)}


@dataclass(frozen=True)
class Applied:
    """What the form gets: the preset's values, the prompt (with the LoRA tag added when one was found), and a
    notice for the user."""

    sampler: str
    steps: int
    cfg_scale: float
    prompt: str
    notice: str


def preset_lora(preset: Preset, loras: list[str]) -> str | None:
    """The first LoRA file name (sorted, case-insensitive) that the preset needs, or None."""
    if not preset.lora_marker:
        return None
    found = sorted((name for name in loras if preset.lora_marker in name.lower()), key=str.lower)
    return found[0] if found else None


def apply_preset(name: str, prompt: str | None, loras: list[str]) -> Applied:
    """The form values of preset `name` for a prompt, given the LoRA files available. KeyError for unknown names."""
    preset = PRESETS[name]
    prompt = prompt or ""
    values = f"sampler {preset.sampler}, {preset.steps} steps, CFG {preset.cfg_scale:g}"
    lora = preset_lora(preset, loras)
    if lora is None:
        notice = f"{preset.name}: {values}."
        if preset.lora_marker:
            notice += (
                " No LCM-LoRA in models/Lora: a regular model needs lcm-lora-sdv1-5 (SD 1.5) or lcm-lora-sdxl (SDXL) "
                "there for sharp images in so few steps (an LCM-distilled model needs none)."
            )
        return Applied(preset.sampler, preset.steps, preset.cfg_scale, prompt, notice)
    _, tags = extract_loras(prompt, "prompt")
    if not any(tag.name == lora for tag in tags):
        separator = "" if not prompt or prompt[-1].isspace() else " "
        prompt = f"{prompt}{separator}{lora_tag(lora)}"
    notice = f"{preset.name}: {values}, with the LoRA {lora} (needs the torch engine)."
    return Applied(preset.sampler, preset.steps, preset.cfg_scale, prompt, notice)
