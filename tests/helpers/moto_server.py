"""A moto server on 127.0.0.1 for AWS tests, reusable by any test module.

The server runs in-process (ThreadedMotoServer), so a test can monkeypatch moto's backends (e.g. let ml.g5 through
`FakeEndpointConfig.validate_instance_type`, or inject a failure) and the HTTP API reflects it.

Use from a test module (tests/ is on sys.path under pytest's default import mode):

    from helpers.moto_server import aws, moto_server  # noqa: F401  (fixtures)

    def test_something(aws):  # AWS_ENDPOINT_URL and dummy credentials point every boto3 client at moto
        ...

`moto_server` (session scope) starts one server and yields its URL; `aws` (function scope) resets all moto state,
sets the environment for boto3 and yields the URL.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.request
from collections.abc import Iterator

import pytest

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reset_moto(url: str) -> None:
    """Forget every resource in every moto backend (between tests)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def moto_env(url: str) -> dict[str, str]:
    """Environment that sends boto3 (and subprocesses using it) to the moto server with dummy credentials."""
    return {**AWS_ENV, "AWS_ENDPOINT_URL": url}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One in-process moto server for the whole test session; yields its base URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per AWS call is just noise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean moto state and an environment pointing boto3 at it; yields the server URL."""
    reset_moto(moto_server)
    for key, value in moto_env(moto_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # No ~/.aws files: point them at nothing so a developer's real profile can never be picked up.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    yield moto_server
