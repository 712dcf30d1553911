"""Prepared OpenVINO exports of the demo model (`python -m studio.models export-openvino demo DIR`), made once and
kept under studio.config.cache_dir() like the demo model itself: the Lambda handler tests, the image test and the
bench load them as a cold start would. openvino and torch are imported only when an export has to be made."""

from __future__ import annotations

from pathlib import Path

from studio.config import cache_dir
from studio.fs import file_lock
from studio.models import DEMO_VERSION

EXPORT_FORMAT = 4  # bump when an export holds something else: openvino_export or openvino_ir.IR_FORMAT_VERSION (4)


def exported_demo(precision: str = "f32") -> Path:
    """The demo model exported with its IR (`precision` f32: fp32 IR weights, bit-comparable with torch; bf16: fp16
    IR weights, what Dockerfile.lambda ships by default). Built on first use, under a file lock."""
    target = cache_dir() / "exports" / f"demo-{DEMO_VERSION}-openvino-{precision}-v{EXPORT_FORMAT}"
    if (target / "openvino" / "manifest.json").is_file():
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if not (target / "openvino" / "manifest.json").is_file():
            from studio.engines.openvino_export import export_openvino

            export_openvino("demo", target, precision=precision, models_dir=Path("models"))
    return target
