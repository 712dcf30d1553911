"""The remote engines (studio.engines.remote and .transports, imported as studio.remote) end to end: HTTP against a
real serving process, and the boto3 paths against moto (S3 + the SageMaker control plane) plus a local stand-in for
the SageMaker runtime API that forwards to serving apps."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import threading
import time

import boto3
import pytest
import requests
from PIL import Image

from studio import remote
from studio.config import ServingSettings
from studio.engine import EngineError, EngineNotReady, GenerationCancelled
from studio.remote import Backoff, HttpTransport, RemoteEngine, SageMakerAsync, SageMakerRealtime
from studio.serving.app import create_app
from studio.testing.fakes import FakeEngine
from studio.testing.moto import MotoServer, aws_env
from studio.testing.sagemaker_standin import SageMakerRuntimeStandin
from studio.testing.servers import REPO, ServingProcess, UvicornThread, free_port, single_threaded_torch
from studio.types import GenerationRequest, RequestError

BUCKET = "studio-test"
OUTPUT = f"s3://{BUCKET}/sd/async-output/"
FAILURES = f"s3://{BUCKET}/sd/async-failures/"
REQUEST = GenerationRequest(prompt="a lighthouse at dusk", width=64, height=64, steps=3, seed=42, count=2)


def pixels(result) -> list[bytes]:
    return [image.tobytes() for image in result.images]


def gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 5 % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return image


@pytest.fixture(scope="module")
def serving_started():
    """`python -m studio.serving --model demo`, started but not waited for (it loads while other fixtures set up)."""
    process = ServingProcess(model="demo").start(wait=False)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def serving_process(serving_started):
    return serving_started.wait_ready()


@pytest.fixture(scope="module")
def local_engine(serving_started):
    from studio.config import EngineSettings
    from studio.engines import build

    with single_threaded_torch():
        engine = build(EngineSettings(model="demo", device="cpu"))
        engine.load()
        yield engine


@pytest.fixture(scope="module")
def broken_server():
    """A serving app whose engine fails like a GPU running out of memory."""
    engine = FakeEngine(loaded=True, fail_with=EngineError("CUDA out of memory (tried to allocate 2.00 GiB)"))
    with UvicornThread(create_app(engine, settings=ServingSettings(), load=False)) as server:
        yield server


@pytest.fixture(scope="module")
def slow_server():
    engine = FakeEngine(loaded=True, delay=0.05)
    with UvicornThread(create_app(engine, settings=ServingSettings(), load=False)) as server:
        yield server


@pytest.fixture(scope="module")
def aws(serving_process, broken_server, slow_server):
    """moto (S3 + SageMaker control plane) and the runtime stand-in, with boto3's environment pointing at them."""
    with MotoServer() as moto:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        with SageMakerRuntimeStandin(s3) as standin, aws_env(moto.url, runtime_url=standin.url):
            sagemaker = boto3.client("sagemaker")
            sagemaker.create_model(
                ModelName="sd-model",
                ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-studio:latest"},
            )
            variant = [{"VariantName": "AllTraffic", "ModelName": "sd-model", "InstanceType": "ml.g4dn.xlarge"}]
            variant[0]["InitialInstanceCount"] = 1
            async_config = {"OutputConfig": {"S3OutputPath": OUTPUT, "S3FailurePath": FAILURES}}
            sagemaker.create_endpoint_config(EndpointConfigName="sd-realtime-config", ProductionVariants=variant)
            sagemaker.create_endpoint_config(
                EndpointConfigName="sd-async-config", ProductionVariants=variant, AsyncInferenceConfig=async_config
            )
            endpoints = {
                "sd-realtime": ("sd-realtime-config", serving_process.url, {}),
                "sd-async": ("sd-async-config", serving_process.url, {"output_path": OUTPUT, "failure_path": FAILURES}),
                "sd-broken": ("sd-realtime-config", broken_server.url, {}),
                "sd-async-broken": (
                    "sd-async-config",
                    broken_server.url,
                    {"output_path": OUTPUT, "failure_path": FAILURES},
                ),
                "sd-async-slow": ("sd-async-config", slow_server.url, {"output_path": OUTPUT, "queue_delay": 3.0}),
            }
            for name, (config, url, options) in endpoints.items():
                sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
                standin.add_endpoint(name, url, **options)
            yield {"moto": moto, "standin": standin, "s3": s3}


# ---- plain HTTP -----------------------------------------------------------------------------------------------
def test_http_same_seed_gives_identical_pixels_to_local(serving_process, local_engine):
    engine = remote.http_engine(serving_process.url)
    result = engine.generate(REQUEST)
    local = local_engine.generate(REQUEST)
    assert result.backend == "http" and result.model == "demo" and result.seeds == [42, 43]
    assert pixels(result) == pixels(local)
    assert result.infotexts == local.infotexts
    assert result.timings["remote_total"] > 0


