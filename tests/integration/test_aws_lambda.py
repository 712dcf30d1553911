"""studio.serving.aws_lambda on the demo model: real Lambda event shapes (Function URL, API Gateway HTTP API v2 with
a base64 body, REST/v1, direct invocation) give the serving app's answers and pixels; bad input is a 4xx naming the
field; the 6 MB answer limit, S3 output under the allowed-prefix policy, one load per environment, the timeout."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

pytest.importorskip("openvino")

from studio import engines  # noqa: E402
from studio.config import EngineSettings, ServingSettings, load_lambda_settings  # noqa: E402
from studio.serving.app import create_app  # noqa: E402
from studio.serving.aws_lambda import LambdaApp, environment_app, fit_response, http_request  # noqa: E402
from studio.testing.exports import exported_demo  # noqa: E402
from studio.testing.fakes import FakeEngine  # noqa: E402
from studio.testing.servers import UvicornThread, single_threaded_torch, wait_for  # noqa: E402
from studio.testing.wire import BAD_INPUT_IDS, BAD_INPUTS, FakeS3  # noqa: E402
from studio.types import RequestError  # noqa: E402

NATIVE = {"prompt": "a red apple", "negative_prompt": "blurry", "seed": 7, "width": 64, "height": 64, "steps": 3}
HF_DLC = {"inputs": "a lighthouse", "parameters": {"num_inference_steps": 3, "height": 64, "width": 64, "seed": 5}}


class Context:
    """Lambda's context object: the remaining time is what the handler reads."""

    def __init__(self, seconds: float = 900.0):
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def url_event(body: bytes | str, *, method: str = "POST", path: str = "/", content_type="application/json", b64=False):
    """A Function URL event (payload 2.0), as Lambda sends it."""
    raw = body.encode() if isinstance(body, str) else body
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": content_type, "host": "abc123.lambda-url.us-east-1.on.aws"} if content_type else {},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.lambda-url.us-east-1.on.aws",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "198.51.100.1"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "30/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1796040000000,
        },
        "body": base64.b64encode(raw).decode() if b64 else raw.decode(),
        "isBase64Encoded": b64,
    }


def api_gateway_v2_event(payload: dict) -> dict:
    """An API Gateway HTTP API event (payload 2.0) for route POST /generate on stage prod, body base64-encoded."""
    event = url_event(json.dumps(payload), path="/prod/generate", b64=True)
    event["routeKey"] = "POST /generate"
    event["requestContext"].update(
        routeKey="POST /generate", stage="prod", domainName="id.execute-api.us-east-1.amazonaws.com"
    )
    return event


def rest_event(payload: dict) -> dict:
    """An API Gateway REST API (payload 1.0) proxy event."""
    return {
        "resource": "/generate",
        "path": "/generate",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None,
        "requestContext": {"resourcePath": "/generate", "httpMethod": "POST", "stage": "prod"},
        "body": json.dumps(payload),
        "isBase64Encoded": False,
    }


def answer(response: dict) -> tuple[int, dict]:
    assert response["headers"]["content-type"] == "application/json" and response["isBase64Encoded"] is False
    return response["statusCode"], json.loads(response["body"])


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def export():
    return exported_demo("f32")


@pytest.fixture(scope="module")
def app(export):
    """The handler's app as Lambda's init builds it from STUDIO_* (OpenVINO by default), with a fake S3."""
    settings = load_lambda_settings({"STUDIO_MODEL": str(export), "STUDIO_OPENVINO_PRECISION": "f32"})
    built = environment_app(settings)
    lambda_app = LambdaApp(built.engine, settings, s3_client=FakeS3())
    with single_threaded_torch():
        yield lambda_app.start(wait=300)


@pytest.fixture(scope="module")
def serving(export):
    """The serving app on its own engine of the same model and settings."""
    engine = engines.build(EngineSettings(model=str(export), kind="openvino", precision="f32"))
    with single_threaded_torch(), UvicornThread(create_app(engine, settings=ServingSettings())) as server:
        wait_for(f"{server.url}/ping", timeout=300)
        yield server


