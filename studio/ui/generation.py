"""What the three generation tabs share: the output column, running a request and shaping its result for the
gallery, Stop, the seed buttons, and "Send to" another tab.

The tabs themselves (txt2img.py, img2img.py, inpaint.py) add their inputs and their public handler. Generation
events run in one lane ("engine", one at a time): the engine does one run at a time anyway, and Stop, which runs
in the default lane, is never queued behind the run it stops.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio import metadata
from studio.engine import EngineError, GenerationCancelled
from studio.models.taesd import TAESD
from studio.presets import LCM, apply_preset
from studio.types import AUTOMATIC, GenerationRequest, RequestError, Task
from studio.ui.controller import StudioController, bind
from studio.ui.widgets import DEFAULT_UPSCALER, REQUEST_DEFAULTS, SENT_FIELDS, ParamsForm, insert_lora_tag, with_value

TAB_IDS = {Task.TXT2IMG: "tab-txt2img", Task.IMG2IMG: "tab-img2img", Task.INPAINT: "tab-inpaint"}
TAB_NAMES = {Task.TXT2IMG: "Text to image", Task.IMG2IMG: "Image to image", Task.INPAINT: "Inpaint"}
ENGINE_LANE = {"concurrency_limit": 1, "concurrency_id": "engine"}
PREVIEW_POLL_SECONDS = 0.5  # how often a running generation looks for a new live preview to show
PREVIEW_DISPLAY_SIDE = 256  # a preview (latent resolution: 1/8 of the image) is enlarged to about this side

logger = logging.getLogger(__name__)

Gallery = list[tuple[str, str]]  # (saved file, caption)


@dataclass
class Outputs:
    """The right-hand column of a generation tab."""

    generate: gr.Button
    stop: gr.Button
    gallery: gr.Gallery
    info: gr.JSON
    send_img2img: gr.Button
    send_inpaint: gr.Button
    selected: gr.State  # index of the gallery image the user clicked (Reuse seed, Send to)


@dataclass
class GenerationTab:
    """One generation tab's components (others send parameters and images into them)."""

    task: Task
    form: ParamsForm
    outputs: Outputs
    image: Any = None  # what "Send to" fills: gr.Image (img2img) or gr.ImageEditor (inpaint)


def build_outputs(task: Task) -> Outputs:
    """Lay out the output column: Generate / Stop, the gallery, the send buttons and the JSON info."""
    prefix = task.value
    with gr.Column(scale=6):
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", scale=3, elem_id=f"{prefix}-generate")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id=f"{prefix}-stop")
        gallery = gr.Gallery(
            label="Images",
            format="png",
            columns=2,
            height=512,
            object_fit="contain",
            interactive=False,
            elem_id=f"{prefix}-gallery",
            elem_classes=["studio-gallery"],
        )
        with gr.Row():
            send_img2img = gr.Button("Send to Image to image", size="sm", elem_id=f"{prefix}-send-img2img")
            send_inpaint = gr.Button("Send to Inpaint", size="sm", elem_id=f"{prefix}-send-inpaint")
        info = gr.JSON(label="Parameters and seeds", elem_id=f"{prefix}-info")
    selected = gr.State(0)
    return Outputs(generate, stop, gallery, info, send_img2img, send_inpaint, selected)


def run_generation(
    controller: StudioController,
    generation: GenerationRequest,
    request: gr.Request | None,
    progress: gr.Progress | None,
) -> Iterator[tuple[Any, Any]]:
    """Generate, save, and shape the result for the gallery + info outputs. Errors become gr.Error.

    While the engine samples (in a worker thread), the gallery shows the run's latest live preview (studio.jobs),
    as A1111 does; the last value yielded is the saved images and their info, which is what an API call returns.
    """

    def on_progress(step: int, total: int) -> None:
        if progress is None:
            return
        if step == 0:
            progress(0, desc="queued on the endpoint")
        else:
            progress((step, total), desc=f"step {step}/{total}", unit="steps")

    session = session_of(request)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = controller.generate(generation, session=session, on_progress=on_progress)
        except BaseException as exc:  # re-raised below, in the handler's thread
            outcome["error"] = exc

    # The worker runs in a copy of this context: gradio finds the event's progress tracker through it.
    worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="studio-generate", daemon=True)
    worker.start()
    shown = None
    while worker.is_alive():
        worker.join(PREVIEW_POLL_SECONDS)
        found = controller.jobs.preview(session)
        if found is not None and found[0] is not shown and worker.is_alive():
            shown = found[0]
            yield [(enlarged(found[0]), f"live preview, step {found[1]}")], gr.skip()
    yield finished(outcome)