def test_http_img2img_and_inpaint_match_local(serving_process, local_engine):
    engine = remote.http_engine(serving_process.url)
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 8, 48, 40))
    img2img = REQUEST.replace(image=gradient(64, 48), height=48, count=1, strength=0.6)
    for request in (img2img, img2img.replace(mask=mask)):
        result = engine.generate(request)
        assert result.request.task == request.task and result.images[0].size == (64, 48)
        assert pixels(result) == pixels(local_engine.generate(request))


def test_http_random_seed_is_resolved_and_reproducible(serving_process, local_engine):
    result = remote.http_engine(serving_process.url).generate(REQUEST.replace(seed=-1, count=1))
    assert result.request.seed == result.seeds[0] >= 0
    assert pixels(result) == pixels(local_engine.generate(REQUEST.replace(seed=result.seeds[0], count=1)))


def test_http_progress_reports_start_and_end(serving_process):
    seen: list[tuple[int, int]] = []
    remote.http_engine(serving_process.url).generate(REQUEST, on_progress=lambda s, t: seen.append((s, t)))
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)


def test_http_bad_input_fails_locally_before_any_network_call():
    engine = remote.http_engine(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(RequestError, match="^steps: "):
        engine.generate(REQUEST.replace(steps=0))
    with pytest.raises(RequestError, match="^sampler: .*valid samplers"):
        engine.generate(REQUEST.replace(sampler="nope"))


def test_http_server_side_400_is_a_request_error(serving_process):
    transport = HttpTransport(serving_process.url)
    with pytest.raises(RequestError) as caught:
        transport.invoke({"prompt": "x", "input_image": "%%%"}, total=1, on_progress=None, cancel=None)
    assert caught.value.field == "input_image" and "not valid base64" in str(caught.value)


def test_http_unreachable_and_status(serving_process):
    dead = remote.http_engine(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(EngineError, match="cannot reach"):
        dead.generate(REQUEST)
    assert dead.status().error and not dead.status().loaded
    status = remote.http_engine(serving_process.url).status()
    assert status.loaded and status.backend == "http" and status.details["server_model"] == "demo"


def test_load_checks_the_target_and_refuses_a_model(serving_process, aws):
    for engine in (remote.http_engine(serving_process.url), remote.sagemaker_engine("sd-realtime")):
        engine.load()
        assert engine.status().loaded
        with pytest.raises(EngineError, match=f"the {engine.backend} backend has no local model"):
            engine.load("demo")
    with pytest.raises(EngineError, match="cannot reach|unreachable"):
        remote.http_engine(f"http://127.0.0.1:{free_port()}").load()


def test_http_not_ready_is_engine_not_ready():
    gate = threading.Event()
    with UvicornThread(create_app(FakeEngine(load_gate=gate), settings=ServingSettings())) as server:
        engine = remote.http_engine(server.url)
        assert engine.status().loading
        with pytest.raises(EngineNotReady, match="not loaded"):
            engine.generate(REQUEST)
        gate.set()


def test_http_cancel_stops_waiting(slow_server):
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        remote.http_engine(slow_server.url).generate(REQUEST.replace(steps=100), cancel=cancel)
    assert time.monotonic() - started < 3


def test_http_credentials_in_url_never_appear_in_messages():
    engine = remote.http_engine(f"http://user:s3cret@127.0.0.1:{free_port()}")
    with pytest.raises(EngineError) as caught:
        engine.generate(REQUEST)
    assert "s3cret" not in str(caught.value) and "s3cret" not in engine.name


# ---- SageMaker: boto3 end to end ------------------------------------------------------------------------------
def test_runtime_client_honours_the_service_specific_endpoint_variable(aws):
    assert remote.make_runtime_client().meta.endpoint_url == aws["standin"].url
    assert boto3.client("sagemaker").meta.endpoint_url == aws["moto"].url


def test_list_inservice_endpoints(aws):
    """The Settings tab's endpoint list (the one listing is studio.deploy.inventory, not the remote engines)."""
    from studio.deploy.inventory import list_endpoints

    names = [info.name for info in list_endpoints(all_in_service=True)]
    assert {"sd-realtime", "sd-async", "sd-broken"} <= set(names)


def test_unknown_endpoint_is_a_clear_error(aws):
    with pytest.raises(EngineError, match="no-such-endpoint"):
        remote.sagemaker_engine("no-such-endpoint")


def test_realtime_endpoint_same_pixels_as_local(aws, local_engine):
    engine = remote.sagemaker_engine("sd-realtime")
    assert isinstance(engine.transport, SageMakerRealtime)
    result = engine.generate(REQUEST)
    assert result.backend == "sagemaker" and result.seeds == [42, 43]
    assert pixels(result) == pixels(local_engine.generate(REQUEST))
    status = engine.status()
    assert status.loaded and status.backend == "sagemaker" and status.details["endpoint_status"] == "InService"


def test_async_endpoint_same_pixels_as_local_and_reports_queued(aws, local_engine):
    engine = remote.sagemaker_engine("sd-async")
    assert isinstance(engine.transport, SageMakerAsync)
    assert engine.transport.bucket == BUCKET and engine.transport.prefix == "sd/async-input/"
    engine.transport.poll = Backoff(first=0.05, maximum=0.2)
    seen: list[tuple[int, int]] = []
    result = engine.generate(REQUEST, on_progress=lambda s, t: seen.append((s, t)))
    assert pixels(result) == pixels(local_engine.generate(REQUEST)) and result.backend == "sagemaker"
    assert seen.count((0, 6)) >= 2 and seen[-1] == (6, 6)  # queued while polling, done at the end
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.startswith("sd/async-output/") and k.endswith(".out") for k in keys)
    assert not any(k.startswith("sd/async-input/") for k in keys), "the uploaded request should be cleaned up"


def test_throttling_is_retried_with_backoff(aws):
    standin = aws["standin"]
    engine = remote.sagemaker_engine("sd-realtime")
    sleeps: list[float] = []
    engine.transport.sleep = sleeps.append
    engine.transport.backoff = Backoff(first=1.0, factor=2.0, jitter=0.0)
    before = standin.endpoints["sd-realtime"].calls
    standin.inject("sd-realtime", "ThrottlingException", times=2)
    result = engine.generate(REQUEST.replace(count=1))
    assert len(result.images) == 1
    assert standin.endpoints["sd-realtime"].calls - before == 3
    assert sum(sleeps) == pytest.approx(3.0, abs=0.01)  # 1 s then 2 s

    standin.inject("sd-realtime", "ThrottlingException", times=10)
    with pytest.raises(EngineError, match="throttling requests .*after 5 attempts"):
        engine.generate(REQUEST.replace(count=1))
    standin.endpoints["sd-realtime"].faults.clear()


def test_model_error_surfaces_the_container_message(aws):
    with pytest.raises(EngineError) as caught:
        remote.sagemaker_engine("sd-broken").generate(REQUEST)
    message = str(caught.value)
    assert "CUDA out of memory (tried to allocate 2.00 GiB)" in message and message.startswith("sd-broken")
    assert "testing" not in message  # no credentials


def test_container_400_through_sagemaker_is_a_request_error(aws):
    transport = remote.sagemaker_engine("sd-realtime").transport
    with pytest.raises(RequestError) as caught:
        transport.invoke({"prompt": "x", "num_inference_steps": 0}, total=1, on_progress=None, cancel=None)
    assert caught.value.field == "steps"
    transport = remote.sagemaker_engine("sd-async").transport  # async: the failure file carries the 400
    transport.poll = Backoff(first=0.05, maximum=0.2)
    with pytest.raises(RequestError) as caught:
        transport.invoke({"prompt": "x", "num_inference_steps": 0}, total=1, on_progress=None, cancel=None)
    assert caught.value.field == "steps"


def test_realtime_6mb_limit_is_checked_before_sending(aws):
    standin = aws["standin"]
    before = standin.endpoints["sd-realtime"].calls
    noise = Image.frombytes("RGB", (1600, 1200), random.Random(1).randbytes(1600 * 1200 * 3))
    request = REQUEST.replace(image=noise, width=512, height=384, count=1)
    with pytest.raises(RequestError) as caught:
        remote.sagemaker_engine("sd-realtime").generate(request)
    assert caught.value.field == "input_image"
    assert "6.3 MB" in str(caught.value) and "async" in str(caught.value)
    assert standin.endpoints["sd-realtime"].calls == before


def test_async_failure_file_is_surfaced(aws):
    engine = remote.sagemaker_engine("sd-async-broken")
    engine.transport.poll = Backoff(first=0.05, maximum=0.2)
    with pytest.raises(EngineError, match=r"async inference failed: CUDA out of memory \(tried to allocate"):
        engine.generate(REQUEST)


def test_async_timeout_and_cancel(aws):
    engine = remote.sagemaker_engine("sd-async-slow")  # 3 s in the queue
    engine.transport.poll = Backoff(first=0.05, maximum=0.1)
    engine.transport.timeout = 0.5
    with pytest.raises(EngineError, match="no result after 0.5 s.*will appear at s3://"):
        engine.generate(REQUEST)
    engine.transport.timeout = 60
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(GenerationCancelled):
        engine.generate(REQUEST, cancel=cancel)


def test_invoking_a_missing_endpoint_is_a_clear_error(aws):
    transport = SageMakerRealtime("ghost-endpoint", remote.make_runtime_client())
    with pytest.raises(EngineError, match="^ghost-endpoint: Endpoint ghost-endpoint of account .* not found"):
        RemoteEngine(transport).generate(REQUEST)


def test_client_modules_import_without_torch_or_boto3():
    code = (
        "import sys, studio.engines, studio.remote, studio.wire, studio.serving; "
        "print(sorted(m for m in ('torch', 'diffusers', 'boto3', 'botocore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serving_reads_and_writes_s3_with_boto3(aws):
    """The container side of S3: s3:// input images and S3 output, through boto3's standard resolution (moto)."""
    s3 = aws["s3"]
    source = io.BytesIO()
    gradient(64, 48).save(source, format="PNG")
    s3.put_object(Bucket=BUCKET, Key="inputs/src.png", Body=source.getvalue())
    settings = ServingSettings(s3_output=f"s3://{BUCKET}/renders")
    with UvicornThread(create_app(FakeEngine(loaded=True), settings=settings, load=False)) as server:
        quick = {"prompt": "x", "steps": 2, "sampler": "euler_a", "seed": 1, "count": 2}
        response = requests.post(
            f"{server.url}/invocations", json={**quick, "input_image": f"s3://{BUCKET}/inputs/src.png"}
        )
        uris = response.json()["result"]
        assert len(uris) == 2 and all(uri.startswith(f"s3://{BUCKET}/renders/") for uri in uris)
        stored = s3.get_object(Bucket=BUCKET, Key=uris[0].removeprefix(f"s3://{BUCKET}/"))["Body"].read()
        assert Image.open(io.BytesIO(stored)).size == (64, 48)

        missing = requests.post(f"{server.url}/invocations", json={**quick, "input_image": f"s3://{BUCKET}/nope.png"})
        assert missing.status_code == 400 and "does not exist" in missing.json()["error"]
        bad_output = {**quick, "output_s3uri": "s3://no-such-bucket-here/x/"}
        failed = requests.post(f"{server.url}/invocations", json=bad_output)
        assert failed.status_code == 500 and "s3_output: could not write" in failed.json()["error"]
        assert "NoSuchBucket" in failed.json()["error"]


# ---- the studio app on a remote backend: all three tabs -------------------------------------------------------
def _studio(tmp_path, *args: str):
    from app import launch
    from studio.config import load_settings

    port = free_port()
    argv = ["--port", str(port), "--outputs", str(tmp_path / "outputs"), "--models-dir", str(tmp_path / "models")]
    blocks, controller = launch(load_settings([*argv, *args], environ={}), prevent_thread_lock=True)
    return blocks, f"http://127.0.0.1:{port}/"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "backend"),
    [
        (("--backend", "http", "--url", "{url}"), "http"),
        (("--backend", "sagemaker", "--endpoint", "sd-realtime"), "sagemaker"),
        (("--backend", "sagemaker", "--endpoint", "sd-async"), "sagemaker"),
    ],
    ids=["http", "sagemaker-realtime", "sagemaker-async"],
)
def test_studio_generates_in_all_three_tabs_on_a_remote_backend(
    aws, serving_process, local_engine, tmp_path, args, backend
):
    gradio_client = pytest.importorskip("gradio_client")
    args = tuple(a.format(url=serving_process.url) for a in args)
    blocks, url = _studio(tmp_path, *args)
    client = gradio_client.Client(url, verbose=False)
    try:
        params = dict(prompt="a red fox", negative_prompt="", sampler="euler_a", steps=2, cfg_scale=7, seed=77)
        params.update(width=64, height=64, count=1)
        gallery, info = client.predict(*params.values(), api_name="/txt2img")
        assert info["backend"] == backend and info["seeds"] == [77]
        shown = gallery[0]["image"] if isinstance(gallery[0]["image"], str) else gallery[0]["image"]["path"]
        expected = local_engine.generate(GenerationRequest(**{**params, "sampler": "Euler a"}))
        assert Image.open(shown).convert("RGB").tobytes() == expected.images[0].tobytes()

        src, mask = tmp_path / "src.png", tmp_path / "mask.png"
        gradient(64, 64).save(src)
        painted = Image.new("L", (64, 64), 0)
        painted.paste(255, (0, 0, 32, 32))
        painted.save(mask)
        handle = gradio_client.handle_file
        _, info = client.predict(handle(str(src)), *params.values(), 0.5, api_name="/img2img")
        assert info["task"] == "img2img" and info["backend"] == backend
        _, info = client.predict(handle(str(src)), handle(str(mask)), *params.values(), 1.0, api_name="/inpaint")
        assert info["task"] == "inpaint" and info["backend"] == backend
    finally:
        client.close()
        blocks.close()