def served(server, payload: dict) -> dict:
    response = requests.post(f"{server.url}/invocations", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_engine_is_openvino_from_the_prepared_ir(app):
    status = app.engine.status()
    assert status.loaded and status.dtype == "f32" and status.backend == "local"
    assert "(prepared)" in status.details["accelerator"] and "precision" in status.details
    code, body = answer(app(url_event("", method="GET", path="/ping"), Context()))
    assert code == 200 and body["status"] == "ok" and body["dtype"] == "f32"


def test_function_url_event_gives_the_serving_apps_pixels(app, serving):
    code, body = answer(app(url_event(json.dumps(NATIVE)), Context()))
    expected = served(serving, NATIVE)
    assert code == 200 and body["seeds"] == expected["seeds"] == [7] and body["dialect"] == "native"
    assert np.array_equal(pixels(body["images"][0]), pixels(expected["images"][0]))
    assert body["infotexts"] == expected["infotexts"]


def test_api_gateway_v2_base64_body_in_the_hf_dialect(app, serving):
    event = api_gateway_v2_event(HF_DLC)
    assert http_request(event).path == "/prod/generate"
    code, body = answer(app(event, Context()))
    expected = served(serving, HF_DLC)
    assert code == 200 and set(body) >= {"generated_images"} and body["dialect"] == "hf_dlc"
    assert np.array_equal(pixels(body["generated_images"][0]), pixels(expected["generated_images"][0]))


def test_rest_api_event(app, serving):
    code, body = answer(app(rest_event(NATIVE), Context()))
    assert code == 200
    assert np.array_equal(pixels(body["images"][0]), pixels(served(serving, NATIVE)["images"][0]))


def test_direct_invocation_answers_the_body_itself(app, serving):
    body = app(dict(NATIVE), Context())
    assert "statusCode" not in body and body["seeds"] == [7]
    assert np.array_equal(pixels(body["images"][0]), pixels(served(serving, NATIVE)["images"][0]))


@pytest.mark.parametrize(("payload", "field", "words"), BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_bad_input_is_a_4xx_naming_the_field(app, payload, field, words):
    if words == "no S3 client":  # this app has an (empty) S3 client: the object is missing instead
        words = "does not exist"
    code, body = answer(app(url_event(json.dumps(payload)), Context()))
    assert code == 400 and body["field"] == field and body["error"].startswith(f"{field}: ") and words in body["error"]
    direct = app(payload, Context())
    assert direct["statusCode"] == 400 and direct["field"] == field


@pytest.mark.parametrize(
    ("event", "status", "field"),
    [
        (url_event('{"prompt": "x",'), 400, "body"),
        (url_event('{"prompt": "x"}', content_type="text/plain"), 400, "content_type"),
        (url_event(b"\xff\xfe{}", b64=True), 400, "body"),
        ({**url_event("{}"), "body": "not base64!!", "isBase64Encoded": True}, 400, "body"),
        (url_event(""), 400, "body"),
        (url_event('"just a string"'), 400, "body"),
        (url_event("", method="PUT"), 405, None),
        (url_event("", method="GET", path="/nothing-here"), 404, None),
    ],
    ids=["malformed-json", "text-plain", "not-utf8", "bad-base64", "empty", "not-object", "put", "unknown-path"],
)
def test_http_level_errors(app, event, status, field):
    code, body = answer(app(event, Context()))
    assert code == status and body.get("field") == field and body["error"]


PAYLOAD = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "count": 8, "seed": 3}


def sizes(s3_output: str | None = None) -> tuple[int, int]:
    """(the answer's size with its images, without them): a limit between the two is what the tests need."""
    lambda_app = LambdaApp(FakeEngine(loaded=True), ServingSettings(), s3_client=FakeS3())
    body = lambda_app({**PAYLOAD, **({"s3_output": s3_output} if s3_output else {})}, Context())
    slim = {k: v for k, v in body.items() if k != "images"}
    return len(json.dumps(body)), len(json.dumps(slim)) + 200  # + the warning the slim answer carries


def test_answers_over_the_6_mb_limit_are_a_413_naming_s3_output():
    lambda_app = LambdaApp(FakeEngine(loaded=True), ServingSettings(), s3_client=FakeS3())
    lambda_app.max_response_bytes = sizes()[1]
    code, body = answer(lambda_app(url_event(json.dumps(PAYLOAD)), Context()))
    assert code == 413 and body["field"] == "s3_output" and "over AWS Lambda's 6 MB limit" in body["error"]
    assert body["error"].startswith("s3_output: the answer would be")
    direct = lambda_app(PAYLOAD, Context())
    assert direct["statusCode"] == 413 and direct["field"] == "s3_output"


def test_s3_output_answers_uris_under_the_allowed_prefix_policy():
    s3 = FakeS3()
    settings = ServingSettings(s3_allowed_prefixes=("s3://outbox/images/",))
    lambda_app = LambdaApp(FakeEngine(loaded=True), settings, s3_client=s3)
    full, slim = sizes("s3://outbox/images/")
    assert slim < full
    lambda_app.max_response_bytes = slim
    payload = {**PAYLOAD, "s3_output": "s3://outbox/images/"}
    body = lambda_app(payload, Context())
    assert "statusCode" not in body and len(body["s3_uris"]) == 8 and "images" not in body
    assert all(uri.startswith("s3://outbox/images/") for uri in body["s3_uris"])
    assert any("S3 only" in w for w in body["warnings"]) and len(s3.objects) == 8
    refused = lambda_app({**payload, "s3_output": "s3://elsewhere/x/"}, Context())
    assert refused["statusCode"] == 400 and refused["field"] == "s3_output"
    assert "STUDIO_S3_ALLOWED_PREFIXES" in refused["error"] and len(s3.objects) == 8


def test_fit_response_keeps_small_answers():
    assert fit_response({"images": ["x" * 10]}, 1000) == (200, {"images": ["x" * 10]})


def test_the_engine_loads_once_per_environment():
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate)
    loads = []
    lambda_app = LambdaApp(engine, ServingSettings(), load=lambda: (loads.append(1), engine.load()))
    lambda_app.start(wait=0.1)
    code, body = answer(lambda_app(url_event("", method="GET", path="/ping"), Context()))
    assert code == 503 and body["status"] == "loading"
    gate.set()
    for _ in range(3):
        assert "images" in lambda_app({"prompt": "x", "steps": 1, "width": 64, "height": 64}, Context())
    assert loads == [1]


