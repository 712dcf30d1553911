"""The studio in a real headless Chromium, used the way a person uses it: typing, clicking, uploading, painting.

Each test drives the real app (app.launch on a free port, the demo model) through its web page only, then checks
what the page shows and what was saved on disk. A failing test leaves a screenshot in test-results/.
Sizes are 64x64 with 3-4 steps so the whole file stays well under two minutes.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

pytest.importorskip("playwright")
from playwright.sync_api import expect  # noqa: E402

from studio.models.demo_extras import build_demo_lora, build_demo_vae  # noqa: E402
from studio.testing.browser import (  # noqa: E402
    drag,
    field_value,
    generate,
    natural_sizes,
    open_studio,
    open_tab,
    read_json,
    select_thumbnail,
    set_number,
    set_seed,
    start_studio,
    thumbnails,
    toasts,
    tracker,
    type_prompt,
    wait_idle,
    wait_toast,
)

pytestmark = pytest.mark.browser

BLUE = (10, 120, 200)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-studio")
    for folder in ("Lora", "VAE"):
        (root / "models" / folder).mkdir(parents=True)
    build_demo_lora(root / "models" / "Lora" / "demo-lora.safetensors")
    build_demo_vae(root / "models" / "VAE" / "demo-vae.safetensors")
    app = start_studio(root)
    yield app
    app.close()


def small_run(panel, *, steps: int = 3, count: int = 1, width: int = 64, height: int = 64) -> None:
    for label, value in (("Width", width), ("Height", height), ("Steps", steps), ("Image count", count)):
        set_number(panel, label, value)


def parameters_of(path: str | Path) -> str:
    with Image.open(path) as image:
        return image.info["parameters"]


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def shown_pixels(page, img) -> np.ndarray:
    """Download what an <img> on the page shows (through the browser's own session) and decode it."""
    response = page.request.get(img.get_attribute("src"))
    assert response.ok, response.status
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB")).astype(int)


def test_txt2img_type_prompt_generate_and_see_the_images(page, studio):
    open_studio(page, studio.url)
    panel = page.locator("#tab-txt2img")
    type_prompt(page, "txt2img", "a red fox in the snow", negative="blurry")
    small_run(panel, count=2)
    set_seed(panel, 1234)
    generate(page, "txt2img", expect_images=2)

    assert natural_sizes(thumbnails(page, "txt2img")) == [(64, 64), (64, 64)]
    assert page.locator("#txt2img-gallery .caption-label").all_inner_texts() == ["seed 1234", "seed 1235"]
    info = read_json(page, "txt2img-info")
    assert info["task"] == "txt2img" and info["seeds"] == [1234, 1235]
    # Saved before shown, under outputs/<day>/, with the A1111 parameters the user typed.
    for path, seed in zip(info["paths"], (1234, 1235), strict=True):
        assert Path(path).is_file() and Path(path).parent.parent == studio.outputs
        text = parameters_of(path)
        assert text.startswith("a red fox in the snow\nNegative prompt: blurry\n")
        assert f"Steps: 3, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64" in text
    # What the gallery shows is what was saved.
    assert np.array_equal(shown_pixels(page, thumbnails(page, "txt2img").nth(1)), pixels(info["paths"][1]))
    assert not page.page_errors


def test_img2img_upload_an_image_and_generate(page, studio, tmp_path):
    src = tmp_path / "photo.png"
    Image.new("RGB", (80, 72), (200, 40, 40)).save(src)
    open_studio(page, studio.url)
    panel = open_tab(page, "Image to image")
    page.locator("#img2img-image input[type=file]").set_input_files(src)
    # A new input image sets the size to its own.
    expect(panel.get_by_label("number input for Width", exact=True)).to_have_value("80")
    expect(panel.get_by_label("number input for Height", exact=True)).to_have_value("72")
    type_prompt(page, "img2img", "a red barn")
    set_number(panel, "Steps", 4)
    set_seed(panel, 7)
    generate(page, "img2img", expect_images=1)

    info = read_json(page, "img2img-info")
    assert info["task"] == "img2img" and info["seeds"] == [7]
    assert natural_sizes(thumbnails(page, "img2img")) == [(80, 72)]
    text = parameters_of(info["paths"][0])
    assert "Size: 80x72" in text and "Denoising strength: 0.75" in text


def test_inpaint_paint_a_mask_with_the_mouse_and_generate(page, studio, tmp_path):
    src = tmp_path / "sky.png"
    Image.new("RGB", (96, 80), BLUE).save(src)
    open_studio(page, studio.url)
    panel = open_tab(page, "Inpaint")
    # The editor drops a file given before its canvas exists (seen on a loaded machine): wait for it, as a person would.
    page.locator("#inpaint-editor canvas").first.wait_for(state="attached")
    page.locator("#inpaint-editor input[type=file]").set_input_files(src)
    expect(panel.get_by_label("number input for Width", exact=True)).to_have_value("96")
    expect(panel.get_by_label("number input for Height", exact=True)).to_have_value("80")
    type_prompt(page, "inpaint", "a white cloud")
    set_number(panel, "Steps", 4)
    set_number(panel, "Mask blur", 0)
    set_seed(panel, 99)

    # Nothing painted yet: a clear error naming the mask, and nothing is made.
    page.locator("#inpaint-generate").click()
    assert "mask" in wait_toast(page, r"mask.*empty")
    wait_idle(page, "inpaint-gallery")
    expect(thumbnails(page, "inpaint")).to_have_count(0)

    # Paint a short stroke through the middle of the picture with the mouse.
    canvas = page.locator("#inpaint-editor canvas").last
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    drag(page, [(cx - 40, cy - 10), (cx, cy), (cx + 40, cy + 10)])
    generate(page, "inpaint", expect_images=1)

    info = read_json(page, "inpaint-info")
    assert info["task"] == "inpaint" and info["seeds"] == [99]
    out = pixels(info["paths"][0])
    assert out.shape == (80, 96, 3)
    # Outside the stroke the picture is untouched; under it the model painted something else.
    for y, x in ((0, 0), (0, 95), (79, 0), (79, 95), (5, 48)):
        assert tuple(out[y, x]) == BLUE, (y, x, out[y, x])
    assert np.abs(out[40, 48] - np.array(BLUE)).sum() > 30


def test_send_a_gallery_image_to_img2img_and_inpaint(page, studio):
    open_studio(page, studio.url)
    txt = page.locator("#tab-txt2img")
    type_prompt(page, "txt2img", "a lighthouse")
    small_run(txt, count=2)
    set_seed(txt, 500)
    generate(page, "txt2img", expect_images=2)
    made = read_json(page, "txt2img-info")["paths"]

    # Pick the second image, then send it on.
    select_thumbnail(page, "txt2img", 1)
    page.locator("#txt2img-send-img2img").click()
    expect(page.get_by_role("tab", name="Image to image", exact=True)).to_have_attribute("aria-selected", "true")
    img2img = page.locator("#tab-img2img")
    arrived = page.locator("#img2img-image img").first
    expect(arrived).to_be_visible()
    assert np.array_equal(shown_pixels(page, arrived), pixels(made[1]))
    expect(page.locator("#img2img-prompt textarea")).to_have_value("a lighthouse")
    assert (field_value(img2img, "Width"), field_value(img2img, "Steps")) == ("64", "3")
    set_number(img2img, "Steps", 4)
    generate(page, "img2img", expect_images=1)
    assert read_json(page, "img2img-info")["task"] == "img2img"

    open_tab(page, "Text to image")
    page.locator("#txt2img-send-inpaint").click()
    expect(page.get_by_role("tab", name="Inpaint", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.locator("#inpaint-prompt textarea")).to_have_value("a lighthouse")
    inpaint = page.locator("#tab-inpaint")
    set_number(inpaint, "Steps", 4)
    set_number(inpaint, "Mask blur", 0)
    canvas = page.locator("#inpaint-editor canvas").last
    expect(canvas).to_be_visible()
    canvas.scroll_into_view_if_needed()  # setting Mask blur, below the longer form, scrolled it up
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    drag(page, [(cx - 20, cy), (cx + 20, cy)])
    generate(page, "inpaint", expect_images=1)
    out = pixels(read_json(page, "inpaint-info")["paths"][0])
    # The unpainted corners are the sent image's own pixels: the image really arrived in the editor.
    sent = pixels(made[1])
    for y, x in ((0, 0), (0, 63), (63, 0), (63, 63)):
        assert np.abs(out[y, x] - sent[y, x]).max() <= 1, (y, x)


def test_mistakes_get_a_visible_message(page, studio, tmp_path):
    """Buttons used at the wrong moment say why, in a toast, instead of doing nothing."""
    open_studio(page, studio.url)
    page.locator("#txt2img-send-img2img").click()
    wait_toast(page, r"Generate an image first: the gallery is empty")
    page.locator("#txt2img-reuse-seed").click()
    wait_toast(page, r"no seed to reuse")
    page.locator("#txt2img-stop").click()
    wait_toast(page, r"Nothing is running")
    # A file that is not an image, given to PNG Info (the picker takes any file named .png).
    fake = tmp_path / "notes.png"
    fake.write_text("these are my notes, not a picture")
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(fake)
    wait_toast(page, r"image: not an image file")
    page.locator("#pnginfo-send-txt2img").click()
    wait_toast(page, r"No parameters to send")


A1111_TEXT = (
    "a castle on a hill, oil painting\n"
    "Negative prompt: fog, people\n"
    "Steps: 7, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 4242, Size: 72x88, Model hash: 0123456789, "
    "Model: v1-5-pruned-emaonly, Version: v1.10.1"
)


def test_png_info_reads_a_png_and_sends_it_to_text_to_image(page, studio, tmp_path):
    png = tmp_path / "from-a1111.png"
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (72, 88), (90, 90, 90)).save(png, pnginfo=chunk)

    open_studio(page, studio.url)
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(png)
    expect(page.locator("#pnginfo-text textarea")).to_have_value(A1111_TEXT)
    page.wait_for_function("() => document.querySelector('#pnginfo-json').innerText.includes('4242')")
    parsed = read_json(page, "pnginfo-json")
    assert (parsed["seed"], parsed["steps"], parsed["width"], parsed["height"]) == (4242, 7, 72, 88)

    page.locator("#pnginfo-send-txt2img").click()
    expect(page.get_by_role("tab", name="Text to image", exact=True)).to_have_attribute("aria-selected", "true")
    txt = page.locator("#tab-txt2img")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a castle on a hill, oil painting")
    expect(page.locator("#txt2img-negative textarea")).to_have_value("fog, people")
    # The pre-1.9 combined name arrives as sampler + schedule type.
    expect(page.locator("#txt2img-sampler input")).to_have_value("DPM++ 2M")
    expect(page.locator("#txt2img-scheduler input")).to_have_value("Karras")
    expect(txt.get_by_label("Seed (-1 = random)", exact=True)).to_have_value("4242")
    values = {label: field_value(txt, label) for label in ("Steps", "CFG scale", "Width", "Height")}
    assert values == {"Steps": "7", "CFG scale": "5.5", "Width": "72", "Height": "88"}

    # And the parameters really drive the next run.
    set_number(txt, "Image count", 1)
    generate(page, "txt2img", expect_images=1)
    text = parameters_of(read_json(page, "txt2img-info")["paths"][0])
    assert text.startswith("a castle on a hill, oil painting\nNegative prompt: fog, people\n")
    assert "Steps: 7, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 4242, Size: 72x88" in text


ISSUE_INFOTEXT = (Path(__file__).parents[1] / "data" / "a1111_issue15.txt").read_text().strip()


def a1111_png(path: Path, text: str) -> Path:
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", text)
    Image.new("RGB", (64, 96), (120, 80, 160)).save(path, pnginfo=chunk)
    return path


def send_from_png_info(page, png: Path, text: str) -> None:
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(png)
    expect(page.locator("#pnginfo-text textarea")).to_have_value(text)
    page.wait_for_function("() => document.querySelector('#pnginfo-json').innerText.includes('2245042501')")
    page.locator("#pnginfo-send-txt2img").click()
    expect(page.get_by_role("tab", name="Text to image", exact=True)).to_have_attribute("aria-selected", "true")


def test_png_info_sends_the_issue_infotext_with_hires_schedule_type_clip_skip_and_vae(page, studio, tmp_path):
    """Issue 15's infotext (an anime model card, A1111 1.9.3) in a PNG: PNG Info -> Send to Text to image fills
    every field, the Hires fix accordion included; fields the infotext leaves at their default are reset."""
    open_studio(page, studio.url)
    txt = page.locator("#tab-txt2img")
    set_number(txt, "Clip skip", 5)  # left over from an earlier image: must not survive the paste

    send_from_png_info(page, a1111_png(tmp_path / "card.png", ISSUE_INFOTEXT), ISSUE_INFOTEXT)
    expect(page.locator("#txt2img-prompt textarea")).to_have_value(ISSUE_INFOTEXT.splitlines()[0])
    expect(page.locator("#txt2img-negative textarea")).to_have_value("bad fingers")
    expect(page.locator("#txt2img-sampler input")).to_have_value("DPM++ 2M SDE")
    expect(page.locator("#txt2img-scheduler input")).to_have_value("Karras")
    expect(page.locator("#txt2img-vae input")).to_have_value("vaeFtMse840000EmaPruned_vae.safetensors")
    expect(txt.get_by_label("Seed (-1 = random)", exact=True)).to_have_value("2245042501")
    hires = page.locator("#txt2img-hires")
    expect(page.locator("#txt2img-hires-upscaler input")).to_be_visible()  # the accordion opened
    expect(page.locator("#txt2img-hires-upscaler input")).to_have_value("R-ESRGAN 4x+ Anime6B")
    labels = ("Steps", "CFG scale", "Width", "Height", "Clip skip")
    assert {label: field_value(txt, label) for label in labels} == {
        "Steps": "20",
        "CFG scale": "7",
        "Width": "512",
        "Height": "768",
        "Clip skip": "1",
    }
    labels = ("Upscale by (1 = off)", "Hires steps", "Denoising strength", "Resize width to", "Resize height to")
    assert {label: field_value(hires, label) for label in labels} == {
        "Upscale by (1 = off)": "2",
        "Hires steps": "10",
        "Denoising strength": "0.6",
        "Resize width to": "0",
        "Resize height to": "0",
    }

    # The same card with "Clip skip: 2" (where A1111 writes it): clip skip arrives too.
    with_clip_skip = ISSUE_INFOTEXT.replace("Denoising strength: 0.6, ", "Denoising strength: 0.6, Clip skip: 2, ")
    send_from_png_info(page, a1111_png(tmp_path / "card-clip-skip.png", with_clip_skip), with_clip_skip)
    expect(txt.get_by_label("number input for Clip skip", exact=True)).to_have_value("2")
    assert not page.page_errors


def test_a_pasted_infotext_goes_to_text_to_image_and_makes_that_image(page, studio):
    """A1111 users copy infotexts from model cards: pasted into PNG Info's text box, Send, Generate."""
    text = (
        "a lighthouse on a cliff at sunset, (dramatic sky:1.2)\nNegative prompt: blurry\n"
        "Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, Clip skip: 2, "
        "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, Denoising strength: 0.55, Model: demo"
    )
    open_studio(page, studio.url)
    open_tab(page, "PNG Info")
    page.locator("#pnginfo-text textarea").fill(text)
    page.wait_for_function("() => document.querySelector('#pnginfo-json').innerText.includes('1234')")
    page.locator("#pnginfo-send-txt2img").click()
    expect(page.get_by_role("tab", name="Text to image", exact=True)).to_have_attribute("aria-selected", "true")
    txt = page.locator("#tab-txt2img")
    prompt = "a lighthouse on a cliff at sunset, (dramatic sky:1.2)"
    expect(page.locator("#txt2img-prompt textarea")).to_have_value(prompt)
    expect(page.locator("#txt2img-scheduler input")).to_have_value("Karras")
    assert field_value(txt, "Clip skip") == "2" and field_value(txt, "Steps") == "6"
    generate(page, "txt2img", expect_images=1)
    info = read_json(page, "txt2img-info")
    saved = parameters_of(info["paths"][0])
    for part in ("Seed: 1234", "Sampler: DPM++ 2M", "Schedule type: Karras", "CFG scale: 6.5", "Clip skip: 2",
                 "Hires upscale: 1.5", "Hires steps: 2", "Denoising strength: 0.55", "Negative prompt: blurry"):
        assert part in saved, (part, saved)
    with Image.open(info["paths"][0]) as image:
        assert image.size == (96, 96)  # 64x64 with hires x1.5


def test_insert_a_lora_tag_and_see_the_lists(page, studio):
    """The LoRA list shows the files in models/Lora and inserts a tag; the VAE list offers models/VAE's files."""
    open_studio(page, studio.url)
    type_prompt(page, "txt2img", "a fox")
    page.locator("#txt2img-lora").get_by_text("LoRA", exact=True).click()
    page.locator("#txt2img-lora-refresh").click()
    wait_toast(page, r"1 LoRA file\(s\), 1 VAE file\(s\)")
    page.locator("#txt2img-lora-insert").click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a fox <lora:demo-lora:1>")
    page.locator("#txt2img-vae input").click()
    expect(page.get_by_role("option", name="demo-vae.safetensors")).to_be_visible()
    expect(page.get_by_role("option", name="Approx (TAESD)")).to_be_visible()


def test_the_lcm_preset_sets_sampler_steps_and_cfg_and_says_what_lora_it_needs(page, studio):
    open_studio(page, studio.url)
    page.locator("#txt2img-lcm-preset").click()
    wait_toast(page, r"No LCM-LoRA in models/Lora")
    expect(page.locator("#txt2img-sampler input")).to_have_value("LCM")
    panel = page.locator("#tab-txt2img")
    expect(panel.get_by_label("number input for Steps", exact=True)).to_have_value("6")
    expect(panel.get_by_label("number input for CFG scale", exact=True)).to_have_value("1.5")


def test_stop_ends_a_long_run_early_and_keeps_what_was_finished(page, studio):
    open_studio(page, studio.url)
    panel = page.locator("#tab-txt2img")
    type_prompt(page, "txt2img", "a slow river")
    small_run(panel, steps=150, count=4)
    set_seed(panel, 9000)
    before = len(studio.controller.store.history())
    page.locator("#txt2img-generate").click()

    # Watch the progress the page shows; press Stop once the first image is finished (step > 150 of 600).
    status = tracker(page, "txt2img-gallery")
    deadline = time.monotonic() + 120
    step = 0
    while time.monotonic() < deadline:
        found = re.search(r"step (\d+)/(\d+)", status.inner_text())
        if found:
            assert found.group(2) == "600"
            step = int(found.group(1))
            if step > 155:
                break
        time.sleep(0.05)
    assert step > 155, "the run never got past its first image"
    page.locator("#txt2img-stop").click()
    stopped_at = time.monotonic()
    wait_idle(page, "txt2img-gallery")
    assert time.monotonic() - stopped_at < 30, "Stop did not end the run promptly"

    message = wait_toast(page, r"Stopped")
    kept = int(re.search(r"kept (\d+) image", message).group(1))
    assert 1 <= kept < 4, message
    expect(thumbnails(page, "txt2img")).to_have_count(kept)
    info = read_json(page, "txt2img-info")
    assert info["seeds"] == [9000 + i for i in range(kept)] and "stopped" in info
    assert all(Path(p).is_file() for p in info["paths"])
    assert len(studio.controller.store.history()) == before + kept
    assert not any("Error" in t for t in toasts(page))


def watch_gallery(page, prefix: str, until: float, stop_when_idle: bool = True) -> list[tuple[str, tuple[int, int]]]:
    """(src, natural size) of each distinct image the gallery shows while the run goes on."""
    seen: dict[str, tuple[int, int]] = {}
    status = tracker(page, f"{prefix}-gallery")
    idle_since: float | None = None
    while time.monotonic() < until:
        for src, w, h in page.locator(f"#{prefix}-gallery img").evaluate_all(
            "els => els.filter(e => e.complete && e.naturalWidth > 0)"
            ".map(e => [e.src, e.naturalWidth, e.naturalHeight])"
        ):
            seen.setdefault(src, (w, h))
        # Idle for a whole second: the progress text also disappears for a moment while a preview replaces another.
        idle = seen and "step" not in status.inner_text()
        idle_since = (idle_since or time.monotonic()) if idle else None
        if stop_when_idle and idle_since is not None and time.monotonic() - idle_since > 1.0:
            break
        time.sleep(0.1)
    return list(seen.items())


def test_live_preview_shows_the_image_forming_in_the_gallery(page, studio):
    from studio.testing.browser import RESULTS

    open_studio(page, studio.url)
    panel = page.locator("#tab-txt2img")
    type_prompt(page, "txt2img", "a harbour at dusk")
    # 128² (not 64²): 150 steps take long enough for the browser to see the preview change under a busy CI
    small_run(panel, steps=150, count=1, width=128, height=128)
    set_seed(panel, 4242)
    page.locator("#txt2img-generate").click()

    gallery = page.locator("#txt2img-gallery")
    expect(gallery).to_contain_text(re.compile(r"live preview, step \d+"), timeout=60_000)  # mid-run
    assert "step" in tracker(page, "txt2img-gallery").inner_text()
    RESULTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(RESULTS / "live-preview-mid-run.png"))
    seen = watch_gallery(page, "txt2img", time.monotonic() + 60)
    previews = [src for src, size in seen if size == (256, 256)]  # the 16x16 latent preview of 128x128, enlarged
    assert len(previews) >= 2, seen  # it moves on with the run
    wait_idle(page, "txt2img-gallery")
    expect(thumbnails(page, "txt2img")).to_have_count(1)
    expect(gallery).not_to_contain_text("live preview")
    assert natural_sizes(thumbnails(page, "txt2img")) == [(128, 128)]  # the saved image replaced it
    info = read_json(page, "txt2img-info")
    assert info["seeds"] == [4242] and Path(info["paths"][0]).is_file()


