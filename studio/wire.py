"""The one JSON codec for generation requests and results, used by the serving app and the remote client.

Server side, `decode_request` / `decode_invocation` accept every request dialect of the AWS samples and turn it
into one validated `GenerationRequest`; `encode_result` answers in the caller's dialect. Client side,
`encode_request` / `decode_result` speak the native dialect. Both sides import this module, and the tests
round-trip through it, so client and server cannot drift apart.

Dialects (see ../shared/FACTS.md):
- native / Quick Kit: prompt, negative_prompt, steps, sampler, seed, width, height, count, cfg_scale
  (alias guidance_scale), input_image, mask_image, strength, mask_blur, s3_output (aliases output_location,
  output_s3uri) -> {"images": [base64 PNG], "seeds", "infotexts", ...}; a Quick Kit request with an S3 output
  location -> {"result": ["s3://..."], ...}.
- HF-DLC notebook: prompt (str or list) or inputs, num_images_per_prompt, num_inference_steps, guidance_scale,
  optional "parameters" object -> {"generated_images": [base64 PNG], ...}.
- BYOC: results, num_inference_steps, guidance_scale, img, mask, strength -> {"s3_loc": [...]} with S3 output.

Images in: base64, data URL, s3:// (with an injected S3 client) and http(s) only when allowed. Only Pillow
is imported (lazily); boto3 and requests are never imported here unless an s3:// or http(s) image arrives.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from studio.engine import EngineError
from studio.samplers import canonical_name
from studio.types import DEFAULT_LIMITS, GenerationRequest, GenerationResult, Limits, RequestError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

# Bytes accepted for one image fetched from S3 or a URL (inline images are bounded by the body limit).
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# An input image may be larger than the output (it is resized), but not absurdly: this many times max_pixels.
INPUT_PIXELS_FACTOR = 4
PNG_COMPRESS_LEVEL = 1  # A1111's default: fast to write; images are encoded exactly once per response


class Dialect(StrEnum):
    """Which request convention a payload follows; decides the shape of the response."""

    NATIVE = "native"
    QUICK_KIT = "quick_kit"
    HF_DLC = "hf_dlc"
    BYOC = "byoc"


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
    "image": ("input_image", "image", "init_image", "img"),
    "mask": ("mask_image", "mask"),
    "s3_output": ("s3_output", "output_location", "output_s3uri"),
}
_SPELLING_TO_FIELD = {spelling: name for name, spellings in _ALIASES.items() for spelling in spellings}
# Keys sent by the samples that carry nothing we use; accepted and ignored rather than rejected.
_IGNORED_KEYS = frozenset({"dialect", "infer_args"})
_BYOC_KEYS = frozenset({"results", "img", "mask"})
_HF_KEYS = frozenset({"num_images_per_prompt", "num_inference_steps", "inputs", "parameters"})
_QUICK_KIT_KEYS = frozenset(
    {"prompt", "negative_prompt", "steps", "sampler", "seed", "height", "width", "count", "input_image"}
    | {"output_s3uri", "infer_args"}
)


@dataclass(frozen=True)
class Invocation:
    """A decoded request plus how to answer it: the caller's dialect and an optional per-request S3 output."""

    request: GenerationRequest
    dialect: Dialect
    s3_output: str | None = None


@dataclass
class S3Output:
    """Where encode_result writes images: an s3://bucket/prefix URI and the boto3 S3 client to write with."""

    uri: str
    client: Any


S3ClientSource = Any | Callable[[], Any] | None  # a boto3 S3 client, or a factory called only when needed


