"""History: every saved image (across restarts) with its parameters. /history is a public API endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.gallery import OutputStore
from studio.ui.controller import bind

PAGE = 60

Details = list[dict[str, Any]]  # per gallery image: path, infotext, model, backend


@dataclass
class HistoryTab:
    gallery: gr.Gallery
    details: gr.State
    refresh: gr.Button


def history(store: OutputStore) -> tuple[list[tuple[str, str]], Details]:
    """The newest saved images (up to PAGE) with captions, and their details."""
    entries = store.history(limit=PAGE)
    gallery = [(entry.path, f"{entry.task} · seed {entry.seed}") for entry in entries]
    details = [
        {"path": entry.path, "infotext": entry.infotext, "model": entry.model, "backend": entry.backend}
        for entry in entries
    ]
    return gallery, details


def show_entry(details: Details, evt: gr.SelectData) -> tuple[str, str]:
    """The clicked image's parameters and file."""
    index = evt.index if isinstance(evt.index, int) else 0
    if not 0 <= index < len(details):
        return "", ""
    return details[index]["infotext"], details[index]["path"]


def build_history_tab(store: OutputStore) -> HistoryTab:
    """Build the tab inside the current gr.Tab; blocks.py refreshes it when the tab is selected."""
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", scale=0, elem_id="history-refresh")
        gr.Markdown(f"Newest first, up to {PAGE} images. Files are in `{store.root}`.")
    with gr.Row(equal_height=False):
        gallery = gr.Gallery(
            label="History",
            format="png",
            columns=5,
            height=560,
            object_fit="contain",
            interactive=False,
            elem_id="history-gallery",
        )
        with gr.Column(scale=0, min_width=360):
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="history-text")
            path = gr.Textbox(label="File", interactive=False)
    details = gr.State([])
    refresh.click(bind(history, store), None, [gallery, details], api_name="history")
    gallery.select(show_entry, details, [text, path], api_visibility="private", queue=False)
    return HistoryTab(gallery, details, refresh)
