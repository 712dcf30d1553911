"""studio.serving.toolkit, the SageMaker PyTorch toolkit handlers: the engine built like the serving app builds it,
errors mapped to the toolkit's status codes, and the S3 allowed-prefix policy on every path — before model_fn has
run as well as after (engines.build returns a fake engine; S3 is a fake client behind studio.aws)."""

from __future__ import annotations

import base64
import json
import sys
import types

import pytest

from studio import aws, engines
from studio.config import EngineKind, ServingSettings
from studio.engine import EngineError
from studio.serving import toolkit
from studio.serving.invoker import Invoker
from studio.testing.fakes import FakeEngine
from studio.testing.wire import FakeS3, gradient, png_b64
from studio.wire.codec import Invocation

BASE = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1, "strength": 0.5}
PNG = base64.b64decode(png_b64(gradient(64, 64)))


class ToolkitError(Exception):
    """Stands in for sagemaker_inference.errors.BaseInferenceToolkitError (the DLC turns it into the response)."""

    def __init__(self, status_code, message, phrase):
        super().__init__(status_code, message, phrase)
        self.status_code, self.message, self.phrase = status_code, message, phrase


@pytest.fixture
def handlers(monkeypatch, tmp_path):
    """The handler module as a fresh DLC process sees it: nothing loaded, S3 a FakeS3, the toolkit's error class."""
    for name in ("STUDIO_MODEL", "STUDIO_ENGINE", "STUDIO_DEVICE", "STUDIO_S3_OUTPUT", "STUDIO_S3_ALLOWED_PREFIXES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "unused"))
    for name in ("_settings", "_invoker", "_codec"):
        monkeypatch.setattr(toolkit, name, None)
    s3 = FakeS3({("inputs", "ok/a.png"): PNG, ("secret", "a.png"): PNG})
    monkeypatch.setattr(aws, "client", lambda service, region=None, **kwargs: s3)
    built = []

    def build(settings):
        built.append(settings)
        return FakeEngine()

    monkeypatch.setattr(engines, "build", build)
    errors = types.ModuleType("sagemaker_inference.errors")
    errors.BaseInferenceToolkitError = ToolkitError
    monkeypatch.setitem(sys.modules, "sagemaker_inference", types.ModuleType("sagemaker_inference"))
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", errors)
    return types.SimpleNamespace(s3=s3, built=built, model_dir=tmp_path / "model")


def body(payload) -> bytes:
    return json.dumps(payload).encode()


def invoke(payload, model) -> dict:
    invocation = toolkit.input_fn(body(payload), "application/json")
    answer, content_type = toolkit.output_fn(toolkit.predict_fn(invocation, model), "application/json")
    assert content_type == "application/json"
    return json.loads(answer)


def test_model_fn_builds_the_engine_like_the_serving_app(handlers, monkeypatch):
    """STUDIO_ENGINE=openvino reaches engines.build; the model comes from model_dir unless STUDIO_MODEL is set."""
    handlers.model_dir.mkdir()
    (handlers.model_dir / "model_index.json").write_text("{}")
    monkeypatch.setenv("STUDIO_ENGINE", "openvino")
    invoker = toolkit.model_fn(str(handlers.model_dir))
    assert isinstance(invoker, Invoker) and invoker.engine.status().loaded
    (chosen,) = handlers.built
    assert chosen.kind is EngineKind.OPENVINO and chosen.model == str(handlers.model_dir)
    assert invoke(BASE, invoker)["seeds"] == [1]


def test_studio_model_comes_before_model_dir_as_in_the_serving_app(handlers, monkeypatch):
    handlers.model_dir.mkdir()
    (handlers.model_dir / "model_index.json").write_text("{}")
    monkeypatch.setenv("STUDIO_MODEL", "org/repo")
    toolkit.model_fn(str(handlers.model_dir))
    assert handlers.built[-1].model == "org/repo"


def test_errors_map_to_the_toolkit_status_codes(handlers):
    invoker = toolkit.model_fn(str(handlers.model_dir))
    with pytest.raises(ToolkitError) as caught:
        toolkit.input_fn(b'{"prompt": "x"}', "text/csv")
    assert caught.value.status_code == 400 and json.loads(caught.value.message)["field"] == "content_type"
    with pytest.raises(ToolkitError) as caught:
        toolkit.input_fn(body({"prompt": "x", "steps": 0}), "application/json")
    assert caught.value.status_code == 400 and json.loads(caught.value.message)["field"] == "steps"
    invocation = toolkit.input_fn(body(BASE), "application/json")
    failing = Invoker(FakeEngine(loaded=True, fail_with=EngineError("GPU fell off the bus")), invoker.settings)
    with pytest.raises(ToolkitError) as caught:
        toolkit.predict_fn(invocation, failing)
    assert caught.value.status_code == 500 and json.loads(caught.value.message) == {"error": "GPU fell off the bus"}
    assert caught.value.phrase == "Internal Server Error"
    with pytest.raises(ToolkitError) as caught:
        toolkit.output_fn(toolkit.predict_fn(invocation, invoker), "image/png")
    assert caught.value.status_code == 400 and json.loads(caught.value.message)["field"] == "accept"


@pytest.mark.parametrize("loaded", [False, True], ids=["before-model_fn", "after-model_fn"])
def test_s3_inputs_outside_the_allowed_prefixes_are_refused(handlers, monkeypatch, loaded):
    """Defect 4: input_fn used to decode without the prefix check when no invoker was loaded."""
    monkeypatch.setenv("STUDIO_S3_ALLOWED_PREFIXES", "s3://inputs/ok/, s3://outbox")
    invoker = toolkit.model_fn(str(handlers.model_dir)) if loaded else None
    for payload, field in (
        ({**BASE, "input_image": "s3://secret/a.png"}, "input_image"),
        ({**BASE, "img": "s3://inputs/ok/a.png", "mask": "s3://secret/a.png"}, "mask"),
        ({**BASE, "input_image": "s3://inputs/ok/a.png", "output_s3uri": "s3://elsewhere/out/"}, "output_s3uri"),
        ({**BASE, "input_image": "s3://inputs/ok/a.png", "s3_output": "s3://outbox-2/out/"}, "s3_output"),
    ):
        with pytest.raises(ToolkitError) as caught:
            toolkit.input_fn(body(payload), "application/json")
        error = json.loads(caught.value.message)
        assert caught.value.status_code == 400 and error["field"] == field, payload
        assert "STUDIO_S3_ALLOWED_PREFIXES" in error["error"]
    assert {call[1] for call in handlers.s3.calls} <= {"inputs"}  # nothing outside was read or written
    invocation = toolkit.input_fn(body({**BASE, "input_image": "s3://inputs/ok/a.png"}), "application/json")
    assert invocation.request.image.size == (64, 64)
    if invoker is not None:
        answer = invoke({**BASE, "input_image": "s3://inputs/ok/a.png", "s3_output": "s3://outbox/r/"}, invoker)
        assert answer["s3_uris"][0].startswith("s3://outbox/r/")


@pytest.mark.parametrize("loaded", [False, True], ids=["before-model_fn", "after-model_fn"])
def test_output_fn_refuses_an_s3_output_outside_the_allowed_prefixes(handlers, monkeypatch, loaded):
    """The writer checks every object it writes, so even an Invocation that never went through input_fn's check
    cannot write outside the policy."""
    monkeypatch.setenv("STUDIO_S3_ALLOWED_PREFIXES", "s3://outbox")
    unloaded = Invoker(FakeEngine(loaded=True), ServingSettings())  # what predict_fn is given; output_fn has none
    invoker = toolkit.model_fn(str(handlers.model_dir)) if loaded else unloaded
    decoded = toolkit.input_fn(body(BASE), "application/json")
    forbidden = Invocation(decoded.request, decoded.dialect, s3_output="s3://elsewhere/x/")
    with pytest.raises(ToolkitError) as caught:
        toolkit.output_fn(toolkit.predict_fn(forbidden, invoker), "application/json")
    error = json.loads(caught.value.message)
    assert caught.value.status_code == 400 and error["field"] == "s3_output"
    assert "STUDIO_S3_ALLOWED_PREFIXES" in error["error"]
    assert handlers.s3.calls == []
