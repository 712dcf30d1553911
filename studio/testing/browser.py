"""Real-browser test support: the studio launched in-process on a free 127.0.0.1 port with the demo model
(`start_studio`), and small UI actions that work the way a person does (type, click, drag), with generous timeouts
because CI machines are shared and slow. The pytest fixtures (`browser`, `page`, a screenshot under test-results/
for every failed test) are in tests/e2e/conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "test-results"
CHROMIUM = os.environ.get("STUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
# Generation waits: a 64x64 run takes well under a second on an idle machine, but CI shares two cores.
RUN_TIMEOUT_MS = 120_000


# ---- waiting for the page ------------------------------------------------------------------------------------
def _is_call(request: Any) -> bool:
    """An event call to the server (not the long-lived SSE stream, the heartbeat or a file download)."""
    url = request.url
    return "/gradio_api/" in url and not any(part in url for part in ("/queue/data", "/heartbeat/", "/file="))


def track_calls(pg: Any) -> None:
    """Count the page's event calls in flight, so tests can wait until the UI has settled (see `settle`)."""
    pending: set[Any] = set()
    pg.pending_calls = pending
    pg.on("request", lambda r: pending.add(r) if _is_call(r) else None)
    pg.on("requestfinished", lambda r: pending.discard(r))
    pg.on("requestfailed", lambda r: pending.discard(r))


def settle(page: Any, quiet_ms: int = 150, timeout: float = 30) -> None:
    """Wait until no event call has been in flight for `quiet_ms` (e.g. a gallery selection reached the server).

    Two events fired in quick succession (the .then() after a run, a thumbnail click) race on the server; a person
    is slower than that, a test is not."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if page.pending_calls:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_ms / 1000:
            return
        page.wait_for_timeout(25)  # lets Playwright deliver request events meanwhile
    raise TimeoutError(f"event calls still in flight after {timeout}s: {[r.url for r in page.pending_calls]}")


def select_thumbnail(page: Any, prefix: str, index: int) -> None:
    """Click a gallery thumbnail and wait for the selection to reach the server."""
    settle(page)
    thumbnails(page, prefix).nth(index).click()
    settle(page)


# ---- the studio ------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Studio:
    """A launched studio: gradio Blocks, the controller (engine + output store), its URL and folders."""

    blocks: Any
    controller: Any
    url: str
    outputs: Path

    def close(self) -> None:
        self.blocks.close()


def wait_loaded(controller: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = controller.status()
        if status.loaded:
            return
        if status.error and not status.loading:
            raise RuntimeError(f"model failed to load: {status.error}")
        time.sleep(0.05)
    raise TimeoutError("model did not load")


def start_studio(root: Path, *args: str, environ: dict[str, str] | None = None, outputs: Path | None = None) -> Studio:
    """Launch the real studio (app.launch) on a free port with the demo model; block until it is loaded."""
    from app import launch
    from studio.config import load_settings

    port = free_port()
    outputs = outputs or root / "outputs"
    settings = load_settings(
        ["--port", str(port), "--outputs", str(outputs), "--models-dir", str(root / "models"), "--device", "cpu",
         "--model", "demo", *args],
        environ=environ or {},
    )
    blocks, controller = launch(settings, prevent_thread_lock=True)
    try:
        wait_loaded(controller)
    except Exception:
        blocks.close()
        raise
    return Studio(blocks=blocks, controller=controller, url=f"http://127.0.0.1:{port}/", outputs=outputs)


# ---- UI actions ------------------------------------------------------------------------------------------------------
def open_studio(page: Any, url: str) -> None:
    page.goto(url)
    page.locator("#txt2img-generate").wait_for(state="visible")


def open_tab(page: Any, name: str) -> Any:
    """Click a tab by its visible name; return the tab panel."""
    page.get_by_role("tab", name=name, exact=True).click()
    ids = {"Text to image": "tab-txt2img", "Image to image": "tab-img2img", "Inpaint": "tab-inpaint",
           "History": "tab-history", "PNG Info": "tab-pnginfo", "Settings": "tab-settings"}
    panel = page.locator(f"#{ids[name]}")
    panel.wait_for(state="visible")
    return panel


def set_number(panel: Any, label: str, value: float | int) -> None:
    """Type into a slider's number box (the way a person sets an exact value) and commit with Enter."""
    box = panel.get_by_label(f"number input for {label}", exact=True)
    box.fill(str(value))
    box.press("Enter")


