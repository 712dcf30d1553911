"""build_ui: the whole studio as one gr.Blocks. The UI sees only the controller (engine protocol + store)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio import metadata
from studio.types import Limits, Task
from studio.ui.controller import StudioController
from studio.ui.generate_tabs import GenerationWidgets, build_generation_tab
from studio.ui.history_tab import build_history_tab
from studio.ui.pnginfo_tab import build_pnginfo_tab
from studio.ui.settings_tab import DEMO_BANNER, banner_update, build_settings_tab, status_markdown

TAB_IDS = {Task.TXT2IMG: "tab-txt2img", Task.IMG2IMG: "tab-img2img", Task.INPAINT: "tab-inpaint"}
TAB_NAMES = {Task.TXT2IMG: "Text to image", Task.IMG2IMG: "Image to image", Task.INPAINT: "Inpaint"}
CSS = """
#demo-banner { border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px; background: #fffbeb; }
#demo-banner p { color: #78350f; }
"""


def build_ui(controller: StudioController, limits: Limits | None = None) -> gr.Blocks:
    limits = limits or getattr(controller.engine, "limits", None) or Limits()
    samplers = controller.engine.samplers()
    with gr.Blocks(title="SD Studio", analytics_enabled=False) as demo:
        status = controller.status()
        with gr.Row():
            gr.Markdown("## SD Studio")
        banner = gr.Markdown(DEMO_BANNER, visible=status.is_demo, elem_id="demo-banner")
        tabs_by_task: dict[Task, GenerationWidgets] = {}
        with gr.Tabs() as tabs:
            for task in (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT):
                with gr.Tab(TAB_NAMES[task], id=TAB_IDS[task], elem_id=TAB_IDS[task]):
                    tabs_by_task[task] = build_generation_tab(task, controller, samplers, limits)
            with gr.Tab("History", id="tab-history", elem_id="tab-history") as history_tab:
                history_gallery, history_details, refresh_history = build_history_tab(controller.store)
            with gr.Tab("PNG Info", id="tab-pnginfo", elem_id="tab-pnginfo"):
                _png_image, png_parsed, png_send = build_pnginfo_tab()
            with gr.Tab("Settings", id="tab-settings", elem_id="tab-settings"):
                settings_status = build_settings_tab(controller, banner)

        _wire_send_to(tabs, tabs_by_task)
        txt = tabs_by_task[Task.TXT2IMG]
        # Queued: gradio shows a handler's gr.Error / gr.Info only for queued events (queue=False drops them).
        png_send.click(_params_to_tab, png_parsed, [*_param_outputs(txt), txt.seed, tabs], api_visibility="private")
        history_tab.select(refresh_history, None, [history_gallery, history_details], api_visibility="private")

        def current_status() -> tuple[Any, str]:
            current = controller.status()
            return banner_update(current), status_markdown(current)

        def on_load() -> tuple[Any, str]:
            for notice in controller.notices:
                gr.Warning(notice, duration=None)
            return current_status()

        demo.load(on_load, None, [banner, settings_status], api_visibility="private", queue=False)

        # While a model loads, keep the banner and Settings status current; the timer stops once it is done.
        poll = gr.Timer(2.0, active=status.loading or not status.loaded)

        def on_tick() -> tuple[Any, str, Any]:
            banner_value, status_value = current_status()
            current = controller.status()
            return banner_value, status_value, gr.Timer(active=current.loading)

        poll.tick(on_tick, None, [banner, settings_status, poll], api_visibility="private", queue=False)
    demo.queue(default_concurrency_limit=4)
    return demo


def _param_outputs(w: GenerationWidgets) -> list[Any]:
    return [w.prompt, w.negative_prompt, w.sampler, w.steps, w.cfg_scale, w.width, w.height]


def _params_to_tab(params: dict[str, Any] | None) -> list[Any]:
    """Parsed infotext → values for prompt, negative, sampler, steps, cfg, width, height, seed, and the tab."""
    params = params or {}
    if not params:
        raise gr.Error("No parameters to send: load a PNG that has generation parameters")
    fields = metadata.request_fields(params)
    keys = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "width", "height", "seed")
    values = [fields[key] if key in fields else gr.update() for key in keys]
    return [*values, gr.Tabs(selected=TAB_IDS[Task.TXT2IMG])]


def _wire_send_to(tabs: gr.Tabs, tabs_by_task: dict[Task, GenerationWidgets]) -> None:
    """ "Send to Image to image / Inpaint": the selected gallery image and its parameters go to the other tab."""

    def sender(target: Task):
        def send(gallery: list[Any] | None, selected: int, info: dict[str, Any] | None) -> list[Any]:
            if not gallery:
                raise gr.Error("Generate an image first: the gallery is empty")
            index = selected if 0 <= selected < len(gallery) else 0
            item = gallery[index]
            path = item[0] if isinstance(item, (tuple, list)) else item
            infotexts = (info or {}).get("infotexts") or []
            fields = (
                metadata.request_fields(metadata.parse_infotext(infotexts[index])) if index < len(infotexts) else {}
            )
            keys = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "width", "height")
            values = [fields[key] if key in fields else gr.update() for key in keys]
            if target is Task.INPAINT:
                image_value: Any = {"background": path, "layers": [], "composite": path}
            else:
                image_value = path
            return [image_value, *values, gr.Tabs(selected=TAB_IDS[target])]

        return send

    for source in tabs_by_task.values():
        for target, button in ((Task.IMG2IMG, source.send_img2img), (Task.INPAINT, source.send_inpaint)):
            dest = tabs_by_task[target]
            button.click(  # queued, so "Generate an image first" reaches the user (see png_send)
                sender(target),
                [source.gallery, source.selected, source.info],
                [dest.image, *_param_outputs(dest), tabs],
                api_visibility="private",
            )
