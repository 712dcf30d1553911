"""A1111-compatible `parameters` infotext: format it, parse it back, and carry it inside image files.

The text format is AUTOMATIC1111's (1.9), so images made here paste into A1111 (and its PNG Info tab reads them),
and A1111's own images load here:

    a prompt, possibly <lora:name:0.8>
    on several lines
    Negative prompt: the negative prompt (line only present when non-empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, Model hash: abc,
    Model: name, VAE hash: 735e4c3a44, VAE: vae.safetensors, Denoising strength: 0.5, Clip skip: 2,
    Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Lora hashes: "name: 0123456789ab", Version: ...

(the key-value line is one line). Keys whose value is the default are left out, as A1111 does: Schedule type
"Automatic", Clip skip 1, VAE "Automatic", the hires keys without hires fix. Values containing `,` `:` `"` or a
newline are written as JSON strings (A1111's `quote()`), so the single key-value line stays parseable. PNGs carry
the text in a tEXt/iTXt chunk named "parameters"; A1111's JPEG/WebP files carry it in the EXIF UserComment, which
studio.imagemeta reads and writes them.

Reading back: `parse_infotext` gives the keys under snake_case names with their types; `request_fields` turns that
into request-ready fields under GenerationRequest's own names (plus `loras` and every other key), and
`request_from_fields` into a GenerationRequest.

Only Pillow is needed here (imported lazily): this module imports fast and never touches torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from studio import __version__
from studio.types import AUTOMATIC, GenerationRequest, RequestError, Task

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

NEGATIVE_PREFIX = "Negative prompt:"

# A1111's re_param, with the key length bounded: unbounded, a long comma- and colon-free line makes
# findall quadratic (32k characters took 8 s). Real keys are short ("Cache FP16 weight for LoRA").
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]{1,99}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_KEY = re.compile(r"\w[\w \-/]{1,99}")
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
# A1111 needs at least this many key-value pairs on the last line to treat it as the params line.
_MIN_PARAMS = 3
# The params line is regex-scanned; beyond this length it is garbage, not an infotext (keeps parsing fast).
_MAX_PARAMS_LINE = 65_536

# Known infotext keys -> (snake_case name, converter). Anything else is kept under its original key. The names
# of request fields are GenerationRequest's own; "Size" and "Hires resize" (WxH) are split into two fields.
_KNOWN_KEYS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Image CFG scale": ("image_cfg_scale", float),
    "Seed": ("seed", int),
    "Model hash": ("model_hash", str),
    "Model": ("model", str),
    "VAE hash": ("vae_hash", str),
    "VAE": ("vae", str),
    "Denoising strength": ("denoising_strength", float),
    "Mask blur": ("mask_blur", int),
    "Clip skip": ("clip_skip", int),
    "Hires upscale": ("hires_scale", float),
    "Hires steps": ("hires_steps", int),
    "Hires upscaler": ("hires_upscaler", str),
    "Lora hashes": ("lora_hashes", str),
    "Variation seed": ("variation_seed", int),
    "Variation seed strength": ("variation_seed_strength", float),
    "Backend": ("backend", str),
}
_SIZE_KEYS = {"Size": ("width", "height"), "Hires resize": ("hires_resize_x", "hires_resize_y")}

# What request_fields takes from parsed params, with the type each must have.
_REQUEST_TYPES: dict[str, type] = {
    "prompt": str,
    "negative_prompt": str,
    "sampler": str,
    "scheduler": str,
    "steps": int,
    "cfg_scale": float,
    "seed": int,
    "width": int,
    "height": int,
    "clip_skip": int,
    "vae": str,
    "hires_scale": float,
    "hires_resize_x": int,
    "hires_resize_y": int,
    "hires_steps": int,
    "hires_upscaler": str,
    "mask_blur": int,
}
HIRES_FIELDS = ("hires_scale", "hires_resize_x", "hires_resize_y", "hires_steps", "hires_upscaler", "hires_strength")
# Request fields an infotext leaves out when they have their default value (so absent means the default): a tool
# that restores every field of an infotext (PNG Info -> Text to image) resets these when they are missing.
OMITTED_AT_DEFAULT = ("scheduler", "clip_skip", "vae", *HIRES_FIELDS)



# ---------------------------------------------------------------------------------------------------------------
# Formatting


def _format_number(value: float) -> str:
    """A1111 style: 7.0 -> "7", 7.5 -> "7.5" (shortest exact repr, never rounded)."""
    if value.is_integer():
        return str(int(value))
    return repr(value)


def quote(value: str) -> str:
    """Quote a value the way A1111 does (JSON string) when it would otherwise break the key-value line.

    A1111 quotes on `,` `:` and newlines; we also quote on `"` and on surrounding whitespace, which A1111's
    `unquote()` reads back the same way, so that every value round-trips exactly.
    """
    if any(ch in value for ch in ',:"\n\r') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def unquote(value: str) -> str:
    """Inverse of `quote`: a JSON-quoted value is decoded; anything else (or broken JSON) is returned as is."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = _format_number(value)
    else:
        text = str(value)
    return quote(text)


