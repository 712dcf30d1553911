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
