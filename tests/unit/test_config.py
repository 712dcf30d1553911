"""Settings parsing: flags over STUDIO_* env, explicit bool/int parsing, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.config import ConfigError, load_settings


def test_defaults():
    s = load_settings([], environ={})
    assert (s.host, s.port, s.engine.device, s.engine.backend, s.outputs, s.engine.model) == (
        "127.0.0.1", 7860, "auto", "local", Path("outputs"), None)


def test_env_then_flag_precedence():
    env = {"STUDIO_PORT": "9000", "STUDIO_MODEL": "demo", "STUDIO_SHARE": "false", "STUDIO_MAX_STEPS": "50"}
    s = load_settings([], environ=env)
    assert s.port == 9000 and s.engine.model == "demo" and s.share is False and s.limits.max_steps == 50
    s = load_settings(["--port", "9100"], environ=env)
    assert s.port == 9100


@pytest.mark.parametrize(("env", "name"), [({"STUDIO_PORT": "80a"}, "STUDIO_PORT"),
                                           ({"STUDIO_SHARE": "maybe"}, "STUDIO_SHARE"),
                                           ({"STUDIO_MAX_WIDTH": "big"}, "STUDIO_MAX_WIDTH")])
def test_bad_env_values_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        load_settings([], environ=env)


def test_backend_needs_target():
    with pytest.raises(ConfigError, match="--url"):
        load_settings(["--backend", "http"], environ={})
    with pytest.raises(ConfigError, match="--endpoint"):
        load_settings(["--backend", "sagemaker"], environ={})
    assert load_settings(["--backend", "http", "--url", "http://127.0.0.1:8080"], environ={}).engine.url


def test_exposure_needs_auth():
    from app import check_exposure, parse_auth

    with pytest.raises(ConfigError, match="--auth"):
        check_exposure(load_settings(["--host", "0.0.0.0"], environ={}))
    with pytest.raises(ConfigError, match="--auth"):
        check_exposure(load_settings(["--share"], environ={}))
    check_exposure(load_settings(["--host", "0.0.0.0", "--auth", "me:pw"], environ={}))
    check_exposure(load_settings(["--host", "0.0.0.0", "--no-auth"], environ={}))
    check_exposure(load_settings([], environ={}))
    assert parse_auth("me:secret:x") == [("me", "secret:x")]
    with pytest.raises(ConfigError):
        parse_auth("nocolon")


def test_engine_choice():
    assert load_settings([], environ={}).engine.kind == "torch"
    s = load_settings(["--engine", "openvino", "--openvino-precision", "f32"], environ={})
    assert (s.engine.kind, s.engine.precision) == ("openvino", "f32")
    with pytest.raises(ConfigError, match="STUDIO_ENGINE"):
        load_settings([], environ={"STUDIO_ENGINE": "tensorrt"})
    with pytest.raises(ConfigError, match="--engine"):
        load_settings(["--engine", "tensorrt"], environ={})
    with pytest.raises(ConfigError, match="STUDIO_OPENVINO_PRECISION"):
        load_settings([], environ={"STUDIO_OPENVINO_PRECISION": "int4"})
    with pytest.raises(ConfigError, match="--openvino-precision"):
        load_settings(["--openvino-precision", "int4"], environ={})


def test_check_endpoints_is_a_setting():
    """The start-up check for running SageMaker endpoints is Settings.check_endpoints (app.py reads no env)."""
    assert load_settings([], environ={}).check_endpoints is True
    assert load_settings([], environ={"STUDIO_CHECK_ENDPOINTS": "false"}).check_endpoints is False
    with pytest.raises(ConfigError, match="STUDIO_CHECK_ENDPOINTS"):
        load_settings([], environ={"STUDIO_CHECK_ENDPOINTS": "sometimes"})


def test_for_backend_points_the_engine_settings_elsewhere():
    """The Settings tab's backend switch: same limits and local options, another backend and target."""
    base = load_settings(["--model", "demo", "--device", "cpu"], environ={"STUDIO_MAX_STEPS": "40"}).engine
    http = base.for_backend("http", " http://127.0.0.1:8080 ")
    assert (http.backend, http.url, http.limits.max_steps) == ("http", "http://127.0.0.1:8080", 40)
    sagemaker = base.for_backend("sagemaker", "sd-1")
    assert (sagemaker.backend, sagemaker.endpoint, sagemaker.target) == ("sagemaker", "sd-1", "sd-1")
    assert base.for_backend("local", "").model == "demo"  # blank: keep the configured model
    assert base.for_backend("local", "other").model == "other"
    with pytest.raises(ConfigError, match="backend"):
        base.for_backend("ftp", "x")


def test_live_preview_interval_flag_env_and_bad_values():
    from studio.config import DEFAULT_LIVE_PREVIEW_EVERY, load_serving_settings

    assert load_settings([], environ={}).engine.live_preview_every == DEFAULT_LIVE_PREVIEW_EVERY
    assert load_settings(["--live-preview-every", "0"], environ={}).engine.live_preview_every == 0
    assert load_serving_settings([], environ={"STUDIO_LIVE_PREVIEW_EVERY": "5"}).engine.live_preview_every == 5
    with pytest.raises(ConfigError, match="--live-preview-every"):
        load_settings(["--live-preview-every", "-1"], environ={})
    with pytest.raises(ConfigError, match="STUDIO_LIVE_PREVIEW_EVERY"):
        load_settings([], environ={"STUDIO_LIVE_PREVIEW_EVERY": "often"})
