"""The generation parameters form and the one place its values become a GenerationRequest.

Every generation tab shows the same form (prompt … seed, plus strength and mask blur where they apply); its
components, in `ParamsForm.inputs()` order, are the public API's parameters after any image inputs. The values
reach `GenerationRequest.validate()` unchanged (`field_input`), so a bad one is refused with an error naming the
field, for the browser and the API alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.samplers import DEFAULT_SAMPLER
from studio.types import GenerationRequest, Limits, Task


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
class ParamsForm:
    """The parameter widgets of one generation tab."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    count: gr.Slider
    random_seed: gr.Button
    reuse_seed: gr.Button
    strength: gr.Slider | None = None  # img2img and inpaint
    mask_blur: gr.Slider | None = None  # the inpaint tab's editor only (not a public API parameter)

    def inputs(self) -> list[Any]:
        """The components in the public API's parameter order (after any image inputs)."""
        params = [
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
        return params if self.strength is None else [*params, self.strength]

    def sendable(self) -> list[Any]:
        """The components "Send to" and PNG Info fill from saved parameters, in `SENT_FIELDS` order."""
        return [getattr(self, name) for name in SENT_FIELDS]


# The request fields another image's parameters carry over (the seed only from PNG Info: a sent image is reworked).
SENT_FIELDS = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "width", "height")


def build_params_form(task: Task, samplers: list[str], limits: Limits) -> ParamsForm:
    """Lay out the form inside the current column: prompts, sampler and sizes, then strength/blur, then the seed."""
    prefix = task.value
    # Passed through too: gradio's Textbox would turn 5 or ["a", "b"] into the text "5" / "['a', 'b']". The initial
    # "" (not gradio's None) makes the prompts optional in the API, like every other parameter with a value.
    prompt = field_input(
        gr.Textbox(
            "", label="Prompt", lines=3, placeholder="a watercolor fox in a snowy forest", elem_id=f"{prefix}-prompt"
        )
    )
    negative = field_input(gr.Textbox("", label="Negative prompt", lines=2, elem_id=f"{prefix}-negative"))
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
        cfg = field_input(gr.Slider(limits.min_cfg_scale, limits.max_cfg_scale, value=7.0, step=0.5, label="CFG scale"))
        count = field_input(gr.Slider(1, limits.max_count, value=1, step=1, label="Image count"))
    strength = mask_blur = None
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
    return ParamsForm(
        prompt=prompt,
        negative_prompt=negative,
        sampler=sampler,
        steps=steps,
        cfg_scale=cfg,
        seed=seed,
        width=width,
        height=height,
        count=count,
        random_seed=random_seed,
        reuse_seed=reuse_seed,
        strength=strength,
        mask_blur=mask_blur,
    )


def to_request(
    prompt: str | None,
    negative_prompt: str | None,
    sampler: str,
    steps: float,
    cfg_scale: float,
    seed: float,
    width: float,
    height: float,
    count: float,
    **task_fields: Any,
) -> GenerationRequest:
    """The form's values (and the task's image, mask, strength, mask blur) as a GenerationRequest.

    Blank prompts become ""; whole floats (what gradio's sliders send) become ints. Anything else is passed on as
    it came, for GenerationRequest.validate() to refuse with an error naming the field.
    """
    return GenerationRequest(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        sampler=sampler,
        steps=_number(steps),
        cfg_scale=_number(cfg_scale),
        seed=_number(seed),
        width=_number(width),
        height=_number(height),
        count=_number(count),
        **{name: _number(value) for name, value in task_fields.items()},
    )


def _number(value: Any) -> Any:
    """Gradio numbers arrive as floats; keep whole floats whole, pass anything else on for validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
