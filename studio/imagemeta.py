"""The infotext inside image files: A1111's PNG "parameters" text chunk (written and read) and the EXIF
UserComment A1111 writes into JPEG/WebP files (read, without piexif).

Only Pillow is needed (imported lazily). studio.metadata formats and parses the text itself.
"""

from __future__ import annotations

import errno
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from studio import fs

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

PNG_TEXT_KEY = "parameters"

# EXIF UserComment character-code prefixes (EXIF 2.3, table 9).
_EXIF_PREFIX_SIZE = 8
_EXIF_ASCII = b"ASCII\x00\x00\x00"
_EXIF_UNICODE = b"UNICODE\x00"
_EXIF_JIS = b"JIS\x00\x00\x00\x00\x00"
_EXIF_UNDEFINED = b"\x00" * 8
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286

_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


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