def enlarged(image: Any) -> Any:
    """A live preview (latent resolution) enlarged for display, with sharp latent pixels."""
    from PIL import Image

    factor = max(1, PREVIEW_DISPLAY_SIDE // max(image.width, image.height))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), resample=Image.Resampling.NEAREST)


def finished(outcome: dict[str, Any]) -> tuple[Gallery, dict[str, Any]]:
    """The gallery and info of a finished run; its error as the message the user sees."""
    try:
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        info = result.info()
    except RequestError as err:
        raise gr.Error(str(err), title="Invalid input") from None
    except GenerationCancelled as stopped:
        partial = stopped.partial
        if partial is None or not partial.images:
            raise gr.Error(f"Stopped: {stopped}", title="Stopped") from None
        result = partial
        info = {**partial.info(), "stopped": str(stopped)}
        gr.Warning(f"Stopped: {stopped}; kept {len(partial.images)} image(s)")
    except EngineError as err:
        kept = len(err.partial.images) if err.partial is not None else 0
        note = f" ({kept} image(s) finished before the failure were saved: see History)" if kept else ""
        raise gr.Error(f"{err}{note}", title="Generation failed") from None
    for note in result.warnings:
        gr.Warning(note)
    gallery = [(path, f"seed {seed}") for path, seed in zip(result.paths, result.seeds, strict=True)]
    return gallery, info


def session_of(request: gr.Request | None) -> str:
    """The browser session (or API client) a run belongs to: Stop stops only the caller's own run."""
    return getattr(request, "session_hash", None) or ""


def stop_run(controller: StudioController, request: gr.Request) -> None:
    if not controller.stop(session_of(request)):
        gr.Info(
            "Nothing is running for you right now (a run still waiting in the queue cannot be stopped; "
            "it starts when the engine is free)"
        )


def random_seed() -> int:
    return -1


def reuse_seed(info: dict[str, Any] | None, selected: int) -> int:
    seeds = (info or {}).get("seeds") or []
    if not seeds:
        raise gr.Error("Generate an image first: there is no seed to reuse yet")
    return seeds[selected if 0 <= selected < len(seeds) else 0]


def selected_index(evt: gr.SelectData) -> int:
    return int(evt.index) if isinstance(evt.index, int) else 0


def first_image() -> int:
    return 0


def listed(list_files: Any, what: str) -> list[str]:
    """The names a listing function returns; a failure is shown to the user (gr.Error), not hidden."""
    try:
        return list(list_files())
    except Exception as err:
        raise gr.Error(f"Could not list the {what}: {err}") from None


def lcm_preset(controller: StudioController, prompt: str | None) -> tuple[str, int, float, str]:
    """The "LCM preset" button: studio.presets.LCM's sampler, steps and CFG, and the prompt with the first LCM-LoRA
    file's tag; a notice says which LoRA (or where to put one)."""
    try:
        applied = apply_preset(LCM.name, prompt, listed(controller.list_loras, "LoRA files"))
    except RequestError as exc:  # a malformed <lora:...> tag already in the prompt
        raise gr.Error(str(exc)) from None
    gr.Info(applied.notice)
    return applied.sampler, applied.steps, applied.cfg_scale, applied.prompt


def rescan_files(controller: StudioController) -> tuple[Any, Any, Any]:
    """The LoRA, VAE and upscaler dropdowns with the files in the models folder now (kept values stay)."""
    loras = listed(controller.list_loras, "LoRA files")
    vae_files = listed(controller.list_vaes, "VAE files")
    upscalers = with_value(listed(controller.list_upscalers, "upscalers"), DEFAULT_UPSCALER)
    gr.Info(f"{len(loras)} LoRA file(s), {len(vae_files)} VAE file(s), {len(upscalers)} upscaler(s)")
    vaes = [AUTOMATIC, TAESD, *vae_files]
    return gr.update(choices=loras), gr.update(choices=vaes), gr.update(choices=upscalers)


def rescan_lora_vae(controller: StudioController) -> tuple[Any, Any]:
    """`rescan_files` for a tab without the hires fix's upscaler."""
    loras, vaes, _ = rescan_files(controller)
    return loras, vaes


def restored_values(fields: dict[str, Any], names: tuple[str, ...] | list[str]) -> list[Any]:
    """Component values for `names` from request fields (metadata.request_fields). A field the infotext leaves out at
    its default (schedule type, clip skip, VAE, hires fix) gets that default, so the form shows what made the
    image; any other missing field leaves its component as it is."""
    values: list[Any] = []
    for name in names:
        if name in fields:
            values.append(fields[name])
        elif name in metadata.OMITTED_AT_DEFAULT:
            values.append(REQUEST_DEFAULTS[name])
        else:
            values.append(gr.update())
    return values


def wire_tab_events(tab: GenerationTab, controller: StudioController, run: Any) -> None:
    """Stop, the seed buttons, the gallery selection and the LoRA picker of one tab; `run` is its Generate event."""
    outputs, form = tab.outputs, tab.form
    # Queued: gradio shows a handler's gr.Error / gr.Info only for queued events (queue=False drops them).
    # Stop runs in the default lane, never behind the generation it stops.
    outputs.stop.click(bind(stop_run, controller), None, None, api_visibility="private")
    form.random_seed.click(random_seed, None, form.seed, api_visibility="private", queue=False)
    form.reuse_seed.click(reuse_seed, [outputs.info, outputs.selected], form.seed, api_visibility="private")
    outputs.gallery.select(selected_index, None, outputs.selected, api_visibility="private", queue=False)
    run.then(first_image, None, outputs.selected, api_visibility="private", queue=False)
    form.loras.insert.click(insert_lora_tag, [form.prompt, form.loras.name], form.prompt, api_visibility="private")
    preset_fields = [form.sampler, form.steps, form.cfg_scale, form.prompt]
    form.lcm_preset.click(bind(lcm_preset, controller), [form.prompt], preset_fields, api_visibility="private")
    if form.hires is None:
        rescan, rescanned = rescan_lora_vae, [form.loras.name, form.vae]
    else:
        rescan, rescanned = rescan_files, [form.loras.name, form.vae, form.hires.upscaler]
    form.loras.refresh.click(bind(rescan, controller), None, rescanned, api_visibility="private")


def sent_values(target: Task, gallery: list[Any] | None, selected: int, info: dict[str, Any] | None) -> list[Any]:
    """The selected gallery image and its parameters, as values for `target`'s image, SENT_FIELDS and the tabs."""
    if not gallery:
        raise gr.Error("Generate an image first: the gallery is empty")
    index = selected if 0 <= selected < len(gallery) else 0
    item = gallery[index]
    path = item[0] if isinstance(item, (tuple, list)) else item
    infotexts = (info or {}).get("infotexts") or []
    fields = metadata.request_fields(metadata.parse_infotext(infotexts[index])) if index < len(infotexts) else {}
    size = _image_size(path)
    if size is not None:  # the image itself (a hires fix image is larger than the infotext's first-pass Size)
        fields["width"], fields["height"] = size
    values = restored_values(fields, SENT_FIELDS)
    if target is Task.INPAINT:
        image_value: Any = {"background": path, "layers": [], "composite": path}
    else:
        image_value = path
    return [image_value, *values, gr.Tabs(selected=TAB_IDS[target])]


def _image_size(path: str) -> tuple[int, int] | None:
    """A saved image's size rounded down to a multiple of 8 (what the target tab's upload would set), read from the
    file header; None when the file cannot be read (the infotext's Size is then used)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as err:
        logger.warning("could not read the size of %s: %s", path, err)
        return None
    return max(64, width // 8 * 8), max(64, height // 8 * 8)


def send_to_img2img(gallery: list[Any] | None, selected: int, info: dict[str, Any] | None) -> list[Any]:
    return sent_values(Task.IMG2IMG, gallery, selected, info)


def send_to_inpaint(gallery: list[Any] | None, selected: int, info: dict[str, Any] | None) -> list[Any]:
    return sent_values(Task.INPAINT, gallery, selected, info)


def wire_send_to(tabs: gr.Tabs, by_task: dict[Task, GenerationTab]) -> None:
    """ "Send to Image to image / Inpaint": the selected gallery image and its parameters go to the other tab."""
    for source in by_task.values():
        out = source.outputs
        for target, button, send in (
            (Task.IMG2IMG, out.send_img2img, send_to_img2img),
            (Task.INPAINT, out.send_inpaint, send_to_inpaint),
        ):
            dest = by_task[target]
            button.click(  # queued, so "Generate an image first" reaches the user
                send,
                [out.gallery, out.selected, out.info],
                [dest.image, *dest.form.sendable(), tabs],
                api_visibility="private",
            )
