"""The Ray Serve deployment of the serving app (see studio.serving.ray, which builds, configures and runs it).

Each replica builds its engine once with studio.engines.build (the model picked by the serving rule) and loads it in
its constructor, so Serve routes to it only once the model is in memory; `check_health` fails whenever the model is
not loaded. The ASGI app is the serving app itself (studio.serving.app.create_app) around that engine, built on the
replica (`@serve.ingress()` with `__serve_build_asgi_app__`), with every response naming its replica.

Kept apart from studio.serving.ray because importing it imports Ray: the CLI prepares the environment of a local Ray
before that happens.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve

from studio.config import RaySettings
from studio.serving.app import create_app
from studio.serving.ray import DEPLOYMENT_NAME, ReplicaHeader

logger = logging.getLogger("studio.serving.ray")


def _replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (a test constructing the class directly)
        return "local"


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class StudioServing:
    """One replica: the engine, built and loaded once, behind the serving app (studio.serving.app.create_app)."""

    def __init__(self, settings: RaySettings):
        from studio import engines
        from studio.serving.invoker import engine_settings

        started = time.perf_counter()
        self.settings = settings
        self.replica = _replica_name()
        chosen = engine_settings(settings.serving)
        self.engine = engines.build(chosen)
        self.engine.load()  # a failure fails the constructor: Serve retries, then reports the deployment failed
        logger.info("replica %s: %s loaded in %.1fs", self.replica, chosen.model, time.perf_counter() - started)

    def __serve_build_asgi_app__(self) -> Any:
        """The serving app itself (routes, error mapping, body limit), around this replica's loaded engine."""
        app = create_app(self.engine, settings=self.settings.serving, load=False)
        app.add_middleware(ReplicaHeader, replica=self.replica)
        return app

    def check_health(self) -> None:
        """Health = model loaded (Serve replaces a replica whose check raises)."""
        status = self.engine.status()
        if not status.loaded:
            raise RuntimeError(f"replica {self.replica}: model not loaded ({status.error or 'loading'})")
