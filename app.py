"""SD Studio composition root: settings (studio.config) → engine (studio.engines.build) → UI (studio.ui) → launch.

Heavy modules (torch/diffusers for the local engine, boto3 for remote ones, gradio for the UI) are imported only
when needed, so a remote-only studio starts without torch and a refused start-up loads nothing heavy.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from studio import engines, hosting
from studio.config import Backend, ConfigError, EngineSettings, Settings, load_settings, parse_enum
from studio.engine import Engine, EngineError

if TYPE_CHECKING:
    import gradio as gr

    from studio.ui import StudioController

logger = logging.getLogger("studio")

# Largest file a browser or API client may upload (input images and masks); gradio answers 413 above it and keeps
# nothing. Gradio's default is unlimited, which lets any client fill the temp folder.
MAX_UPLOAD = "50mb"

# What the Settings tab says when a remote backend is chosen without its target.
MISSING_TARGET = {
    Backend.HTTP: "url: give the address of a running serving app, e.g. http://127.0.0.1:8080",
    Backend.SAGEMAKER: "endpoint: give a SageMaker endpoint name",
    Backend.LAMBDA: "function: give a Lambda function name, ARN or function URL",
}


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """'user:password', or a file with one user:password per line."""
    if not value:
        return None
    path = Path(value)
    lines = path.read_text().splitlines() if path.is_file() else [value]
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            where = f"{path}:{number}" if path.is_file() else "--auth"
            raise ConfigError(f"{where}: expected user:password")
        pairs.append((user, password))
    if not pairs:
        raise ConfigError(f"--auth: no user:password found in {value}")
    return pairs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """A studio reachable by others (public address or share link) needs a password unless --no-auth says so."""
    exposed = settings.share or not is_loopback(settings.host)
    if exposed and not settings.auth and not settings.no_auth:
        how = "--share" if settings.share else f"--host {settings.host}"
        raise ConfigError(
            f"{how} makes the studio reachable by other people: pass --auth user:password (or a file of them), "
            "or --no-auth if you really want it open"
        )


class EngineSwitch:
    """Builds the engine for each backend the Settings tab switches to, with studio.engines.build.

    The local engine is built once and kept: switching back to local reuses it (and loads the model named, if
    any), so its loaded pipelines are not thrown away. A remote engine is built fresh for its target.
    """

    def __init__(self, settings: EngineSettings, local: Engine | None = None):
        self.settings = settings
        self.local = local
        self._lock = threading.Lock()

    def __call__(self, backend: str, target: str) -> Engine:
        kind = parse_enum(Backend, "backend", backend)
        if kind is Backend.LOCAL:
            return self._local(target or None)
        if not target:
            raise EngineError(MISSING_TARGET[kind])
        return engines.build(self.settings.for_backend(kind, target))

    def _local(self, model: str | None) -> Engine:
        with self._lock:
            engine, new = self.local, self.local is None
            if engine is None:
                engine = self.local = engines.build(self.settings.for_backend(Backend.LOCAL, model or ""))
        if new:
            engine.load()
        elif model:
            engine.load(model)
        return engine


def list_models(settings: EngineSettings) -> list[str]:
    """What the Settings tab offers to load: the demo and the models dropped into --models-dir."""
    from studio.models import discover_models

    return ["demo", *(str(m.location) for m in discover_models(settings.models_dir))]


def list_loras(settings: EngineSettings) -> list[str]:
    """The LoRA names found in --models-dir/Lora, as `<lora:NAME:w>` tags take them: the file's stem (A1111's name),
    or its path under Lora/ when several files share that stem."""
    from collections import Counter

    from studio.models.lora import discover_loras

    found = discover_loras(settings.models_dir)
    stems = Counter(lora.name for lora in found)
    return [lora.name if stems[lora.name] == 1 else lora.relative for lora in found]


def list_vaes(settings: EngineSettings) -> list[str]:
    """The VAE files found in --models-dir/VAE, by the name a request's `vae` takes ("Automatic" not included)."""
    from studio.models.vae import discover_vaes

    return [vae.name for vae in discover_vaes(settings.models_dir)]


def list_upscalers(settings: EngineSettings) -> list[str]:
    """The hires fix upscalers: the built-in ones and the ESRGAN files in --models-dir/ESRGAN."""
    from studio.upscalers import upscaler_names

    return list(upscaler_names(settings.models_dir))