def format_lora_hashes(lora_hashes: Mapping[str, str]) -> str:
    """A1111's "Lora hashes" value: "name: hash, name: hash". Like A1111, `:` and `,` are dropped from names so
    the list reads back unambiguously (`parse_lora_hashes`)."""
    return ", ".join(
        f"{name.replace(':', '').replace(',', '').strip()}: {digest}" for name, digest in lora_hashes.items()
    )


def parse_lora_hashes(text: str) -> dict[str, str]:
    """{name: hash} from a "Lora hashes" value; entries without a `name: hash` shape are skipped."""
    hashes: dict[str, str] = {}
    for entry in text.split(","):
        name, sep, digest = entry.rpartition(":")
        if sep and name.strip() and digest.strip():
            hashes[name.strip()] = digest.strip()
    return hashes


def _sampler_pair(request: GenerationRequest) -> tuple[str, str]:
    """(sampler, schedule type) as A1111 1.9 writes them; an unvalidated request's old combined name is split."""
    from studio.samplers import normalize

    try:
        return normalize(request.sampler, request.scheduler)
    except RequestError:
        return request.sampler, request.scheduler


def _hires_params(request: GenerationRequest) -> dict[str, object]:
    """The hires fix keys, in A1111's order (only for a text-to-image request with hires fix on)."""
    if request.task is not Task.TXT2IMG or not request.hires:
        return {}
    params: dict[str, object] = {}
    if request.hires_resize_x or request.hires_resize_y:
        params["Hires resize"] = f"{request.hires_resize_x}x{request.hires_resize_y}"
    else:
        params["Hires upscale"] = float(request.hires_scale)
    if request.hires_steps:
        params["Hires steps"] = request.hires_steps
    params["Hires upscaler"] = request.hires_upscaler
    return params


