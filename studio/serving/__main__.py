"""Run the serving app: `python -m studio.serving --model M --host H --port P`, or `serve` in the container.

SageMaker starts containers as `docker run IMAGE serve`; a leading "serve" argument is accepted and ignored.
Settings come from studio.config (flags and STUDIO_* variables, e.g. STUDIO_ENGINE=openvino); the engine from
studio.engines.build with the model picked by studio.models.serving_model — the same as the SageMaker toolkit
handlers (studio.serving.toolkit).
"""

from __future__ import annotations

import logging
import sys

from studio.config import ConfigError, load_serving_settings
from studio.engine import ModelLoadError
from studio.serving.invoker import engine_settings

logger = logging.getLogger("studio.serving")

# Keep-alive beyond SageMaker's 60 s invocation timeout, so its connections are not dropped between calls.
KEEP_ALIVE_SECONDS = 75


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # botocore/urllib3 debug lines carry signed headers (access key id, session token): never below INFO.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    """Parse settings, build the engine and serve until stopped; 2 for a configuration error."""
    try:
        settings = load_serving_settings(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        configure_logging("info")
        logger.error("%s", exc)
        return 2
    configure_logging(settings.log_level)
    from studio import engines  # the composition root: the heavy engine modules load only here

    try:
        chosen = engine_settings(settings)
        engine = engines.build(chosen)
    except (ConfigError, ModelLoadError) as exc:
        logger.error("%s", exc)
        return 2
    import uvicorn

    from studio.serving.app import create_app

    app = create_app(engine, settings=settings)
    logger.info("serving %s on %s:%d", chosen.model, settings.host, settings.port)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_keep_alive=KEEP_ALIVE_SECONDS
    )
    return 0


def serve_main() -> None:
    """Console-script entry point (`serve`)."""
    sys.exit(main())


if __name__ == "__main__":
    serve_main()
