"""The A1111-compatible HTTP API, `/sdapi/v1`, as one FastAPI router: mounted on the studio's own port (app.py)
and on the serving app (studio.serving.app.create_app). What each endpoint answers is studio.sdapi.SdapiService;
this module is HTTP only: reading the JSON body, the guard (HTTP Basic when the studio has --auth; no cross-origin
callers), and the OpenAPI description.

The request bodies are read as plain JSON and translated by studio.sdapi.fields, which checks them through
`GenerationRequest.validate`; the pydantic models below only describe them in the OpenAPI schema (A1111's field
names and API defaults), so there is no second copy of the validation.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.concurrency import run_in_threadpool

from studio.models.taesd import TAESD
from studio.sdapi import ApiError, SdapiService
from studio.sdapi import fields as a1111
from studio.serving.schema import require_unreachable_defaults
from studio.types import Limits, RequestError

logger = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # init images are base64 PNGs: generous, but bounded

# ---- the OpenAPI description (documentation only: bodies are validated by GenerationRequest) -------------------
_TYPES: dict[str, Any] = {
    **dict.fromkeys(
        ("seed", "subseed", "seed_resize_from_h", "seed_resize_from_w", "hr_second_pass_steps", "hr_resize_x",
         "hr_resize_y", "firstphase_width", "firstphase_height", "resize_mode", "mask_blur_x", "mask_blur_y",
         "mask_blur", "inpainting_fill", "inpaint_full_res_padding", "inpainting_mask_invert"),
        int | None,
    ),
    **dict.fromkeys(
        ("subseed_strength", "cfg_scale", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin",
         "s_noise", "hr_scale", "image_cfg_scale", "initial_noise_multiplier", "refiner_switch_at"),
        float | None,
    ),
    **dict.fromkeys(
        ("restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards",
         "disable_extra_networks", "send_images", "save_images", "enable_hr", "mask_round", "inpaint_full_res",
         "include_init_images"),
        bool | None,
    ),
    "styles": list[str] | None, "init_images": list[str] | None, "script_args": list[Any] | None,
    "override_settings": dict[str, Any] | None, "alwayson_scripts": dict[str, Any] | None,
    "comments": dict[str, Any] | None,
}  # fmt: skip
_DESCRIPTIONS = {
    "sampler_name": "A sampler from /sdapi/v1/samplers; old combined names ('DPM++ 2M Karras') are split.",
    "scheduler": "A schedule type from /sdapi/v1/schedulers (name or label).",
    "init_images": "One image: base64, with or without a data: prefix.",
    "mask": "White = repaint (base64, with or without a data: prefix).",
    "override_settings": "For this request: sd_model_checkpoint (a title), CLIP_stop_at_last_layers, sd_vae, "
    "sd_vae_decode_method (Full or TAESD).",
    "save_images": "true: saved to the studio's outputs and History like the UI's images.",
}


def _doc_model(name: str, defaults: dict[str, Any]) -> type[BaseModel]:
    specs: dict[str, Any] = {}
    for field_name, default in defaults.items():
        kind = _TYPES.get(field_name, type(default) | None if default is not None else str | None)
        extra = {"description": _DESCRIPTIONS[field_name]} if field_name in _DESCRIPTIONS else {}
        specs[field_name] = (kind, Field(default=default, **extra))
    return create_model(name, __config__=ConfigDict(extra="allow"), **specs)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _valid_values(limits: Limits) -> dict[str, dict[str, Any]]:
    """What this deployment accepts for the fields that have a range or a list of names (the limits and names
    GenerationRequest.validate enforces, so the description does not promise more than the server takes)."""
    from studio.samplers import SCHEDULES, sampler_names
    from studio.types import MASKED_CONTENT, MAX_CLIP_SKIP, MAX_HIRES_SCALE, MAX_INPAINT_PADDING, MAX_SEED
    from studio.upscalers import BUILTIN_UPSCALERS

    size = {"type": "integer", "minimum": 8, "multipleOf": 8}
    schedules = [name for spec in SCHEDULES for name in (spec.api_name, spec.name)]
    return {
        "prompt": {"type": "string", "maxLength": limits.max_prompt_chars},
        "negative_prompt": {"type": "string", "maxLength": limits.max_prompt_chars},
        "steps": {"type": "integer", "minimum": 1, "maximum": limits.max_steps},
        "width": {**size, "maximum": limits.max_width},
        "height": {**size, "maximum": limits.max_height},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": limits.max_count},
        "n_iter": {"type": "integer", "minimum": 1, "maximum": limits.max_count},
        "cfg_scale": {"type": "number", "minimum": limits.min_cfg_scale, "maximum": limits.max_cfg_scale},
        "seed": {"type": "integer", "minimum": -1, "maximum": MAX_SEED},
        "sampler_name": _nullable({"enum": sampler_names()}),
        "sampler_index": {"enum": sampler_names()},
        "scheduler": _nullable({"enum": schedules}),
        "hr_upscaler": _nullable({"enum": [spec.name for spec in BUILTIN_UPSCALERS]}),
        "hr_scale": {"type": "number", "minimum": 1, "maximum": MAX_HIRES_SCALE},
        "denoising_strength": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "script_name": {"type": "null", "description": "This studio runs no scripts."},
        "alwayson_scripts": {"type": "object", "maxProperties": 0, "description": "This studio has none."},
        "mask_blur": _nullable({"type": "integer", "minimum": 0, "maximum": 64}),
        "inpainting_fill": {"type": "integer", "minimum": 0, "maximum": len(MASKED_CONTENT) - 1},
        "resize_mode": {"type": "integer", "minimum": 0, "maximum": 3},
        "inpaint_full_res_padding": {"type": "integer", "minimum": 0, "maximum": MAX_INPAINT_PADDING},
        "override_settings": _nullable({
            "type": "object",
            "properties": {
                "sd_model_checkpoint": {"type": "string"},
                "CLIP_stop_at_last_layers": {"type": "integer", "minimum": 1, "maximum": MAX_CLIP_SKIP},
                "sd_vae": {"type": "string"},
                "sd_vae_decode_method": {"enum": list(a1111.DECODE_METHODS)},
            },
        }),
    }  # fmt: skip


def request_schema(model: type[BaseModel], limits: Limits) -> dict[str, Any]:
    """`model`'s JSON schema with this deployment's limits and names (see _valid_values)."""
    schema = model.model_json_schema()
    properties = schema["properties"]
    for name, valid in _valid_values(limits).items():
        if name in properties:
            old = properties[name]
            properties[name] = {**valid, **{key: old[key] for key in ("default", "title", "description") if key in old}}
    return require_unreachable_defaults(schema)


Txt2ImgRequest = _doc_model("StableDiffusionProcessingTxt2Img", a1111.TXT2IMG_DEFAULTS)
Img2ImgRequest = _doc_model("StableDiffusionProcessingImg2Img", a1111.IMG2IMG_DEFAULTS)


class PNGInfoRequest(BaseModel):
    image: str = Field(description="A base64 image (a data: prefix is allowed).")


class ImageResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs (no data: prefix) carrying their infotext")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string: seed, all_seeds, infotexts, warnings, ...")


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra describing a JSON request body with `schema`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# ---- the guard ---------------------------------------------------------------------------------------------------
def _same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's Origin header names this server (the Host the request came to)."""
    netloc = urlsplit(origin).netloc
    return bool(host) and netloc.lower() == (host or "").lower()


