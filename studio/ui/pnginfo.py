"""PNG Info: read generation parameters back from any PNG (ours or A1111's); send them to Text to image.

/png_info(image) is a public API endpoint: the parameters as request-ready JSON (studio.metadata.request_fields:
the request's own field names, `loras` {name: weight} from the prompt's tags, every other infotext key under its
own name). "Send to Text to image" restores every field, the hires fix's included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from studio import imagemeta, metadata
from studio.types import Task
from studio.ui.generation import TAB_IDS, restored_values
from studio.ui.widgets import SENT_FIELDS, field_image

# What PNG Info sends to Text to image: what "Send to" carries, the seed too (the same image again), and the hires
# fix (in metadata.HIRES_FIELDS order, ParamsForm.hires_fields()).
SENT_WITH_SEED = (*SENT_FIELDS, "seed")
SENT_TO_TXT2IMG = (*SENT_WITH_SEED, *metadata.HIRES_FIELDS)


@dataclass
class PngInfoTab:
    image: gr.Image
    parsed: gr.JSON
    send: gr.Button


def read_png_info(path: str | None) -> tuple[str, dict[str, Any]]:
    """(raw infotext, request-ready fields) of an image file; no parameters is an empty result, not an error."""
    if not path:
        return "", {}
    try:
        with Image.open(path) as image:
            text = imagemeta.read_infotext(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise gr.Error(f"image: cannot read this file as an image ({err})", title="Invalid input") from None
    if not text:
        return "", {}
    return text, metadata.request_fields(metadata.parse_infotext(text))


def png_info(image: str | None) -> dict[str, Any]:
    """The generation parameters stored in the PNG `image` (A1111 infotext) as request fields: prompt,
    negative_prompt, sampler, scheduler, steps, cfg_scale, seed, width, height, clip_skip, vae, hires_* and
    strength/hires_strength where present, `loras` {name: weight} from the prompt's tags, and every other key
    under its own name (model, model_hash, Version, ...); {} when it has none."""
    return read_png_info(image)[1]


def png_infotext(image: str | None) -> str:
    """The raw infotext, for the text box."""
    return read_png_info(image)[0]


def pasted_infotext(text: str) -> dict[str, Any]:
    """An infotext typed or pasted into the text box (e.g. copied from a model card) as request fields, like
    png_info's; {} for an empty box."""
    if not text or not text.strip():
        return {}
    return metadata.request_fields(metadata.parse_infotext(text.strip()))


def send_parameters(fields: dict[str, Any] | None) -> list[Any]:
    """Request fields (from png_info) → values for Text to image's SENT_TO_TXT2IMG components, the Hires fix
    accordion (opened when the image used it) and the tab to select. Fields an infotext leaves out at their default
    (schedule type, clip skip, VAE, hires fix) are reset to it, so the form shows what made the image."""
    if not fields:
        raise gr.Error("No parameters to send: load a PNG that has generation parameters")
    hires = any(name in fields for name in metadata.HIRES_FIELDS)
    values = restored_values(fields, SENT_TO_TXT2IMG)
    return [*values, gr.Accordion(open=hires), gr.Tabs(selected=TAB_IDS[Task.TXT2IMG])]


def build_pnginfo_tab() -> PngInfoTab:
    """Build the tab inside the current gr.Tab; blocks.py wires its Send button to Text to image."""
    with gr.Row(equal_height=False):
        with gr.Column():
            image = field_image(
                gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="pnginfo-image"),
                "image",
            )
        with gr.Column():
            raw = gr.Textbox(
                label="Parameters (infotext): read from the image, or paste one (e.g. from a model card)",
                lines=6,
                interactive=True,
                elem_id="pnginfo-text",
            )
            parsed = gr.JSON(label="Parsed", elem_id="pnginfo-json")
            send = gr.Button("Send to Text to image", elem_id="pnginfo-send-txt2img")
    # Queued, so an unreadable file's gr.Error is shown; the raw text follows only a successful read (one error).
    image.change(png_info, image, parsed, api_name="png_info").success(
        png_infotext, image, raw, api_visibility="private"
    )
    raw.change(pasted_infotext, raw, parsed, api_visibility="private")  # typed, pasted or read from an image
    return PngInfoTab(image, parsed, send)
