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

from studio.sdapi import ApiError, SdapiService
from studio.sdapi import fields as a1111
from studio.types import RequestError

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
_LIMITED: dict[str, dict[str, Any]] = {
    "steps": {"ge": 1, "le": 150},
    "width": {"ge": 8, "le": 2048, "multiple_of": 8},
    "height": {"ge": 8, "le": 2048, "multiple_of": 8},
    "batch_size": {"ge": 1, "le": 16},
    "n_iter": {"ge": 1, "le": 16},
}
_DESCRIPTIONS = {
    "sampler_name": "A sampler from /sdapi/v1/samplers; old combined names ('DPM++ 2M Karras') are split.",
    "scheduler": "A schedule type from /sdapi/v1/schedulers (name or label).",
    "init_images": "One image: base64, with or without a data: prefix.",
    "mask": "White = repaint (base64, with or without a data: prefix).",
    "override_settings": "For this request: sd_model_checkpoint (a title), CLIP_stop_at_last_layers, sd_vae.",
    "save_images": "true: saved to the studio's outputs and History like the UI's images.",
}


def _doc_model(name: str, defaults: dict[str, Any]) -> type[BaseModel]:
    specs: dict[str, Any] = {}
    for field_name, default in defaults.items():
        kind = _TYPES.get(field_name, type(default) | None if default is not None else str | None)
        extra = {"description": _DESCRIPTIONS[field_name]} if field_name in _DESCRIPTIONS else {}
        if field_name in _LIMITED:
            kind = int
            extra.update(_LIMITED[field_name])
        specs[field_name] = (kind, Field(default=default, **extra))
    return create_model(name, __config__=ConfigDict(extra="allow"), **specs)


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


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra describing a JSON request body with `model`'s schema."""
    schema = model.model_json_schema()
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

    def posted(path: str, function: Callable[[Any], Any], model: type[BaseModel] | None = None, **kw: Any) -> None:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                payload = await body(request)
            except ApiError as exc:
                return JSONResponse(exc.body, status_code=exc.status)
            return await call(function, payload)

        endpoint.__name__ = function.__name__
        extra = json_body(model) if model is not None else None
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
        return await call(service.progress)

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
    sd_vae: str | None = Field(default=None, description="Automatic, None or a file from /sdapi/v1/sd-vae")


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
