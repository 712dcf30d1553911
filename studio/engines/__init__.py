"""The only engine factory: `build(settings)` turns EngineSettings into an Engine (not loaded yet).

Every composition root uses it: app.py (and the Settings tab's backend switch), the serving app, the SageMaker
toolkit handlers and the bench. The heavy engine modules (torch, diffusers, openvino, boto3) are imported here
lazily, only for the backend asked for, so a remote-only studio never imports torch.
"""

from __future__ import annotations

from studio.config import Backend, EngineKind, EngineSettings
from studio.engine import Engine


def build(settings: EngineSettings) -> Engine:
    """The engine `settings` describe: local (torch, or OpenVINO on the CPU), a serving app over HTTP, or a
    SageMaker endpoint. Call `engine.load()` to make it ready."""
    settings.validate()
    if settings.backend is Backend.HTTP:
        from studio.remote import http_engine

        return http_engine(settings.url or "", limits=settings.limits)
    if settings.backend is Backend.SAGEMAKER:
        from studio.remote import sagemaker_engine

        return sagemaker_engine(settings.endpoint or "", limits=settings.limits)
    from studio.openvino_engine import local_engine_for  # TEMPORARY: replaced by engines.local / engines.openvino

    return local_engine_for(
        str(settings.kind),
        settings.model,
        precision=str(settings.precision),
        models_dir=settings.models_dir,
        device=str(settings.device),
        inpaint_model=settings.inpaint_model,
        limits=settings.limits,
    )


__all__ = ["Backend", "EngineKind", "EngineSettings", "build"]
