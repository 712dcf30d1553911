"""Shared test set-up: offline, no analytics, one demo-model cache for the whole run."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("STUDIO_CACHE", str(REPO / ".cache"))
# Dummy AWS settings so nothing can reach a real account; tests that use AWS point AWS_ENDPOINT_URL at moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
# The studio's start-up check for running SageMaker endpoints must not look for a real AWS account in tests.
os.environ["STUDIO_CHECK_ENDPOINTS"] = "false"


# ---- shared fixtures (one copy each) -----------------------------------------------------------------------------
import logging  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One in-process moto server for the whole test session; yields its base URL."""
    from studio.testing.moto import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with MotoServer() as server:
        yield server.url


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean moto state and an environment pointing boto3 at it (dummy credentials); yields the server URL."""
    from studio.testing.moto import moto_env, reset_moto

    reset_moto(moto_server)
    for key, value in moto_env(moto_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # No ~/.aws files: point them at nothing so a developer's real profile can never be picked up.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield moto_server
