"""AUTOMATIC1111's HTTP API (`/sdapi/v1`) on the studio's engine, so the clients people already use drive it.

- `fields`: the one translation between A1111's request fields and `GenerationRequest` (validation stays in
  `GenerationRequest.validate`; its errors are renamed to the A1111 field that was sent);
- `service`: what each endpoint answers (`SdapiService`), over a `hosts.StudioHost` (the studio: shared queue with
  the UI, outputs/History) or a `hosts.EngineHost` (the serving app);
- `listing`, `pnginfo`, `images`, `errors`: A1111's list shapes and checkpoint titles, PNG Info, the img2img
  resize modes, and A1111's error shapes.

The FastAPI router is studio.serving.sdapi. This package imports no web framework and no torch.
"""

from studio.sdapi.errors import ApiError
from studio.sdapi.hosts import EngineHost, Host, StudioHost
from studio.sdapi.service import SdapiService

__all__ = ["ApiError", "EngineHost", "Host", "SdapiService", "StudioHost"]