def test_live_previews_can_be_turned_off_in_settings(page, studio):
    open_studio(page, studio.url)
    open_tab(page, "Settings")
    box = page.locator("#settings-live-preview-every input[type=number]")
    box.fill("0")
    box.press("Enter")
    page.locator("#settings-live-preview-every input[type=range]").dispatch_event("pointerup")
    wait_toast(page, r"Live previews off")
    try:
        assert studio.controller.jobs.preview_every == 0
        open_tab(page, "Text to image")
        type_prompt(page, "txt2img", "no previews please")
        small_run(page.locator("#tab-txt2img"), steps=100)
        page.locator("#txt2img-generate").click()
        seen = watch_gallery(page, "txt2img", time.monotonic() + 60)
        wait_idle(page, "txt2img-gallery")
        assert [size for _, size in seen] == [(64, 64)], seen  # only the finished image, never a preview
    finally:
        studio.controller.jobs.preview_every = 2


def test_history_is_there_after_a_restart(page, tmp_path):
    first = start_studio(tmp_path)
    try:
        open_studio(page, first.url)
        panel = page.locator("#tab-txt2img")
        type_prompt(page, "txt2img", "a harbour at dawn")
        small_run(panel)
        set_seed(panel, 31337)
        generate(page, "txt2img", expect_images=1)
        saved = read_json(page, "txt2img-info")["paths"][0]
    finally:
        first.close()

    second = start_studio(tmp_path)  # a new launch on the same outputs folder, on another port
    try:
        assert second.url != first.url
        open_studio(page, second.url)
        open_tab(page, "History")
        shown = page.locator("#history-gallery .grid-container img")
        expect(shown).to_have_count(1)
        assert page.locator("#history-gallery .caption-label").all_inner_texts() == ["txt2img · seed 31337"]
        shown.first.click()
        expect(page.locator("#history-text textarea")).to_have_value(re.compile(r"^a harbour at dawn\n.*Seed: 31337"))
        expect(page.locator("#tab-history textarea").last).to_have_value(saved)
    finally:
        second.close()