def set_seed(panel: Any, value: int) -> None:
    box = panel.get_by_label("Seed (-1 = random)", exact=True)
    box.fill(str(value))
    box.press("Tab")


def type_prompt(page: Any, prefix: str, text: str, negative: str | None = None) -> None:
    page.locator(f"#{prefix}-prompt textarea").fill(text)
    if negative is not None:
        page.locator(f"#{prefix}-negative textarea").fill(negative)


def field_value(panel: Any, label: str) -> str:
    return panel.get_by_label(f"number input for {label}", exact=True).input_value()


def thumbnails(page: Any, prefix: str) -> Any:
    """The gallery's grid thumbnails (not the preview's)."""
    return page.locator(f"#{prefix}-gallery .grid-container img")


def tracker(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} [data-testid=status-tracker]").first


# A component's progress overlay: hidden when idle, an "Error" pill after a failed event, else busy.
_STATE_JS = """(id) => {
    const t = document.querySelector(`#${id} [data-testid=status-tracker]`);
    if (!t || t.classList.contains('hide')) return 'idle';
    return t.querySelector('.error') ? 'error' : 'busy';
}"""


def wait_idle(page: Any, elem_id: str, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Wait until the component's progress overlay is gone or shows an error (the event finished either way)."""
    page.wait_for_function(f"(id) => ({_STATE_JS})(id) !== 'busy'", arg=elem_id, timeout=timeout_ms)


def generate(page: Any, prefix: str, expect_images: int | None = None, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
    """Click Generate and wait for the run to end successfully (and for `expect_images` thumbnails, when given).

    The end of a run is the info panel changing (every successful run saves new files, so its paths change) or the
    gallery showing an error; a fast run can be over before a progress overlay is ever painted."""
    info = page.locator(f"#{prefix}-info")
    before = info.inner_text()
    with page.expect_response(lambda r: "/queue/join" in r.url):
        page.locator(f"#{prefix}-generate").click()
    page.wait_for_function(
        f"""([id, prefix, before]) => ({_STATE_JS})(id) === 'error'
              || document.querySelector(`#${{prefix}}-info`).innerText !== before""",
        arg=[f"{prefix}-gallery", prefix, before],
        timeout=timeout_ms,
    )
    wait_idle(page, f"{prefix}-gallery", timeout_ms)
    if page.evaluate(f"(id) => ({_STATE_JS})(id)", f"{prefix}-gallery") == "error":
        raise AssertionError(f"{prefix}: the run failed; the page says: {toasts(page)}")
    settle(page)
    if expect_images is not None:
        from playwright.sync_api import expect

        expect(thumbnails(page, prefix)).to_have_count(expect_images, timeout=10_000)


def read_json(page: Any, elem_id: str) -> dict[str, Any]:
    """The value shown by a gr.JSON component. The tree view collapses whitespace, so all whitespace is dropped:
    numbers, keys and whitespace-free strings (paths here) survive exactly; prose strings lose their spaces."""
    text = page.locator(f"#{elem_id}").inner_text()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return {}
    return json.loads(re.sub(r"\s+", "", text[start : end + 1]))


def toasts(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("[data-testid=toast-body]").all_inner_texts()]


def wait_toast(page: Any, pattern: str, timeout_ms: int = 30_000) -> str:
    """Wait for a toast whose text matches `pattern` (a regular expression); return its text."""
    toast = page.locator("[data-testid=toast-body]").filter(has_text=re.compile(pattern, re.S))
    toast.first.wait_for(state="visible", timeout=timeout_ms)
    return toast.first.inner_text()


def natural_sizes(locator: Any) -> list[tuple[int, int]]:
    """(naturalWidth, naturalHeight) of each <img> once it has loaded."""
    locator.first.page.wait_for_function(
        "(els) => els.every(e => e.complete && e.naturalWidth > 0)", arg=locator.element_handles(), timeout=20_000
    )
    return [tuple(s) for s in locator.evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])")]


def drag(page: Any, points: list[tuple[float, float]]) -> None:
    """Mouse down at the first point, move through the rest, mouse up: a brush stroke."""
    page.mouse.move(*points[0])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()
