"""History: every saved image (across restarts) with its parameters."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.gallery import OutputStore

PAGE = 60


def history_items(store: OutputStore) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    entries = store.history(limit=PAGE)
    gallery = [(entry.path, f"{entry.task} · seed {entry.seed}") for entry in entries]
    details = [
        {"path": entry.path, "infotext": entry.infotext, "model": entry.model, "backend": entry.backend}
        for entry in entries
    ]
    return gallery, details


def build_history_tab(store: OutputStore) -> tuple[gr.Gallery, gr.State, Any]:
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

    def refresh_history() -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        return history_items(store)

    def show(details_value: list[dict[str, Any]], evt: gr.SelectData) -> tuple[str, str]:
        index = evt.index if isinstance(evt.index, int) else 0
        if not 0 <= index < len(details_value):
            return "", ""
        return details_value[index]["infotext"], details_value[index]["path"]

    refresh.click(refresh_history, None, [gallery, details], api_name="history")
    gallery.select(show, details, [text, path], api_visibility="private", queue=False)
    return gallery, details, refresh_history
