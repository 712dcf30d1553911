"""The OpenAPI description of `POST /invocations` (documentation only: the body is decoded and validated by
studio.wire.codec, whose errors name the field; this model is never used to parse a request).

It shows the native dialect's fields under the request's own names, with GenerationRequest's defaults. The other
dialects' spellings (HF-DLC `inputs` / `num_inference_steps` / `guidance_scale` / `num_images_per_prompt` /
`parameters`, Quick Kit, BYOC `img` / `mask` / `results`) are accepted too; the schema describes the native one
(any other key is an error naming it). Ranges and names are the deployment's own (`invocation_schema(limits)`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from studio.types import (
    DEFAULT_LIMITS,
    MASKED_CONTENT,
    MAX_CLIP_SKIP,
    MAX_HIRES_SCALE,
    MAX_INPAINT_PADDING,
    MAX_SEED,
    Limits,
)

_LIMITS = DEFAULT_LIMITS


class InvocationRequest(BaseModel):
    """One generation: text to image, image to image (input_image) or inpaint (input_image + mask_image)."""

    model_config = ConfigDict(extra="forbid", title="InvocationRequest")

    prompt: str | list[str] = Field(description="A1111 syntax: (word:1.3), [word], BREAK, <lora:name:weight>")
    negative_prompt: str | list[str] = ""
    sampler: str = Field("Euler a", description="An A1111 sampler name (aliases and 'DPM++ 2M Karras' accepted)")
    scheduler: str = Field("Automatic", description="Schedule type: Automatic, Uniform, Karras, Exponential, ...")
    steps: int = Field(20, ge=1, le=_LIMITS.max_steps)
    cfg_scale: float = Field(7.0, ge=_LIMITS.min_cfg_scale, le=_LIMITS.max_cfg_scale)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1: random; image i gets seed + i")
    width: int = Field(512, ge=8, le=_LIMITS.max_width, multiple_of=8)
    height: int = Field(512, ge=8, le=_LIMITS.max_height, multiple_of=8)
    count: int = Field(1, ge=1, le=_LIMITS.max_count)
    strength: float = Field(0.75, gt=0, le=1, description="Denoising strength (image to image, inpaint)")
    mask_blur: int = Field(4, ge=0, le=64)
    clip_skip: int = Field(1, ge=1, le=MAX_CLIP_SKIP)
    vae: str = Field("Automatic", description="Automatic or a file in MODELS_DIR/VAE")
    hires_scale: float = Field(1.0, ge=1, le=MAX_HIRES_SCALE, description="Hires fix (text to image): 1 = off")
    hires_resize_x: int = Field(0, ge=0, multiple_of=8)
    hires_resize_y: int = Field(0, ge=0, multiple_of=8)
    hires_upscaler: str = "Latent"
    hires_steps: int = Field(0, ge=0, le=_LIMITS.max_steps)
    hires_strength: float = Field(0.7, gt=0, le=1)
    inpaint_only_masked: bool = Field(False, description="Inpaint a crop around the mask at width x height")
    inpaint_padding: int = Field(32, ge=0, le=MAX_INPAINT_PADDING)
    masked_content: str = Field("original", description=f"One of: {', '.join(MASKED_CONTENT)}")
    input_image: str | None = Field(None, description="base64, a data URL or s3://bucket/key")
    mask_image: str | None = Field(None, description="White = repaint; base64, a data URL or s3://bucket/key")
    s3_output: str | None = Field(None, description="s3://bucket/prefix to write the PNGs to")


def invocation_schema(limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The request body's JSON schema with this deployment's limits and the names it accepts."""
    from studio.samplers import SCHEDULES, sampler_names
    from studio.upscalers import BUILTIN_UPSCALERS

    schema = InvocationRequest.model_json_schema()
    properties = schema["properties"]
    text = {"type": "string", "maxLength": limits.max_prompt_chars}
    size = {"type": "integer", "minimum": 8, "multipleOf": 8}
    valid = {
        "prompt": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_count}]},
        "negative_prompt": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1}]},
        "steps": {"type": "integer", "minimum": 1, "maximum": limits.max_steps},
        "hires_steps": {"type": "integer", "minimum": 0, "maximum": limits.max_steps},
        "width": {**size, "maximum": limits.max_width},
        "height": {**size, "maximum": limits.max_height},
        "count": {"type": "integer", "minimum": 1, "maximum": limits.max_count},
        "cfg_scale": {"type": "number", "minimum": limits.min_cfg_scale, "maximum": limits.max_cfg_scale},
        "sampler": {"enum": sampler_names()},
        "scheduler": {"enum": [name for spec in SCHEDULES for name in (spec.name, spec.api_name)]},
        "hires_upscaler": {"enum": [spec.name for spec in BUILTIN_UPSCALERS]},
        "masked_content": {"enum": list(MASKED_CONTENT)},
    }
    valid["vae"] = {"type": "string", "minLength": 1}
    for name, constraint in valid.items():
        kept = {key: properties[name][key] for key in ("default", "title", "description") if key in properties[name]}
        properties[name] = {**constraint, **kept}
    return require_unreachable_defaults(schema)


def require_unreachable_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """A field whose default is outside this deployment's range (steps 50 where at most 20 are allowed) has no
    usable default here: the schema says it is required instead of promising a default the server refuses."""
    required = schema.setdefault("required", [])
    for name, spec in schema["properties"].items():
        default = spec.get("default")
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        too_low = "minimum" in spec and default < spec["minimum"]
        too_high = "maximum" in spec and default > spec["maximum"]
        if too_low or too_high:
            del spec["default"]
            if name not in required:
                required.append(name)
    return schema


def invocation_openapi(limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The OpenAPI requestBody of /invocations."""
    return {"required": True, "content": {"application/json": {"schema": invocation_schema(limits)}}}
