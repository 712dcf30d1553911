"""studio.wire: every dialect decodes to the right request, round trips are exact, bad input names the field."""

from __future__ import annotations

import base64
import http.server
import io
import random
import struct
import threading
import zlib

import pytest
from PIL import Image

from studio import wire
from studio.engine import EngineError
from studio.types import GenerationRequest, GenerationResult, Limits, RequestError, Task
from studio.wire import Dialect


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(width: int = 64, height: int = 48, mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 5 % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    return image.convert(mode)


def png_with_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose header claims width x height (for decompression-bomb checks; never decoded)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


class FakeS3:
    """Just enough of a boto3 S3 client: get_object / put_object on a dict."""

    def __init__(self, objects: dict[tuple[str, str], bytes] | None = None):
        self.objects = dict(objects or {})

    def get_object(self, Bucket: str, Key: str):  # noqa: N803 (boto3's names)
        if (Bucket, Key) not in self.objects:
            error = Exception("An error occurred (NoSuchKey)")
            error.response = {"Error": {"Code": "NoSuchKey"}}
            raise error
        data = self.objects[(Bucket, Key)]
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str = ""):  # noqa: N803
        self.objects[(Bucket, Key)] = Body


def result_for(request: GenerationRequest) -> GenerationResult:
    request = request.with_resolved_seed()
    images = [gradient(request.width, request.height) for _ in range(request.count)]
    return GenerationResult(
        images=images,
        seeds=request.seeds(),
        infotexts=[f"{request.prompt}\nSteps: {request.steps}, Seed: {s}" for s in request.seeds()],
        request=request,
        model="demo",
        warnings=["prompt truncated"],
        timings={"generate": 0.5},
    )


# ---- round trips ----------------------------------------------------------------------------------------------
def test_request_round_trip_txt2img_keeps_every_field():
    request = GenerationRequest(
        prompt="a cat, 8k",
        negative_prompt="blurry",
        sampler="DPM++ 2M Karras",
        steps=7,
        cfg_scale=5.5,
        seed=1234,
        width=320,
        height=192,
        count=3,
        strength=0.4,
        mask_blur=2,
    )
    decoded, dialect = wire.decode_request(wire.encode_request(request))
    assert decoded == request
    assert dialect is Dialect.NATIVE


def test_request_round_trip_inpaint_keeps_pixels():
    image, mask = gradient(), gradient(mode="L")
    request = GenerationRequest(prompt="x", image=image, mask=mask, width=64, height=48, seed=3)
    payload = wire.encode_request(request)
    assert isinstance(payload["input_image"], str) and isinstance(payload["mask_image"], str)
    decoded, _ = wire.decode_request(payload)
    assert decoded == request and decoded.task is Task.INPAINT
    assert decoded.image.mode == "RGB" and decoded.mask.mode == "L"
    assert decoded.image.tobytes() == image.tobytes()
    assert decoded.mask.tobytes() == mask.tobytes()


def test_result_round_trip_keeps_pixels_seeds_infotexts():
    request = GenerationRequest(prompt="a dog", width=64, height=48, count=2, seed=10, steps=3)
    result = result_for(request)
    payload = wire.encode_result(result, Dialect.NATIVE)
    assert set(payload) >= {"images", "seeds", "infotexts", "warnings", "timings", "model", "backend"}
    back = wire.decode_result(payload, request, backend="http")
    assert back.seeds == [10, 11] and back.infotexts == result.infotexts
    assert back.warnings == ["prompt truncated"] and back.model == "demo" and back.backend == "http"
    assert back.timings["generate"] == 0.5 and "encode" in back.timings
    assert [i.tobytes() for i in back.images] == [i.tobytes() for i in result.images]
    # the PNG carries the A1111 infotext chunk
    png = Image.open(io.BytesIO(base64.b64decode(payload["images"][0])))
    assert png.info["parameters"] == result.infotexts[0]


def test_decode_result_resolves_random_seed_from_response():
    request = GenerationRequest(prompt="x", width=64, height=48, seed=-1)
    resolved = request.replace(seed=777)
    payload = wire.encode_result(result_for(resolved), Dialect.NATIVE)
    back = wire.decode_result(payload, request)
    assert back.request.seed == 777 and back.seeds == [777]


