"""studio.serving.toolkit, the SageMaker PyTorch toolkit handlers: the engine built like the serving app builds it,
errors answered as the serving app's JSON (status on the request context, no traceback), Accept declined before
generating, prompt lists, a load failure that stops TorchServe, and the S3 allowed-prefix policy on every path
(engines.build returns a fake engine; S3 is a fake client behind studio.aws). The real DLC stack runs in
tests/integration/test_dlc_stack.py."""

from __future__ import annotations

import base64
import json
import sys
import types

import pytest

from studio import aws, engines
from studio.config import EngineKind
from studio.engine import EngineError, ModelLoadError
from studio.serving import toolkit
from studio.serving.invoker import Invoker
from studio.testing.fakes import FakeEngine
from studio.testing.wire import FakeS3, gradient, png_b64
from studio.types import RequestError
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


class Context:
    """TorchServe's request context as transform_fn uses it (set_response_status per request)."""

    def __init__(self) -> None:
        self.status: tuple[int, str] | None = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = (code, phrase)


def body(payload) -> bytes:
    return json.dumps(payload).encode()


def call(model, payload, *, content_type="application/json", accept="application/json"):
    """(status, JSON answer, content type) of one transform_fn call, as TorchServe would answer it."""
    context = Context()
    data = payload if isinstance(payload, bytes | str) else body(payload)
    answer, media = toolkit.transform_fn(model, data, content_type, accept, context)
    return (context.status or (200, "OK"))[0], json.loads(answer), media


def test_model_fn_builds_the_engine_like_the_serving_app(handlers, monkeypatch):
    """STUDIO_ENGINE=openvino reaches engines.build; the model comes from model_dir unless STUDIO_MODEL is set."""
    handlers.model_dir.mkdir()
    (handlers.model_dir / "model_index.json").write_text("{}")
    monkeypatch.setenv("STUDIO_ENGINE", "openvino")
    invoker = toolkit.model_fn(str(handlers.model_dir))
    assert isinstance(invoker, Invoker) and invoker.engine.status().loaded
    (chosen,) = handlers.built
    assert chosen.kind is EngineKind.OPENVINO and chosen.model == str(handlers.model_dir)
    status, answer, media = call(invoker, BASE)
    assert (status, answer["seeds"], answer["dialect"], media) == (200, [1], "native", "application/json")


def test_studio_model_comes_before_model_dir_as_in_the_serving_app(handlers, monkeypatch):
    handlers.model_dir.mkdir()
    (handlers.model_dir / "model_index.json").write_text("{}")
    monkeypatch.setenv("STUDIO_MODEL", "org/repo")
    toolkit.model_fn(str(handlers.model_dir))
    assert handlers.built[-1].model == "org/repo"


def test_errors_are_the_serving_apps_json_without_a_traceback(handlers):
    invoker = toolkit.model_fn(str(handlers.model_dir))
    for payload, content_type, field in (
        (b'{"prompt": "x"}', "text/csv", "content_type"),
        ({"prompt": "x", "steps": 0}, "application/json", "steps"),
        ({"prompt": "x", "width": 100}, "application/json", "width"),
        (b'{"prompt": ', "application/json", "body"),
        (b"\xff\xfe{}", "application/json", "body"),  # bytes that are not UTF-8 (the DLC decodes them earlier)
    ):
        status, answer, media = call(invoker, payload, content_type=content_type)
        assert (status, answer["field"], media) == (400, field, "application/json"), payload
        assert answer["error"].startswith(f"{field}: ") and "Traceback" not in answer["error"]
    failing = Invoker(FakeEngine(loaded=True, fail_with=EngineError("GPU fell off the bus")), invoker.settings)
    assert call(failing, BASE)[:2] == (500, {"error": "GPU fell off the bus"})


def test_an_unsupported_accept_is_declined_before_generating(handlers):
    invoker = toolkit.model_fn(str(handlers.model_dir))
    status, answer, _ = call(invoker, BASE, accept="image/png")
    assert (status, answer["field"]) == (400, "accept") and invoker.engine.requests == []
    for accept in ("application/json", "*/*", "image/png, application/json;q=0.9", None, ""):
        assert call(invoker, BASE, accept=accept)[0] == 200, accept


def test_without_a_context_the_toolkits_own_error_type_is_raised(handlers):
    invoker = toolkit.model_fn(str(handlers.model_dir))
    with pytest.raises(ToolkitError) as caught:
        toolkit.transform_fn(invoker, body({"prompt": "x", "steps": 0}), "application/json", "application/json")
    assert caught.value.status_code == 400 and json.loads(caught.value.message)["field"] == "steps"
    assert caught.value.phrase == "Bad Request"


