"""Settings: the active engine (model, device, load state and errors), model loading and backend choice."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import gradio as gr

from studio.engine import EngineError, EngineStatus
from studio.ui.controller import StudioController

logger = logging.getLogger(__name__)

DEMO_BANNER = (
    "**Demo model in use.** The images come from a tiny *untrained* model with random weights: they look like "
    "noise. It exists so every part of the studio works on any machine. To make real pictures, put a Stable "
    "Diffusion checkpoint (`.safetensors`, `.ckpt` or a diffusers folder) in `./models/` and restart, start with "
    "`python app.py --model PATH_OR_HUB_ID`, or load one in **Settings**."
)


def status_markdown(status: EngineStatus) -> str:
    if status.loading:
        state = f"loading {status.model}…"
    elif status.loaded:
        state = "loaded"
    else:
        state = "not loaded"
    lines = [
        f"**Backend:** {status.backend}",
        f"**Model:** {status.model or '—'}{' (demo: untrained, random weights)' if status.is_demo else ''}",
        f"**State:** {state}",
    ]
    if status.device:
        lines.append(f"**Device:** {status.device} · **dtype:** {status.dtype}")
    lines += [f"**{key.capitalize()}:** {value}" for key, value in status.details.items()]
    if status.error:
        lines.append(f"**Last error:** `{status.error}`")
    return "  \n".join(lines)


def banner_update(status: EngineStatus) -> Any:
    return gr.update(visible=status.is_demo)


def build_settings_tab(controller: StudioController, banner: gr.Markdown) -> gr.Markdown:
    status_box = gr.Markdown(status_markdown(controller.status()), elem_id="settings-status")
    refresh = gr.Button("Refresh status", size="sm")

    gr.Markdown("### Model (local backend)")
    with gr.Group():
        with gr.Row():
            model = gr.Dropdown(
                choices=controller.list_models(),
                value=controller.status().model or None,
                allow_custom_value=True,
                label="Model: a discovered model, a path, a hub id or 'demo'",
                scale=4,
                elem_id="settings-model",
            )
            rescan = gr.Button("Rescan ./models", size="sm", scale=0)
            load = gr.Button("Load", variant="primary", scale=0, elem_id="settings-load")

    gr.Markdown("### Backend")
    with gr.Group():
        with gr.Row():
            backend = gr.Radio(["local", "http", "sagemaker"], value=controller.status().backend, label="Backend")
            target = gr.Dropdown(
                choices=[],
                allow_custom_value=True,
                label="Target: model (local), URL of a serving app (http), or endpoint name (sagemaker)",
                scale=3,
            )
        with gr.Row():
            list_endpoints = gr.Button("List InService SageMaker endpoints", size="sm")
            use = gr.Button("Use this backend", variant="primary", elem_id="settings-use-backend")

    def current() -> tuple[str, Any]:
        status = controller.status()
        return status_markdown(status), banner_update(status)

    def load_model(spec: str | None, progress=gr.Progress()) -> tuple[str, Any]:  # noqa: B008
        progress(0, desc=f"loading {spec or 'default model'}…")
        try:
            controller.load_model(spec or "")
        except EngineError as err:
            gr.Warning(f"Model not loaded: {err}")
        return current()

    def switch(kind: str, value: str | None) -> tuple[str, Any]:
        try:
            controller.switch_backend(kind, value or "")
        except (EngineError, ValueError) as err:
            raise gr.Error(str(err), title="Backend not changed") from None
        gr.Info(f"Now using the {kind} backend")
        return current()

    def endpoints() -> Any:
        if controller.list_endpoints is None:
            raise gr.Error("Listing SageMaker endpoints is not available (boto3 missing?)")
        try:
            names = controller.list_endpoints()
        except Exception as err:  # shown to the user, not swallowed
            raise gr.Error(f"Could not list endpoints: {err}") from None
        gr.Info(f"{len(names)} InService endpoint(s)")
        return gr.update(choices=names, value=names[0] if names else None)

    refresh.click(current, None, [status_box, banner], api_visibility="private", queue=False)
    rescan.click(lambda: gr.update(choices=controller.list_models()), None, model, api_visibility="private")
    load.click(
        load_model, model, [status_box, banner], api_name="load_model", concurrency_limit=1, concurrency_id="engine"
    )
    use.click(switch, [backend, target], [status_box, banner], api_name="use_backend", concurrency_id="engine")
    list_endpoints.click(endpoints, None, target, api_visibility="private")

    if importlib.util.find_spec("studio.ui.deploy_panel") is not None:
        from studio.ui.deploy_panel import build_deploy_panel

        def use_endpoint(name: str) -> str:
            status = controller.switch_backend("sagemaker", name)
            return f"Now using endpoint {status.model}"

        with gr.Accordion("Deploy a SageMaker endpoint", open=False):
            build_deploy_panel(use_endpoint)
    return status_box
