"""The only engine factory: `build(settings)` turns EngineSettings into an Engine (not loaded yet).

Every composition root uses it: app.py (and the Settings tab's backend switch), the serving app, the SageMaker
toolkit handlers and the bench. The engine modules are imported here lazily, only for the backend asked for:
`local` (torch, diffusers), `openvino` (the CPU fast path, a post-load hook of the local engine), `remote` and
`transports` (HTTP and SageMaker; boto3 only when a client is built), so a remote-only studio never imports torch.
"""

from __future__ import annotations

from studio.config import Backend, ConfigError, EngineKind, EngineSettings
from studio.engine import Engine, ModelLoadError


def build(settings: EngineSettings) -> Engine:
    """The engine `settings` describe: local (torch, or OpenVINO on the CPU), a serving app over HTTP, or a
    SageMaker endpoint. Call `engine.load()` to make it ready. Raises ConfigError for inconsistent settings."""
    settings.validate()
    if settings.backend is Backend.HTTP:
        from studio.engines.remote import http_engine

        return http_engine(settings.url or "", limits=settings.limits)
    if settings.backend is Backend.SAGEMAKER:
        from studio.engines.remote import sagemaker_engine

        return sagemaker_engine(settings.endpoint or "", limits=settings.limits)
    if settings.backend is Backend.LAMBDA:
        from studio.engines.remote import lambda_engine

        return lambda_engine(settings.function or "", limits=settings.limits)
    from studio.engines.local import LocalEngine

    accelerator = None
    if settings.kind is EngineKind.OPENVINO:
        if settings.compile_unet:
            raise ConfigError("--compile: the OpenVINO engine replaces the torch UNet (use --engine torch)")
        try:
            from studio.engines.openvino import OpenVINOAccelerator
        except ImportError as exc:
            raise ModelLoadError(
                f"the OpenVINO engine needs the openvino package: pip install openvino ({exc})"
            ) from exc
        accelerator = OpenVINOAccelerator(
            settings.precision,
            settings.openvino_cache,
            static_shapes=settings.openvino_static_shapes,
            weights=settings.openvino_weights,
        )
    return LocalEngine(
        settings.model,
        models_dir=settings.models_dir,
        device=settings.device,
        inpaint_model=settings.inpaint_model,
        limits=settings.limits,
        accelerator=accelerator,
        compile_unet=settings.compile_unet,
    )


__all__ = ["Backend", "EngineKind", "EngineSettings", "build"]