def test_a_failed_load_answers_503_with_the_reason():
    lambda_app = LambdaApp(FakeEngine(load_error="weights are corrupt"), ServingSettings()).start(wait=5)
    body = lambda_app({"prompt": "x"}, Context())
    assert body["statusCode"] == 503 and "weights are corrupt" in body["error"]


def test_a_generation_near_the_function_timeout_is_stopped_with_a_504():
    engine = FakeEngine(loaded=True, delay=0.2)
    lambda_app = LambdaApp(engine, ServingSettings()).start()
    body = lambda_app({"prompt": "x", "steps": 100, "width": 64, "height": 64}, Context(seconds=5.5))
    assert body["statusCode"] == 504 and "timeout" in body["error"] and engine.cancelled.is_set()


def test_http_request_ignores_direct_events():
    assert http_request({"prompt": "x", "requestContext": "not a dict"}) is None
    with pytest.raises(RequestError, match="base64"):
        http_request({**url_event("{}"), "body": "@@", "isBase64Encoded": True})


def test_lambda_settings_default_to_openvino_unless_asked():
    assert load_lambda_settings({}).engine.kind.value == "openvino"
    assert load_lambda_settings({"STUDIO_ENGINE": "torch"}).engine.kind.value == "torch"
    settings = load_lambda_settings({"STUDIO_MODEL": "s3://models/sd15/", "STUDIO_S3_OUTPUT": "s3://out/x/"})
    assert settings.engine.model == "s3://models/sd15/" and settings.s3_output == "s3://out/x/"
    from studio.config import in_aws_lambda

    assert in_aws_lambda({"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"}) and not in_aws_lambda({})


def test_a_model_in_s3_is_copied_to_tmp_at_cold_start(aws, export, tmp_path, monkeypatch):
    """STUDIO_MODEL=s3://bucket/prefix: the export is copied into /tmp by the load, then loaded from its IR."""
    import tempfile

    import boto3

    from studio.engine import ModelLoadError
    from studio.serving.aws_lambda import download_model

    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    for path in export.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "models", f"sd/demo/{path.relative_to(export).as_posix()}")
    s3.put_object(Bucket="models", Key="single/model.safetensors", Body=b"0123456789")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    settings = load_lambda_settings({"STUDIO_MODEL": "s3://models/sd/demo", "STUDIO_OPENVINO_PRECISION": "f32"})
    lambda_app = environment_app(settings).start(wait=300)
    status = lambda_app.engine.status()
    assert status.loaded and "(prepared)" in status.details["accelerator"], (status, lambda_app.load_error)
    local = Path(status.details["location"])
    assert local.is_relative_to(tmp_path / "sd-studio-model") and (local / "openvino" / "manifest.json").is_file()
    assert "images" in lambda_app({"prompt": "x", "steps": 1, "width": 64, "height": 64}, Context())

    single = download_model("s3://models/single/model.safetensors", s3_client=s3, root=tmp_path / "one")
    assert single.name == "model.safetensors" and single.read_bytes() == b"0123456789"
    assert download_model("s3://models/single/model.safetensors", s3_client=s3, root=tmp_path / "one") == single
    with pytest.raises(ModelLoadError, match="no objects there"):
        download_model("s3://models/nothing/", s3_client=s3, root=tmp_path / "none")
    failed = environment_app(load_lambda_settings({"STUDIO_MODEL": "s3://missing-bucket/x"})).start(wait=60)
    body = failed({"prompt": "x"}, Context())
    assert body["statusCode"] == 503 and "missing-bucket" in body["error"]
