"""moto on 127.0.0.1 for tests and the bench: an in-process ThreadedMotoServer, its reset, and the environment that
points boto3 at it with dummy credentials.

The server runs in-process, so a test can monkeypatch moto's backends (e.g. let ml.g5 through
`FakeEndpointConfig.validate_instance_type`, or inject a failure) and the HTTP API reflects it. The pytest fixtures
`moto_server` (session) and `aws` (per test: reset + environment) are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

from studio.testing.servers import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def reset_moto(url: str) -> None:
    """Forget every resource in every moto backend (between tests)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def moto_env(url: str) -> dict[str, str]:
    """Environment that sends boto3 (and subprocesses using it) to the moto server with dummy credentials."""
    return {**AWS_ENV, "AWS_ENDPOINT_URL": url}


class MotoServer:
    """moto's ThreadedMotoServer (S3, SageMaker control plane, ...) on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per AWS call is just noise
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> MotoServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        reset_moto(self.url)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def aws_env(endpoint_url: str, *, runtime_url: str | None = None) -> Iterator[None]:
    """Point every boto3 client at `endpoint_url` (AWS_ENDPOINT_URL) and the SageMaker runtime at `runtime_url`
    (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, boto3's service-specific variable), with dummy credentials."""
    values = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if runtime_url:
        values["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = runtime_url
    saved = {key: os.environ.get(key) for key in [*values, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_SESSION_TOKEN"]}
    os.environ.update(values)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    if not runtime_url:
        os.environ.pop("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
