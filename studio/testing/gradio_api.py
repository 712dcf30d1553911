"""The public gradio API's positional values, for tests that speak gradio's raw HTTP protocol (which, unlike
gradio_client, fills no defaults): names from the handler's signature, defaults from GenerationRequest."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from studio.types import GenerationRequest

_INJECTED = ("controller", "request", "progress")


def api_values(handler: Callable[..., Any], **values: Any) -> list[Any]:
    """Every parameter of a public handler (e.g. studio.ui.txt2img.txt2img) in order: `values` where given, else
    the request's default ("" for the prompt, None for images)."""
    defaults: dict[str, Any] = {
        field.name: field.default
        for field in dataclasses.fields(GenerationRequest)
        if field.default is not dataclasses.MISSING
    }
    defaults["prompt"] = ""
    names = [name for name in inspect.signature(handler).parameters if name not in _INJECTED]
    unknown = set(values) - set(names)
    if unknown:
        raise TypeError(f"{handler.__name__} has no parameter {', '.join(sorted(unknown))}")
    return [values[name] if name in values else defaults.get(name) for name in names]
