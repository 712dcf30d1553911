"""The one JSON codec for generation requests and results: pure dict <-> GenerationRequest/GenerationResult.

Server side, `decode_invocation` accepts every request dialect of the AWS samples and turns it into one validated
`GenerationRequest`; `encode_result` answers in the caller's dialect. Client side, `encode_request` /
`decode_result` speak the native dialect. Both sides import this module, and the tests round-trip through it, so
client and server cannot drift apart.

No I/O happens here. Inline images (base64, data URLs) are decoded by the codec itself; s3:// and http(s)://
references are handed to an injected `fetch(field, uri) -> bytes` (studio.wire.images builds them, with the S3
allowed-prefix policy inside), and without one they are refused with a RequestError naming the field. Writing
results to S3 is the caller's job too: `encode_result` only puts the URIs it is given into the response.

Dialects (which one a payload follows is decided by the explicit rules of studio.wire.dialects; every answer
says which one was used, as "dialect"):
- native / Quick Kit: prompt, negative_prompt, steps, sampler, seed, width, height, count, cfg_scale
  (alias guidance_scale), input_image, mask_image, strength, mask_blur, s3_output (aliases output_location,
  output_s3uri); and A1111 1.9's fields under the request's names: scheduler, clip_skip, vae, hires_scale,
  hires_resize_x, hires_resize_y, hires_upscaler, hires_steps, hires_strength (LoRAs are `<lora:name:w>` prompt
  tags) -> {"images": [base64 PNG], "seeds", "infotexts", ...}; a Quick Kit request with an S3 output
  location -> {"result": ["s3://..."], ...}.
- HF-DLC notebook: prompt (str or list) or inputs, num_images_per_prompt, num_inference_steps, guidance_scale,
  optional "parameters" object -> {"generated_images": [base64 PNG], ...}.
- BYOC: results, num_inference_steps, guidance_scale, img, mask, strength -> {"s3_loc": [...]} with S3 output.

Prompt lists (HF-DLC's sample sends one; the native dialect accepts the same): N prompts, and one negative prompt
or a list of N, with count / num_images_per_prompt k give N x k images in prompt order; image j has seed + j and
its infotext names its own prompt. The count limit applies to N x k. `Invocation.requests()` is the split.

Only Pillow is imported (lazily, when an image is decoded or encoded).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studio.aws import parse_s3_uri, redact_url
from studio.engine import EngineError
from studio.types import DEFAULT_LIMITS, GenerationRequest, GenerationResult, Limits, RequestError
from studio.wire.dialects import Dialect, detect_dialect
from studio.wire.prompt_lists import expand_prompts, prompt_pairs

if TYPE_CHECKING:
    from PIL import Image

# Reads an s3:// or http(s):// image reference for the request field `field`; RequestError naming it on failure.
Fetch = Callable[[str, str], bytes]

# An input image may be larger than the output (it is resized), but not absurdly: this many times max_pixels.
INPUT_PIXELS_FACTOR = 4
PNG_COMPRESS_LEVEL = 1  # A1111's default: fast to write; images are encoded exactly once per response


# Request field -> accepted spellings, in the order they are looked up.
_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "inputs"),
    "negative_prompt": ("negative_prompt",),
    "sampler": ("sampler", "sampler_name"),
    "steps": ("steps", "num_inference_steps"),
    "cfg_scale": ("cfg_scale", "guidance_scale"),
    "seed": ("seed",),
    "width": ("width",),
    "height": ("height",),
    "count": ("count", "num_images_per_prompt", "results"),
    "strength": ("strength", "denoising_strength"),
    "mask_blur": ("mask_blur",),
    "scheduler": ("scheduler",),
    "clip_skip": ("clip_skip",),
    "vae": ("vae",),
    "hires_scale": ("hires_scale",),
    "hires_resize_x": ("hires_resize_x",),
    "hires_resize_y": ("hires_resize_y",),
    "hires_upscaler": ("hires_upscaler",),
    "hires_steps": ("hires_steps",),
    "hires_strength": ("hires_strength",),
    "inpaint_only_masked": ("inpaint_only_masked",),
    "inpaint_padding": ("inpaint_padding",),
    "masked_content": ("masked_content",),
    "image": ("input_image", "image", "init_image", "img"),
    "mask": ("mask_image", "mask"),
    "s3_output": ("s3_output", "output_location", "output_s3uri"),
}
_SPELLING_TO_FIELD = {spelling: name for name, spellings in _ALIASES.items() for spelling in spellings}
# Keys sent by the samples that carry nothing we use; accepted and ignored rather than rejected.
_IGNORED_KEYS = frozenset({"dialect", "infer_args"})
_SCALAR_FIELDS = ("sampler", "steps", "cfg_scale", "seed", "width", "height", "count", "strength", "mask_blur")
# The A1111 1.9 fields (issue 15), under the request's own names. encode_request sends them only when they differ
# from the default, so a plain request still works against a serving app that predates them.
_A1111_FIELDS = (
    "scheduler",
    "clip_skip",
    "vae",
    "hires_scale",
    "hires_resize_x",
    "hires_resize_y",
    "hires_upscaler",
    "hires_steps",
    "hires_strength",
    # Inpaint "Only masked" and "Masked content" (issue 10), carried the same way.
    "inpaint_only_masked",
    "inpaint_padding",
    "masked_content",
)
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}


@dataclass(frozen=True)
class Invocation:
    """A decoded request plus how to answer it: the caller's dialect and an optional per-request S3 output.

    `s3_output_field` is the spelling the caller used for the output location, so errors about it name it.
    """

    request: GenerationRequest
    dialect: Dialect
    s3_output: str | None = None
    s3_output_field: str = "s3_output"
    # A prompt list: (prompt, negative prompt) of each; `request.count` is then N x k (k images per prompt).
    prompts: tuple[tuple[str, str], ...] = ()

    @property
    def per_prompt(self) -> int:
        """k, the images of each prompt (the whole count without a prompt list)."""
        return self.request.count // len(self.prompts) if self.prompts else self.request.count

    def with_resolved_seed(self) -> Invocation:
        """The same invocation with a concrete seed (a prompt list needs one: image j gets seed + j)."""
        return dataclasses.replace(self, request=self.request.with_resolved_seed())

    def requests(self) -> list[GenerationRequest]:
        """The engine requests, in prompt order: prompt i makes images i*k .. i*k+k-1 with seeds seed+i*k, ...

        Without a prompt list, the request itself. With one, call on a resolved invocation.
        """
        if not self.prompts:
            return [self.request]
        if self.request.seed < 0:
            raise RequestError("seed", self.request.seed, "resolve the random seed before splitting a prompt list")
        k = self.per_prompt
        return [
            self.request.replace(prompt=prompt, negative_prompt=negative, count=k, seed=self.request.seed + i * k)
            for i, (prompt, negative) in enumerate(self.prompts)
        ]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _b64decode(field: str, text: str) -> bytes:
    compact = re.sub(r"\s+", "", text)
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, _short(text), "not valid base64") from None
    if not data:
        raise RequestError(field, _short(text), "is empty")
    return data


def open_image(field: str, data: bytes, *, mode: str, max_pixels: int) -> Image.Image:
    """Decode image bytes fully with Pillow, bounded in size; RequestError naming `field` for anything wrong.

    RGB images come back as RGB (an RGBA image would be taken for latents by img2img). Masks (`mode="L"`)
    use the alpha channel when it carries the strokes (editor layers), else luminance; white = repaint.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise RequestError(
                field, f"{width}x{height}", f"is {width}x{height}; input images may have at most {max_pixels} pixels"
            )
        image.load()
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(field, "<image>", f"is too large to decode ({exc})") from None
    except UnidentifiedImageError:
        raise RequestError(field, "<bytes>", "is not an image Pillow can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise RequestError(field, "<image>", f"corrupt image data ({exc})") from None
    if mode == "L":
        if "A" in image.getbands():
            alpha = image.getchannel("A")
            low, high = alpha.getextrema()
            if low != high:  # strokes painted into the alpha channel
                return alpha
        return image.convert("L")
    return image.convert(mode)


def s3_images_disabled(field: str, uri: str) -> RequestError:
    """The refusal for an s3:// image where nothing may read S3."""
    return RequestError(field, uri, "s3:// images are not enabled here (no S3 client configured)")


def url_images_disabled(field: str, url: str) -> RequestError:
    """The refusal for an http(s) image URL on a server that does not fetch URLs (an SSRF risk)."""
    message = "http(s) image URLs are disabled on this server; send base64, a data URL or an s3:// URI"
    return RequestError(field, redact_url(url), message)


def _image_bytes(field: str, value: Any, fetch: Fetch | None) -> bytes:
    if not isinstance(value, str):
        raise RequestError(
            field, _short(value), f"must be a base64 string, data URL or s3:// URI, got {type(value).__name__}"
        )
    text = value.strip()
    lowered = text[:16].lower()
    if lowered.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or not header.lower().endswith(";base64"):
            raise RequestError(field, _short(text), "data URL must be base64-encoded (data:image/png;base64,...)")
        return _b64decode(field, payload)
    if lowered.startswith("s3://"):
        if fetch is None:
            raise s3_images_disabled(field, text)
        return fetch(field, text)
    if lowered.startswith(("http://", "https://")):
        if fetch is None:
            raise url_images_disabled(field, text)
        return fetch(field, text)
    return _b64decode(field, text)


def image_to_base64(image: Image.Image, infotext: str | None = None) -> str:
    """PNG (compress_level 1, with the A1111 infotext chunk when given) as base64 text."""
    return base64.b64encode(_png(image, infotext)).decode("ascii")


def _png(image: Image.Image, infotext: str | None) -> bytes:
    if infotext:
        from studio.imagemeta import png_bytes

        return png_bytes(image, infotext, compress_level=PNG_COMPRESS_LEVEL)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _infotexts(result: GenerationResult) -> list[str]:
    return list(result.infotexts) or [""] * len(result.images)


def encode_pngs(result: GenerationResult) -> list[bytes]:
    """The result's images as PNG bytes, each with its infotext chunk (what is uploaded and what is returned)."""
    return [_png(image, text) for image, text in zip(result.images, _infotexts(result), strict=True)]


def _flatten(payload: dict[str, Any]) -> dict[str, Any]:
    """Merge an HF-style {"inputs": ..., "parameters": {...}} into one flat dict."""
    if "parameters" not in payload:
        return payload
    params = payload["parameters"]
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError("parameters", _short(params), f"must be an object, got {type(params).__name__}")
    clash = set(params) & (set(payload) - {"parameters"})
    if clash:
        name = sorted(clash)[0]
        raise RequestError(name, params[name], "is given both at the top level and inside parameters")
    merged = {k: v for k, v in payload.items() if k != "parameters"}
    merged.update(params)
    return merged


def _collect(payload: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Map each request field to (spelling used, value); reject unknown keys and conflicting aliases."""
    found: dict[str, tuple[str, Any]] = {}
    for key, value in payload.items():
        if key in _IGNORED_KEYS:
            continue
        name = _SPELLING_TO_FIELD.get(key)
        if name is None:
            accepted = ", ".join(sorted(_SPELLING_TO_FIELD))
            raise RequestError(key, _short(value), f"unknown field; accepted fields: {accepted}")
        if name in found and found[name][1] != value:
            first = found[name][0]
            raise RequestError(name, _short(value), f"given twice with different values ({first} and {key})")
        found.setdefault(name, (key, value))
    return found


def _text_fields(fields: dict[str, tuple[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The first prompt and the scalar fields as GenerationRequest keyword arguments (count: per prompt)."""
    kwargs: dict[str, Any] = {"prompt": pairs[0][0], "negative_prompt": pairs[0][1]}
    for name in (*_SCALAR_FIELDS, *_A1111_FIELDS):
        if name in fields and fields[name][1] is not None:
            kwargs[name] = fields[name][1]
    return kwargs


def _s3_output(fields: dict[str, tuple[str, Any]]) -> tuple[str | None, str]:
    """The per-request output location (checked for form only) and the spelling it was given with."""
    if "s3_output" not in fields or fields["s3_output"][1] in (None, ""):
        return None, "s3_output"
    spelling, value = fields["s3_output"]
    if not isinstance(value, str):
        raise RequestError(spelling, _short(value), "must be an s3://bucket/prefix URI")
    parse_s3_uri(value, spelling, need_key=False)
    return value, spelling


def decode_invocation(payload: Any, *, limits: Limits = DEFAULT_LIMITS, fetch: Fetch | None = None) -> Invocation:
    """Decode a request in any dialect into a validated request, its dialect and its S3 output location.

    Raises RequestError naming the field. Width/height default to the input image's size (rounded down to a
    multiple of 8) when an image is given without them, else 512. s3:// and http(s) images are read with
    `fetch`; without it they are refused.
    """
    if not isinstance(payload, dict):
        raise RequestError("body", type(payload).__name__, f"must be a JSON object, got {type(payload).__name__}")
    dialect = detect_dialect(payload)
    fields = _collect(_flatten(payload))
    pairs = prompt_pairs(fields)
    kwargs = _text_fields(fields, pairs)
    for name, mode in (("image", "RGB"), ("mask", "L")):
        if name in fields and fields[name][1] not in (None, ""):
            spelling, value = fields[name]
            data = _image_bytes(spelling, value, fetch)
            kwargs[name] = open_image(spelling, data, mode=mode, max_pixels=limits.max_pixels * INPUT_PIXELS_FACTOR)

    image = kwargs.get("image")
    sized_from_image = image is not None and "width" not in kwargs and "height" not in kwargs
    if sized_from_image:
        kwargs["width"] = max(8, image.width // 8 * 8)
        kwargs["height"] = max(8, image.height // 8 * 8)
    s3_output, s3_output_field = _s3_output(fields)

    try:
        request = GenerationRequest(**kwargs).validate(limits)
    except RequestError as exc:
        if sized_from_image and exc.field in ("width", "height"):
            raise RequestError(
                exc.field,
                exc.value,
                f"{str(exc).split(': ', 1)[1]} (taken from the input image, {image.width}x{image.height}; "
                "give width and height explicitly)",
            ) from None
        raise
    prompts: tuple[tuple[str, str], ...] = ()
    if len(pairs) > 1:
        request, prompts = expand_prompts(request, pairs, fields, limits), tuple(pairs)
    return Invocation(request, dialect, s3_output=s3_output, s3_output_field=s3_output_field, prompts=prompts)


def encode_request(request: GenerationRequest, *, s3_output: str | None = None) -> dict[str, Any]:
    """The native-dialect JSON for a request (what RemoteEngine sends); images as base64 PNG.

    The A1111 1.9 fields (scheduler, clip_skip, vae, hires_*) are sent when they are not the default, so plain
    requests stay readable by a serving app that predates them (it refuses the others, naming the field)."""
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "sampler": request.sampler,
        "steps": request.steps,
        "cfg_scale": request.cfg_scale,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "count": request.count,
        "strength": request.strength,
        "mask_blur": request.mask_blur,
    }
    for name in _A1111_FIELDS:
        value = getattr(request, name)
        if value != _FIELD_DEFAULTS[name]:
            payload[name] = value
    if request.image is not None:
        payload["input_image"] = image_to_base64(request.image)
    if request.mask is not None:
        payload["mask_image"] = image_to_base64(request.mask)
    if s3_output:
        payload["s3_output"] = s3_output
    return payload


def encode_result(
    result: GenerationResult,
    dialect: Dialect,
    *,
    uris: list[str] | None = None,
    pngs: list[bytes] | None = None,
) -> dict[str, Any]:
    """The response JSON for `dialect`.

    `uris`: where the images were written in S3 (by the caller), returned as "result" for Quick Kit, "s3_loc" for
    BYOC, "s3_uris" beside the images otherwise. `pngs`: the images already encoded by `encode_pngs` (for the
    upload), so they are encoded once. The time spent here is added to timings["encode"].
    """
    if not result.images:
        raise EngineError("the engine returned no images")
    started = time.perf_counter()
    if pngs is None and not (uris is not None and dialect in (Dialect.QUICK_KIT, Dialect.BYOC)):
        pngs = encode_pngs(result)
    timings = dict(result.timings)
    timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - started
    meta: dict[str, Any] = {
        "seeds": list(result.seeds),
        "infotexts": _infotexts(result),
        "warnings": list(result.warnings),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "model": result.model,
        "backend": result.backend,
        "task": result.request.task.value,
        "dialect": dialect.value,
    }
    if uris is not None and dialect is Dialect.QUICK_KIT:
        return {"result": list(uris), **meta}
    if uris is not None and dialect is Dialect.BYOC:
        return {"s3_loc": list(uris), **meta}
    images = [base64.b64encode(data).decode("ascii") for data in pngs or []]
    key = "generated_images" if dialect is Dialect.HF_DLC else "images"
    payload = {key: images, **meta}
    if uris is not None:
        payload["s3_uris"] = list(uris)
    return payload


def _response_image_bytes(payload: dict[str, Any], fetch: Fetch | None) -> list[bytes]:
    """The image bytes of a response: inline base64, else the S3 URIs it names (read with `fetch`)."""
    encoded = payload.get("images", payload.get("generated_images"))
    uris = payload.get("result", payload.get("s3_loc", payload.get("s3_uris")))
    if isinstance(encoded, list):
        return [_b64decode(f"images[{i}]", str(item or "")) for i, item in enumerate(encoded)]
    if isinstance(uris, list) and fetch is not None:
        return [fetch(f"result[{i}]", str(uri)) for i, uri in enumerate(uris)]
    if isinstance(uris, list):
        raise EngineError("the response holds only S3 URIs and no S3 client was given to fetch them")
    raise EngineError(f"malformed response: no images (keys: {', '.join(sorted(payload)) or 'none'})")


def decode_result(
    payload: Any, request: GenerationRequest, *, backend: str = "remote", fetch: Fetch | None = None
) -> GenerationResult:
    """Client side: a response (any dialect) back into a GenerationResult for `request` (the request sent).

    An S3-only response is read with `fetch(field, uri)` (e.g. studio.wire.images.S3Reader(client)). Malformed
    responses raise EngineError: they are the server's fault, not the user's.
    """
    if not isinstance(payload, dict):
        raise EngineError(f"malformed response: expected a JSON object, got {type(payload).__name__}")
    if "error" in payload:
        raise EngineError(str(payload["error"]))
    limits_pixels = max(DEFAULT_LIMITS.max_pixels, request.width * request.height) * INPUT_PIXELS_FACTOR
    try:
        datas = _response_image_bytes(payload, fetch)
        images = [open_image(f"images[{i}]", d, mode="RGB", max_pixels=limits_pixels) for i, d in enumerate(datas)]
    except RequestError as exc:
        raise EngineError(f"malformed response: {exc}") from None
    if not images:
        raise EngineError("the server returned no images")

    seeds = payload.get("seeds")
    if seeds is None:
        seeds = request.seeds() if request.seed >= 0 else [-1] * len(images)
    infotexts = payload.get("infotexts") or [""] * len(images)
    if not (isinstance(seeds, list) and len(seeds) == len(images) and len(infotexts) == len(images)):
        raise EngineError(f"malformed response: {len(images)} images but seeds/infotexts do not match")
    resolved = request.replace(seed=seeds[0]) if request.seed == -1 and seeds[0] >= 0 else request
    timings = payload.get("timings") or {}
    return GenerationResult(
        images=images,
        seeds=[int(s) for s in seeds],
        infotexts=[str(t) for t in infotexts],
        request=resolved,
        model=str(payload.get("model", "")),
        backend=backend,
        warnings=[str(w) for w in payload.get("warnings") or []],
        timings={str(k): float(v) for k, v in timings.items() if isinstance(v, (int, float))},
    )
