"""build_ui: the whole studio as one gr.Blocks. The UI sees only the controller (engine protocol + store).

The public API (what `gradio_client` and `Client.view_api()` see) is /txt2img, /img2img, /inpaint, /png_info,
/history, /load_model and /use_backend; their parameters are the handlers' parameter names. Every other event is
private.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.samplers import scheduler_names
from studio.types import DEFAULT_LIMITS, Limits, Task
from studio.ui.controller import StudioController, bind
from studio.ui.generation import TAB_IDS, TAB_NAMES, GenerationTab, wire_send_to
from studio.ui.history import build_history_tab, history
from studio.ui.img2img import build_img2img_tab
from studio.ui.inpaint import build_inpaint_tab
from studio.ui.pnginfo import build_pnginfo_tab, send_parameters
from studio.ui.settings import DEMO_BANNER, build_settings_tab, current_status
from studio.ui.txt2img import build_txt2img_tab
from studio.ui.widgets import FormChoices

CSS = """
#demo-banner { border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px; background: #fffbeb; }
#demo-banner p { color: #78350f; }
/* While a run samples, its gallery shows the live preview under the progress bar (as A1111 does): the progress
   overlay of the galleries is see-through and sits at the top. */
.studio-gallery [data-testid=status-tracker].wrap.full {
  background: transparent !important; justify-content: flex-start; }
.studio-gallery [data-testid=status-tracker] .progress-level {
  background: rgba(255, 255, 255, 0.85); border-radius: 6px; padding: 4px 8px; margin-top: 8px; }
"""
logger = logging.getLogger(__name__)

STATUS_POLL_SECONDS = 2.0
TAB_BUILDERS = {Task.TXT2IMG: build_txt2img_tab, Task.IMG2IMG: build_img2img_tab, Task.INPAINT: build_inpaint_tab}


def page_load(controller: StudioController) -> tuple[Any, str]:
    """On each page load: the start-up notices (e.g. running endpoints), the banner and the Settings status."""
    for notice in controller.notices:
        gr.Warning(notice, duration=None)
    status_text, banner = current_status(controller)
    return banner, status_text


def poll_status(controller: StudioController) -> tuple[Any, str, Any]:
    """While a model loads, keep the banner and Settings status current; the timer stops once it is done."""
    status_text, banner = current_status(controller)
    return banner, status_text, gr.Timer(active=controller.status().loading)


def _listed_at_start(list_files: Callable[[], list[str]], what: str) -> list[str]:
    """The names for a dropdown when the page is built; a failure is logged and the list starts empty (the tab's
    Rescan button shows the error to the user)."""
    try:
        return list(list_files())
    except Exception as err:
        logger.warning("could not list the %s: %s", what, err)
        return []


def form_choices(controller: StudioController) -> FormChoices:
    """The forms' dropdown choices: the engine's samplers, the schedule types, and the files app.py lists."""
    return FormChoices(
        samplers=controller.engine.samplers(),
        schedulers=scheduler_names(),
        vaes=_listed_at_start(controller.list_vaes, "VAE files"),
        loras=_listed_at_start(controller.list_loras, "LoRA files"),
        upscalers=_listed_at_start(controller.list_upscalers, "upscalers"),
    )


def build_ui(controller: StudioController, limits: Limits = DEFAULT_LIMITS) -> gr.Blocks:
    """The studio's Blocks (queued, not launched). `limits` are the sliders' ranges (the engine enforces its own)."""
    choices = form_choices(controller)
    with gr.Blocks(title="SD Studio", analytics_enabled=False) as demo:
        status = controller.status()
        with gr.Row():
            gr.Markdown("## SD Studio")
        banner = gr.Markdown(DEMO_BANNER, visible=status.is_demo, elem_id="demo-banner")
        by_task: dict[Task, GenerationTab] = {}
        with gr.Tabs() as tabs:
            for task, build_tab in TAB_BUILDERS.items():
                with gr.Tab(TAB_NAMES[task], id=TAB_IDS[task], elem_id=TAB_IDS[task]):
                    by_task[task] = build_tab(controller, choices, limits)
            with gr.Tab("History", id="tab-history", elem_id="tab-history") as history_tab:
                past = build_history_tab(controller.store)
            with gr.Tab("PNG Info", id="tab-pnginfo", elem_id="tab-pnginfo"):
                png = build_pnginfo_tab()
            with gr.Tab("Settings", id="tab-settings", elem_id="tab-settings"):
                settings_status = build_settings_tab(controller, banner)

        wire_send_to(tabs, by_task)
        txt = by_task[Task.TXT2IMG].form
        assert txt.hires is not None
        # Queued: gradio shows a handler's gr.Error / gr.Info only for queued events (queue=False drops them).
        png.send.click(
            send_parameters,
            png.parsed,
            [*txt.sendable(), txt.seed, *txt.hires_fields(), txt.hires.accordion, tabs],
            api_visibility="private",
        )
        history_tab.select(
            bind(history, controller.store), None, [past.gallery, past.details], api_visibility="private"
        )
        demo.load(bind(page_load, controller), None, [banner, settings_status], api_visibility="private", queue=False)
        poll = gr.Timer(STATUS_POLL_SECONDS, active=status.loading or not status.loaded)
        poll.tick(
            bind(poll_status, controller), None, [banner, settings_status, poll], api_visibility="private", queue=False
        )
    demo.queue(default_concurrency_limit=4)
    return demo
