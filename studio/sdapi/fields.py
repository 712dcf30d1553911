"""The one translation between A1111's `/sdapi/v1/txt2img|img2img` fields and `GenerationRequest`.

`translate()` turns a request body into a validated `Translation`: the studio's request (one batch of
`batch_size` images), how many batches (`n_iter`), the model to use for this request, what to send back, and
warnings for the fields whose value the studio cannot honour exactly. Validation is `GenerationRequest.validate`;
its errors are renamed to the A1111 field the client sent (`names`). Only fields that have no studio counterpart
(`n_iter`, `enable_hr`, `inpainting_fill`, `resize_mode`, ...) are checked here.

A1111's behaviours kept (clients rely on them): unknown fields are ignored (logged once at debug level); a field
sent as null takes its default; `sampler_name` wins over `sampler_index`, and old combined names ("DPM++ 2M
Karras") split; `seed` -1 is random; the defaults are A1111's API defaults (steps 50, sampler Euler, denoising
0.75, `inpaint_full_res` true ...). Values the studio cannot reproduce are refused (422) or accepted with a warning
in the result — never dropped silently.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from studio.models.taesd import TAESD
from studio.sdapi.errors import ApiError, Loc, field_error, invalid
from studio.types import AUTOMATIC, MASKED_CONTENT, GenerationRequest, Limits, RequestError

logger = logging.getLogger(__name__)

TXT2IMG = "txt2img"
IMG2IMG = "img2img"
INPUT_PIXELS_FACTOR = 4  # an input image may be this many times the output pixel limit (it is resized)
HIRES_STRENGTH = 0.7  # A1111's hires fix denoising when the request gives none

# A1111 1.9's request fields and API defaults (what `parameters` echoes back).
COMMON_DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None, "batch_size": 1,
    "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": None, "tiling": None,
    "do_not_save_samples": False, "do_not_save_grid": False, "eta": None, "denoising_strength": None,
    "s_min_uncond": None, "s_churn": None, "s_tmax": None, "s_tmin": None, "s_noise": None,
    "override_settings": None, "override_settings_restore_afterwards": True, "refiner_checkpoint": None,
    "refiner_switch_at": None, "disable_extra_networks": False, "firstpass_image": None, "comments": None,
    "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {}, "infotext": None, "force_task_id": None,
}  # fmt: skip
TXT2IMG_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None,
    "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
    "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "",
}  # fmt: skip
IMG2IMG_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "denoising_strength": 0.75, "init_images": None, "resize_mode": 0, "image_cfg_scale": None, "mask": None,
    "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None, "mask_round": True, "inpainting_fill": 0,
    "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None, "latent_mask": None, "include_init_images": False,
}  # fmt: skip
DEFAULTS = {TXT2IMG: TXT2IMG_DEFAULTS, IMG2IMG: IMG2IMG_DEFAULTS}

# Fields that change nothing at these values; any other value is something the studio cannot do (a warning).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "subseed_strength": (0,), "seed_resize_from_h": (-1, 0), "seed_resize_from_w": (-1, 0),
    "restore_faces": (False,), "tiling": (False,), "styles": ([],), "s_min_uncond": (0,), "s_churn": (0,),
    "s_tmax": (0,), "s_tmin": (0,), "s_noise": (1,), "refiner_checkpoint": ("", "None"),
    "disable_extra_networks": (False,), "firstpass_image": ("",), "initial_noise_multiplier": (1,),
    "latent_mask": ("",), "mask_round": (True,), "hr_checkpoint_name": ("", "Use same checkpoint"),
    "hr_sampler_name": ("", "Use same sampler"), "hr_scheduler": ("", "Use same scheduler"),
    "hr_prompt": ("",), "hr_negative_prompt": ("",), "infotext": ("",),
}  # fmt: skip
_HIRES_ONLY = ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")
# Samplers whose noise A1111 scales by eta (1 by default); DDIM's eta defaults to 0; the others ignore it.
_ETA_ONE = ("Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE")
_RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# override_settings keys this translation applies (others are a warning).
OVERRIDE_KEYS = ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae", "sd_vae_decode_method", "samples_format")
_SD_VAE_NONE = ("None", "Automatic", "")
DECODE_METHODS = ("Full", "TAESD")  # A1111's sd_vae_decode_method: "TAESD" is the studio's "Approx (TAESD)" VAE


def decode_method_vae(key: Any, value: Any, vae: str) -> str:
    """The VAE after A1111's `sd_vae_decode_method` option: "TAESD" chooses TAESD, "Full" undoes that choice."""
    if value not in DECODE_METHODS:
        raise invalid(key, f"must be one of {', '.join(DECODE_METHODS)}", value)
    if value == "TAESD":
        return TAESD
    return AUTOMATIC if vae == TAESD else vae


