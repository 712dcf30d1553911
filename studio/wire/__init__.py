"""The wire format between the studio's remote engines and the serving app.

`codec` is pure: JSON dicts <-> GenerationRequest/GenerationResult for every dialect, no I/O. `images` reads and
writes the images a request refers to (S3, http(s)) with injected clients and enforces the S3 allowed-prefix
policy on every read and write.
"""

from studio.wire.codec import (
    INPUT_PIXELS_FACTOR,
    Fetch,
    Invocation,
    decode_invocation,
    decode_result,
    encode_pngs,
    encode_request,
    encode_result,
    image_to_base64,
    open_image,
)
from studio.wire.dialects import Dialect, detect_dialect
from studio.wire.images import MAX_IMAGE_BYTES, RequestImages, S3Policy, S3Reader, S3Writer, URLReader

__all__ = [
    "INPUT_PIXELS_FACTOR",
    "MAX_IMAGE_BYTES",
    "Dialect",
    "Fetch",
    "Invocation",
    "RequestImages",
    "S3Policy",
    "S3Reader",
    "S3Writer",
    "URLReader",
    "decode_invocation",
    "decode_result",
    "detect_dialect",
    "encode_pngs",
    "encode_request",
    "encode_result",
    "image_to_base64",
    "open_image",
]
