"""studio.serving: a real uvicorn on 127.0.0.1 with the demo model (and fakes for load/failure cases)."""

from __future__ import annotations

import base64
import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import requests
from PIL import Image
from test_wire import BAD_INPUTS, FakeS3, gradient, png_b64

from studio import serving
from studio.engine import EngineError
from studio.serving import ServingSettings, create_app
from studio.testing.fakes import FakeEngine
from studio.testing.servers import REPO, SINGLE_THREAD_ENV, UvicornThread, single_threaded_torch, wait_for
from studio.types import GenerationResult, RequestError

SMALL = {"width": 64, "height": 64, "steps": 2}
VALID = {"prompt": "a red apple", "seed": 7, **SMALL}


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def post(url: str, payload=None, **kwargs) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def demo_server():
    """The serving app on the real LocalEngine with the demo model, in a uvicorn thread."""
    from studio.local_engine import LocalEngine

    engine = LocalEngine("demo", device="cpu")
    app = create_app(engine, settings=ServingSettings(max_body_bytes=1_000_000), s3_client=FakeS3())
    with single_threaded_torch(), UvicornThread(app) as server:
        wait_for(f"{server.url}/ping", timeout=120)
        yield server


# ---- /ping ----------------------------------------------------------------------------------------------------
def test_ping_503_while_loading_then_200():
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate)
    with UvicornThread(create_app(engine, settings=ServingSettings())) as server:
        response = requests.get(f"{server.url}/ping", timeout=5)
        assert response.status_code == 503 and response.json()["status"] == "loading"
        blocked = post(server.url, VALID)
        assert blocked.status_code == 503 and "not loaded" in blocked.json()["error"]
        gate.set()
        assert wait_for(f"{server.url}/ping", timeout=5).json()["status"] == "ok"
        assert post(server.url, VALID).status_code == 200


def test_load_failure_keeps_ping_503_with_the_error():
    engine = FakeEngine(load_error="demo: weights file is corrupt")
    with UvicornThread(create_app(engine, settings=ServingSettings())) as server:
        for _ in range(5):
            response = requests.get(f"{server.url}/ping", timeout=5)
            assert response.status_code == 503
            time.sleep(0.1)
        assert response.json()["status"] == "error"
        assert "weights file is corrupt" in response.json()["error"]
        failed = post(server.url, VALID)
        assert failed.status_code == 503 and "weights file is corrupt" in failed.json()["error"]


# ---- engine failures ------------------------------------------------------------------------------------------
def test_engine_errors_become_500_with_the_message_and_server_recovers():
    engine = FakeEngine(loaded=True, fail_with=EngineError("CUDA out of memory while decoding"))
    with UvicornThread(create_app(engine, settings=ServingSettings(), load=False)) as server:
        response = post(server.url, VALID)
        assert response.status_code == 500
        assert response.json() == {"error": "CUDA out of memory while decoding"}
        engine.fail_with = ZeroDivisionError("division by zero")
        response = post(server.url, VALID)
        assert response.status_code == 500
        assert response.json()["error"] == "internal error: ZeroDivisionError: division by zero"
        engine.fail_with = None
        assert post(server.url, VALID).status_code == 200


def test_empty_result_is_never_a_200():
    class EmptyEngine(FakeEngine):
        def generate(self, request, on_progress=None, cancel=None):
            return GenerationResult(images=[], seeds=[], infotexts=[], request=request)

    with UvicornThread(create_app(EmptyEngine(loaded=True), settings=ServingSettings(), load=False)) as server:
        response = post(server.url, VALID)
        assert response.status_code == 500 and "no images" in response.json()["error"]


def test_client_disconnect_cancels_the_generation():
    engine = FakeEngine(loaded=True, delay=0.05)
    with UvicornThread(create_app(engine, settings=ServingSettings(), load=False)) as server:
        with pytest.raises(requests.Timeout):
            requests.post(f"{server.url}/invocations", json={**VALID, "steps": 100}, timeout=0.5)
        assert engine.cancelled.wait(5), "the engine was not told to stop after the client went away"
        assert post(server.url, VALID).status_code == 200


# ---- S3 output ------------------------------------------------------------------------------------------------
def test_s3_output_per_request_and_from_settings():
    s3 = FakeS3()
    engine = FakeEngine(loaded=True)
    settings = ServingSettings(s3_output="s3://env-bucket/out")
    with UvicornThread(create_app(engine, settings=settings, s3_client=s3, load=False)) as server:
        quick = {"prompt": "x", "steps": 2, "sampler": "euler_a", "width": 64, "height": 64, "count": 2, "seed": 1}
        body = post(server.url, {**quick, "output_s3uri": "s3://req-bucket/images/"}).json()
        assert len(body["result"]) == 2 and all(u.startswith("s3://req-bucket/images/") for u in body["result"])
        byoc = post(server.url, {"prompt": "x", "num_inference_steps": 2, "results": 1, "width": 64, "height": 64})
        (uri,) = byoc.json()["s3_loc"]
        assert uri.startswith("s3://env-bucket/out/")
        key = uri.removeprefix("s3://env-bucket/")
        assert Image.open(io.BytesIO(s3.objects[("env-bucket", key)])).size == (64, 64)