_seen_unknown: set[str] = set()
_seen_lock = threading.Lock()


@dataclass
class Translation:
    """A validated A1111 request: `request` is one batch (count = batch_size, seed not yet resolved)."""

    kind: str
    request: GenerationRequest
    n_iter: int
    names: dict[str, str | Loc]  # GenerationRequest field -> the A1111 field (path) it came from, for errors
    parameters: dict[str, Any]  # the request echoed back (A1111 fields, defaults filled)
    model: str | None = None  # override_settings.sd_model_checkpoint (a title), None: the current model
    restore: bool = True  # override_settings_restore_afterwards
    persist: dict[str, Any] = field(default_factory=dict)  # options kept after the request (restore false)
    send_images: bool = True
    save_images: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.request.count


@dataclass
class ApiOptions:
    """The options an API request falls back to (A1111's settings of the same names)."""

    clip_skip: int = 1  # CLIP_stop_at_last_layers
    vae: str = AUTOMATIC  # sd_vae


def translate(payload: Any, kind: str, options: ApiOptions, limits: Limits) -> Translation:
    """An A1111 txt2img/img2img body as a validated Translation; ApiError (422) naming the A1111 field."""
    if not isinstance(payload, dict):
        raise invalid((), f"must be a JSON object, got {type(payload).__name__}", _type_name(payload))
    defaults = DEFAULTS[kind]
    _log_unknown(payload, defaults)
    body = {key: (defaults[key] if payload.get(key) is None else payload[key]) for key in defaults}
    warnings: list[str] = []
    names: dict[str, str | Loc] = {
        "count": "batch_size", "strength": "denoising_strength", "hires_strength": "denoising_strength",
        "hires_scale": "hr_scale", "hires_resize_x": "hr_resize_x", "hires_resize_y": "hr_resize_y",
        "hires_upscaler": "hr_upscaler", "hires_steps": "hr_second_pass_steps", "image": "init_images",
        "inpaint_only_masked": "inpaint_full_res", "inpaint_padding": "inpaint_full_res_padding",
        "masked_content": "inpainting_fill", "task": ("override_settings", "sd_model_checkpoint"),
        "clip_skip": "CLIP_stop_at_last_layers", "vae": "sd_vae",
    }  # fmt: skip
    kwargs: dict[str, Any] = {
        key: body[key] for key in ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height")
    }
    kwargs["sampler"], names["sampler"] = _sampler(payload, body)
    kwargs["scheduler"] = body["scheduler"] or AUTOMATIC
    batch_size = _int(body, "batch_size", 1)
    n_iter = _int(body, "n_iter", 1)
    kwargs["count"] = batch_size
    translation = Translation(kind, GenerationRequest(prompt=""), n_iter, names, {})
    _overrides(body, options, kwargs, translation)
    if kind == TXT2IMG:
        _hires(body, kwargs, warnings)
    else:
        _check_size(kwargs, limits, names)  # before any image is resized to it
        _img2img(body, kwargs, warnings, limits)
    _refused(body)
    _warn_unsupported(body, kind, kwargs["sampler"], warnings)
    translation.request = _validated(kwargs, batch_size, n_iter, limits, names)
    translation.send_images = _bool(body, "send_images")
    translation.save_images = _bool(body, "save_images")
    translation.parameters = _echo(body, payload, kind)
    translation.warnings = warnings + translation.warnings
    return translation


def _validated(
    kwargs: dict[str, Any], batch_size: int, n_iter: int, limits: Limits, names: dict[str, str | Loc]
) -> GenerationRequest:
    """The batch request, validated; the whole run (batch_size x n_iter images) is checked against the limits."""
    try:
        request = GenerationRequest(**kwargs).validate(limits)
    except RequestError as exc:
        raise field_error(_with_limit(exc, limits), names) from None
    total = batch_size * n_iter
    if total > limits.max_count:
        name = "batch_size" if batch_size > limits.max_count else "n_iter"
        message = (
            f"batch_size x n_iter = {batch_size} x {n_iter} = {total} images; this studio makes at most "
            f"{limits.max_count} per request (STUDIO_MAX_COUNT)"
        )
        raise invalid(name, message, batch_size if name == "batch_size" else n_iter)
    return request