# ---- small helpers --------------------------------------------------------------------------------------------
def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact_url(url: str) -> str:
    """A URL safe for messages and logs: no user:password@ (even with a '/' in the password), no query or fragment
    (they may carry tokens such as X-Amz-Security-Token)."""
    from urllib.parse import urlsplit, urlunsplit

    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(.*)$", url or "", flags=re.DOTALL)
    if not match:
        return url.split("?", 1)[0].split("#", 1)[0] if url else url
    scheme, rest = match.groups()
    rest = rest.rsplit("@", 1)[-1]  # credentials end at the last '@' before the host
    parts = urlsplit(scheme + rest)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def parse_s3_uri(uri: str, field: str = "s3_uri", *, need_key: bool = True) -> tuple[str, str]:
    """Split s3://bucket/key into (bucket, key); RequestError naming `field` when malformed."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", uri or "", flags=re.DOTALL)
    if not match:
        raise RequestError(field, _short(uri), f"not a valid s3:// URI: {_short(uri)}")
    bucket, key = match.group(1), match.group(2) or ""
    if need_key and not key:
        raise RequestError(field, _short(uri), f"{uri} names a bucket but no object key")
    return bucket, key


def _resolve_client(source: S3ClientSource) -> Any:
    if source is None:
        return None
    if hasattr(source, "get_object"):
        return source
    return source()  # a factory


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__
    return type(exc).__name__


# ---- images ---------------------------------------------------------------------------------------------------
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


def _read_s3(field: str, uri: str, s3_client: S3ClientSource) -> bytes:
    bucket, key = parse_s3_uri(uri, field)
    client = _resolve_client(s3_client)
    if client is None:
        raise RequestError(field, uri, "s3:// images are not enabled here (no S3 client configured)")
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        size = obj.get("ContentLength")
        if size is not None and size > MAX_IMAGE_BYTES:
            raise RequestError(field, uri, f"{uri} is {size} bytes; the limit is {MAX_IMAGE_BYTES}")
        data = obj["Body"].read(MAX_IMAGE_BYTES + 1)
    except RequestError:
        raise
    except Exception as exc:  # botocore ClientError / connection errors, kept free of credentials
        code = _client_error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
            raise RequestError(field, uri, f"{uri} does not exist ({code})") from None
        if code in ("AccessDenied", "403", "Forbidden"):
            raise RequestError(field, uri, f"access to {uri} is denied ({code})") from None
        raise RequestError(field, uri, f"could not read {uri}: {code}: {exc}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestError(field, uri, f"{uri} is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def _read_url(field: str, url: str) -> bytes:
    import requests

    shown = redact_url(url)
    try:
        with requests.get(url, timeout=(5, 30), stream=True) as response:
            if response.status_code != 200:
                raise RequestError(field, shown, f"downloading {shown} failed with HTTP {response.status_code}")
            chunks, total = [], 0
            for chunk in response.iter_content(1 << 16):
                total += len(chunk)
                if total > MAX_IMAGE_BYTES:
                    raise RequestError(field, shown, f"{shown} is larger than {MAX_IMAGE_BYTES} bytes")
                chunks.append(chunk)
    except RequestError:
        raise
    except requests.RequestException as exc:
        raise RequestError(field, shown, f"could not download {shown}: {type(exc).__name__}") from None
    return b"".join(chunks)


def _image_bytes(field: str, value: Any, *, allow_urls: bool, s3_client: S3ClientSource) -> bytes:
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
        return _read_s3(field, text, s3_client)
    if lowered.startswith(("http://", "https://")):
        if not allow_urls:
            raise RequestError(
                field,
                redact_url(text),
                "http(s) image URLs are disabled on this server; send base64, a data URL or an s3:// URI",
            )
        return _read_url(field, text)
    return _b64decode(field, text)


def _decode_image(
    field: str, value: Any, *, mode: str, allow_urls: bool, s3_client: S3ClientSource, limits: Limits
) -> Image.Image:
    data = _image_bytes(field, value, allow_urls=allow_urls, s3_client=s3_client)
    return open_image(field, data, mode=mode, max_pixels=limits.max_pixels * INPUT_PIXELS_FACTOR)


def image_to_base64(image: Image.Image, infotext: str | None = None) -> str:
    """PNG (compress_level 1, with the A1111 infotext chunk when given) as base64 text."""
    return base64.b64encode(_png(image, infotext)).decode("ascii")


def _png(image: Image.Image, infotext: str | None) -> bytes:
    if infotext:
        from studio.metadata import png_bytes

        return png_bytes(image, infotext, compress_level=PNG_COMPRESS_LEVEL)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


# ---- requests -------------------------------------------------------------------------------------------------
def detect_dialect(payload: dict[str, Any]) -> Dialect:
    """Which sample's convention a payload follows (an explicit "dialect" key wins)."""
    explicit = payload.get("dialect")
    if explicit is not None:
        try:
            return Dialect(explicit)
        except ValueError:
            valid = ", ".join(d.value for d in Dialect)
            message = f"unknown dialect {_short(explicit)}; use {valid}"
            raise RequestError("dialect", _short(explicit), message) from None
    keys = set(payload)
    if keys & _BYOC_KEYS:
        return Dialect.BYOC
    if keys & _HF_KEYS or isinstance(payload.get("prompt"), list):
        return Dialect.HF_DLC
    if "output_s3uri" in keys or "infer_args" in keys:
        return Dialect.QUICK_KIT
    if keys <= _QUICK_KIT_KEYS and keys - {"prompt", "negative_prompt"}:
        return Dialect.QUICK_KIT
    return Dialect.NATIVE


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


