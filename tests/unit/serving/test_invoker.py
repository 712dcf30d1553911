"""studio.serving.invoker: decode -> generate -> encode without a web server, the S3 policy on that path, the
error mapping, and the one rule that picks the served model."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from studio.config import EngineSettings, ServingSettings, load_serving_settings
from studio.engine import EngineError, EngineNotReady, GenerationCancelled, ModelLoadError
from studio.serving.invoker import Invoker, engine_settings, error_body, error_status, parse_json_body
from studio.testing.fakes import FakeEngine
from studio.testing.servers import REPO
from studio.testing.wire import FakeS3, gradient, png_b64
from studio.types import Limits, RequestError

BASE = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}


def test_invoker_runs_decode_generate_encode():
    engine = FakeEngine(loaded=True)
    invoker = Invoker(engine, ServingSettings(), s3_client=FakeS3())
    invocation = invoker.decode({**BASE, "count": 2})
    body = invoker.encode(invocation, invoker.generate(invocation))
    assert body["seeds"] == [1, 2] and len(body["images"]) == 2 and body["timings"]["encode"] > 0
    assert engine.requests[0].count == 2


def test_engine_limits_apply_to_decoding():
    invoker = Invoker(FakeEngine(loaded=True), ServingSettings(engine=EngineSettings(limits=Limits(max_steps=3))))
    with pytest.raises(RequestError, match="^steps: "):
        invoker.decode({**BASE, "steps": 4})


def test_s3_output_per_request_and_from_settings():
    s3 = FakeS3()
    invoker = Invoker(FakeEngine(loaded=True), ServingSettings(s3_output="s3://env-bucket/out"), s3_client=s3)
    quick = {**BASE, "sampler": "euler_a", "count": 2, "output_s3uri": "s3://req-bucket/images/"}
    invocation = invoker.decode(quick)
    body = invoker.encode(invocation, invoker.generate(invocation))
    assert len(body["result"]) == 2 and all(u.startswith("s3://req-bucket/images/") for u in body["result"])
    assert body["timings"]["encode"] > 0
    invocation = invoker.decode({"prompt": "x", "num_inference_steps": 2, "results": 1, "width": 64, "height": 64})
    (uri,) = invoker.encode(invocation, invoker.generate(invocation))["s3_loc"]
    assert uri.startswith("s3://env-bucket/out/")
    stored = s3.objects[("env-bucket", uri.removeprefix("s3://env-bucket/"))]
    assert Image.open(io.BytesIO(stored)).size == (64, 64)


def test_the_s3_policy_applies_to_every_read_and_write_of_a_request():
    png = base64.b64decode(png_b64(gradient(64, 64)))
    s3 = FakeS3({("inputs", "ok/a.png"): png, ("secret", "a.png"): png})
    settings = ServingSettings(s3_allowed_prefixes=("s3://inputs/ok/",), s3_output="s3://operator/out")
    invoker = Invoker(FakeEngine(loaded=True), settings, s3_client=s3)
    for payload, field in (
        ({**BASE, "input_image": "s3://secret/a.png"}, "input_image"),
        ({**BASE, "img": "s3://inputs/ok/a.png", "mask": "s3://secret/a.png"}, "mask"),
        ({**BASE, "input_image": "s3://inputs/ok/a.png", "output_s3uri": "s3://elsewhere/out"}, "output_s3uri"),
    ):
        with pytest.raises(RequestError) as caught:
            invoker.decode(payload)
        assert caught.value.field == field and "STUDIO_S3_ALLOWED_PREFIXES" in str(caught.value)
    assert ("get_object", "secret", "a.png") not in s3.calls
    # the operator's own STUDIO_S3_OUTPUT stays writable under a policy
    invocation = invoker.decode({**BASE, "input_image": "s3://inputs/ok/a.png", "dialect": "byoc"})
    (uri,) = invoker.encode(invocation, invoker.generate(invocation))["s3_loc"]
    assert uri.startswith("s3://operator/out/")


def test_an_invocation_with_a_forbidden_output_is_refused_by_the_writer_itself():
    """The policy is not a pre-check on the payload: an Invocation that skipped decode is still refused."""
    from studio.wire.codec import Invocation

    s3 = FakeS3()
    invoker = Invoker(FakeEngine(loaded=True), ServingSettings(s3_allowed_prefixes=("s3://outbox/",)), s3_client=s3)
    invocation = invoker.decode(BASE)
    forbidden = Invocation(invocation.request, invocation.dialect, s3_output="s3://elsewhere/x/")
    with pytest.raises(RequestError, match="^s3_output: .*STUDIO_S3_ALLOWED_PREFIXES"):
        invoker.encode(forbidden, invoker.generate(invocation))
    assert s3.calls == []


def test_generate_refuses_an_empty_result():
    class EmptyEngine(FakeEngine):
        def generate(self, request, on_progress=None, cancel=None, preview=None):
            from studio.types import GenerationResult

            return GenerationResult(images=[], seeds=[], infotexts=[], request=request)

    invoker = Invoker(EmptyEngine(loaded=True), ServingSettings())
    with pytest.raises(EngineError, match="no images"):
        invoker.generate(invoker.decode(BASE))


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b'{"prompt": "x",', "application/json", "body"),
        (b"\xff\xfe{}", "application/json", "body"),
        (b'{"prompt": "x"}', "text/plain", "content_type"),
        (b'{"prompt": "x"}', "application/x-www-form-urlencoded", "content_type"),
    ],
)
def test_parse_json_body_names_the_problem(body, content_type, field):
    with pytest.raises(RequestError) as caught:
        parse_json_body(body, content_type)
    assert caught.value.field == field


def test_parse_json_body_accepts_json_and_no_content_type():
    assert parse_json_body(b'{"prompt": "x"}', None) == {"prompt": "x"}
    assert parse_json_body('{"a": 1}', "application/json; charset=utf-8") == {"a": 1}


def test_error_status_and_body():
    bad = RequestError("steps", 0, "must be between 1 and 150")
    assert (error_status(bad), error_body(bad)) == (400, {"error": str(bad), "field": "steps"})
    assert error_status(EngineNotReady("loading")) == 503 and error_status(GenerationCancelled()) == 503
    assert (error_status(EngineError("OOM")), error_body(EngineError("OOM"))) == (500, {"error": "OOM"})
    assert error_body(ZeroDivisionError("x")) == {"error": "internal error: ZeroDivisionError: x"}
    json.dumps(error_body(bad))


def test_model_discovery(tmp_path):
    """The one rule: --model, else STUDIO_MODEL, else the model in SM_MODEL_DIR (model_dir), else the demo."""

    def chosen(argv, env, model_dir: Path | None = None) -> str:
        return engine_settings(load_serving_settings(argv, env), model_dir).model

    empty = tmp_path / "empty"
    empty.mkdir()
    assert chosen(["--model", "m"], {"STUDIO_MODEL": "x"}) == "m"
    assert chosen([], {"STUDIO_MODEL": "org/repo", "SM_MODEL_DIR": str(empty)}) == "org/repo"
    assert chosen([], {"SM_MODEL_DIR": str(empty)}) == "demo"
    diffusers_dir = tmp_path / "diffusers"
    (diffusers_dir / "code").mkdir(parents=True)
    (diffusers_dir / "model_index.json").write_text("{}")
    assert chosen([], {"SM_MODEL_DIR": str(diffusers_dir)}) == str(diffusers_dir)
    assert chosen([], {"SM_MODEL_DIR": str(empty)}, diffusers_dir) == str(diffusers_dir)  # the toolkit's model_dir
    assert chosen([], {"STUDIO_MODEL": "org/repo"}, diffusers_dir) == "org/repo"  # STUDIO_MODEL first, everywhere
    single = tmp_path / "single"
    (single / "code").mkdir(parents=True)
    (single / "code" / "inference.py").write_text("")
    (single / "dreamshaper.safetensors").write_bytes(b"0")
    assert chosen([], {"SM_MODEL_DIR": str(single)}) == str(single / "dreamshaper.safetensors")
    nested = tmp_path / "nested"
    (nested / "sd15").mkdir(parents=True)
    (nested / "sd15" / "model_index.json").write_text("{}")
    assert chosen([], {"SM_MODEL_DIR": str(nested)}) == str(nested / "sd15")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="no diffusers folder"):
        chosen([], {"SM_MODEL_DIR": str(junk)})
    (single / "other.ckpt").write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="several checkpoints"):
        chosen([], {"SM_MODEL_DIR": str(single)})


def test_engine_settings_keep_the_rest_of_the_engine_settings(tmp_path):
    settings = load_serving_settings(["--engine", "openvino", "--device", "cpu"], {"SM_MODEL_DIR": str(tmp_path)})
    chosen = engine_settings(settings)
    assert (chosen.kind, chosen.device, chosen.model) == ("openvino", "cpu", "demo")
    assert chosen.limits == settings.limits


def test_invoker_and_toolkit_import_no_web_framework_torch_or_boto3():
    code = (
        "import sys, studio.serving, studio.serving.invoker, studio.serving.toolkit, studio.wire; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'torch', 'diffusers', 'boto3', 'botocore',"
        " 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_prompt_list_makes_n_times_k_images_in_prompt_order():
    engine = FakeEngine(loaded=True)
    invoker = Invoker(engine, ServingSettings(), s3_client=FakeS3())
    payload = {"prompt": ["a panda", "an astronaut"], "height": 64, "width": 64, "num_images_per_prompt": 2}
    invocation = invoker.decode({**payload, "seed": 100})
    body = invoker.encode(invocation, invoker.generate(invocation))
    assert len(body["generated_images"]) == 4 and body["seeds"] == [100, 101, 102, 103]
    assert [text.split("\n")[0] for text in body["infotexts"]] == ["a panda"] * 2 + ["an astronaut"] * 2
    assert [(r.prompt, r.count, r.seed) for r in engine.requests] == [("a panda", 2, 100), ("an astronaut", 2, 102)]
    assert body["dialect"] == "hf_dlc"
    # a random seed is resolved once, so the images still have consecutive seeds
    body = invoker.encode(*(lambda inv: (inv, invoker.generate(inv)))(invoker.decode(payload)))
    first = body["seeds"][0]
    assert body["seeds"] == [first, first + 1, first + 2, first + 3]