def test_a_prompt_list_through_the_handlers(handlers):
    invoker = toolkit.model_fn(str(handlers.model_dir))
    payload = {"prompt": ["a panda", "an astronaut"], "height": 64, "width": 64, "num_images_per_prompt": 1}
    status, answer, _ = call(invoker, {**payload, "seed": 7})
    assert status == 200 and answer["dialect"] == "hf_dlc" and len(answer["generated_images"]) == 2
    assert answer["seeds"] == [7, 8]
    assert [r.prompt for r in invoker.engine.requests] == ["a panda", "an astronaut"]


def test_a_load_failure_is_logged_and_stops_torchserve_only(handlers, monkeypatch, capsys):
    def broken(settings):
        raise ModelLoadError("model_index.json is missing")

    monkeypatch.setattr(engines, "build", broken)
    stopped = []
    monkeypatch.setattr(toolkit, "stop_model_server", lambda: stopped.append(True) or False)
    with pytest.raises(ModelLoadError):
        toolkit.model_fn(str(handlers.model_dir))
    assert stopped == [True]
    assert f"{toolkit.LOAD_FAILED_MARK}: the model could not be loaded" in capsys.readouterr().err


def test_stop_model_server_leaves_other_parents_alone(monkeypatch):
    killed = []
    monkeypatch.setattr(toolkit.os, "kill", lambda pid, sig: killed.append(pid))
    assert toolkit.stop_model_server() is False  # pytest's parent is not TorchServe
    assert toolkit.stop_model_server(parent_pid=999_999_999) is False
    assert killed == []


@pytest.mark.parametrize("loaded", [False, True], ids=["before-model_fn", "after-model_fn"])
def test_s3_inputs_outside_the_allowed_prefixes_are_refused(handlers, monkeypatch, loaded):
    """The prefix check applies to decoding before model_fn (decode_request) and after it (transform_fn)."""
    monkeypatch.setenv("STUDIO_S3_ALLOWED_PREFIXES", "s3://inputs/ok/, s3://outbox")
    invoker = toolkit.model_fn(str(handlers.model_dir)) if loaded else None
    for payload, field in (
        ({**BASE, "input_image": "s3://secret/a.png"}, "input_image"),
        ({**BASE, "img": "s3://inputs/ok/a.png", "mask": "s3://secret/a.png"}, "mask"),
        ({**BASE, "input_image": "s3://inputs/ok/a.png", "output_s3uri": "s3://elsewhere/out/"}, "output_s3uri"),
        ({**BASE, "input_image": "s3://inputs/ok/a.png", "s3_output": "s3://outbox-2/out/"}, "s3_output"),
    ):
        if invoker is None:
            with pytest.raises(RequestError) as caught:
                toolkit.decode_request(body(payload), "application/json")
            error = {"field": caught.value.field, "error": str(caught.value)}
        else:
            status, error, _ = call(invoker, payload)
            assert status == 400
        assert error["field"] == field, payload
        assert "STUDIO_S3_ALLOWED_PREFIXES" in error["error"]
    assert {call[1] for call in handlers.s3.calls} <= {"inputs"}  # nothing outside was read or written
    invocation = toolkit.decode_request(body({**BASE, "input_image": "s3://inputs/ok/a.png"}), "application/json")
    assert invocation.request.image.size == (64, 64)
    if invoker is not None:
        _, answer, _ = call(invoker, {**BASE, "input_image": "s3://inputs/ok/a.png", "s3_output": "s3://outbox/r/"})
        assert answer["s3_uris"][0].startswith("s3://outbox/r/")


def test_the_writer_refuses_an_s3_output_outside_the_allowed_prefixes(handlers, monkeypatch):
    """The writer checks every object it writes, so even an Invocation that never went through the decoder's
    check cannot write outside the policy."""
    monkeypatch.setenv("STUDIO_S3_ALLOWED_PREFIXES", "s3://outbox")
    invoker = toolkit.model_fn(str(handlers.model_dir))
    decoded = toolkit.decode_request(body(BASE), "application/json")
    forbidden = Invocation(decoded.request, decoded.dialect, s3_output="s3://elsewhere/x/")
    with pytest.raises(RequestError) as caught:
        invoker.encode(forbidden, invoker.generate(forbidden))
    assert caught.value.field == "s3_output" and "STUDIO_S3_ALLOWED_PREFIXES" in str(caught.value)
    assert handlers.s3.calls == []