def format_infotext(
    request: GenerationRequest,
    seed: int,
    *,
    model: str = "",
    model_hash: str = "",
    vae: str = "",
    vae_hash: str = "",
    lora_hashes: Mapping[str, str] | None = None,
    backend: str | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The A1111 infotext for one image of `request`, made with `seed`.

    What the request cannot know comes from the engine: `model`/`model_hash`; `vae` (the VAE file's name as it was
    used, default `request.vae` unless "Automatic") and `vae_hash` (A1111's 10-hex "VAE hash"); `lora_hashes`
    {name: A1111 short hash} of the LoRAs that were applied (written as `Lora hashes: "a: 1234567890ab, b: ..."`).
    Keys follow A1111's order and are left out at their defaults: `Schedule type` unless Automatic, `Clip skip` when
    > 1, `Denoising strength` for img2img/inpaint (`strength`) and for hires fix (`hires_strength`), `Mask blur` for
    inpaint, the `Hires ...` keys with hires fix, `Backend` for a non-local backend. `extra` keys come next (a value
    of None is skipped; a standard key in `extra` replaces the standard value in place), then `Version`.
    Raises ValueError for an `extra` key that A1111's parser could not read back.
    """
    sampler, scheduler = _sampler_pair(request)
    params: dict[str, object] = {"Steps": request.steps, "Sampler": sampler}
    if scheduler != AUTOMATIC:
        params["Schedule type"] = scheduler
    params.update({"CFG scale": float(request.cfg_scale), "Seed": seed, "Size": f"{request.width}x{request.height}"})
    if model_hash:
        params["Model hash"] = model_hash
    if model:
        params["Model"] = model
    vae_name = vae or (request.vae if request.vae != AUTOMATIC else "")
    if vae_name and vae_hash:
        params["VAE hash"] = vae_hash
    if vae_name:
        params["VAE"] = vae_name
    task = request.task
    if task in (Task.IMG2IMG, Task.INPAINT):
        params["Denoising strength"] = float(request.strength)
    elif request.hires:
        params["Denoising strength"] = float(request.hires_strength)
    if request.clip_skip > 1:
        params["Clip skip"] = request.clip_skip
    if task is Task.INPAINT:
        params["Mask blur"] = request.mask_blur
    params.update(_hires_params(request))
    if lora_hashes:
        params["Lora hashes"] = format_lora_hashes(lora_hashes)
    if backend and backend != "local":
        params["Backend"] = backend
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not _RE_KEY.fullmatch(key):
            raise ValueError(f"infotext key {key!r} is not readable by A1111's parser (letters, digits, ' -/' only)")
        params[key] = value
    params.setdefault("Version", f"sd-studio {__version__}")

    params_line = ", ".join(f"{key}: {_format_value(value)}" for key, value in params.items() if value is not None)
    prompt = request.prompt.replace("\r\n", "\n")
    negative = request.negative_prompt.replace("\r\n", "\n")
    negative_text = f"\n{NEGATIVE_PREFIX} {negative}" if negative.strip() else ""
    return f"{prompt}{negative_text}\n{params_line}".strip()


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = float(text)  # "20.0" from some writers
        if not number.is_integer():
            raise
        return int(number)


def _convert(key: str, raw: str, result: dict[str, Any]) -> None:
    """Store one key-value pair: known keys converted under their snake_case name, others kept verbatim."""
    if key in _SIZE_KEYS:
        match = _RE_SIZE.match(raw)
        if match:
            first, second = _SIZE_KEYS[key]
            result[first], result[second] = int(match.group(1)), int(match.group(2))
            return
        result[key] = raw
        return
    known = _KNOWN_KEYS.get(key)
    if known is None:
        result[key] = raw
        return
    name, kind = known
    try:
        if kind is int:
            result[name] = _to_int(raw)
        elif kind is float:
            result[name] = float(raw)
        else:
            result[name] = raw
    except (ValueError, OverflowError):
        logger.debug("infotext value %s=%r is not a %s; kept as text", key, raw, kind.__name__)
        result[key] = raw


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse an A1111 (or our) infotext into a dict; never raises.

    Known keys get snake_case names (the request's own where they are request fields) and types: steps, seed,
    width/height ("Size"), clip_skip, mask_blur, hires_steps, hires_resize_x/y ("Hires resize") are ints;
    cfg_scale, denoising_strength, hires_scale floats; sampler, scheduler ("Schedule type"), vae, vae_hash,
    hires_upscaler, lora_hashes, model, model_hash text. A value that does not convert stays under its original key
    as text ("Steps": "many"); unknown keys keep their name and text value ("ENSD": "31337").
    Sampler and schedule type are kept apart and canonical (studio.samplers.normalize): A1111 >= 1.9 writes
    "Sampler: DPM++ 2M, Schedule type: Karras"; an older "Sampler: DPM++ 2M Karras" gives the same pair. A sampler
    the registry does not know is kept as written (the request's validation then names it).
    Text without a params line gives only prompt and negative_prompt; empty or non-text input gives {}.
    """
    if not isinstance(text, str):
        return {}
    try:
        return _parse(text)
    except Exception:  # a parse of user-supplied text must never take the caller down
        logger.warning(
            "could not parse infotext (%d characters); returning the text as prompt", len(text), exc_info=True
        )
        return {"prompt": text.strip(), "negative_prompt": ""}


def _parse(text: str) -> dict[str, Any]:
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return {}
    *lines, last_line = text.split("\n")
    pairs: list[tuple[str, str]] = []
    if len(last_line) <= _MAX_PARAMS_LINE:
        pairs = _RE_PARAM.findall(last_line)
    if len(pairs) < _MIN_PARAMS:
        lines.append(last_line)
        pairs = []

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)

    result: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    for key, raw in pairs:
        _convert(key.strip(), unquote(raw.strip()), result)
    _split_sampler(result)
    return result


def _split_sampler(result: dict[str, Any]) -> None:
    """Canonical, separate sampler and scheduler, when the registry knows them (else left as written)."""
    from studio.samplers import normalize

    sampler = result.get("sampler")
    if not isinstance(sampler, str):
        return
    scheduler = result.get("scheduler", AUTOMATIC)
    try:
        result["sampler"], result["scheduler"] = normalize(sampler, scheduler if isinstance(scheduler, str) else "")
    except RequestError as err:
        logger.debug("infotext sampler %r / schedule type %r kept as written: %s", sampler, scheduler, err)


def prompt_loras(prompt: str) -> dict[str, float]:
    """{name: weight} of the `<lora:name:weight>` tags in a prompt, read by studio.prompts.extract_loras (a name
    tagged twice has its weights added, as A1111 applies both). Raises RequestError("prompt") for a malformed tag."""
    from studio.prompts import extract_loras

    _, tags = extract_loras(prompt)
    return {tag.name: tag.weight for tag in tags}


def _has_hires(params: Mapping[str, Any]) -> bool:
    """Whether the infotext describes a hires fix run (any hires key, even one whose value did not convert)."""
    return any(isinstance(key, str) and key.lower().startswith("hires") for key in params)


def _typed(value: Any, kind: type) -> Any:
    """`value` when it has type `kind` (an int is a float too; a bool is neither), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, kind):
        return value
    if kind is float and isinstance(value, int):
        return float(value)
    return None


def request_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Request-ready fields from parsed params (`parse_infotext`), under GenerationRequest's own names.

    prompt, negative_prompt, sampler, scheduler, steps, cfg_scale, seed, width, height, clip_skip, vae, hires_scale,
    hires_resize_x/y, hires_steps, hires_upscaler, mask_blur — those present with a usable type (a request field
    of the wrong type is left out). "Denoising strength" becomes `hires_strength` when the infotext has hires keys,
    else `strength`. `loras` is {name: weight} read from the prompt's `<lora:...>` tags (`prompt_loras`; the prompt
    keeps its tags: they are how LoRAs are applied; left out when a tag is malformed). Every other key is kept under
    its own name (model, model_hash, vae_hash, lora_hashes, "ENSD", "Version", ...). Nothing is validated:
    `request_from_fields(fields).validate()` reports out-of-range values instead of clamping them.
    """
    fields: dict[str, Any] = {}
    for name, kind in _REQUEST_TYPES.items():
        value = _typed(params.get(name), kind)
        if value is not None:
            fields[name] = value
    strength = _typed(params.get("denoising_strength"), float)
    if strength is not None:
        fields["hires_strength" if _has_hires(params) else "strength"] = strength
    if isinstance(fields.get("prompt"), str):
        try:
            fields["loras"] = prompt_loras(fields["prompt"])
        except RequestError as err:  # the request's validation names it when the prompt is used
            logger.info("infotext prompt has a malformed LoRA tag, so no loras: %s", err)
    for key, value in params.items():
        if key not in _REQUEST_TYPES and key != "denoising_strength" and key not in fields:
            fields[key] = value
    return fields


_REQUEST_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationRequest)) - {"image", "mask"}


def request_from_fields(fields: Mapping[str, Any], **changes: Any) -> GenerationRequest:
    """A GenerationRequest (not validated) from `request_fields` output: its request fields, plus `changes`
    (e.g. an input image); `loras` and the other keys are not request fields and are left out."""
    kwargs = {name: value for name, value in fields.items() if name in _REQUEST_FIELD_NAMES}
    kwargs.setdefault("prompt", "")
    return GenerationRequest(**{**kwargs, **changes})