def list_endpoints() -> list[str]:
    """Every InService SageMaker endpoint in the default region (whoever deployed it), for the Settings tab."""
    from studio.deploy import inventory

    return sorted(info.name for info in inventory.list_endpoints(all_in_service=True))


def load_in_background(engine: Engine) -> None:
    """Load the local model without holding up the page: progress and errors show in Settings and on Generate."""

    def load() -> None:
        try:
            engine.load()
        except EngineError as err:  # shown in Settings and on Generate; the app keeps running
            logger.error("%s", err)

    threading.Thread(target=load, name="model-load", daemon=True).start()


def create_studio(settings: Settings) -> tuple[gr.Blocks, StudioController]:
    """Build engine, store, controller and Blocks (not launched). A remote engine is checked as it is built (a
    missing SageMaker endpoint is an EngineError); a local one loads in the background."""
    from studio.gallery import OutputStore
    from studio.jobs import JobTracker
    from studio.ui import StudioController, build_ui

    engine = engines.build(settings.engine)
    local = engine if settings.engine.backend is Backend.LOCAL else None
    if local is not None:
        load_in_background(local)
    controller = StudioController(
        engine=engine,
        store=OutputStore(settings.outputs),
        switch_engine=EngineSwitch(settings.engine, local),
        list_models=lambda: list_models(settings.engine),
        list_endpoints=list_endpoints,
        list_loras=lambda: list_loras(settings.engine),
        list_vaes=lambda: list_vaes(settings.engine),
        list_upscalers=lambda: list_upscalers(settings.engine),
        jobs=JobTracker(preview_every=settings.engine.live_preview_every),
    )
    return build_ui(controller, settings.limits), controller


def launch(settings: Settings, *, prevent_thread_lock: bool = False) -> tuple[gr.Blocks, StudioController]:
    from studio.ui.blocks import CSS

    check_exposure(settings)
    hosted = hosting.plan(settings)  # root path (given, or the SageMaker proxy's), TLS, share reachability
    settings.outputs.mkdir(parents=True, exist_ok=True)
    blocks, controller = create_studio(settings)
    blocks.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=parse_auth(settings.auth),
        share=settings.share,
        allowed_paths=[str(settings.outputs.resolve())],
        max_file_size=MAX_UPLOAD,
        css=CSS,
        prevent_thread_lock=prevent_thread_lock,
        show_error=True,
        **hosted.launch_kwargs,
    )
    hosting.check_share_link(blocks, settings)
    mount_api(blocks, controller, settings)
    hosted.announce()  # the URL to open behind a SageMaker proxy; a warning when exposed without TLS
    return blocks, controller


def mount_api(blocks: gr.Blocks, controller: StudioController, settings: Settings) -> None:
    """AUTOMATIC1111's HTTP API (/sdapi/v1) on the studio's own port, on the UI's engine queue (unless --no-api);
    with --auth it asks for the same credentials, by HTTP Basic (A1111's --api-auth)."""
    if not settings.api:
        return
    from studio.sdapi import SdapiService, StudioHost
    from studio.serving.sdapi import build_router, install

    service = SdapiService(StudioHost(controller, settings.limits, settings.engine.models_dir))
    install(blocks.app, build_router(service, credentials=parse_auth(settings.auth)))
    logger.info("A1111-compatible API at /sdapi/v1%s", " (HTTP Basic, the --auth credentials)" if settings.auth else "")


def warn_about_running_endpoints(controller: StudioController) -> None:
    """Deployed endpoints cost money while they run: say so at start (only when AWS credentials are set up)."""
    from studio.deploy import inventory

    notice = inventory.running_endpoints_warning()
    if notice:
        logger.warning("%s", notice)
        controller.notices.append(notice)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Tell gradio (which reads it when imported) not to call home; not a studio setting.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        settings = load_settings(argv)
        check_exposure(settings)
        blocks, controller = launch(settings, prevent_thread_lock=True)
        if settings.check_endpoints:
            threading.Thread(target=warn_about_running_endpoints, args=(controller,), daemon=True).start()
        blocks.block_thread()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except EngineError as err:  # e.g. --backend sagemaker --endpoint NAME that does not exist: no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
