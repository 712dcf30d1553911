"""SD Studio composition root: parse settings → build the engine → build the UI → launch.

Heavy modules (torch/diffusers for the local engine, boto3 for remote ones) are imported only
when the chosen backend needs them, so a remote-only studio starts without torch.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from pathlib import Path

from studio.config import ConfigError, Settings, load_settings
from studio.engine import Engine, EngineError

logger = logging.getLogger("studio")

# Largest file a browser or API client may upload (input images and masks); gradio answers 413 above it and keeps
# nothing. Gradio's default is unlimited, which lets any client fill the temp folder.
MAX_UPLOAD = "50mb"


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


class EngineRegistry:
    """Builds engines for the Settings tab's backend switch; the local engine is built once and kept."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = None
        self._lock = threading.Lock()

    def local(self, model: str | None = None):
        from studio.openvino_engine import local_engine_for

        with self._lock:
            if self._local is None:
                self._local = local_engine_for(
                    self.settings.engine,
                    model if model is not None else self.settings.model,
                    precision=self.settings.openvino_precision,
                    models_dir=self.settings.models_dir,
                    device=self.settings.device,
                    inpaint_model=self.settings.inpaint_model,
                    limits=self.settings.limits,
                )
                return self._local, True
        if model:
            self._local.load(model)
        return self._local, False

    def build(self, backend: str, target: str) -> Engine:
        if backend == "local":
            engine, new = self.local(target or None)
            if new:
                engine.load()
            return engine
        if backend == "http":
            from studio.remote import http_engine

            if not target:
                raise EngineError("url: give the address of a running serving app, e.g. http://127.0.0.1:8080")
            return http_engine(target, limits=self.settings.limits)
        if backend == "sagemaker":
            from studio.remote import sagemaker_engine

            if not target:
                raise EngineError("endpoint: give a SageMaker endpoint name")
            return sagemaker_engine(target, limits=self.settings.limits)
        raise EngineError(f"backend: expected local, http or sagemaker, got {backend!r}")

    def list_models(self) -> list[str]:
        from studio.models import discover_models

        return ["demo", *(str(m.location) for m in discover_models(self.settings.models_dir))]


def create_studio(settings: Settings):
    """Build engine, store, controller and Blocks (not launched). Returns (blocks, controller)."""
    from studio.gallery import OutputStore
    from studio.ui import StudioController, build_ui

    registry = EngineRegistry(settings)
    if settings.backend == "local":
        engine, _ = registry.local()

        def load_in_background() -> None:
            try:
                engine.load()
            except EngineError as err:  # shown in Settings and on Generate; the app keeps running
                logger.error("%s", err)

        threading.Thread(target=load_in_background, name="model-load", daemon=True).start()
    else:
        engine = registry.build(settings.backend, settings.url or settings.endpoint or "")

    def list_endpoints() -> list[str]:
        from studio.remote import list_inservice_endpoints

        return list_inservice_endpoints()

    controller = StudioController(
        engine=engine,
        store=OutputStore(settings.outputs),
        engine_factory=registry.build,
        list_models=registry.list_models,
        list_endpoints=list_endpoints,
    )
    return build_ui(controller, settings.limits), controller


def launch(settings: Settings, *, prevent_thread_lock: bool = False):
    from studio.ui.blocks import CSS

    check_exposure(settings)
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
    )
    return blocks, controller


def warn_about_running_endpoints(controller) -> None:
    """Deployed endpoints cost money while they run: say so at start (only when AWS credentials are set up)."""
    from studio.config import parse_bool

    if not parse_bool("STUDIO_CHECK_ENDPOINTS", os.environ.get("STUDIO_CHECK_ENDPOINTS", "true")):
        return
    from studio.deploy import running_endpoints_warning

    notice = running_endpoints_warning()
    if notice:
        logger.warning("%s", notice)
        controller.notices.append(notice)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        settings = load_settings(argv)
        check_exposure(settings)
        blocks, controller = launch(settings, prevent_thread_lock=True)
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