@pytest.mark.parametrize(
    "payload",
    [{"error": "boom"}, {"images": []}, {"images": ["!!!"]}, {"nothing": 1}, [], {"images": ["aGVsbG8="]}],
)
def test_decode_result_rejects_malformed_responses(payload):
    with pytest.raises(EngineError):
        wire.decode_result(payload, GenerationRequest(prompt="x", seed=1))


# ---- dialects -------------------------------------------------------------------------------------------------
def test_quick_kit_request():
    image = gradient(64, 64)
    payload = {
        "prompt": "astronaut",
        "negative_prompt": "",
        "steps": 20,
        "sampler": "euler_a",
        "seed": 1024,
        "height": 64,
        "width": 64,
        "count": 2,
        "input_image": png_b64(image),
    }
    request, dialect = wire.decode_request(payload)
    assert dialect is Dialect.QUICK_KIT
    assert request.sampler == "Euler a" and request.count == 2 and request.seed == 1024 and request.steps == 20
    assert request.task is Task.IMG2IMG and request.image.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("eular", "Euler"), ("heun", "Heun"), ("lms", "LMS"), ("dpm2", "DPM2"), ("dpm2_a", "DPM2 a"), ("ddim", "DDIM")],
)
def test_quick_kit_sampler_names(name, expected):
    request, _ = wire.decode_request({"prompt": "x", "sampler": name})
    assert request.sampler == expected


def test_hf_dlc_request_with_prompt_list():
    payload = {
        "prompt": ["a castle", "a castle"],
        "height": 64,
        "width": 128,
        "num_images_per_prompt": 2,
        "num_inference_steps": 9,
        "guidance_scale": 6.5,
        "negative_prompt": "ugly",
    }
    request, dialect = wire.decode_request(payload)
    assert dialect is Dialect.HF_DLC
    assert (request.prompt, request.count, request.steps, request.cfg_scale) == ("a castle", 4, 9, 6.5)
    assert (request.width, request.height, request.negative_prompt) == (128, 64, "ugly")


def test_hf_inputs_parameters_form():
    request, dialect = wire.decode_request({"inputs": "a fox", "parameters": {"num_inference_steps": 4, "seed": 5}})
    assert dialect is Dialect.HF_DLC and request.prompt == "a fox" and request.steps == 4 and request.seed == 5


def test_byoc_text_to_image_and_inpaint():
    request, dialect = wire.decode_request(
        {"prompt": "p", "guidance_scale": 8, "num_inference_steps": 12, "height": 64, "width": 64, "results": 3}
    )
    assert dialect is Dialect.BYOC and request.count == 3 and request.steps == 12 and request.cfg_scale == 8.0
    image, mask = gradient(64, 64), gradient(64, 64, "L")
    request, dialect = wire.decode_request(
        {"prompt": "p", "img": png_b64(image), "mask": png_b64(mask), "strength": 0.6, "height": 64, "width": 64}
    )
    assert dialect is Dialect.BYOC and request.task is Task.INPAINT and request.strength == 0.6
    assert request.mask.tobytes() == mask.tobytes()


def test_native_request_is_native_and_explicit_dialect_wins():
    assert wire.decode_request({"prompt": "x", "cfg_scale": 4})[1] is Dialect.NATIVE
    assert wire.decode_request({"prompt": "x"})[1] is Dialect.NATIVE
    assert wire.decode_request({"prompt": "x", "steps": 4, "dialect": "hf_dlc"})[1] is Dialect.HF_DLC


def test_image_forms_data_url_urlsafe_and_s3():
    image = gradient(32, 32)
    raw = base64.b64decode(png_b64(image))
    data_url = "data:image/png;base64," + base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    s3 = FakeS3({("bucket", "in/cat.png"): raw})
    for value in (data_url, urlsafe):
        request, _ = wire.decode_request({"prompt": "x", "input_image": value})
        assert request.image.tobytes() == image.tobytes()
    request, _ = wire.decode_request({"prompt": "x", "input_image": "s3://bucket/in/cat.png"}, s3_client=s3)
    assert request.image.tobytes() == image.tobytes()
    # a factory is called only when an s3:// image arrives
    request, _ = wire.decode_request({"prompt": "x", "input_image": "s3://bucket/in/cat.png"}, s3_client=lambda: s3)
    assert request.image.size == (32, 32)