# ---- the demo model over HTTP ---------------------------------------------------------------------------------
def test_ping_reports_the_loaded_model(demo_server):
    body = requests.get(f"{demo_server.url}/ping", timeout=5).json()
    assert body["status"] == "ok" and body["model"] == "demo"


def test_native_txt2img(demo_server):
    body = post(demo_server.url, {**VALID, "count": 2, "cfg_scale": 5}).json()
    assert body["seeds"] == [7, 8] and body["backend"] == "local" and body["model"] == "demo"
    images = [decode_png(text) for text in body["images"]]
    assert [i.size for i in images] == [(64, 64), (64, 64)]
    assert "Seed: 7" in body["infotexts"][0] and images[0].info["parameters"] == body["infotexts"][0]
    assert body["timings"]["encode"] > 0


def test_quick_kit_img2img(demo_server):
    payload = {"prompt": "a cat", "steps": 2, "sampler": "euler_a", "seed": 1024, "count": 1}
    payload["input_image"] = png_b64(gradient(64, 48))
    body = post(demo_server.url, payload).json()
    assert body["task"] == "img2img" and decode_png(body["images"][0]).size == (64, 48)


def test_hf_dlc_dialect(demo_server):
    payload = {"prompt": "a boat", "num_images_per_prompt": 2, "num_inference_steps": 2, "guidance_scale": 7.5}
    response = post(demo_server.url, {**payload, "width": 64, "height": 64})
    body = response.json()
    assert response.status_code == 200 and "images" not in body
    assert len(body["generated_images"]) == 2 and decode_png(body["generated_images"][1]).size == (64, 64)


def test_byoc_inpaint_with_base64_image_and_mask(demo_server):
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 8, 48, 40))
    payload = {"prompt": "a hat", "img": png_b64(gradient(64, 48)), "mask": png_b64(mask), "strength": 0.8}
    body = post(demo_server.url, {**payload, "num_inference_steps": 2, "width": 64, "height": 48}).json()
    assert body["task"] == "inpaint" and decode_png(body["images"][0]).size == (64, 48)


def test_native_inpaint_gives_the_requested_size(demo_server):
    payload = {**VALID, "width": 96, "height": 64, "input_image": png_b64(gradient(128, 80))}
    payload["mask_image"] = png_b64(gradient(128, 80, "L"))
    body = post(demo_server.url, payload).json()
    assert body["task"] == "inpaint" and decode_png(body["images"][0]).size == (96, 64)