# The studio's limits that are tighter than A1111's (which has none), and the setting that raises each.
_LIMITS = {
    "steps": ("max_steps", "STUDIO_MAX_STEPS"),
    "hires_steps": ("max_steps", "STUDIO_MAX_STEPS"),
    "count": ("max_count", "STUDIO_MAX_COUNT"),
    "width": ("max_width", "STUDIO_MAX_WIDTH"),
    "height": ("max_height", "STUDIO_MAX_HEIGHT"),
}


def _with_limit(exc: RequestError, limits: Limits) -> RequestError:
    """`exc`, saying which studio setting it hit when a value is over one of the studio's own limits."""
    message = str(exc).removeprefix(f"{exc.field}: ")
    setting = "STUDIO_MAX_PIXELS" if "pixel limit" in message else None
    if setting is None and exc.field in _LIMITS:
        attribute, name = _LIMITS[exc.field]
        over = isinstance(exc.value, int | float) and not isinstance(exc.value, bool)
        setting = name if over and exc.value > getattr(limits, attribute) else None
    if setting is None:
        return exc
    return RequestError(exc.field, exc.value, f"{message} (this studio's limit, set by {setting})")


def _check_size(kwargs: dict[str, Any], limits: Limits, names: dict[str, str | Loc]) -> None:
    try:
        GenerationRequest(prompt="", width=kwargs["width"], height=kwargs["height"]).validate(limits)
    except RequestError as exc:
        raise field_error(_with_limit(exc, limits), names) from None


def _sampler(payload: dict[str, Any], body: dict[str, Any]) -> tuple[Any, str]:
    """(sampler, the field it came from): sampler_name wins over sampler_index (A1111's rule)."""
    if body["sampler_name"] not in (None, ""):
        return body["sampler_name"], "sampler_name"
    if payload.get("sampler_index") not in (None, ""):
        return body["sampler_index"], "sampler_index"
    return COMMON_DEFAULTS["sampler_index"], "sampler_index"


def _overrides(body: dict[str, Any], options: ApiOptions, kwargs: dict[str, Any], translation: Translation) -> None:
    """override_settings (for this request; kept afterwards when override_settings_restore_afterwards is false)
    on top of the API options."""
    overrides = body["override_settings"] or {}
    if not isinstance(overrides, dict):
        raise invalid("override_settings", f"must be an object, got {_type_name(overrides)}", _type_name(overrides))
    translation.restore = _bool(body, "override_settings_restore_afterwards")
    kwargs["clip_skip"], kwargs["vae"] = options.clip_skip, options.vae
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "CLIP_stop_at_last_layers":
            kwargs["clip_skip"] = value
            translation.names["clip_skip"] = ("override_settings", key)
        elif key == "sd_vae":
            kwargs["vae"] = AUTOMATIC if value in _SD_VAE_NONE else value
            translation.names["vae"] = ("override_settings", key)
        elif key == "sd_vae_decode_method":
            kwargs["vae"] = decode_method_vae(("override_settings", key), value, kwargs["vae"])
            translation.names["vae"] = ("override_settings", key)
        elif key == "sd_model_checkpoint":
            if not isinstance(value, str) or not value.strip():
                raise invalid(("override_settings", key), "must be a checkpoint title from /sdapi/v1/sd-models", value)
            translation.model = value.strip()
        elif key == "samples_format":
            if value != "png":
                raise invalid(("override_settings", key), "this studio writes PNG only", value)
        elif key == "forge_additional_modules" and value == []:
            continue
        else:
            translation.warnings.append(f"override_settings.{key} is not supported here and was ignored")
    if not translation.restore:
        translation.persist = {"clip_skip": kwargs["clip_skip"], "vae": kwargs["vae"]}


