"""Text to image, Image to image and Inpaint tabs: one builder, three variants.

Each tab's Generate button is also a public API endpoint (/txt2img, /img2img, /inpaint) with a
stable positional signature; the API returns the gallery first, then the JSON info.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.engine import EngineError, GenerationCancelled
from studio.samplers import DEFAULT_SAMPLER
from studio.types import GenerationRequest, Limits, RequestError, Task
from studio.ui.controller import StudioController


def _passthrough(value: Any) -> Any:
    return value


def field_input(component: Any) -> Any:
    """Let API values reach GenerationRequest.validate() unchanged, so an out-of-range number is refused with an
    error naming the field. Gradio's own slider/number check says only "Value 0 is less than minimum value 1".
    The browser still enforces the widget's range. (An instance override, not a subclass: gradio writes a .pyi
    stub next to the source of every component subclass it sees.)"""
    component.preprocess = _passthrough
    return component


def field_image(component: Any, field: str) -> Any:
    """Make an unreadable upload (not an image, damaged, beyond Pillow's decompression-bomb limit) a gr.Error
    naming `field`, instead of gradio's generic "could not preprocess input component at index 0". The size is
    read from the header and checked before any pixel is decoded. (An instance override, see field_input.)"""
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        from PIL import Image, UnidentifiedImageError

        def refuse(message: str) -> gr.Error:
            text = message if message.startswith(f"{field}:") else f"{field}: {message}"
            return gr.Error(text, title="Invalid input")

        try:
            path = getattr(payload, "path", None)
            if path:
                with Image.open(path) as probe:
                    width, height = probe.size
                limit = Image.MAX_IMAGE_PIXELS
                if limit and width * height > limit:
                    raise refuse(f"{width}x{height} is more than Pillow's decompression-bomb limit of {limit} pixels")
            return preprocess(payload)
        except gr.Error as err:
            raise refuse(str(err.message)) from None
        except Image.DecompressionBombError as err:
            raise refuse(f"larger than Pillow's decompression-bomb limit ({err})") from None
        except UnidentifiedImageError:
            raise refuse("not an image file Pillow can read (PNG, JPEG, WebP, ...)") from None
        except Exception as err:
            raise refuse(f"cannot read this image, the file is damaged or truncated ({err})") from None

    component.preprocess = checked
    return component


@dataclass
class GenerationWidgets:
    """The components of one generation tab (others send parameters into them)."""

    task: Task
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    count: gr.Slider
    gallery: gr.Gallery
    info: gr.JSON
    selected: gr.State
    image: Any = None  # gr.Image (img2img) or gr.ImageEditor (inpaint)
    strength: gr.Slider | None = None
    mask_upload: gr.Image | None = None
    mask_blur: gr.Slider | None = None
    send_img2img: gr.Button | None = None
    send_inpaint: gr.Button | None = None

    def params(self) -> list[Any]:
        """Components in the public API's parameter order (after any image inputs)."""
        return [
            self.prompt,
            self.negative_prompt,
            self.sampler,
            self.steps,
            self.cfg_scale,
            self.seed,
            self.width,
            self.height,
            self.count,
        ]


def run_generation(
    controller: StudioController,
    request: GenerationRequest,
    session: str,
    progress: gr.Progress | None,
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Generate, save, and shape the result for the gallery + info outputs. Errors become gr.Error."""

    def on_progress(step: int, total: int) -> None:
        if progress is None:
            return
        if step == 0:
            progress(0, desc="queued on the endpoint")
        else:
            progress((step, total), desc=f"step {step}/{total}", unit="steps")

    try:
        result = controller.generate(request, session=session, on_progress=on_progress)
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


def _editor_mask(editor: dict[str, Any] | None, uploaded: Any) -> tuple[Any, Any]:
    """Background image and mask from the ImageEditor (painted strokes = white) or an uploaded mask."""
    from PIL import Image, ImageChops

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


def build_generation_tab(
    task: Task, controller: StudioController, samplers: list[str], limits: Limits
) -> GenerationWidgets:
    """Build one tab's widgets and events inside the current gr.Tab."""
    prefix = task.value
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            image = mask_upload = mask_blur = strength = None
            if task is Task.IMG2IMG:
                image = field_image(
                    gr.Image(
                        label="Input image",
                        type="pil",
                        image_mode="RGB",
                        format="png",
                        height=360,
                        elem_id=f"{prefix}-image",
                    ),
                    "image",
                )
            elif task is Task.INPAINT:
                image = gr.ImageEditor(
                    label="Image — paint the area to repaint",
                    type="pil",
                    image_mode="RGBA",
                    format="png",
                    layers=False,
                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                    transforms=(),
                    height=420,
                    elem_id=f"{prefix}-editor",
                )
                with gr.Accordion("Upload a mask instead (white = repaint)", open=False):
                    mask_upload = field_image(
                        gr.Image(
                            label="Mask", type="pil", image_mode="L", format="png", height=200, elem_id=f"{prefix}-mask"
                        ),
                        "mask",
                    )
            # Passed through too: gradio's Textbox would turn 5 or ["a", "b"] into the text "5" / "['a', 'b']".
            prompt = field_input(
                gr.Textbox(
                    label="Prompt",
                    lines=3,
                    placeholder="a watercolor fox in a snowy forest",
                    elem_id=f"{prefix}-prompt",
                )
            )
            negative = field_input(gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}-negative"))
            with gr.Row():
                sampler = gr.Dropdown(
                    samplers,
                    value=DEFAULT_SAMPLER,
                    label="Sampler",
                    scale=2,
                    allow_custom_value=True,
                    elem_id=f"{prefix}-sampler",
                )
                steps = field_input(gr.Slider(1, limits.max_steps, value=20, step=1, label="Steps", scale=3))
            with gr.Row():
                width = field_input(gr.Slider(64, limits.max_width, value=512, step=8, label="Width"))
                height = field_input(gr.Slider(64, limits.max_height, value=512, step=8, label="Height"))
            with gr.Row():
                cfg = field_input(
                    gr.Slider(limits.min_cfg_scale, limits.max_cfg_scale, value=7.0, step=0.5, label="CFG scale")
                )
                count = field_input(gr.Slider(1, limits.max_count, value=1, step=1, label="Image count"))
            if task is not Task.TXT2IMG:
                strength = field_input(gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Denoising strength"))
            if task is Task.INPAINT:
                mask_blur = field_input(gr.Slider(0, 64, value=4, step=1, label="Mask blur"))
            with gr.Row():
                seed = field_input(
                    gr.Number(label="Seed (-1 = random)", value=-1, precision=0, scale=4, elem_id=f"{prefix}-seed")
                )
                random_seed = gr.Button("Random", size="sm", scale=0, min_width=72, elem_id=f"{prefix}-random-seed")
                reuse_seed = gr.Button("Reuse last", size="sm", scale=0, min_width=90, elem_id=f"{prefix}-reuse-seed")
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
            )
            with gr.Row():
                send_img2img = gr.Button("Send to Image to image", size="sm", elem_id=f"{prefix}-send-img2img")
                send_inpaint = gr.Button("Send to Inpaint", size="sm", elem_id=f"{prefix}-send-inpaint")
            info = gr.JSON(label="Parameters and seeds", elem_id=f"{prefix}-info")
    selected = gr.State(0)

    widgets = GenerationWidgets(
        task=task,
        prompt=prompt,
        negative_prompt=negative,
        sampler=sampler,
        steps=steps,
        cfg_scale=cfg,
        seed=seed,
        width=width,
        height=height,
        count=count,
        gallery=gallery,
        info=info,
        selected=selected,
        image=image,
        strength=strength,
        mask_upload=mask_upload,
        mask_blur=mask_blur,
        send_img2img=send_img2img,
        send_inpaint=send_inpaint,
    )

    def make_request(values: list[Any], **extra: Any) -> GenerationRequest:
        p, n, s, st, c, sd, w, h, k = values
        return GenerationRequest(
            prompt=p or "",
            negative_prompt=n or "",
            sampler=s,
            steps=_num(st),
            cfg_scale=_num(c),
            seed=_num(sd),
            width=_num(w),
            height=_num(h),
            count=_num(k),
            **extra,
        )

    engine_lane = {"concurrency_limit": 1, "concurrency_id": "engine"}
    if task is Task.TXT2IMG:

        def txt2img(p, n, s, st, c, sd, w, h, k, request: gr.Request, progress=gr.Progress()):
            req = make_request([p, n, s, st, c, sd, w, h, k])
            return run_generation(controller, req, _session(request), progress)

        event = generate.click(txt2img, widgets.params(), [gallery, info], api_name="txt2img", **engine_lane)
    elif task is Task.IMG2IMG:

        def img2img(img, p, n, s, st, c, sd, w, h, k, strength_value, request: gr.Request, progress=gr.Progress()):
            if img is None:
                raise gr.Error("image: upload an input image", title="Invalid input")
            req = make_request([p, n, s, st, c, sd, w, h, k], image=img, strength=_num(strength_value))
            return run_generation(controller, req, _session(request), progress)

        event = generate.click(
            img2img, [image, *widgets.params(), strength], [gallery, info], api_name="img2img", **engine_lane
        )
        # A new input image sets the size to its own (rounded down to a multiple of 8), as users expect.
        image.upload(_size_of, image, [width, height], api_visibility="private", queue=False)
    else:

        def inpaint_ui(
            editor,
            mask_file,
            p,
            n,
            s,
            st,
            c,
            sd,
            w,
            h,
            k,
            strength_value,
            blur,
            request: gr.Request,
            progress=gr.Progress(),
        ):
            background, mask = _editor_mask(editor, mask_file)
            req = make_request(
                [p, n, s, st, c, sd, w, h, k],
                image=background.convert("RGB"),
                mask=mask,
                strength=_num(strength_value),
                mask_blur=_num(blur),
            )
            return run_generation(controller, req, _session(request), progress)

        def inpaint_api(
            img, mask, p, n, s, st, c, sd, w, h, k, strength_value, request: gr.Request, progress=gr.Progress()
        ):
            if img is None:
                raise gr.Error("image: an image to inpaint is required", title="Invalid input")
            if mask is None:
                raise gr.Error("mask: a mask (white = repaint) is required", title="Invalid input")
            req = make_request([p, n, s, st, c, sd, w, h, k], image=img, mask=mask, strength=_num(strength_value))
            return run_generation(controller, req, _session(request), progress)

        event = generate.click(
            inpaint_ui,
            [image, mask_upload, *widgets.params(), strength, mask_blur],
            [gallery, info],
            api_visibility="private",
            **engine_lane,
        )
        # The public /inpaint endpoint takes a plain image and mask (white = repaint), not the editor's layers.
        api_image = field_image(gr.Image(type="pil", image_mode="RGB", format="png", visible=False), "image")
        api_mask = field_image(gr.Image(type="pil", image_mode="L", format="png", visible=False), "mask")
        api_button = gr.Button(visible=False)
        api_button.click(
            inpaint_api,
            [api_image, api_mask, *widgets.params(), strength],
            [gallery, info],
            api_name="inpaint",
            **engine_lane,
        )
        image.upload(_size_of_editor, image, [width, height], api_visibility="private", queue=False)

    def stop_run(request: gr.Request) -> None:
        if not controller.stop(_session(request)):
            gr.Info(
                "Nothing is running for you right now (a run still waiting in the queue cannot be stopped; "
                "it starts when the engine is free)"
            )

    # Queued: gradio shows a handler's gr.Error / gr.Info only for queued events (queue=False drops them).
    # Stop runs in the default lane, never behind the generation it stops.
    stop.click(stop_run, None, None, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private", queue=False)
    reuse_seed.click(_reuse_seed, [info, selected], seed, api_visibility="private")
    gallery.select(_selected_index, None, selected, api_visibility="private", queue=False)
    event.then(lambda: 0, None, selected, api_visibility="private", queue=False)
    return widgets


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""


def _num(value: Any) -> Any:
    """Gradio numbers arrive as floats; keep whole floats whole, pass anything else on for validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _reuse_seed(info: dict[str, Any] | None, selected: int) -> int:
    seeds = (info or {}).get("seeds") or []
    if not seeds:
        raise gr.Error("Generate an image first: there is no seed to reuse yet")
    return seeds[selected if 0 <= selected < len(seeds) else 0]


def _selected_index(evt: gr.SelectData) -> int:
    return int(evt.index) if isinstance(evt.index, int) else 0


def _size_of(image: Any) -> tuple[Any, Any]:
    if image is None:
        return gr.update(), gr.update()
    return max(64, image.width // 8 * 8), max(64, image.height // 8 * 8)


def _size_of_editor(editor: dict[str, Any] | None) -> tuple[Any, Any]:
    return _size_of((editor or {}).get("background"))