@pytest.mark.parametrize(
    ("payload", "field", "words"), BAD_INPUTS, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_400_naming_the_field_then_serving_continues(demo_server, payload, field, words):
    if words == "no S3 client":  # this server has an (empty) S3 client: the object is missing instead
        words = "does not exist"
    response = post(demo_server.url, payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == field and body["error"].startswith(f"{field}: ") and words in body["error"]
    assert post(demo_server.url, VALID).status_code == 200


@pytest.mark.parametrize(
    ("data", "headers", "status", "field"),
    [
        (b'{"prompt": "x",', {"Content-Type": "application/json"}, 400, "body"),
        (b"\xff\xfe{}", {"Content-Type": "application/json"}, 400, "body"),
        (b'{"prompt": "x"}', {"Content-Type": "text/plain"}, 400, "content_type"),
        (b'{"prompt": "x"}', {"Content-Type": "application/x-www-form-urlencoded"}, 400, "content_type"),
        (b'"just a string"', {"Content-Type": "application/json"}, 400, "body"),
        (b"x" * 1_000_001, {"Content-Type": "application/json"}, 413, "body"),
        ((b"x" * 100_000 for _ in range(12)), {"Content-Type": "application/json"}, 413, "body"),  # chunked
    ],
    ids=["malformed-json", "not-utf8", "text-plain", "form", "not-object", "too-big", "too-big-chunked"],
)
def test_http_level_errors_then_serving_continues(demo_server, data, headers, status, field):
    response = requests.post(f"{demo_server.url}/invocations", data=data, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert post(demo_server.url, VALID).status_code == 200


def test_missing_content_type_is_read_as_json(demo_server):
    response = requests.post(
        f"{demo_server.url}/invocations", data=b'{"prompt": "x", "steps": 2, "width": 64, "height": 64}'
    )
    assert response.status_code == 200, response.text


# ---- the SageMaker PyTorch-toolkit handler (code/inference.py) ---------------------------------------------------
def test_toolkit_handler_runs_the_same_path_as_serving(demo_server, tmp_path, monkeypatch):
    from studio import sagemaker_inference as handler
    from studio.models import demo_model_dir

    model_dir = tmp_path / "model"  # what model.tar.gz unpacks to: weights at the top, code/ beside them
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text("")
    for item in demo_model_dir().iterdir():
        (model_dir / item.name).symlink_to(item)
    monkeypatch.setattr(handler, "_invoker", None)
    monkeypatch.setattr(handler, "_settings", None)
    payload = {"prompt": "a boat", "num_images_per_prompt": 2, "num_inference_steps": 2, "seed": 3, **SMALL}
    payload.pop("steps")
    with single_threaded_torch():
        invoker = handler.model_fn(str(model_dir))
        assert invoker.engine.status().loaded
        invocation = handler.input_fn(json.dumps(payload).encode(), "application/json")
        body, content_type = handler.output_fn(handler.predict_fn(invocation, invoker), "application/json")
    assert content_type == "application/json"
    answer = json.loads(body)
    assert answer["seeds"] == [3, 4]
    # the same pixels as the HTTP serving app gives for the same request (infotexts differ: the model's name
    # comes from its folder, "model" here)
    served = post(demo_server.url, payload).json()["generated_images"]
    assert [decode_png(t).tobytes() for t in answer["generated_images"]] == [decode_png(t).tobytes() for t in served]

    with pytest.raises(RequestError) as caught:
        handler.input_fn(b'{"prompt": "x", "steps": 0}', "application/json")
    assert caught.value.field == "steps"

    class ToolkitError(Exception):  # stands in for sagemaker_inference.errors.BaseInferenceToolkitError
        def __init__(self, status_code, message, phrase):
            super().__init__(status_code, message, phrase)
            self.status_code, self.message, self.phrase = status_code, message, phrase

    errors = types.ModuleType("sagemaker_inference.errors")
    errors.BaseInferenceToolkitError = ToolkitError
    monkeypatch.setitem(sys.modules, "sagemaker_inference", types.ModuleType("sagemaker_inference"))
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", errors)
    with pytest.raises(ToolkitError) as caught:
        handler.input_fn(b'{"prompt": "x"}', "text/csv")
    assert caught.value.status_code == 400 and json.loads(caught.value.message)["field"] == "content_type"
    failing = serving.Invoker(FakeEngine(loaded=True, fail_with=EngineError("GPU fell off the bus")), ServingSettings())
    with pytest.raises(ToolkitError) as caught:
        handler.predict_fn(invocation, failing)
    assert caught.value.status_code == 500 and json.loads(caught.value.message) == {"error": "GPU fell off the bus"}


# ---- entry point and installation -----------------------------------------------------------------------------
def test_parse_args_ignores_leading_serve():
    args = serving.parse_args(["serve", "--port", "9000"])
    assert (args.port, args.host, args.model) == (9000, "0.0.0.0", None)
    assert serving.parse_args([]).port == 8080


def test_model_discovery(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert serving.discover_model("m", {"STUDIO_MODEL": "x"}) == "m"
    assert serving.discover_model(None, {"STUDIO_MODEL": "org/repo", "SM_MODEL_DIR": str(empty)}) == "org/repo"
    assert serving.discover_model(None, {"SM_MODEL_DIR": str(empty)}) == "demo"
    diffusers_dir = tmp_path / "diffusers"
    (diffusers_dir / "code").mkdir(parents=True)
    (diffusers_dir / "model_index.json").write_text("{}")
    assert serving.discover_model(None, {"SM_MODEL_DIR": str(diffusers_dir)}) == str(diffusers_dir)
    single = tmp_path / "single"
    (single / "code").mkdir(parents=True)
    (single / "code" / "inference.py").write_text("")
    (single / "dreamshaper.safetensors").write_bytes(b"0")
    assert serving.discover_model(None, {"SM_MODEL_DIR": str(single)}) == str(single / "dreamshaper.safetensors")
    nested = tmp_path / "nested"
    (nested / "sd15").mkdir(parents=True)
    (nested / "sd15" / "model_index.json").write_text("{}")
    assert serving.discover_model(None, {"SM_MODEL_DIR": str(nested)}) == str(nested / "sd15")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hi")
    with pytest.raises(serving.ConfigError, match="no diffusers folder"):
        serving.discover_model(None, {"SM_MODEL_DIR": str(junk)})
    (single / "other.ckpt").write_bytes(b"0")
    with pytest.raises(serving.ConfigError, match="several checkpoints"):
        serving.discover_model(None, {"SM_MODEL_DIR": str(single)})


def test_settings_from_env_parse_explicitly():
    settings = ServingSettings.from_env({"STUDIO_MAX_BODY_BYTES": "1000", "STUDIO_ALLOW_URLS": "false"})
    assert settings.max_body_bytes == 1000 and settings.allow_urls is False
    assert ServingSettings.from_env({"STUDIO_ALLOW_URLS": "1", "STUDIO_MAX_STEPS": "9"}).limits.max_steps == 9
    for env in ({"STUDIO_MAX_BODY_BYTES": "20MB"}, {"STUDIO_ALLOW_URLS": "maybe"}, {"STUDIO_S3_OUTPUT": "bucket"}):
        with pytest.raises(serving.ConfigError):
            ServingSettings.from_env(env)


def _docker_context(tmp_path: Path) -> Path:
    """Copy what the Dockerfile's COPY lines take from the repo, minus .dockerignore, into a fresh build context."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in patterns)

    context = tmp_path / "context"
    context.mkdir()
    copies = [line.split()[1:-1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert not ignored(source), f"{source} is copied by the Dockerfile but excluded by .dockerignore"
            path = REPO / source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                rel = file.relative_to(REPO).as_posix()
                if not ignored(rel):
                    (context / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, context / rel)
    return context


def test_dockerfile_matches_the_project():
    dockerfile = (REPO / "Dockerfile").read_text()
    torch_pin = re.search(r"^torch==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert f"ARG TORCH_VERSION={torch_pin}" in dockerfile
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["serve"\]$', dockerfile, re.M)
    assert 'serve = "studio.serving:serve_main"' in (REPO / "pyproject.toml").read_text()


@pytest.mark.slow
def test_docker_build_context_installs_and_serve_runs_like_sagemaker(tmp_path):
    """What the image does, without Docker: install the package from the Dockerfile's build context (deps are in
    the venv already), then run the installed `serve` script the way SageMaker does (`serve` argument, model in
    SM_MODEL_DIR next to a code/ folder) and generate through it."""
    from studio.models import demo_model_dir
    from studio.testing.servers import free_port

    context = _docker_context(tmp_path)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*pip, str(context)], check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    script = site / "bin" / "serve"
    assert script.is_file()

    model_dir = tmp_path / "opt-ml-model"
    (model_dir / "code").mkdir(parents=True)
    for item in demo_model_dir().iterdir():
        (model_dir / item.name).symlink_to(item)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STUDIO_MODEL")}
    env.update(PYTHONPATH=str(site), SM_MODEL_DIR=str(model_dir), **SINGLE_THREAD_ENV)
    check = (
        "import studio.serving, studio.remote, sys; assert 'torch' not in sys.modules; print(studio.serving.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)  # the installed copy, not the repo

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as sink:
        command = [sys.executable, str(script), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    try:
        alive = lambda: process.poll() is None  # noqa: E731
        assert wait_for(f"http://127.0.0.1:{port}/ping", timeout=120, alive=alive).json()["status"] == "ok"
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=VALID, timeout=60)
        assert response.status_code == 200 and decode_png(response.json()["images"][0]).size == (64, 64)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert f"serving {model_dir}" in log.read_text()


# ---- S3 allow-list ---------------------------------------------------------------------------------------------
def test_s3_locations_outside_the_allowed_prefixes_are_refused():
    png = base64.b64decode(png_b64(gradient(64, 64)))
    s3 = FakeS3({("inputs", "ok/a.png"): png, ("inputs-other", "a.png"): png, ("secret", "a.png"): png})
    settings = serving.ServingSettings.from_env({"STUDIO_S3_ALLOWED_PREFIXES": "s3://inputs/ok/, s3://outbox"})
    assert settings.s3_allowed_prefixes == ("s3://inputs/ok/", "s3://outbox/")
    engine = FakeEngine(loaded=True)
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "strength": 0.5}
    with UvicornThread(create_app(engine, settings=settings, load=False, s3_client=s3)) as server:
        for payload, field in (
            ({**base, "input_image": "s3://secret/a.png"}, "input_image"),
            ({**base, "input_image": "s3://inputs-other/a.png"}, "input_image"),  # a bare bucket is not a prefix
            ({**base, "input_image": "s3://inputs/ok/a.png", "s3_output": "s3://elsewhere/out"}, "s3_output"),
        ):
            response = post(server.url, payload)
            assert response.status_code == 400, payload
            assert response.json()["field"] == field
            assert "STUDIO_S3_ALLOWED_PREFIXES" in response.json()["error"]
        assert post(server.url, {**base, "input_image": "s3://inputs/ok/a.png"}).status_code == 200
    with pytest.raises(serving.ConfigError, match="STUDIO_S3_ALLOWED_PREFIXES"):
        serving.ServingSettings.from_env({"STUDIO_S3_ALLOWED_PREFIXES": "http://nope"})
