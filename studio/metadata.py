"""A1111-compatible `parameters` infotext: format it, parse it back, and carry it inside image files.

The text format is AUTOMATIC1111's, so images made here paste into A1111 (and its PNG Info tab reads them),
and A1111's own images load here:

    a prompt, possibly
    on several lines
    Negative prompt: the negative prompt (line only present when non-empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model hash: abc, Model: name, Version: ...

Values containing `,` `:` `"` or a newline are written as JSON strings (A1111's `quote()`), so the
single key-value line stays parseable. PNGs carry the text in a tEXt/iTXt chunk named "parameters";
A1111's JPEG/WebP files carry it in the EXIF UserComment, which `read_infotext` decodes without piexif.

Only Pillow is needed here (imported lazily): this module imports fast and never touches torch.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio import __version__, fs
from studio.types import GenerationRequest, Task

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

PNG_TEXT_KEY = "parameters"
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

# Known infotext keys -> (snake_case name, converter). Anything else is kept under its original key.
_KNOWN_KEYS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "Schedule type": ("schedule_type", str),
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
    "Variation seed": ("variation_seed", int),
    "Variation seed strength": ("variation_seed_strength", float),
    "Backend": ("backend", str),
}
# Schedule types that older A1111 versions spelled as a sampler-name suffix ("DPM++ 2M Karras"); newer
# versions write them separately as "Schedule type: Karras". Other schedule types have no sampler-name form.
_SAMPLER_SUFFIX_SCHEDULES = ("Karras", "Exponential")

# EXIF UserComment character-code prefixes (EXIF 2.3, table 9).
_EXIF_PREFIX_SIZE = 8
_EXIF_ASCII = b"ASCII\x00\x00\x00"
_EXIF_UNICODE = b"UNICODE\x00"
_EXIF_JIS = b"JIS\x00\x00\x00\x00\x00"
_EXIF_UNDEFINED = b"\x00" * 8
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286

_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


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


def format_infotext(
    request: GenerationRequest,
    seed: int,
    *,
    model: str = "",
    model_hash: str = "",
    backend: str | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The A1111 infotext for one image of `request`, made with `seed`.

    Keys follow A1111's order; `Denoising strength` is written for img2img/inpaint, `Mask blur` for inpaint,
    `Backend` when the image was made by a non-local backend. `extra` keys come next (a value of None is
    skipped; a standard key in `extra` replaces the standard value in place), then `Version`.
    Raises ValueError for an `extra` key that A1111's parser could not read back.
    """
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "CFG scale": float(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
    }
    if model_hash:
        params["Model hash"] = model_hash
    if model:
        params["Model"] = model
    task = request.task
    if task in (Task.IMG2IMG, Task.INPAINT):
        params["Denoising strength"] = float(request.strength)
    if task is Task.INPAINT:
        params["Mask blur"] = request.mask_blur
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
    if key == "Size":
        match = _RE_SIZE.match(raw)
        if match:
            result["width"], result["height"] = int(match.group(1)), int(match.group(2))
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

    Known keys get snake_case names and types (steps/seed/width/height/mask_blur/clip_skip int, cfg_scale/
    denoising_strength float); unknown keys keep their original name and text value ("Hires upscale": "2").
    A1111 >= 1.9 writes the scheduler apart ("Sampler: DPM++ 2M, Schedule type: Karras"); the sampler is then
    reported in the combined form our sampler registry knows ("DPM++ 2M Karras"), schedule_type kept too.
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

    schedule = result.get("schedule_type")
    sampler = result.get("sampler")
    if (
        isinstance(schedule, str)
        and isinstance(sampler, str)
        and schedule in _SAMPLER_SUFFIX_SCHEDULES
        and not sampler.endswith(f" {schedule}")
    ):
        result["sampler"] = f"{sampler} {schedule}"
    return result


