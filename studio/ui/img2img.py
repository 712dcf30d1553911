"""The Image to image tab and its public API endpoint, /img2img."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image

from studio.types import Limits, Task
from studio.ui.controller import StudioController, bind
from studio.ui.generation import ENGINE_LANE, Gallery, GenerationTab, build_outputs, run_generation, wire_tab_events
from studio.ui.widgets import FormChoices, build_params_form, field_image, to_request


def img2img(
    controller: StudioController,
    image: Image.Image | None,
    prompt: str,
    negative_prompt: str,
    sampler: str,
    steps: float,
    cfg_scale: float,
    seed: float,
    width: float,
    height: float,
    count: float,
    strength: float,
    scheduler: str,
    clip_skip: float,
    vae: str,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[Gallery, dict[str, Any]]]:
    """Rework `image` towards `prompt`; `strength` (0-1] is how much changes. `scheduler`, `clip_skip` and `vae`
    as /txt2img has them. Returns the gallery and the info, as /txt2img does."""
    if image is None:
        raise gr.Error("image: upload an input image", title="Invalid input")
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
        image=image,
        strength=strength,
        scheduler=scheduler,
        clip_skip=clip_skip,
        vae=vae,
    )
    yield from run_generation(controller, generation, request, progress)


def size_of(image: Image.Image | None) -> tuple[Any, Any]:
    """Width and height for a new input image: its own, rounded down to a multiple of 8 (at least 64)."""
    if image is None:
        return gr.update(), gr.update()
    return max(64, image.width // 8 * 8), max(64, image.height // 8 * 8)


def build_img2img_tab(controller: StudioController, choices: FormChoices, limits: Limits) -> GenerationTab:
    """Build the tab inside the current gr.Tab and wire its events."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            image = field_image(
                gr.Image(
                    label="Input image", type="pil", image_mode="RGB", format="png", height=360, elem_id="img2img-image"
                ),
                "image",
            )
            form = build_params_form(Task.IMG2IMG, choices, limits)
        outputs = build_outputs(Task.IMG2IMG)
    run = outputs.generate.click(
        bind(img2img, controller),
        [image, *form.inputs()],
        [outputs.gallery, outputs.info],
        api_name="img2img",
        **ENGINE_LANE,
    )
    # A new input image sets the size to its own (rounded down to a multiple of 8), as users expect.
    image.upload(size_of, image, [form.width, form.height], api_visibility="private", queue=False)
    tab = GenerationTab(Task.IMG2IMG, form, outputs, image=image)
    wire_tab_events(tab, controller, run)
    return tab
