"""The generation parameters form and the one place its values become a GenerationRequest.

Every generation tab shows the same form (prompt, LoRA picker, sampler and schedule type … seed, clip skip and VAE,
plus strength and mask blur, or text to image's Hires fix, where they apply); its components, in
`ParamsForm.inputs()` order, are the public API's parameters after any image inputs. The values
reach `GenerationRequest.validate()` unchanged (`field_input`), so a bad one is refused with an error naming the
field, for the browser and the API alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import gradio as gr

from studio.models.taesd import TAESD
from studio.samplers import DEFAULT_SAMPLER
from studio.types import AUTOMATIC, MAX_CLIP_SKIP, MAX_HIRES_SCALE, GenerationRequest, Limits, Task

# Every request field's default (what a form starts with, and what a missing "omitted at default" key means).
REQUEST_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
DEFAULT_UPSCALER: str = REQUEST_DEFAULTS["hires_upscaler"]


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


@dataclass(frozen=True)
class FormChoices:
    """What the forms' dropdowns offer: samplers and schedule types (the registry's), and the VAE, LoRA and upscaler
    files found by the functions app.py injects into the controller. The VAE, upscaler and sampler boxes also take a
    typed name (a pasted infotext may name a file that is not here: the engine then says so, naming the field)."""

    samplers: list[str]
    schedulers: list[str] = dataclass_field(default_factory=lambda: [AUTOMATIC])
    vaes: list[str] = dataclass_field(default_factory=list)  # files only; "Automatic" is added in front
    loras: list[str] = dataclass_field(default_factory=list)
    upscalers: list[str] = dataclass_field(default_factory=list)


@dataclass
class HiresForm:
    """Text to image's "Hires fix" accordion (A1111's): upscale the first pass, then an img2img pass at that size."""

    accordion: gr.Accordion
    upscaler: gr.Dropdown
    steps: gr.Slider
    strength: gr.Slider
    scale: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider

    def inputs(self) -> list[Any]:
        """In the public API's order: hires_scale, hires_upscaler, hires_steps, hires_strength, hires_resize_x/y."""
        return [self.scale, self.upscaler, self.steps, self.strength, self.resize_x, self.resize_y]


@dataclass
class LoraPicker:
    """The LoRA files found, and a button that inserts the chosen one's `<lora:name:1>` tag into the prompt."""

    name: gr.Dropdown
    insert: gr.Button
    refresh: gr.Button


@dataclass
class ParamsForm:
    """The parameter widgets of one generation tab."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    count: gr.Slider
    clip_skip: gr.Slider
    vae: gr.Dropdown
    random_seed: gr.Button
    reuse_seed: gr.Button
    loras: LoraPicker
    lcm_preset: gr.Button  # studio.presets.LCM: sampler, steps and CFG for fast drafts (+ an LCM-LoRA tag)
    strength: gr.Slider | None = None  # img2img and inpaint
    mask_blur: gr.Slider | None = None  # the inpaint tab's editor only (not a public API parameter)
    hires: HiresForm | None = None  # text to image only

    def inputs(self) -> list[Any]:
        """The components in the public API's parameter order (after any image inputs). Parameters added later
        come after the earlier ones, so old positional calls keep working."""
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
        if self.strength is not None:
            params.append(self.strength)
        params += [self.scheduler, self.clip_skip, self.vae]
        return params if self.hires is None else [*params, *self.hires.inputs()]

    def sendable(self) -> list[Any]:
        """The components "Send to" and PNG Info fill from saved parameters, in `SENT_FIELDS` order."""
        return [getattr(self, name) for name in SENT_FIELDS]

    def hires_fields(self) -> list[Any]:
        """The hires fix components in `metadata.HIRES_FIELDS` order (text to image only)."""
        if self.hires is None:
            return []
        hires = self.hires
        return [hires.scale, hires.resize_x, hires.resize_y, hires.steps, hires.upscaler, hires.strength]


# The request fields another image's parameters carry over (the seed only from PNG Info: a sent image is reworked).
SENT_FIELDS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "scheduler",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "clip_skip",
    "vae",
)


def with_value(choices: list[str], value: str) -> list[str]:
    """`choices` with `value` first when it is missing (a dropdown's default must be one of its choices)."""
    return choices if value in choices else [value, *choices]


def build_params_form(task: Task, choices: FormChoices, limits: Limits) -> ParamsForm:
    """Lay out the form inside the current column: prompts and LoRAs, sampler and sizes, clip skip and VAE, then the
    hires fix (text to image) or strength/blur, then the seed."""
    prefix = task.value
    # Passed through too: gradio's Textbox would turn 5 or ["a", "b"] into the text "5" / "['a', 'b']". The initial
    # "" (not gradio's None) makes the prompts optional in the API, like every other parameter with a value.
    prompt = field_input(
        gr.Textbox(
            "", label="Prompt", lines=3, placeholder="a watercolor fox in a snowy forest", elem_id=f"{prefix}-prompt"
        )
    )
    negative = field_input(gr.Textbox("", label="Negative prompt", lines=2, elem_id=f"{prefix}-negative"))
    loras = _build_lora_picker(prefix, choices.loras)
    with gr.Row():
        sampler = gr.Dropdown(
            choices.samplers,
            value=DEFAULT_SAMPLER,
            label="Sampler",
            scale=2,
            allow_custom_value=True,
            elem_id=f"{prefix}-sampler",
        )
        scheduler = gr.Dropdown(
            with_value(choices.schedulers, AUTOMATIC),
            value=AUTOMATIC,
            label="Schedule type",
            scale=2,
            allow_custom_value=True,
            elem_id=f"{prefix}-scheduler",
        )
        steps = field_input(gr.Slider(1, limits.max_steps, value=20, step=1, label="Steps", scale=3))
        lcm_preset = gr.Button("LCM preset", size="sm", scale=0, min_width=100, elem_id=f"{prefix}-lcm-preset")
    with gr.Row():
        width = field_input(gr.Slider(64, limits.max_width, value=512, step=8, label="Width"))
        height = field_input(gr.Slider(64, limits.max_height, value=512, step=8, label="Height"))
    with gr.Row():
        cfg = field_input(gr.Slider(limits.min_cfg_scale, limits.max_cfg_scale, value=7.0, step=0.5, label="CFG scale"))
        count = field_input(gr.Slider(1, limits.max_count, value=1, step=1, label="Image count"))
    with gr.Row():
        clip_skip = field_input(gr.Slider(1, MAX_CLIP_SKIP, value=1, step=1, label="Clip skip"))
        vae = gr.Dropdown(
            [AUTOMATIC, TAESD, *choices.vaes],
            value=AUTOMATIC,
            label="VAE",
            allow_custom_value=True,
            elem_id=f"{prefix}-vae",
        )
    hires = _build_hires_form(prefix, choices.upscalers, limits) if task is Task.TXT2IMG else None
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
        scheduler=scheduler,
        steps=steps,
        cfg_scale=cfg,
        seed=seed,
        width=width,
        height=height,
        count=count,
        clip_skip=clip_skip,
        vae=vae,
        random_seed=random_seed,
        reuse_seed=reuse_seed,
        loras=loras,
        lcm_preset=lcm_preset,
        strength=strength,
        mask_blur=mask_blur,
        hires=hires,
    )


