"""Settings: the active engine (model, device, load state and errors), model loading and backend choice, and the
Deploy section. /load_model and /use_backend are public API endpoints; deploying is not (the CLI scripts it)."""

from __future__ import annotations

import functools
import logging
from typing import Any

import gradio as gr

from studio.config import Backend
from studio.engine import EngineError, EngineStatus
from studio.ui.controller import StudioController, bind
from studio.ui.deploy_panel import build_deploy_panel

logger = logging.getLogger(__name__)

MISSING_FUNCTION = (
    "function: give a Lambda function name, ARN or function URL (e.g. one made by python -m studio.deploy "
    "create --target lambda)"
)
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
    """The demo banner is shown while the demo model is in use."""
    return gr.update(visible=status.is_demo)


def current_status(controller: StudioController) -> tuple[str, Any]:
    """The Settings status text and the demo banner, for the engine in use now."""
    status = controller.status()
    return status_markdown(status), banner_update(status)


def load_model(
    controller: StudioController, model: str | None, progress: gr.Progress = gr.Progress()
) -> tuple[str, Any]:
    """Load `model` (a discovered model, a path, a hub id or "demo"; blank: the default) into the local engine.
    A failure is shown as a warning and the previous model stays in use."""
    progress(0, desc=f"loading {model or 'default model'}…")
    try:
        controller.load_model(model or "")
    except EngineError as err:
        gr.Warning(f"Model not loaded: {err}")
    return current_status(controller)


def use_backend(controller: StudioController, backend: str, target: str | None) -> tuple[str, Any]:
    """Switch generation to `backend` ("local", "http", "sagemaker" or "lambda") at `target` (a model, the URL of a
    serving app, a SageMaker endpoint name, or a Lambda function name, ARN or function URL)."""
    if backend == Backend.LAMBDA.value and not (target or "").strip():
        raise gr.Error(MISSING_FUNCTION, title="Backend not changed")
    try:
        controller.switch_backend(backend, target or "")
    except (EngineError, ValueError) as err:
        raise gr.Error(str(err), title="Backend not changed") from None
    gr.Info(f"Now using the {backend} backend")
    return current_status(controller)


def list_endpoints(controller: StudioController) -> Any:
    """The InService SageMaker endpoints, as choices for the target box."""
    if controller.list_endpoints is None:
        raise gr.Error("Listing SageMaker endpoints is not available (boto3 missing?)")
    try:
        names = controller.list_endpoints()
    except Exception as err:  # shown to the user, not swallowed
        raise gr.Error(f"Could not list endpoints: {err}") from None
    gr.Info(f"{len(names)} InService endpoint(s)")
    return gr.update(choices=names, value=names[0] if names else None)


def list_lambda_functions() -> tuple[Any, Any]:
    """SD Studio's Lambda functions in the default region, as choices for the target box (and the lambda backend)."""
    from studio.deploy.lambda_inventory import list_functions  # boto3 only when asked

    try:
        names = [info.name for info in list_functions()]
    except Exception as err:  # shown to the user, not swallowed
        raise gr.Error(f"Could not list Lambda functions: {err}") from None
    gr.Info(f"{len(names)} SD Studio Lambda function(s)")
    return gr.update(value=Backend.LAMBDA.value), gr.update(choices=names, value=names[0] if names else None)


def rescan_models(controller: StudioController) -> Any:
    return gr.update(choices=controller.list_models())


def use_endpoint(controller: StudioController, name: str) -> str:
    """The Deploy section's "Use this endpoint"."""
    status = controller.switch_backend(Backend.SAGEMAKER, name)
    return f"Now using endpoint {status.model}"


def set_live_previews(controller: StudioController, every: float) -> None:
    """The Live previews setting: applies to the runs that start from now on (the A1111 API's too)."""
    controller.jobs.preview_every = max(0, int(every))
    gr.Info(f"Live previews every {int(every)} steps" if every > 0 else "Live previews off")


def build_settings_tab(controller: StudioController, banner: gr.Markdown) -> gr.Markdown:
    """Build the tab inside the current gr.Tab; returns the status text (blocks.py keeps it current)."""
    status = controller.status()
    status_box = gr.Markdown(status_markdown(status), elem_id="settings-status")
    refresh = gr.Button("Refresh status", size="sm")

    gr.Markdown("### Model (local backend)")
    with gr.Group():
        with gr.Row():
            model = gr.Dropdown(
                choices=controller.list_models(),
                value=status.model or None,
                allow_custom_value=True,
                label="Model: a discovered model, a path, a hub id or 'demo'",
                scale=4,
                elem_id="settings-model",
            )
            rescan = gr.Button("Rescan ./models", size="sm", scale=0)
            load = gr.Button("Load", variant="primary", scale=0, elem_id="settings-load")

    gr.Markdown("### Live previews")
    live_previews = gr.Slider(
        0,
        20,
        value=controller.jobs.preview_every,
        step=1,
        label="Show the image forming every N sampling steps (0 = off); local engines only",
        elem_id="settings-live-preview-every",
    )

    gr.Markdown("### Backend")
    with gr.Group():
        with gr.Row():
            backend = gr.Radio([b.value for b in Backend], value=status.backend, label="Backend")
            target = gr.Dropdown(
                choices=[],
                allow_custom_value=True,
                label="Target: model (local), URL of a serving app (http), endpoint name (sagemaker), or function "
                "name, ARN or function URL (lambda)",
                scale=3,
            )
        with gr.Row():
            endpoints = gr.Button("List InService SageMaker endpoints", size="sm")
            functions = gr.Button("List SD Studio Lambda functions", size="sm")
            use = gr.Button("Use this backend", variant="primary", elem_id="settings-use-backend")

    shown = [status_box, banner]
    refresh.click(bind(current_status, controller), None, shown, api_visibility="private", queue=False)
    rescan.click(bind(rescan_models, controller), None, model, api_visibility="private")
    load.click(
        bind(load_model, controller), model, shown, api_name="load_model", concurrency_limit=1, concurrency_id="engine"
    )
    use.click(bind(use_backend, controller), [backend, target], shown, api_name="use_backend", concurrency_id="engine")
    live_previews.release(bind(set_live_previews, controller), live_previews, None, api_visibility="private")
    endpoints.click(bind(list_endpoints, controller), None, target, api_visibility="private")
    functions.click(list_lambda_functions, None, [backend, target], api_visibility="private")

    with gr.Accordion("Deploy a SageMaker endpoint", open=False):
        build_deploy_panel(functools.partial(use_endpoint, controller))
    return status_box
