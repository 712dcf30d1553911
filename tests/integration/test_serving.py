"""studio.serving end to end: the app on a real uvicorn on 127.0.0.1 with the demo model (and fakes for load/failure
cases), the toolkit handlers on the real engine, the installed `serve` script, S3 through moto."""

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
from pathlib import Path

import pytest
import requests
from PIL import Image

from studio import engines
from studio.config import ConfigError, EngineSettings, ServingSettings, load_serving_settings
from studio.engine import EngineError
from studio.serving import toolkit
from studio.serving.app import create_app
from studio.testing.fakes import FakeEngine
from studio.testing.servers import REPO, SINGLE_THREAD_ENV, UvicornThread, single_threaded_torch, wait_for
from studio.testing.wire import BAD_INPUT_IDS, BAD_INPUTS, FakeS3, gradient, png_b64
from studio.types import GenerationResult, RequestError

SMALL = {"width": 64, "height": 64, "steps": 2}
VALID = {"prompt": "a red apple", "seed": 7, **SMALL}


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def post(url: str, payload=None, **kwargs) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def demo_server():
    """The serving app on the real local engine with the demo model, in a uvicorn thread."""
    engine = engines.build(EngineSettings(model="demo", device="cpu"))
    app = create_app(engine, settings=ServingSettings(max_body_bytes=1_000_000), s3_client=FakeS3())
    with single_threaded_torch(), UvicornThread(app) as server:
        wait_for(f"{server.url}/ping", timeout=120)
        yield server


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
        def generate(self, request, on_progress=None, cancel=None, preview=None):
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


@pytest.mark.parametrize(("payload", "field", "words"), BAD_INPUTS, ids=BAD_INPUT_IDS)
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


@pytest.fixture
def fresh_toolkit(monkeypatch):
    """The toolkit handler module as a fresh DLC process sees it: nothing loaded, settings from the environment."""
    for name in ("STUDIO_MODEL", "STUDIO_ENGINE", "STUDIO_DEVICE", "STUDIO_S3_OUTPUT", "STUDIO_S3_ALLOWED_PREFIXES"):
        monkeypatch.delenv(name, raising=False)
    for name in ("_settings", "_invoker", "_codec"):
        monkeypatch.setattr(toolkit, name, None)
    return toolkit


def _model_dir(tmp_path: Path) -> Path:
    """What model.tar.gz unpacks to: the demo weights at the top, code/ beside them."""
    from studio.models import demo_model_dir

    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text("")
    for item in demo_model_dir().iterdir():
        (model_dir / item.name).symlink_to(item)
    return model_dir


def test_toolkit_handler_runs_the_same_path_as_serving(demo_server, tmp_path, fresh_toolkit):
    handler = fresh_toolkit
    model_dir = _model_dir(tmp_path)
    payload = {"prompt": "a boat", "num_images_per_prompt": 2, "num_inference_steps": 2, "seed": 3, **SMALL}
    payload.pop("steps")
    with single_threaded_torch():
        invoker = handler.model_fn(str(model_dir))
        assert invoker.engine.status().loaded
        body, content_type = handler.transform_fn(
            invoker, json.dumps(payload).encode(), "application/json", "application/json"
        )
    assert content_type == "application/json"
    answer = json.loads(body)
    assert answer["seeds"] == [3, 4]
    # the same pixels as the HTTP serving app gives for the same request (infotexts differ: the model's name
    # comes from its folder, "model" here)
    served = post(demo_server.url, payload).json()["generated_images"]
    assert [decode_png(t).tobytes() for t in answer["generated_images"]] == [decode_png(t).tobytes() for t in served]

    with pytest.raises(Exception) as caught:  # noqa: B017 - no request context: the toolkit's error type
        handler.transform_fn(invoker, b'{"prompt": "x", "steps": 0}', "application/json", None)
    assert caught.value.status_code == 400 and json.loads(caught.value.message)["field"] == "steps"


def test_toolkit_refuses_s3_locations_outside_the_allowed_prefixes_through_boto3(aws, fresh_toolkit, monkeypatch):
    """Defect 4, against moto: before model_fn, input_fn used to read any s3:// input the role could reach."""
    import boto3

    s3 = boto3.client("s3")
    for bucket in ("inputs", "secret"):
        s3.create_bucket(Bucket=bucket)
    png = base64.b64decode(png_b64(gradient(64, 64)))
    s3.put_object(Bucket="secret", Key="a.png", Body=png)
    s3.put_object(Bucket="inputs", Key="ok/a.png", Body=png)
    monkeypatch.setenv("STUDIO_S3_ALLOWED_PREFIXES", "s3://inputs/ok/")
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "strength": 0.5}
    for payload, field in (
        ({**base, "input_image": "s3://secret/a.png"}, "input_image"),
        ({**base, "input_image": "s3://inputs/ok/a.png", "s3_output": "s3://secret/out/"}, "s3_output"),
    ):
        with pytest.raises(RequestError) as caught:  # the decoder the handlers use, before model_fn has run
            fresh_toolkit.decode_request(json.dumps(payload).encode(), "application/json")
        assert caught.value.field == field and "STUDIO_S3_ALLOWED_PREFIXES" in str(caught.value)
    invocation = fresh_toolkit.decode_request(
        json.dumps({**base, "input_image": "s3://inputs/ok/a.png"}), "application/json"
    )
    assert invocation.request.image.size == (64, 64)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="secret")["Contents"]] == ["a.png"]  # nothing written