def test_http_image_only_when_allowed():
    raw = base64.b64decode(png_b64(gradient(16, 16)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/cat.png" else 404)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    try:
        with pytest.raises(RequestError, match="^input_image: http"):
            wire.decode_request({"prompt": "x", "input_image": url})
        request, _ = wire.decode_request({"prompt": "x", "input_image": url}, allow_urls=True)
        assert request.image.size == (16, 16)
        with pytest.raises(RequestError, match="HTTP 404"):
            wire.decode_request({"prompt": "x", "input_image": url + "x"}, allow_urls=True)
    finally:
        server.shutdown()


def test_size_defaults_to_input_image_rounded_to_multiple_of_8():
    request, _ = wire.decode_request({"prompt": "x", "input_image": png_b64(gradient(100, 61))})
    assert (request.width, request.height) == (96, 56)
    with pytest.raises(RequestError, match="^width: .*taken from the input image"):
        wire.decode_request({"prompt": "x", "input_image": png_b64(gradient(64, 64))}, limits=Limits(max_width=32))


def test_rgba_mask_uses_alpha_strokes():
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 8, 16))  # black but opaque strokes on the left half
    request, _ = wire.decode_request(
        {"prompt": "x", "input_image": png_b64(gradient(16, 16)), "mask_image": png_b64(mask)}
    )
    assert request.mask.getpixel((2, 2)) == 255 and request.mask.getpixel((12, 2)) == 0


# ---- responses by dialect -------------------------------------------------------------------------------------
def test_response_shapes_by_dialect():
    request = GenerationRequest(prompt="x", width=64, height=48, count=2, seed=1)
    result = result_for(request)
    assert len(wire.encode_result(result, Dialect.HF_DLC)["generated_images"]) == 2
    assert len(wire.encode_result(result, Dialect.QUICK_KIT)["images"]) == 2  # no S3: base64
    s3 = FakeS3()
    out = wire.S3Output("s3://out-bucket/renders", s3)
    quick = wire.encode_result(result, Dialect.QUICK_KIT, out)
    assert len(quick["result"]) == 2 and "images" not in quick
    assert all(uri.startswith("s3://out-bucket/renders/") and uri.endswith(".png") for uri in quick["result"])
    byoc = wire.encode_result(result, Dialect.BYOC, out)
    assert len(byoc["s3_loc"]) == 2
    native = wire.encode_result(result, Dialect.NATIVE, out)
    assert len(native["images"]) == 2 and len(native["s3_uris"]) == 2
    stored = s3.objects[("out-bucket", quick["result"][0].split("/", 3)[3])]
    assert Image.open(io.BytesIO(stored)).info["parameters"] == result.infotexts[0]
    # the client can read an S3-only answer back when it has a client
    back = wire.decode_result(quick, request, s3_client=s3)
    assert [i.tobytes() for i in back.images] == [i.tobytes() for i in result.images]


def test_encode_result_refuses_empty_result():
    request = GenerationRequest(prompt="x", seed=1)
    with pytest.raises(EngineError, match="no images"):
        wire.encode_result(GenerationResult([], [], [], request), Dialect.NATIVE)


# ---- bad input: every error names its field -------------------------------------------------------------------
_TEXT_B64 = base64.b64encode(b"hello, this is not an image").decode()
_NOISE = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
_TRUNCATED_PNG = base64.b64encode(base64.b64decode(png_b64(_NOISE))[:2000]).decode()
_BIG_PNG = base64.b64encode(png_with_size(5000, 5000)).decode()
_BOMB_PNG = base64.b64encode(png_with_size(20000, 20000)).decode()

