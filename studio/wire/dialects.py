"""Which request convention a payload follows: the explicit detection rules of the wire codec.

Four dialects share most field names (prompt, width, height, guidance_scale, num_inference_steps, ...), so a payload
is taken for a sample's dialect only when it carries something *only that dialect* sends:

| dialect | chosen when the payload has | answer |
|---|---|---|
| explicit | `"dialect": "native" / "quick_kit" / "hf_dlc" / "byoc"` | that dialect's |
| BYOC | `results` or `img` | `{"s3_loc": [...]}` with an S3 output, else `images` |
| HF-DLC | `num_images_per_prompt`, `inputs` or `parameters` | `{"generated_images": [...]}` |
| Quick Kit | `output_s3uri`, `infer_args` or a Quick Kit sampler spelling (below) | `{"result": [...]}` with S3 |
| native | anything else, including a payload with the marks of two dialects | `{"images": [...]}` |

Quick Kit's sampler spellings are `euler_a`, `eular`, `heun`, `lms`, `dpm2`, `dpm2_a` and `ddim`.
Keys every dialect may send (`prompt`, `negative_prompt`, `width`, `height`, `guidance_scale`,
`num_inference_steps`, `seed`, a prompt *list*) decide nothing: `{prompt, guidance_scale, num_inference_steps,
height, width}` (BYOC's text-to-image payload without `results`) is native, not HF-DLC. Every answer carries
`"dialect"`, so a caller can see which rule applied.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from studio.types import RequestError


class Dialect(StrEnum):
    """Which request convention a payload follows; decides the shape of the response."""

    NATIVE = "native"
    QUICK_KIT = "quick_kit"
    HF_DLC = "hf_dlc"
    BYOC = "byoc"


# The keys only one dialect sends: the marks of that dialect.
MARKS: dict[Dialect, frozenset[str]] = {
    Dialect.BYOC: frozenset({"results", "img"}),
    Dialect.HF_DLC: frozenset({"num_images_per_prompt", "inputs", "parameters"}),
    Dialect.QUICK_KIT: frozenset({"output_s3uri", "infer_args"}),
}
# The sampler spellings of the AWS Quick Kit (lower case, underscores): a Quick Kit mark as well.
QUICK_KIT_SAMPLERS = frozenset({"euler_a", "eular", "heun", "lms", "dpm2", "dpm2_a", "ddim"})


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dialect_marks(payload: dict[str, Any]) -> set[Dialect]:
    """The dialects whose marks the payload carries (empty: none; two or more: ambiguous)."""
    keys = set(payload)
    found = {dialect for dialect, marks in MARKS.items() if keys & marks}
    sampler = payload.get("sampler")
    if isinstance(sampler, str) and sampler in QUICK_KIT_SAMPLERS:
        found.add(Dialect.QUICK_KIT)
    return found


def detect_dialect(payload: dict[str, Any]) -> Dialect:
    """The payload's dialect by the rules in the module docstring (an explicit "dialect" key wins).

    RequestError("dialect") for an explicit value that is not a dialect. A payload with the marks of no dialect,
    or of more than one, is native.
    """
    explicit = payload.get("dialect")
    if explicit is not None:
        try:
            return Dialect(explicit)
        except ValueError:
            valid = ", ".join(d.value for d in Dialect)
            message = f"unknown dialect {_short(explicit)}; use {valid}"
            raise RequestError("dialect", _short(explicit), message) from None
    found = dialect_marks(payload)
    if len(found) == 1:
        return found.pop()
    return Dialect.NATIVE