def test_request_codec_reads_and_writes_s3_through_boto3(aws):
    """The default S3 client (studio.aws.LazyClient, standard resolution) against moto: read, write, failures."""
    import boto3

    from studio.serving.invoker import RequestCodec
    from studio.testing.wire import result_for

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="inputs")
    s3.put_object(Bucket="inputs", Key="ok/a.png", Body=base64.b64decode(png_b64(gradient(64, 48))))
    codec = RequestCodec(ServingSettings(s3_allowed_prefixes=("s3://inputs/ok/",)))
    invocation = codec.decode({"prompt": "x", "steps": 2, "input_image": "s3://inputs/ok/a.png", "seed": 1})
    assert invocation.request.image.size == (64, 48)
    with pytest.raises(RequestError, match="^input_image: s3://inputs/ok/missing.png does not exist"):
        codec.decode({"prompt": "x", "input_image": "s3://inputs/ok/missing.png"})
    written = codec.decode({"prompt": "x", "steps": 2, "seed": 1, "s3_output": "s3://inputs/ok/out"})
    (uri,) = codec.encode(written, result_for(written.request))["s3_uris"]
    stored = s3.get_object(Bucket="inputs", Key=uri.removeprefix("s3://inputs/"))["Body"].read()
    assert Image.open(io.BytesIO(stored)).size == (512, 512)
    unrestricted = RequestCodec(ServingSettings())
    missing = unrestricted.decode({"prompt": "x", "steps": 2, "seed": 1, "output_s3uri": "s3://no-such-bucket-here/x/"})
    with pytest.raises(EngineError, match="^s3_output: could not write .*NoSuchBucket"):
        unrestricted.encode(missing, result_for(missing.request))


def test_toolkit_runs_as_a_standalone_code_inference_py(tmp_path):
    """How the DLC loads it: code/inference.py beside a code/studio/ package, imported by its file name, in a
    process that has no other copy of studio; the S3 policy holds before model_fn."""
    code = tmp_path / "code"
    shutil.copytree(REPO / "studio", code / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "studio" / "serving" / "toolkit.py", code / "inference.py")
    script = (
        "import json, sys, inference\n"
        "assert inference.__file__.endswith('code/inference.py')\n"
        "assert sys.modules['studio'].__file__.startswith(sys.argv[1])\n"
        "try:\n"
        "    body = json.dumps({'prompt': 'x', 'input_image': 's3://secret/a.png'})\n"
        "    inference.decode_request(body, 'application/json')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc.field, exc)\n"
        'invocation = inference.decode_request(b\'{"prompt": "x", "steps": 3}\', \'application/json\')\n'
        "print(invocation.request.steps, sorted(m for m in ('torch', 'boto3', 'fastapi') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "PYTHON"))}
    env.update(PYTHONPATH=str(code), STUDIO_S3_ALLOWED_PREFIXES="s3://inputs/ok/")
    out = subprocess.run(
        [sys.executable, "-c", script, str(code)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    refused, ran = out.stdout.strip().splitlines()
    assert refused.startswith("RequestError input_image ") and "STUDIO_S3_ALLOWED_PREFIXES" in refused
    assert ran == "3 []"


@pytest.mark.slow
def test_toolkit_model_fn_runs_openvino_when_asked(tmp_path, fresh_toolkit, monkeypatch):
    """Defect 2: STUDIO_ENGINE=openvino reaches the engine the toolkit handlers load."""
    monkeypatch.setenv("STUDIO_ENGINE", "openvino")
    with single_threaded_torch():
        invoker = fresh_toolkit.model_fn(str(_model_dir(tmp_path)))
        status = invoker.engine.status()
        assert status.loaded and "openvino" in json.dumps(status.details).lower()
        body, _ = fresh_toolkit.transform_fn(invoker, json.dumps({**VALID, "count": 1}), "application/json", None)
    assert decode_png(json.loads(body)["images"][0]).size == (64, 64)


def test_the_serving_entry_point_builds_openvino_when_asked(monkeypatch):
    """Defect 2: STUDIO_ENGINE=openvino reaches the engine `serve` runs (built for real, not loaded or served)."""
    import uvicorn

    from studio.serving import __main__ as entry

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app))
    monkeypatch.setenv("STUDIO_ENGINE", "openvino")
    monkeypatch.delenv("STUDIO_MODEL", raising=False)
    assert entry.main(["serve", "--model", "demo"]) == 0
    details = served["app"].state.invoker.engine.status().details
    assert "openvino" in json.dumps(details).lower()


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
    assert 'serve = "studio.serving.__main__:serve_main"' in (REPO / "pyproject.toml").read_text()


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


def test_s3_locations_outside_the_allowed_prefixes_are_refused():
    png = base64.b64decode(png_b64(gradient(64, 64)))
    s3 = FakeS3({("inputs", "ok/a.png"): png, ("inputs-other", "a.png"): png, ("secret", "a.png"): png})
    settings = load_serving_settings([], {"STUDIO_S3_ALLOWED_PREFIXES": "s3://inputs/ok/, s3://outbox"})
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
    with pytest.raises(ConfigError, match="STUDIO_S3_ALLOWED_PREFIXES"):
        load_serving_settings([], {"STUDIO_S3_ALLOWED_PREFIXES": "http://nope"})