BAD_INPUTS = [
    ({}, "prompt", "is required"),
    ({"prompt": None}, "prompt", "is required"),
    ({"prompt": 5}, "prompt", "must be text"),
    ({"prompt": ["a", "b"]}, "prompt", "different prompts"),
    ({"prompt": "x", "steps": "20"}, "steps", "whole number"),
    ({"prompt": "x", "steps": 0}, "steps", "between 1 and"),
    ({"prompt": "x", "num_inference_steps": 1000}, "steps", "between 1 and"),
    ({"prompt": "x", "steps": 20, "num_inference_steps": 30}, "steps", "given twice"),
    ({"prompt": "x", "width": 100}, "width", "multiple of 8"),
    ({"prompt": "x", "height": 4096}, "height", "at most"),
    ({"prompt": "x", "cfg_scale": "high"}, "cfg_scale", "must be a number"),
    ({"prompt": "x", "guidance_scale": 99}, "cfg_scale", "between"),
    ({"prompt": "x", "seed": -5}, "seed", "-1 (random)"),
    ({"prompt": "x", "count": 0}, "count", "between 1 and"),
    ({"prompt": "x", "sampler": "bogus"}, "sampler", "valid samplers"),
    ({"prompt": "x", "strength": 1.5}, "strength", "at most 1"),
    ({"prompt": "x", "stpes": 20}, "stpes", "unknown field"),
    ({"prompt": "x", "input_image": "not base64!!"}, "input_image", "not valid base64"),
    ({"prompt": "x", "input_image": 42}, "input_image", "base64 string"),
    ({"prompt": "x", "input_image": _TEXT_B64}, "input_image", "not an image"),
    ({"prompt": "x", "input_image": _TRUNCATED_PNG}, "input_image", "corrupt image"),
    ({"prompt": "x", "input_image": _BIG_PNG}, "input_image", "at most"),
    ({"prompt": "x", "input_image": _BOMB_PNG}, "input_image", "too large"),
    ({"prompt": "x", "input_image": "data:image/png,abc"}, "input_image", "data URL"),
    ({"prompt": "x", "input_image": "https://example.com/cat.png"}, "input_image", "disabled"),
    ({"prompt": "x", "input_image": "s3://bucket/cat.png"}, "input_image", "no S3 client"),
    ({"prompt": "x", "img": "@@@", "mask": _TEXT_B64}, "img", "not valid base64"),
    ({"prompt": "x", "mask_image": png_b64(gradient(mode="L"))}, "image", "mask was given"),
    ({"prompt": "x", "input_image": png_b64(gradient()), "mask_image": _TEXT_B64}, "mask_image", "not an image"),
    ({"prompt": "x", "s3_output": "bucket/prefix"}, "s3_output", "s3://"),
    ({"prompt": "x", "dialect": "klingon"}, "dialect", "unknown dialect"),
    ({"inputs": "x", "parameters": [1]}, "parameters", "must be an object"),
    ([{"prompt": "x"}], "body", "JSON object"),
]


@pytest.mark.parametrize(
    ("payload", "field", "words"), BAD_INPUTS, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_INPUTS)]
)
def test_bad_input_names_the_field(payload, field, words):
    with pytest.raises(RequestError) as caught:
        wire.decode_request(payload)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)


def test_s3_errors_name_the_field():
    s3 = FakeS3()
    with pytest.raises(RequestError, match=r"^input_image: s3://bucket/missing.png does not exist"):
        wire.decode_request({"prompt": "x", "input_image": "s3://bucket/missing.png"}, s3_client=s3)
    with pytest.raises(RequestError, match=r"^input_image: .*no object key"):
        wire.decode_request({"prompt": "x", "input_image": "s3://bucket"}, s3_client=s3)


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:secret/x@127.0.0.1:9/path?api_key=SECRET",
        "https://user:SECRET@host/x?X-Amz-Security-Token=SECRET#frag",
        "http://127.0.0.1:8080/invocations?token=SECRET",
    ],
)
def test_redact_url_drops_credentials_and_query(url):
    from studio.wire import redact_url

    redacted = redact_url(url)
    assert "SECRET" not in redacted and "secret" not in redacted
    assert redacted.startswith(("http://", "https://"))
