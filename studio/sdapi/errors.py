"""The A1111 API's error answers, in the shapes A1111's own server gives them.

- A field with a wrong value: 422 `{"detail": [{"loc": ["body", <A1111 field>, ...], "msg": ..., "type": ...}]}`,
  FastAPI's validation shape (what A1111 answers for `steps: "ten"`). The studio's checks live in
  `GenerationRequest.validate`, which names its own fields; `field_error` renames them to the A1111 field the
  client actually sent.
- A failure while generating: 500 `{"error", "detail", "body", "errors"}`, A1111's exception shape; 503 the same way
  while no model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from studio.engine import EngineError, EngineNotReady
from studio.types import RequestError


class ApiError(Exception):
    """An answer other than 200: the HTTP status and the JSON body."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"{status}: {body}")


Loc = tuple[str, ...]


def _short(value: Any, limit: int = 60) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid(loc: str | Sequence[str], message: str, value: Any = None) -> ApiError:
    """A 422 naming the A1111 field at `loc` (a name, or a path like ("override_settings", "sd_vae"))."""
    path = (loc,) if isinstance(loc, str) else tuple(loc)
    detail = {
        "loc": ["body", *path],
        "msg": f"{'.'.join(path)}: {message}",
        "type": "value_error",
        "input": _short(value),
    }
    return ApiError(422, {"detail": [detail]})


def field_error(exc: RequestError, names: Mapping[str, str | Loc]) -> ApiError:
    """`exc` (naming a GenerationRequest field) as a 422 naming the A1111 field it came from (`names`: native
    field -> A1111 field or path; fields not in it keep their name)."""
    loc = names.get(exc.field, exc.field)
    text = str(exc)
    prefix = f"{exc.field}: "
    message = text[len(prefix) :] if text.startswith(prefix) else text
    return invalid(loc, message, exc.value)


def engine_error(exc: EngineError) -> ApiError:
    """An engine failure in A1111's exception shape: 503 while no model is loaded, else 500."""
    status = 503 if isinstance(exc, EngineNotReady) else 500
    message = str(exc) or type(exc).__name__
    return ApiError(status, {"error": type(exc).__name__, "detail": message, "body": "", "errors": message})