def _hires(body: dict[str, Any], kwargs: dict[str, Any], warnings: list[str]) -> None:
    """Hires fix from enable_hr and the hr_* fields (ignored without enable_hr, as A1111 does)."""
    if not _bool(body, "enable_hr"):
        return
    resize_x, resize_y = body["hr_resize_x"], body["hr_resize_y"]
    if resize_x or resize_y:
        kwargs["hires_resize_x"], kwargs["hires_resize_y"] = resize_x, resize_y
    else:
        kwargs["hires_scale"] = body["hr_scale"]
        if body["hr_scale"] == 1:
            warnings.append("enable_hr: hr_scale 1 without hr_resize_x/y upscales nothing; no hires pass was run")
    kwargs["hires_upscaler"] = body["hr_upscaler"] or "Latent"
    kwargs["hires_steps"] = body["hr_second_pass_steps"]
    strength = body["denoising_strength"]
    kwargs["hires_strength"] = HIRES_STRENGTH if strength is None else strength


def _img2img(body: dict[str, Any], kwargs: dict[str, Any], warnings: list[str], limits: Limits) -> None:
    """init_images, mask and the inpaint fields."""
    from studio.sdapi import images

    kwargs["strength"] = body["denoising_strength"]
    init_images = body["init_images"]
    if not isinstance(init_images, list) or not init_images:
        raise invalid("init_images", "give one image (base64, with or without a data: prefix)", _type_name(init_images))
    if len(init_images) > 1:
        message = f"got {len(init_images)} images; this studio takes one per request (send one request per image)"
        raise invalid("init_images", message, len(init_images))
    max_pixels = limits.max_pixels * INPUT_PIXELS_FACTOR
    image = decode_image(("init_images", "0"), init_images[0], "RGB", max_pixels)
    resize_mode = _choice(body, "resize_mode", len(_RESIZE_MODES))
    mask = None
    if body["mask"] not in (None, ""):
        mask = decode_image("mask", body["mask"], "L", max_pixels)
        if _int(body, "inpainting_mask_invert", 0) not in (0, 1):
            raise invalid("inpainting_mask_invert", "must be 0 (inpaint masked) or 1 (inpaint not masked)")
        if body["inpainting_mask_invert"]:
            mask = images.invert(mask)
        kwargs["mask"] = mask
        kwargs["mask_blur"] = _mask_blur(body)
        kwargs["inpaint_only_masked"] = _bool(body, "inpaint_full_res")
        kwargs["inpaint_padding"] = body["inpaint_full_res_padding"]
        kwargs["masked_content"] = MASKED_CONTENT[_choice(body, "inpainting_fill", len(MASKED_CONTENT))]
    size = (kwargs["width"], kwargs["height"])
    if not kwargs.get("inpaint_only_masked") and _is_size(size):  # "Only masked" crops the full-size image itself
        image, mask, note = images.resize(image, mask, size, resize_mode)
        if note:
            warnings.append(note)
        if mask is not None:
            kwargs["mask"] = mask
    kwargs["image"] = image


def _mask_blur(body: dict[str, Any]) -> Any:
    """mask_blur (sets both directions), else mask_blur_x/y, which the studio can only blur alike."""
    if body["mask_blur"] is not None:
        return body["mask_blur"]
    blur_x, blur_y = body["mask_blur_x"], body["mask_blur_y"]
    if blur_x != blur_y:
        raise invalid("mask_blur_y", f"differs from mask_blur_x ({blur_x!r}); this studio blurs masks alike in x and y")
    return blur_x


def _refused(body: dict[str, Any]) -> None:
    """Scripts: A1111 answers 422 for a script it does not have; the studio has none."""
    if body["script_name"] not in (None, ""):
        raise invalid("script_name", f"script {body['script_name']!r} not found (this studio runs no scripts)")
    scripts = body["alwayson_scripts"]
    if not isinstance(scripts, dict):
        raise invalid("alwayson_scripts", f"must be an object, got {_type_name(scripts)}")
    if scripts:
        name = next(iter(scripts))
        raise invalid(("alwayson_scripts", str(name)), f"always-on script {name!r} not found (this studio has none)")