def _build_lora_picker(prefix: str, loras: list[str]) -> LoraPicker:
    with gr.Accordion("LoRA", open=False, elem_id=f"{prefix}-lora"):
        with gr.Row():
            name = gr.Dropdown(
                loras,
                value=loras[0] if loras else None,
                label="LoRA files (models/Lora)",
                scale=4,
                elem_id=f"{prefix}-lora-name",
            )
            insert = gr.Button("Insert tag", size="sm", scale=0, min_width=100, elem_id=f"{prefix}-lora-insert")
            refresh = gr.Button("Rescan", size="sm", scale=0, min_width=80, elem_id=f"{prefix}-lora-refresh")
    return LoraPicker(name=name, insert=insert, refresh=refresh)


def _build_hires_form(prefix: str, upscalers: list[str], limits: Limits) -> HiresForm:
    with gr.Accordion("Hires fix", open=False, elem_id=f"{prefix}-hires") as accordion:
        with gr.Row():
            upscaler = gr.Dropdown(
                with_value(upscalers, DEFAULT_UPSCALER),
                value=DEFAULT_UPSCALER,
                label="Upscaler",
                allow_custom_value=True,
                elem_id=f"{prefix}-hires-upscaler",
            )
            steps = field_input(gr.Slider(0, limits.max_steps, value=0, step=1, label="Hires steps"))
            strength = field_input(gr.Slider(0.01, 1.0, value=0.7, step=0.01, label="Denoising strength"))
        scale = field_input(gr.Slider(1.0, MAX_HIRES_SCALE, value=1.0, step=0.05, label="Upscale by (1 = off)"))
        with gr.Row():  # A1111: a target size instead of a factor (0 = from the other side's aspect ratio)
            resize_x = field_input(gr.Slider(0, limits.max_width, value=0, step=8, label="Resize width to"))
            resize_y = field_input(gr.Slider(0, limits.max_height, value=0, step=8, label="Resize height to"))
    return HiresForm(accordion, upscaler, steps, strength, scale, resize_x, resize_y)


def insert_lora_tag(prompt: str | None, name: str | None) -> str:
    """The prompt with the LoRA's `<lora:name:1>` tag appended (A1111's; edit the weight in the prompt)."""
    from studio.prompts import lora_tag

    if not name:
        raise gr.Error("Choose a LoRA first (put .safetensors files in models/Lora and press Rescan)")
    text = prompt or ""
    separator = "" if not text or text[-1].isspace() else " "
    return f"{text}{separator}{lora_tag(name)}"


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
