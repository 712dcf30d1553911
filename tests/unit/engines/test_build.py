"""studio.engines.build: the only engine factory. It picks the engine the settings describe, imports only that
engine's modules (a remote-only studio never imports torch), and every engine implements load(model=None)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from studio import engines
from studio.config import ConfigError, EngineSettings
from studio.engine import Engine, EngineError
from studio.testing.servers import REPO, free_port

HEAVY = ("torch", "diffusers", "openvino", "boto3")


def imported_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_factory_is_light():
    assert imported_after("import studio.engines, studio.remote") == []


def test_a_remote_only_studio_does_not_import_torch():
    code = (
        "from studio.engines import build; from studio.config import EngineSettings; "
        "build(EngineSettings(backend='http', url='http://127.0.0.1:9')).status()"
    )
    assert imported_after(code) == []


def test_a_torch_engine_does_not_import_openvino():
    code = "from studio.engines import build; from studio.config import EngineSettings; build(EngineSettings())"
    imported = imported_after(code)
    assert "torch" in imported and "openvino" not in imported


def test_http_backend_builds_a_remote_engine():
    engine = engines.build(EngineSettings(backend="http", url="http://user:pw@127.0.0.1:9/"))
    assert isinstance(engine, Engine) and engine.backend == "http"
    assert "pw" not in engine.name


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="--url"):
        engines.build(EngineSettings(backend="http"))
    with pytest.raises(ConfigError, match="--endpoint"):
        engines.build(EngineSettings(backend="sagemaker"))


def test_remote_load_refuses_a_model_and_checks_the_target():
    engine = engines.build(EngineSettings(backend="http", url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(EngineError, match="the http backend has no local model"):
        engine.load("demo")
    with pytest.raises(EngineError, match="unreachable"):
        engine.load()


def test_old_import_paths_name_the_same_classes():
    from studio import local_engine, remote
    from studio.engines import local, transports
    from studio.engines import remote as engines_remote

    assert local_engine.LocalEngine is local.LocalEngine
    assert remote.RemoteEngine is engines_remote.RemoteEngine and remote.http_engine is engines_remote.http_engine
    assert remote.sagemaker_engine is engines_remote.sagemaker_engine
    for name in ("Backoff", "HttpTransport", "SageMakerRealtime", "SageMakerAsync", "make_runtime_client"):
        assert getattr(remote, name) is getattr(transports, name)