def _authorized(header: str | None, credentials: Sequence[tuple[str, str]]) -> bool:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    if not sep:
        return False
    matches = [
        hmac.compare_digest(user.encode(), known_user.encode())
        & hmac.compare_digest(password.encode(), known_password.encode())
        for known_user, known_password in credentials
    ]
    return any(matches)


def _guard(credentials: Sequence[tuple[str, str]] | None) -> Callable[[Request], None]:
    """Refuse what must not run: a call from a web page of another origin (403: without this, any site the user
    visits could POST to http://127.0.0.1:7860/sdapi/v1/...), and, with --auth, a call without the credentials (401,
    A1111's --api-auth)."""

    def guard(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin is not None and not _same_origin(origin, request.headers.get("host")):
            raise HTTPException(403, "cross-origin requests to /sdapi/v1 are refused")
        if credentials and not _authorized(request.headers.get("authorization"), credentials):
            raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return guard


# ---- the router ------------------------------------------------------------------------------------------------
def build_router(
    service: SdapiService,
    *,
    credentials: Sequence[tuple[str, str]] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> APIRouter:
    """The `/sdapi/v1` routes over `service`; `credentials` (user, password) pairs turn on HTTP Basic."""
    router = APIRouter(prefix=PREFIX, tags=["sdapi"], dependencies=[Depends(_guard(credentials))])

    async def call(function: Callable[..., Any], *args: Any) -> JSONResponse:
        try:
            value = await run_in_threadpool(function, *args)
        except ApiError as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except Exception as exc:  # a bug must still answer (A1111's shape) and leave the server serving
            logger.exception("sdapi: unexpected error in %s", getattr(function, "__name__", function))
            message = f"{type(exc).__name__}: {exc}"
            return JSONResponse({"error": type(exc).__name__, "detail": message, "body": "", "errors": message}, 500)
        return JSONResponse(value)

    async def body(request: Request) -> Any:
        from studio.serving.invoker import parse_json_body

        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise ApiError(413, {"detail": f"body: larger than the {max_body_bytes}-byte limit"})
        try:
            return parse_json_body(raw, request.headers.get("content-type"))
        except RequestError as exc:
            raise ApiError(422, {"detail": [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]}) from None

    limits = service.host.limits

    def posted(path: str, function: Callable[[Any], Any], model: type[BaseModel] | None = None, **kw: Any) -> None:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                payload = await body(request)
            except ApiError as exc:
                return JSONResponse(exc.body, status_code=exc.status)
            return await call(function, payload)

        endpoint.__name__ = function.__name__
        extra = json_body(request_schema(model, limits)) if model is not None else None
        router.add_api_route(path, endpoint, methods=["POST"], openapi_extra=extra, **kw)

    def got(path: str, function: Callable[[], Any], **kw: Any) -> None:
        async def endpoint() -> JSONResponse:
            return await call(function)

        endpoint.__name__ = function.__name__
        router.add_api_route(path, endpoint, methods=["GET"], **kw)

    def action(path: str, function: Callable[[], Any]) -> None:
        async def endpoint() -> JSONResponse:
            return await call(function)

        endpoint.__name__ = path.strip("/").replace("-", "_")
        router.add_api_route(path, endpoint, methods=["POST"])

    images = {200: {"model": ImageResponse}}
    posted("/txt2img", service.txt2img, Txt2ImgRequest, responses=images)
    posted("/img2img", service.img2img, Img2ImgRequest, responses=images)
    posted("/png-info", service.png_info, PNGInfoRequest, responses={200: {"model": PNGInfoResponse}})
    posted("/options", service.set_options, _OptionsDoc)
    got("/options", service.get_options)
    got("/sd-models", service.sd_models)
    got("/samplers", service.samplers)
    got("/schedulers", service.schedulers)
    got("/upscalers", service.upscalers)
    got("/latent-upscale-modes", service.latent_upscale_modes)
    got("/sd-vae", service.sd_vae)
    got("/loras", service.loras)

    async def progress(skip_current_image: bool = False) -> JSONResponse:
        return await call(service.progress, skip_current_image)

    router.add_api_route("/progress", progress, methods=["GET"], responses={200: {"model": ProgressResponse}})
    action("/interrupt", service.interrupt)
    action("/skip", service.skip)
    for path in ("/refresh-checkpoints", "/refresh-loras", "/refresh-vae"):
        action(path, _nothing)  # lists are read from the models folder at every call: nothing to refresh
    got("/scripts", _scripts)
    got("/script-info", _empty_list)
    for path in ("/prompt-styles", "/face-restorers", "/hypernetworks"):
        got(path, _empty_list)
    got("/embeddings", _embeddings)
    return router


class _OptionsDoc(BaseModel):
    model_config = ConfigDict(extra="allow")
    sd_model_checkpoint: str | None = Field(default=None, description="A title from /sdapi/v1/sd-models")
    CLIP_stop_at_last_layers: int | None = Field(default=None, description="Clip skip for API requests (1-12)")
    sd_vae: str | None = Field(default=None, description=f"Automatic, None, {TAESD} or a file from /sdapi/v1/sd-vae")
    sd_vae_decode_method: str | None = Field(
        default=None, description=f"Full, or TAESD: decode (and encode) with the tiny {TAESD} VAE"
    )
    live_previews_enable: bool | None = Field(default=None, description="Live previews (progress's current_image)")
    show_progress_every_n_steps: int | None = Field(
        default=None, description="Live preview every N sampling steps (-1 or 0: none)"
    )


def _nothing() -> None:
    return None


def _scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


def _empty_list() -> list[Any]:
    return []


def _embeddings() -> dict[str, dict[str, Any]]:
    return {"loaded": {}, "skipped": {}}


def install(app: FastAPI, router: APIRouter) -> None:
    """Add `router` to a running app, ahead of its own routes (a catch-all route of the host app must not shadow
    /sdapi/v1)."""
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    app.openapi_schema = None  # regenerate the OpenAPI document with these routes
