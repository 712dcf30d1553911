"""PNG Info: read generation parameters back from any PNG (ours or A1111's); send them to Text to image.

/png_info(image) is a public API endpoint: the parsed parameters as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from studio import metadata
from studio.types import Task
from studio.ui.generation import TAB_IDS
from studio.ui.widgets import SENT_FIELDS, field_image

# What PNG Info sends to Text to image: what "Send to" carries, and the seed too (the same image again).
SENT_WITH_SEED = (*SENT_FIELDS, "seed")


@dataclass
class PngInfoTab:
    image: gr.Image
    parsed: gr.JSON
    send: gr.Button


def read_png_info(path: str | None) -> tuple[str, dict[str, Any]]:
    """(raw infotext, parsed parameters) of an image file; no parameters is an empty result, not an error."""
    if not path:
        return "", {}
    try:
        with Image.open(path) as image:
            text = metadata.read_infotext(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise gr.Error(f"image: cannot read this file as an image ({err})", title="Invalid input") from None
    if not text:
        return "", {}
    return text, metadata.parse_infotext(text)


def png_info(image: str | None) -> dict[str, Any]:
    """The generation parameters stored in the PNG `image` (A1111 infotext), parsed; {} when it has none."""
    return read_png_info(image)[1]


def png_infotext(image: str | None) -> str:
    """The raw infotext, for the text box."""
    return read_png_info(image)[0]


def send_parameters(parameters: dict[str, Any] | None) -> list[Any]:
    """Parsed infotext → values for Text to image's prompt, negative, sampler, steps, cfg, width, height, seed,
    and the tab to select."""
    if not parameters:
        raise gr.Error("No parameters to send: load a PNG that has generation parameters")
    fields = metadata.request_fields(parameters)
    values = [fields[key] if key in fields else gr.update() for key in SENT_WITH_SEED]
    return [*values, gr.Tabs(selected=TAB_IDS[Task.TXT2IMG])]


def build_pnginfo_tab() -> PngInfoTab:
    """Build the tab inside the current gr.Tab; blocks.py wires its Send button to Text to image."""
    with gr.Row(equal_height=False):
        with gr.Column():
            image = field_image(
                gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="pnginfo-image"),
                "image",
            )
        with gr.Column():
            raw = gr.Textbox(label="Parameters (infotext)", lines=6, interactive=False, elem_id="pnginfo-text")
            parsed = gr.JSON(label="Parsed", elem_id="pnginfo-json")
            send = gr.Button("Send to Text to image", elem_id="pnginfo-send-txt2img")
    # Queued, so an unreadable file's gr.Error is shown; the raw text follows only a successful read (one error).
    image.change(png_info, image, parsed, api_name="png_info").success(
        png_infotext, image, raw, api_visibility="private"
    )
    return PngInfoTab(image, parsed, send)
