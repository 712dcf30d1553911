"""Test support for the wire codec and the serving side: tiny images, a fake S3 client and the table of bad
requests every decoding path (the codec, /invocations, the toolkit handlers) must refuse naming the field."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

from PIL import Image

from studio.types import GenerationRequest, GenerationResult


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
    """Just enough of a boto3 S3 client: get_object / put_object on a dict (records every call)."""

    def __init__(self, objects: dict[tuple[str, str], bytes] | None = None):
        self.objects = dict(objects or {})
        self.calls: list[tuple[str, str, str]] = []

    def get_object(self, Bucket: str, Key: str):  # noqa: N803 (boto3's names)
        self.calls.append(("get_object", Bucket, Key))
        if (Bucket, Key) not in self.objects:
            error = Exception("An error occurred (NoSuchKey)")
            error.response = {"Error": {"Code": "NoSuchKey"}}
            raise error
        data = self.objects[(Bucket, Key)]
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str = ""):  # noqa: N803
        self.calls.append(("put_object", Bucket, Key))
        self.objects[(Bucket, Key)] = Body


def result_for(request: GenerationRequest) -> GenerationResult:
    """A result an engine could have returned for `request`: gradients, seeds, infotexts, a warning, a timing."""
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


_TEXT_B64 = base64.b64encode(b"hello, this is not an image").decode()
_NOISE = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
_TRUNCATED_PNG = base64.b64encode(base64.b64decode(png_b64(_NOISE))[:2000]).decode()
_BIG_PNG = base64.b64encode(png_with_size(5000, 5000)).decode()
_BOMB_PNG = base64.b64encode(png_with_size(20000, 20000)).decode()

# (payload, the field the error names, words in the message)
BAD_INPUTS = [
    ({}, "prompt", "is required"),
    ({"prompt": None}, "prompt", "is required"),
    ({"prompt": 5}, "prompt", "must be text"),
    ({"prompt": ["a", "b"], "negative_prompt": ["n"]}, "negative_prompt", "there are 2 prompts"),
    ({"prompt": ["a"] * 9, "count": 2}, "count", "9 prompts x 2 images per prompt = 18 images"),
    ({"prompt": ["a", 5]}, "prompt", "list of text"),
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
BAD_INPUT_IDS = [f"{i}-{case[1]}" for i, case in enumerate(BAD_INPUTS)]
