"""PNG Info: read generation parameters back from any PNG (ours or A1111's); send them to Text to image."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio import metadata
from studio.ui.generate_tabs import field_image


def read_png_info(path: str | None) -> tuple[str, dict[str, Any]]:
    """(raw infotext, parsed parameters) of an image file; no parameters is an empty result, not an error."""
    if not path:
        return "", {}
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = metadata.read_infotext(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise gr.Error(f"image: cannot read this file as an image ({err})", title="Invalid input") from None
    if not text:
        return "", {}
    return text, metadata.parse_infotext(text)


def build_pnginfo_tab() -> tuple[gr.Image, gr.JSON, gr.Button]:
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

    def png_info(path: str | None) -> dict[str, Any]:
        return read_png_info(path)[1]

    # Public API: /png_info(image) -> parsed parameters as JSON.
    # Queued, so an unreadable file's gr.Error is shown; the raw text follows only a successful read (one error).
    image.change(png_info, image, parsed, api_name="png_info").success(
        lambda p: read_png_info(p)[0], image, raw, api_visibility="private"
    )
    return image, parsed, send