def request_fields(params: dict[str, Any]) -> dict[str, Any]:
    """GenerationRequest keyword arguments from parsed params (only those present with a usable type).

    `denoising_strength` becomes `strength`. The result is not validated: call
    `GenerationRequest(**fields).validate()` so out-of-range values are reported, not clamped.
    """
    fields: dict[str, Any] = {}
    for name, kind in (
        ("prompt", str),
        ("negative_prompt", str),
        ("sampler", str),
        ("steps", int),
        ("cfg_scale", float),
        ("seed", int),
        ("width", int),
        ("height", int),
        ("mask_blur", int),
    ):
        value = params.get(name)
        if isinstance(value, kind) and not isinstance(value, bool):
            fields[name] = value
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            fields[name] = float(value)
    strength = params.get("denoising_strength")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
        fields["strength"] = float(strength)
    return fields


# ---------------------------------------------------------------------------------------------------------------
# Image files


def _decode_user_comment(data: bytes) -> str | None:
    """Decode an EXIF UserComment: 8-byte character-code prefix, then the text.

    A1111 writes it with piexif as "UNICODE\\0" + UTF-16 big-endian. Some other writers use the TIFF byte
    order instead, so for UNICODE we honour a BOM and otherwise pick the byte order whose decoding puts the
    zero bytes of ASCII-range characters in the high half.
    """
    if not data:
        return None
    prefix, body = data[:_EXIF_PREFIX_SIZE], data[_EXIF_PREFIX_SIZE:]
    if prefix == _EXIF_UNICODE:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", errors="replace")
        else:
            even_zeros = body[0::2].count(0)
            odd_zeros = body[1::2].count(0)
            text = body.decode("utf-16-le" if odd_zeros > even_zeros else "utf-16-be", errors="replace")
    elif prefix == _EXIF_ASCII:
        text = body.decode("utf-8", errors="replace")  # ASCII by the spec; UTF-8 in practice
    elif prefix == _EXIF_JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix == _EXIF_UNDEFINED:
        text = body.decode("utf-8", errors="ignore")
    else:
        text = data.decode("utf-8", errors="ignore")  # no prefix: A1111's own fallback
    text = text.rstrip("\x00").strip()
    return text or None


def read_infotext(image: Image.Image) -> str | None:
    """The infotext stored in an opened image, or None.

    Looks where A1111 writes it: the PNG text chunk "parameters" (tEXt, zTXt or iTXt), then the EXIF
    UserComment (A1111's JPEG/WebP), then a "comment" (GIF / JPEG COM). Never raises on a damaged file.
    """
    info = getattr(image, "info", None) or {}
    value = info.get(PNG_TEXT_KEY)
    if value is None:
        try:
            value = (getattr(image, "text", None) or {}).get(PNG_TEXT_KEY)  # text chunks after IDAT
        except Exception:  # .text loads the image data, which may be truncated
            logger.debug("could not read PNG text chunks", exc_info=True)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and value:
        return str(value)

    try:
        exif = image.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT) or exif.get(_EXIF_USER_COMMENT)
    except Exception:  # malformed EXIF is common in the wild
        logger.debug("could not read EXIF", exc_info=True)
        raw = None
    if isinstance(raw, bytes):
        text = _decode_user_comment(raw)
        if text:
            return text
    elif isinstance(raw, str) and raw.strip():
        return raw.strip()

    comment = info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="ignore")
    if isinstance(comment, str) and comment.strip():
        return comment.strip()
    return None


def png_bytes(image: Image.Image, infotext: str, compress_level: int = 1) -> bytes:
    """Encode `image` as PNG with `infotext` in a "parameters" chunk (tEXt if latin-1, else UTF-8 iTXt).

    compress_level 1 is A1111's default trade-off: fast to write, a little larger on disk.
    """
    from PIL.PngImagePlugin import PngInfo

    pnginfo = PngInfo()
    pnginfo.add_text(PNG_TEXT_KEY, infotext)  # Pillow switches to iTXt for non-latin-1 text
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
    return buffer.getvalue()


def save_png(image: Image.Image, infotext: str, path: Path, compress_level: int = 1) -> Path:
    """Write a PNG with its infotext atomically (studio.fs.atomic_write): a reader or a crash never sees half a file.

    Replaces an existing file at `path` (callers that must not overwrite reserve the name first) and keeps that
    file's mode (else 0644). The folder must exist: a save never recreates a folder that was deleted under it (the
    name it reserved there is gone too). Raises OSError on failure, leaving no temp file.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(path.parent))
    return fs.atomic_write(path, png_bytes(image, infotext, compress_level=compress_level))
