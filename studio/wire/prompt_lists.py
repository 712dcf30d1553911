"""Prompt lists: N prompts (and one negative prompt, or N) x k images per prompt -> N x k images in prompt order.

HF-DLC's own sample sends `{"prompt": ["a panda", "an astronaut"], "num_images_per_prompt": 1}`; the native
dialect accepts the same lists (with `count` as k). The codec keeps the pairs on the Invocation and the request
for the whole invocation (count N x k); `Invocation.requests()` splits it so image j gets seed + j.
"""

from __future__ import annotations

from typing import Any

from studio.types import GenerationRequest, Limits, RequestError


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _prompt_list(field: str, value: Any) -> list[str] | None:
    """A prompt field as a list of prompts (HF-DLC and native accept a list), None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            raise RequestError(field, value, "is an empty list")
        if not all(isinstance(item, str) for item in value):
            raise RequestError(field, _short(value), "must be text or a list of text")
        return list(value)
    raise RequestError(field, _short(value), f"must be text or a list of text, got {type(value).__name__}")


def prompt_pairs(fields: dict[str, tuple[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, negative prompt) of each prompt: N prompts, and one negative for all or a list of exactly N."""
    if "prompt" not in fields or fields["prompt"][1] is None:
        raise RequestError("prompt", None, "is required")
    prompts = _prompt_list(fields["prompt"][0], fields["prompt"][1]) or [""]
    spelling, value = fields.get("negative_prompt", ("negative_prompt", None))
    negatives = _prompt_list(spelling, value) or [""]
    if isinstance(value, list) and len(negatives) != len(prompts):
        raise RequestError(
            spelling,
            _short(value),
            f"has {len(negatives)} entries but there are {len(prompts)} prompts; give one negative prompt per "
            "prompt, or a single text for all of them",
        )
    if len(negatives) == 1:
        negatives = negatives * len(prompts)
    return list(zip(prompts, negatives, strict=True))


def expand_prompts(
    request: GenerationRequest, pairs: list[tuple[str, str]], fields: dict[str, tuple[str, Any]], limits: Limits
) -> GenerationRequest:
    """N prompts x k images per prompt: the count limit applies to N x k, and every prompt is checked.

    Returns the request for the whole invocation (count N x k, the first prompt); Invocation.requests() splits it.
    """
    per_prompt, total = request.count, request.count * len(pairs)
    if total > limits.max_count:
        spelling = fields["count"][0] if "count" in fields else "count"
        raise RequestError(
            spelling,
            total,
            f"{len(pairs)} prompts x {per_prompt} images per prompt = {total} images; "
            f"the limit is {limits.max_count} images per request",
        )
    for prompt, negative in pairs[1:]:
        request.replace(prompt=prompt, negative_prompt=negative).validate(limits)
    return request.replace(count=total)
