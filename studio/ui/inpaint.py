"""The Inpaint tab and its public API endpoint, /inpaint.

In the browser the user paints the area to repaint on the image (an ImageEditor) or uploads a mask; the public
/inpaint endpoint takes a plain image and mask (white = repaint) instead of the editor's layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from studio.types import Limits, Task
from studio.ui.controller import StudioController, bind
from studio.ui.generation import ENGINE_LANE, Gallery, GenerationTab, build_outputs, run_generation, wire_tab_events
from studio.ui.img2img import size_of
from studio.ui.widgets import FormChoices, build_params_form, field_image, to_request

Editor = dict[str, Any]  # gr.ImageEditor's value: {"background", "layers", "composite"}


def inpaint(
    controller: StudioController,
    image: Image.Image | None,
    mask: Image.Image | None,
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
    """Repaint the white area of `mask` in `image` following `prompt`. `scheduler`, `clip_skip` and `vae` as
    /txt2img has them. Returns the gallery and the info, as /txt2img does."""
    if image is None:
        raise gr.Error("image: an image to inpaint is required", title="Invalid input")
    if mask is None:
        raise gr.Error("mask: a mask (white = repaint) is required", title="Invalid input")
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
        mask=mask,
        strength=strength,
        scheduler=scheduler,
        clip_skip=clip_skip,
        vae=vae,
    )
    yield from run_generation(controller, generation, request, progress)


def inpaint_editor(
    controller: StudioController,
    editor: Editor | None,
    mask_upload: Image.Image | None,
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
    mask_blur: float,
    request: gr.Request,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[Gallery, dict[str, Any]]]:
    """The tab's Generate button: the editor's image and painted strokes (or the uploaded mask), with mask blur."""
    background, mask = editor_mask(editor, mask_upload)
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
        image=background.convert("RGB"),
        mask=mask,
        strength=strength,
        scheduler=scheduler,
        clip_skip=clip_skip,
        vae=vae,
        mask_blur=mask_blur,
    )
    yield from run_generation(controller, generation, request, progress)


def editor_mask(editor: Editor | None, uploaded: Image.Image | None) -> tuple[Image.Image, Image.Image]:
    """Background image and mask from the ImageEditor (painted strokes = white) or an uploaded mask."""
    if not editor or editor.get("background") is None:
        raise gr.Error("image: upload an image to inpaint", title="Invalid input")
    background = editor["background"]
    if uploaded is not None:
        return background, uploaded
    mask = Image.new("L", background.size, 0)
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != mask.size:
            alpha = alpha.resize(mask.size)
        mask = ImageChops.lighter(mask, alpha.point(lambda a: 255 if a > 0 else 0))
    return background, mask


def editor_size(editor: Editor | None) -> tuple[Any, Any]:
    return size_of((editor or {}).get("background"))


def build_inpaint_tab(controller: StudioController, choices: FormChoices, limits: Limits) -> GenerationTab:
    """Build the tab inside the current gr.Tab and wire its events (the editor's and the public endpoint's)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            editor = gr.ImageEditor(
                label="Image — paint the area to repaint",
                type="pil",
                image_mode="RGBA",
                format="png",
                layers=False,
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                transforms=(),
                height=420,
                elem_id="inpaint-editor",
            )
            with gr.Accordion("Upload a mask instead (white = repaint)", open=False):
                mask_upload = field_image(
                    gr.Image(
                        label="Mask", type="pil", image_mode="L", format="png", height=200, elem_id="inpaint-mask"
                    ),
                    "mask",
                )
            form = build_params_form(Task.INPAINT, choices, limits)
        outputs = build_outputs(Task.INPAINT)
    results = [outputs.gallery, outputs.info]
    run = outputs.generate.click(
        bind(inpaint_editor, controller),
        [editor, mask_upload, *form.inputs(), form.mask_blur],
        results,
        api_visibility="private",
        **ENGINE_LANE,
    )
    api_image = field_image(gr.Image(type="pil", image_mode="RGB", format="png", visible=False), "image")
    api_mask = field_image(gr.Image(type="pil", image_mode="L", format="png", visible=False), "mask")
    api_button = gr.Button(visible=False)
    api_button.click(
        bind(inpaint, controller), [api_image, api_mask, *form.inputs()], results, api_name="inpaint", **ENGINE_LANE
    )
    editor.upload(editor_size, editor, [form.width, form.height], api_visibility="private", queue=False)
    tab = GenerationTab(Task.INPAINT, form, outputs, image=editor)
    wire_tab_events(tab, controller, run)
    return tab
