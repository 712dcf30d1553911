"""Bad input, case by case, through the public gradio API (gradio_client and raw HTTP) and the serving app's
/invocations, both running the real LocalEngine with the demo model.

Every case must be refused with an error naming the field — a gr.Error titled "Invalid input" whose message starts
with "<field>:", or an HTTP 4xx whose JSON names the field — or, where the issue says so (a 10,000-character prompt,
a mask or image of another size), be accepted with a warning saying what was changed. None may give a 5xx or stop
the server, and the next valid request must succeed.

The results table (case -> result) is written to test-results/bad_input_table.md and printed at the end (-s).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, PngImagePlugin

from studio.testing.browser import REPO, start_studio
from studio.testing.gradio_api import api_values
from studio.testing.moto import MotoServer, aws_env
from studio.testing.servers import UvicornThread, wait_for

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from studio.types import Limits  # noqa: E402
from studio.ui.txt2img import txt2img  # noqa: E402

# Configured maximums (STUDIO_MAX_*), smaller than the defaults so "above the maximum" is cheap to reach.
LIMIT_ENV = {
    "STUDIO_MAX_WIDTH": "1024",
    "STUDIO_MAX_HEIGHT": "1024",
    "STUDIO_MAX_PIXELS": str(768 * 768),
    "STUDIO_MAX_STEPS": "50",
    "STUDIO_MAX_COUNT": "4",
}
LIMITS = Limits(max_width=1024, max_height=1024, max_pixels=768 * 768, max_steps=50, max_count=4)
BODY_LIMIT = 1_000_000
BUCKET = "studio-inputs"

VALID = dict(
    prompt="a red apple", negative_prompt="", sampler="Euler a", steps=2, cfg_scale=7, seed=7, width=64, height=64,
    count=1,
)
# /txt2img's later parameters (scheduler, clip_skip, vae, hires_*): gradio_client fills their defaults, a raw HTTP
# /call/ request must send every value (gradio's rule, see h05).
LONG_PROMPT = ("a very detailed painting of a lighthouse on a cliff at sunset, " * 160)[:10_000]
TABLE: list[tuple[str, str, str, str]] = []  # (id, channel, case, result)


# ---- files ---------------------------------------------------------------------------------------------------------
def png_bytes(image: Image.Image, text: str | None = None) -> bytes:
    buffer = io.BytesIO()
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose header claims width x height: a decompression bomb as far as Pillow can tell."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF)
    return bytes(data)


def noise(width: int = 64, height: int = 64, mode: str = "RGB") -> Image.Image:
    import random

    return Image.frombytes("RGB", (width, height), random.Random(width * height).randbytes(width * height * 3)).convert(
        mode
    )


def half_mask(width: int = 64, height: int = 64) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    return mask


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-files")
    blobs = {
        "image.png": png_bytes(noise()),
        "big-image.png": png_bytes(noise(96, 80)),
        "mask.png": png_bytes(half_mask()),
        "small-mask.png": png_bytes(half_mask(32, 32)),
        "empty-mask.png": png_bytes(Image.new("L", (64, 64), 0)),
        "notes.png": b"hello, this is a text file with a .png name\n",
        "notes.txt": b"hello, this is not an image\n",
        "truncated.png": png_bytes(noise())[:2000],
        "truncated-with-parameters.png": png_bytes(noise(), "a cat\nSteps: 5, Sampler: Euler, Seed: 3, Size: 64x64")[
            :1500
        ],
        "bomb.png": png_claiming(20_000, 20_000),  # 400 MP: Pillow refuses at open
        "bomb-warning.png": png_claiming(10_000, 10_000),  # 100 MP: Pillow only warns, the studio refuses
    }
    paths = {}
    for name, data in blobs.items():
        (root / name).write_bytes(data)
        paths[name] = root / name
    return paths


# ---- servers -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    app = start_studio(tmp_path_factory.mktemp("bad-studio"), environ=LIMIT_ENV)
    client = Client(app.url, verbose=False)
    yield app, client
    client.close()
    app.close()


@pytest.fixture(scope="module")
def serving():
    """The serving app on a real uvicorn with the demo model; S3 is a moto server holding an empty bucket."""
    import boto3

    from studio.config import EngineSettings, ServingSettings
    from studio.local_engine import LocalEngine
    from studio.serving.app import create_app

    with MotoServer() as moto, aws_env(moto.url):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        engine = LocalEngine("demo", device="cpu", limits=LIMITS)
        settings = ServingSettings(engine=EngineSettings(limits=LIMITS), max_body_bytes=BODY_LIMIT, allow_urls=False)
        with UvicornThread(create_app(engine, settings=settings)) as server:
            wait_for(f"{server.url}/ping", timeout=120)
            yield server


@pytest.fixture(scope="module", autouse=True)
def results_table():
    yield
    if not TABLE:
        return
    lines = ["| # | channel | case | result |", "|---|---|---|---|"]
    lines += [f"| {i} | {channel} | {case} | {result} |" for i, channel, case, result in TABLE]
    text = "\n".join(lines) + "\n"
    out = REPO / "test-results"
    out.mkdir(exist_ok=True)
    (out / "bad_input_table.md").write_text(text)
    print("\n" + text)


def record(case_id: str, channel: str, case: str, result: str) -> None:
    TABLE.append((case_id, channel, case, result.replace("|", "\\|").replace("\n", " ")[:160]))


# ---- gradio cases ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradioCase:
    id: str
    case: str
    api: str  # /txt2img, /img2img, /inpaint, /png_info
    changes: dict[str, Any]  # replaces VALID's values; image/mask/strength for the image endpoints
    field: str | None  # the field the error must name; None: accepted
    words: str  # in the error message, or in a warning when accepted


def g(id_: str, case: str, changes: dict[str, Any], field: str | None, words: str, api: str = "/txt2img"):
    return GradioCase(id_, case, api, changes, field, words)


GRADIO_CASES = [
    g("g01", "width 100 (not a multiple of 8)", {"width": 100}, "width", "multiple of 8"),
    g("g02", "height 65 (not a multiple of 8)", {"height": 65}, "height", "multiple of 8"),
    g("g03", "width 0", {"width": 0}, "width", "at least 8"),
    g("g04", "height -64", {"height": -64}, "height", "at least 8"),
    g("g05", "width 1032 (configured max 1024)", {"width": 1032}, "width", "at most 1024"),
    g("g06", "width 2**31 (huge)", {"width": 2**31}, "width", "at most 1024"),
    g("g07", "1024x1024 over the configured pixel limit", {"width": 1024, "height": 1024}, "width", "pixel limit"),
    g("g08", "steps 0", {"steps": 0}, "steps", "between 1 and 50"),
    g("g09", "steps 51 (configured max 50)", {"steps": 51}, "steps", "between 1 and 50"),
    g("g10", 'steps "ten" (wrong type)', {"steps": "ten"}, "steps", "whole number"),
    g("g11", "steps 2.5", {"steps": 2.5}, "steps", "whole number"),
    g("g12", "cfg_scale -1", {"cfg_scale": -1}, "cfg_scale", "between 0 and 30"),
    g("g13", "cfg_scale 31", {"cfg_scale": 31}, "cfg_scale", "between 0 and 30"),
    g("g14", 'cfg_scale "high" (wrong type)', {"cfg_scale": "high"}, "cfg_scale", "must be a number"),
    g("g15", "count 0", {"count": 0}, "count", "between 1 and 4"),
    g("g16", "count 5 (configured max 4)", {"count": 5}, "count", "between 1 and 4"),
    g("g17", 'sampler "nope" (unknown)', {"sampler": "nope"}, "sampler", "Euler a"),
    g("g18", "sampler 5 (wrong type)", {"sampler": 5}, "sampler", "sampler name"),
    g("g19", "seed -5", {"seed": -5}, "seed", "-1 (random)"),
    g("g20", "seed 2**40", {"seed": 2**40}, "seed", "between 0 and"),
    g("g21", 'seed "abc" (wrong type)', {"seed": "abc"}, "seed", "whole number"),
    g("g22", "width true (a boolean)", {"width": True}, "width", "whole number"),
    g("g23", "prompt 5 (a number)", {"prompt": 5}, "prompt", "must be text"),
    g("g24", 'prompt ["a", "b"] (a list)', {"prompt": ["a", "b"]}, "prompt", "must be text"),
    g("g25", "negative_prompt {} (an object)", {"negative_prompt": {"a": 1}}, "negative_prompt", "must be text"),
    g("g26", "10,000-character prompt: encoded whole, in 75-token chunks", {"prompt": LONG_PROMPT}, None, ""),
    g("g27", "25,000-character prompt (over 20,000)", {"prompt": "x" * 25_000}, "prompt", "limit is 20000"),
    g("g28", "image: a text file", {"image": "notes.txt"}, "image", "not an image", "/img2img"),
    g("g29", "image: text named .png", {"image": "notes.png"}, "image", "not an image", "/img2img"),
    g("g30", "image: truncated PNG", {"image": "truncated.png"}, "image", "truncated", "/img2img"),
    g("g31", "image: 20000x20000 bomb", {"image": "bomb.png"}, "image", "decompression-bomb limit", "/img2img"),
    g("g32", "image: 10000x10000 (Pillow only warns)", {"image": "bomb-warning.png"}, "image",
      "decompression-bomb limit", "/img2img"),
    g("g33", "image: none", {"image": None}, "image", "upload an input image", "/img2img"),
    g("g34", "strength 0", {"strength": 0}, "strength", "greater than 0", "/img2img"),
    g("g35", "strength 1.5", {"strength": 1.5}, "strength", "at most 1", "/img2img"),
    g("g36", "strength 0.1 x 2 steps = no step", {"strength": 0.1}, "strength", "no denoising step", "/img2img"),
    g("g37", "image 96x80 for a 64x64 run: resized, warned", {"image": "big-image.png"}, None, "image: resized",
      "/img2img"),
    g("g38", "mask 32x32 on a 64x64 image: resized, warned", {"mask": "small-mask.png"}, None, "mask: resized",
      "/inpaint"),
    g("g39", "mask: empty (all black)", {"mask": "empty-mask.png"}, "mask", "is empty", "/inpaint"),
    g("g40", "mask: none", {"mask": None}, "mask", "is required", "/inpaint"),
    g("g41", "mask: a text file", {"mask": "notes.txt"}, "mask", "not an image", "/inpaint"),
    g("g42", "mask: truncated PNG", {"mask": "truncated.png"}, "mask", "truncated", "/inpaint"),
    g("g43", "inpaint image: none", {"image": None}, "image", "is required", "/inpaint"),
    g("g44", "png_info: a text file", {"image": "notes.txt"}, "image", "not an image", "/png_info"),
    g("g45", "png_info: 20000x20000 bomb", {"image": "bomb.png"}, "image", "decompression-bomb limit", "/png_info"),
    g("g46", "png_info: truncated PNG with parameters: read", {"image": "truncated-with-parameters.png"}, None, "",
      "/png_info"),
]


def gradio_args(case: GradioCase, files: dict[str, Path]) -> list[Any]:
    params = {**VALID, **{k: v for k, v in case.changes.items() if k in VALID}}

    def file_arg(key: str, default: str) -> Any:
        name = case.changes.get(key, default)
        return None if name is None else handle_file(str(files[name]))

    if case.api == "/png_info":
        return [file_arg("image", "image.png")]
    strength = case.changes.get("strength", 1.0 if case.api == "/inpaint" else 0.75)
    if case.api == "/img2img":
        return [file_arg("image", "image.png"), *params.values(), strength]
    if case.api == "/inpaint":
        return [file_arg("image", "image.png"), file_arg("mask", "mask.png"), *params.values(), strength]
    return list(params.values())


def assert_gradio_serves(client: Client) -> None:
    gallery, info = client.predict(*VALID.values(), api_name="/txt2img")
    assert len(gallery) == 1 and info["seeds"] == [7]


@pytest.mark.parametrize("case", GRADIO_CASES, ids=[c.id for c in GRADIO_CASES])
def test_gradio_api_bad_input(studio, files, case: GradioCase):
    _, client = studio
    channel = f"gradio {case.api}"
    try:
        result = client.predict(*gradio_args(case, files), api_name=case.api)
    except AppError as err:
        message = str(err)
        record(case.id, channel, case.case, f"gr.Error [{err.title}] {message}")
        assert case.field is not None, f"expected success, got {message}"
        assert err.title == "Invalid input", f"not one of the studio's own errors: [{err.title}] {message}"
        assert message.startswith(f"{case.field}: "), message
        assert case.words in message, message
    else:
        if case.api == "/png_info":
            record(case.id, channel, case.case, f"accepted: {json.dumps(result)[:100]}")
            assert case.field is None, f"expected an error naming {case.field}, got {result}"
            assert result["prompt"] == "a cat" and result["seed"] == 3
        else:
            _, info = result
            warnings = info["warnings"]
            record(case.id, channel, case.case, f"accepted, {len(info['paths'])} image(s); warnings: {warnings}")
            assert case.field is None, f"expected an error naming {case.field}, got success: {info}"
            if case.words:  # a change the studio made to the input (a resize) is said; else nothing is said
                assert any(case.words in w for w in warnings), warnings
            assert all(Path(p).is_file() for p in info["paths"])
    assert_gradio_serves(client)


def test_a_long_prompt_is_encoded_whole(studio):
    """The 10,000-character prompt is not an error and nothing of it is cut: it is encoded in 75-token chunks (A1111's
    infinite prompt length), so its end changes the image, and the whole prompt is recorded."""
    _, client = studio
    gallery, info = client.predict(*{**VALID, "prompt": LONG_PROMPT}.values(), api_name="/txt2img")
    assert not [w for w in info["warnings"] if w.startswith("prompt:")]
    assert LONG_PROMPT.strip() in info["infotexts"][0]
    _, other = client.predict(*{**VALID, "prompt": LONG_PROMPT + " in the rain"}.values(), api_name="/txt2img")
    from PIL import Image

    first, second = (Image.open(i["paths"][0]).tobytes() for i in (info, other))
    assert first != second  # pixels: the end of a 2,000-token prompt still counts


# ---- gradio over raw HTTP ------------------------------------------------------------------------------------------
def gradio_call(url: str, api: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """POST /gradio_api/call/<api>; when accepted, follow the event stream to its end. (status, text)."""
    response = requests.post(f"{url}gradio_api/call/{api}", data=body, headers={"Content-Type": content_type},
                             timeout=30)
    if response.status_code != 200:
        return response.status_code, response.text
    event_id = response.json()["event_id"]
    stream = requests.get(f"{url}gradio_api/call/{api}/{event_id}", timeout=60)
    return stream.status_code, stream.text


RAW_GRADIO_CASES = [
    ("h01", "malformed JSON", b'{"data": [', "application/json", 422, "json"),
    ("h02", "wrong content type (text/plain)", b'{"data": ["x"]}', "text/plain", 422, "body"),
    ("h03", 'no "data" field', b'{"inputs": ["x"]}', "application/json", 422, "data"),
    ("h04", "cfg_scale NaN",
     json.dumps({"data": api_values(txt2img, **{**VALID, "cfg_scale": float("nan")})}).encode(),
     "application/json", 200, "cfg_scale: must be a finite number"),
    ("h05", "too few values", b'{"data": ["x"]}', "application/json", 200, "enough input values"),
]


@pytest.mark.parametrize(("id_", "case", "body", "ctype", "status", "words"), RAW_GRADIO_CASES,
                         ids=[c[0] for c in RAW_GRADIO_CASES])
def test_gradio_http_bad_requests(studio, id_, case, body, ctype, status, words):
    app, client = studio
    got, text = gradio_call(app.url, "txt2img", body, ctype)
    record(id_, "gradio HTTP /call/txt2img", case, f"HTTP {got}: {text.strip()[:120]}")
    assert got == status and 400 <= got < 500 or (got == 200 and "event: error" in text), text
    assert words in text, text
    assert_gradio_serves(client)


# ---- /invocations ----------------------------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


IMG = b64(png_bytes(noise()))
SMALL = {"prompt": "a red apple", "seed": 7, "width": 64, "height": 64, "steps": 2}


@dataclass(frozen=True)
class HttpCase:
    id: str
    case: str
    send: Callable[[str], requests.Response]
    status: int
    field: str | None
    words: str


def post_json(payload: Any) -> Callable[[str], requests.Response]:
    return lambda url: requests.post(f"{url}/invocations", json=payload, timeout=60)


def post_raw(data: bytes, content_type: str | None = "application/json") -> Callable[[str], requests.Response]:
    headers = {"Content-Type": content_type} if content_type else {}
    return lambda url: requests.post(f"{url}/invocations", data=data, headers=headers, timeout=60)


def h(id_, case, send, status, field, words):
    return HttpCase(id_, case, send, status, field, words)


INVOCATION_CASES = [
    h("i01", "malformed JSON", post_raw(b'{"prompt": "x",'), 400, "body", "malformed JSON"),
    h("i02", "wrong content type (text/plain)", post_raw(b'{"prompt": "x"}', "text/plain"), 400, "content_type",
      "expected application/json"),
    h("i03", "body over the limit (1 MB + 1)", post_raw(b"x" * (BODY_LIMIT + 1)), 413, "body", "limit"),
    h("i04", "empty body", post_raw(b""), 400, "body", "malformed JSON"),
    h("i05", "a JSON list, not an object", post_json([SMALL]), 400, "body", "JSON object"),
    h("i06", "s3:// URI of a missing object", post_json({**SMALL, "input_image": f"s3://{BUCKET}/missing.png"}), 400,
      "input_image", "does not exist"),
    h("i07", "s3:// URI of a missing bucket", post_json({**SMALL, "input_image": "s3://no-such-bucket/x.png"}), 400,
      "input_image", "no-such-bucket"),
    h("i08", "http URL while URLs are disabled", post_json({**SMALL, "input_image": "http://127.0.0.1:9/cat.png"}),
      400, "input_image", "disabled"),
    h("i09", "file:// URL", post_json({**SMALL, "input_image": "file:///etc/passwd"}), 400, "input_image", ""),
    h("i10", "width 100", post_json({**SMALL, "width": 100}), 400, "width", "multiple of 8"),
    h("i11", "height -64", post_json({**SMALL, "height": -64}), 400, "height", "at least 8"),
    h("i12", "width 4096 (configured max 1024)", post_json({**SMALL, "width": 4096}), 400, "width", "at most 1024"),
    h("i13", "steps 0", post_json({**SMALL, "steps": 0}), 400, "steps", "between 1 and 50"),
    h("i14", "steps 51", post_json({**SMALL, "steps": 51}), 400, "steps", "between 1 and 50"),
    h("i15", 'steps "20" (a string)', post_json({**SMALL, "steps": "20"}), 400, "steps", "whole number"),
    h("i16", "cfg_scale NaN", post_raw(b'{"prompt": "x", "steps": 2, "cfg_scale": NaN}'), 400, "cfg_scale",
      "finite"),
    h("i17", "guidance_scale 99", post_json({**SMALL, "guidance_scale": 99}), 400, "cfg_scale", "between"),
    h("i18", "count 0", post_json({**SMALL, "count": 0}), 400, "count", "between 1 and 4"),
    h("i19", "num_images_per_prompt 5", post_json({**SMALL, "num_images_per_prompt": 5}), 400, "count",
      "between 1 and 4"),
    h("i20", 'sampler "bogus"', post_json({**SMALL, "sampler": "bogus"}), 400, "sampler", "valid samplers"),
    h("i21", "prompt 5 (a number)", post_json({**SMALL, "prompt": 5}), 400, "prompt", "must be text"),
    h("i22", "10,000-character prompt: encoded whole, in 75-token chunks", post_json({**SMALL, "prompt": LONG_PROMPT}),
      200, None, ""),
    h("i23", "input_image: not an image", post_json({**SMALL, "input_image": b64(b"not an image")}), 400,
      "input_image", "not an image"),
    h("i24", "input_image: truncated PNG", post_json({**SMALL, "input_image": b64(png_bytes(noise())[:2000])}), 400,
      "input_image", "corrupt"),
    h("i25", "input_image: 20000x20000 bomb", post_json({**SMALL, "input_image": b64(png_claiming(20_000, 20_000))}),
      400, "input_image", "too large"),
    h("i26", "mask 32x32 on a 64x64 image: resized, warned",
      post_json({**SMALL, "input_image": IMG, "mask_image": b64(png_bytes(half_mask(32, 32)))}), 200, None,
      "mask: resized"),
    h("i27", "mask: empty (all black)",
      post_json({**SMALL, "input_image": IMG, "mask_image": b64(png_bytes(Image.new("L", (64, 64))))}), 400, "mask",
      "is empty"),
    h("i28", "unknown field (a typo)", post_json({**SMALL, "stpes": 20}), 400, "stpes", "unknown field"),
]


@pytest.mark.parametrize("case", INVOCATION_CASES, ids=[c.id for c in INVOCATION_CASES])
def test_invocations_bad_input(serving, case: HttpCase):
    response = case.send(serving.url)
    try:
        body = response.json()
    except ValueError:
        body = {"raw": response.text[:200]}
    if response.ok:
        made = len(body.get("images", []))
        summary = f"HTTP {response.status_code}, {made} image(s); warnings: {body.get('warnings')}"
    else:
        summary = f"HTTP {response.status_code} {json.dumps(body)[:140]}"
    record(case.id, "POST /invocations", case.case, summary)
    assert response.status_code == case.status, response.text[:500]
    if case.field is None:
        assert body["images"]
        if case.words:
            assert any(case.words in w for w in body["warnings"]), body.get("warnings")
    else:
        assert body["field"] == case.field, body
        assert body["error"].startswith(f"{case.field}: ") and case.words in body["error"], body
    # The server is alive and the next valid request succeeds.
    assert requests.get(f"{serving.url}/ping", timeout=10).status_code == 200
    after = requests.post(f"{serving.url}/invocations", json=SMALL, timeout=60)
    assert after.status_code == 200 and len(after.json()["images"]) == 1


def test_gradio_upload_over_the_limit_is_413(studio):
    """Uploads (input images, masks) are capped (app.MAX_UPLOAD); above it gradio answers 413 and keeps nothing."""
    import app as studio_app

    app, client = studio
    limit = 50 * 1024 * 1024
    assert studio_app.MAX_UPLOAD == "50mb"
    response = requests.post(
        f"{app.url}gradio_api/upload", files={"files": ("huge.png", b"\0" * (limit + 1))}, timeout=120
    )
    result = f"HTTP {response.status_code}: {response.text[:100]}"
    record("h06", "gradio HTTP /upload", "upload of 50 MB + 1 byte", result)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    ok = requests.post(f"{app.url}gradio_api/upload", files={"files": ("small.png", png_bytes(noise()))}, timeout=30)
    assert ok.status_code == 200
    assert_gradio_serves(client)


def test_the_table_has_at_least_30_cases():
    assert len(GRADIO_CASES) + len(RAW_GRADIO_CASES) + len(INVOCATION_CASES) >= 30
