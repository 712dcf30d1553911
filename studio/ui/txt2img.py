"""The Text to image tab and its public API endpoint, /txt2img."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from studio.types import Limits, Task
from studio.ui.controller import StudioController, bind
from studio.ui.generation import ENGINE_LANE, Gallery, GenerationTab, build_outputs, run_generation, wire_tab_events
from studio.ui.widgets import FormChoices, build_params_form, to_request


def txt2img(
    controller: StudioController,
    prompt: str,
    negative_prompt: str,
    sampler: str,
    steps: float,
    cfg_scale: float,
    seed: float,
    width: float,
    height: float,
    count: float,
    scheduler: str,
    clip_skip: float,
    vae: str,
    hires_scale: float,
    hires_upscaler: str,
    hires_steps: float,
    hires_strength: float,
    hires_resize_x: float,
    hires_resize_y: float,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[Gallery, dict[str, Any]]]:
    """Generate `count` images from `prompt` with seeds seed, seed+1, … (-1: random). The prompt takes A1111's
    syntax, `<lora:name:weight>` tags included. `scheduler` is the schedule type ("Automatic", "Karras", …),
    `clip_skip` 1 = the last CLIP layer, `vae` "Automatic" or a file in models/VAE. Hires fix is on when
    `hires_scale` > 1 or a `hires_resize_x`/`_y` is given: the first pass at width×height is upscaled with
    `hires_upscaler` and redone with `hires_steps` (0 = steps) at `hires_strength`. Returns the gallery (saved PNG
    files with their parameters) and the info: task, seeds, infotexts, paths, model, backend, warnings, timings."""
    generation = to_request(
        prompt,
        negative_prompt,
        sampler,
        steps,
        cfg_scale,
        seed,
        width,
        height,
        count,
        scheduler=scheduler,
        clip_skip=clip_skip,
        vae=vae,
        hires_scale=hires_scale,
        hires_upscaler=hires_upscaler,
        hires_steps=hires_steps,
        hires_strength=hires_strength,
        hires_resize_x=hires_resize_x,
        hires_resize_y=hires_resize_y,
    )
    yield from run_generation(controller, generation, request, progress)


def build_txt2img_tab(controller: StudioController, choices: FormChoices, limits: Limits) -> GenerationTab:
    """Build the tab inside the current gr.Tab and wire its events."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            form = build_params_form(Task.TXT2IMG, choices, limits)
        outputs = build_outputs(Task.TXT2IMG)
    run = outputs.generate.click(
        bind(txt2img, controller), form.inputs(), [outputs.gallery, outputs.info], api_name="txt2img", **ENGINE_LANE
    )
    tab = GenerationTab(Task.TXT2IMG, form, outputs)
    wire_tab_events(tab, controller, run)
    return tab