def _prompt_and_multiplier(field: str, value: Any) -> tuple[str, int]:
    """A prompt may be a list (HF-DLC): identical entries multiply the image count; different ones are refused."""
    if value is None:
        return "", 1
    if isinstance(value, str):
        return value, 1
    if isinstance(value, list):
        if not value:
            raise RequestError(field, value, "is an empty list")
        if not all(isinstance(item, str) for item in value):
            raise RequestError(field, _short(value), "must be text or a list of text")
        if len(set(value)) > 1:
            raise RequestError(
                field, _short(value), "a list of different prompts is not supported; send one request per prompt"
            )
        return value[0], len(value)
    raise RequestError(field, _short(value), f"must be text, got {type(value).__name__}")


def decode_invocation(
    payload: Any,
    *,
    allow_urls: bool = False,
    s3_client: S3ClientSource = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Invocation:
    """Decode a request in any dialect into a validated request, its dialect and its S3 output location.

    Raises RequestError naming the field. Width/height default to the input image's size (rounded down to a
    multiple of 8) when an image is given without them, else 512.
    """
    if not isinstance(payload, dict):
        raise RequestError("body", type(payload).__name__, f"must be a JSON object, got {type(payload).__name__}")
    dialect = detect_dialect(payload)
    fields = _collect(_flatten(payload))

    if "prompt" not in fields or fields["prompt"][1] is None:
        raise RequestError("prompt", None, "is required")
    prompt, prompt_copies = _prompt_and_multiplier("prompt", fields["prompt"][1])
    negative, negative_copies = _prompt_and_multiplier("negative_prompt", fields.get("negative_prompt", ("", ""))[1])
    if negative_copies > 1 and prompt_copies not in (1, negative_copies):
        raise RequestError("negative_prompt", negative_copies, "list length does not match the prompt list")

    kwargs: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}
    for name in ("sampler", "steps", "cfg_scale", "seed", "width", "height", "count", "strength", "mask_blur"):
        if name in fields and fields[name][1] is not None:
            kwargs[name] = fields[name][1]
    if prompt_copies > 1:
        count = kwargs.get("count", 1)
        if isinstance(count, int) and not isinstance(count, bool):
            kwargs["count"] = count * prompt_copies

    for name, mode in (("image", "RGB"), ("mask", "L")):
        if name in fields and fields[name][1] not in (None, ""):
            spelling, value = fields[name]
            kwargs[name] = _decode_image(
                spelling, value, mode=mode, allow_urls=allow_urls, s3_client=s3_client, limits=limits
            )

    sized_from_image = False
    image = kwargs.get("image")
    if image is not None and "width" not in kwargs and "height" not in kwargs:
        kwargs["width"] = max(8, image.width // 8 * 8)
        kwargs["height"] = max(8, image.height // 8 * 8)
        sized_from_image = True

    s3_output = None
    if "s3_output" in fields and fields["s3_output"][1] not in (None, ""):
        spelling, value = fields["s3_output"]
        if not isinstance(value, str):
            raise RequestError(spelling, _short(value), "must be an s3://bucket/prefix URI")
        parse_s3_uri(value, spelling, need_key=False)
        s3_output = value

    request = GenerationRequest(**kwargs)
    try:
        request = request.validate(limits, samplers=canonical_name)
    except RequestError as exc:
        if sized_from_image and exc.field in ("width", "height"):
            raise RequestError(
                exc.field,
                exc.value,
                f"{str(exc).split(': ', 1)[1]} (taken from the input image, {image.width}x{image.height}; "
                "give width and height explicitly)",
            ) from None
        raise
    return Invocation(request=request, dialect=dialect, s3_output=s3_output)


def decode_request(
    payload: Any,
    *,
    allow_urls: bool = False,
    s3_client: S3ClientSource = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[GenerationRequest, Dialect]:
    """Decode a request in any dialect into (validated GenerationRequest, Dialect); RequestError names the field."""
    invocation = decode_invocation(payload, allow_urls=allow_urls, s3_client=s3_client, limits=limits)
    return invocation.request, invocation.dialect


def encode_request(request: GenerationRequest, *, s3_output: str | None = None) -> dict[str, Any]:
    """The native-dialect JSON for a request (what RemoteEngine sends); images as base64 PNG."""
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
    if request.image is not None:
        payload["input_image"] = image_to_base64(request.image)
    if request.mask is not None:
        payload["mask_image"] = image_to_base64(request.mask)
    if s3_output:
        payload["s3_output"] = s3_output
    return payload


# ---- results --------------------------------------------------------------------------------------------------
def _upload(pngs: list[bytes], seeds: list[int], output: S3Output) -> list[str]:
    bucket, prefix = parse_s3_uri(output.uri, "s3_output", need_key=False)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    run = uuid.uuid4().hex[:12]
    uris = []
    for index, (data, seed) in enumerate(zip(pngs, seeds, strict=True)):
        key = f"{prefix}{run}-{index}-{seed}.png"
        try:
            output.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        except Exception as exc:
            code = _client_error_code(exc)
            raise EngineError(f"s3_output: could not write s3://{bucket}/{key}: {code}") from None
        uris.append(f"s3://{bucket}/{key}")
    return uris


def encode_result(result: GenerationResult, dialect: Dialect, s3_output: S3Output | None = None) -> dict[str, Any]:
    """The response JSON for `dialect`. PNGs (with infotext) are encoded once; with `s3_output` they are also
    written to S3 and their URIs returned ("result" for Quick Kit, "s3_loc" for BYOC, "s3_uris" otherwise).
    """
    if not result.images:
        raise EngineError("the engine returned no images")
    started = time.perf_counter()
    infotexts = list(result.infotexts) or [""] * len(result.images)
    pngs = [_png(image, text) for image, text in zip(result.images, infotexts, strict=True)]
    uris = _upload(pngs, list(result.seeds), s3_output) if s3_output is not None else None
    timings = dict(result.timings)
    timings["encode"] = time.perf_counter() - started
    meta: dict[str, Any] = {
        "seeds": list(result.seeds),
        "infotexts": infotexts,
        "warnings": list(result.warnings),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "model": result.model,
        "backend": result.backend,
        "task": result.request.task.value,
    }
    if uris is not None and dialect is Dialect.QUICK_KIT:
        return {"result": uris, **meta}
    if uris is not None and dialect is Dialect.BYOC:
        return {"s3_loc": uris, **meta}
    images = [base64.b64encode(data).decode("ascii") for data in pngs]
    key = "generated_images" if dialect is Dialect.HF_DLC else "images"
    payload = {key: images, **meta}
    if uris is not None:
        payload["s3_uris"] = uris
    return payload


def decode_result(
    payload: Any, request: GenerationRequest, *, backend: str = "remote", s3_client: S3ClientSource = None
) -> GenerationResult:
    """Client side: a response (any dialect) back into a GenerationResult for `request` (the request sent).

    Malformed responses raise EngineError: they are the server's fault, not the user's.
    """
    if not isinstance(payload, dict):
        raise EngineError(f"malformed response: expected a JSON object, got {type(payload).__name__}")
    if "error" in payload:
        raise EngineError(str(payload["error"]))
    limits_pixels = max(DEFAULT_LIMITS.max_pixels, request.width * request.height) * INPUT_PIXELS_FACTOR
    encoded = payload.get("images", payload.get("generated_images"))
    uris = payload.get("result", payload.get("s3_loc", payload.get("s3_uris")))
    try:
        if isinstance(encoded, list):
            datas = [_b64decode(f"images[{i}]", str(item or "")) for i, item in enumerate(encoded)]
        elif isinstance(uris, list) and s3_client is not None:
            datas = [_read_s3(f"result[{i}]", uri, s3_client) for i, uri in enumerate(uris)]
        elif isinstance(uris, list):
            raise EngineError("the response holds only S3 URIs and no S3 client was given to fetch them")
        else:
            raise EngineError(f"malformed response: no images (keys: {', '.join(sorted(payload)) or 'none'})")
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