def _warn_unsupported(body: dict[str, Any], kind: str, sampler: Any, warnings: list[str]) -> None:
    """Fields at a value the studio cannot reproduce: the image is made, the warning says what was left out."""
    hires = kind == TXT2IMG and bool(body.get("enable_hr"))
    for name, neutral in _NEUTRAL.items():
        if name not in body or (name in _HIRES_ONLY and not hires):
            continue
        value = body[name]
        if value is None or value in neutral or (name == "hr_prompt" and value == body["prompt"]):
            continue
        if name == "hr_negative_prompt" and value == body["negative_prompt"]:
            continue
        if name in ("hr_sampler_name", "hr_scheduler") and value == body.get(name.removeprefix("hr_")):
            continue
        if name == "subseed_strength" or name.startswith("seed_resize"):
            warnings.append(f"{name}: variation seeds are not supported here; images use their seeds alone")
        else:
            warnings.append(f"{name}={_short(value)} is not supported here and was ignored")
    eta = body["eta"]
    canonical = _canonical_sampler(sampler)
    if eta is not None and canonical is not None:
        expected = 1 if canonical in _ETA_ONE else 0 if canonical == "DDIM" else None
        if expected is not None and eta != expected:
            warnings.append(f"eta={_short(eta)}: {canonical} runs with eta {expected} here")


def _canonical_sampler(sampler: Any) -> str | None:
    from studio.samplers import canonical_name

    try:
        return canonical_name(sampler) if isinstance(sampler, str) else None
    except RequestError:
        return None


def _echo(body: dict[str, Any], payload: dict[str, Any], kind: str) -> dict[str, Any]:
    """`parameters`: the request as A1111 echoes it (all its fields; images only with include_init_images)."""
    echoed = {key: payload.get(key, value) for key, value in body.items()}
    if kind == IMG2IMG and not _bool(body, "include_init_images"):
        echoed["init_images"] = None
        echoed["mask"] = None
    return echoed


def image_bytes(loc: str | Loc, value: Any) -> bytes:
    """The bytes of a base64 image (a `data:...;base64,` prefix allowed); 422 naming `loc`."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(loc, "must be a base64-encoded image", _type_name(value))
    text = value.strip()
    if text[:5].lower() == "data:":
        header, _, text = text.partition(",")
        if not header.lower().endswith(";base64"):
            raise invalid(loc, "a data URL must be base64-encoded (data:image/png;base64,...)", header)
    compact = re.sub(r"\s+", "", text)
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(loc, "is not valid base64", value) from None
    if not data:
        raise invalid(loc, "is empty", value)
    return data


def decode_image(loc: str | Loc, value: Any, mode: str, max_pixels: int) -> Any:
    """A base64 image as a PIL image in `mode` (masks: "L", strokes in an alpha channel count); 422 naming `loc`."""
    from studio.wire.codec import open_image

    label = loc if isinstance(loc, str) else ".".join(loc)
    data = image_bytes(loc, value)
    try:
        return open_image(label, data, mode=mode, max_pixels=max_pixels)
    except RequestError as exc:
        raise invalid(loc, str(exc).removeprefix(f"{label}: "), exc.value) from None


def _int(body: dict[str, Any], name: str, minimum: int) -> int:
    value = body[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"must be a whole number, got {_short(value)}", value)
    if value < minimum:
        raise invalid(name, f"must be at least {minimum}, got {value}", value)
    return value


def _choice(body: dict[str, Any], name: str, count: int) -> int:
    value = _int(body, name, 0)
    if value >= count:
        raise invalid(name, f"must be between 0 and {count - 1}, got {value}", value)
    return value


def _bool(body: dict[str, Any], name: str) -> bool:
    """A1111's booleans: true/false, and 0/1 as its pydantic models accept them."""
    value = body[name]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise invalid(name, f"must be true or false, got {_short(value)}", value)


def _is_size(size: tuple[Any, Any]) -> bool:
    return all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _log_unknown(payload: dict[str, Any], known: dict[str, Any]) -> None:
    """Fields A1111 would not know either are ignored, as it does; each name is logged once (debug)."""
    for key in payload:
        if key in known:
            continue
        with _seen_lock:
            if key in _seen_unknown:
                continue
            _seen_unknown.add(key)
        logger.debug("sdapi: ignoring unknown field %r (A1111 ignores it too)", _short(key))


def unknown_fields_logged() -> frozenset[str]:
    """The unknown field names logged so far (for tests)."""
    with _seen_lock:
        return frozenset(_seen_unknown)


__all__ = ["ApiError", "ApiOptions", "Translation", "decode_image", "image_bytes", "translate"]
