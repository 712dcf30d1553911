"""Faults and load against the running studio (app.launch, demo model): a client that goes away mid-run, five
users at once, an engine that fails inside a step or returns NaN, and SageMaker faults reaching the user.

In every case the app keeps running, nothing finished is lost, and errors say what happened.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests

from studio.testing.browser import open_studio, open_tab, set_number, set_seed, start_studio, type_prompt
from studio.testing.fakes import FakeEngine
from studio.testing.gradio_api import api_values
from studio.testing.moto import MotoServer, aws_env
from studio.testing.servers import UvicornThread

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from studio.engine import EngineError  # noqa: E402
from studio.types import Task  # noqa: E402
from studio.ui.txt2img import txt2img  # noqa: E402

VALID = dict(
    prompt="a quiet harbour", negative_prompt="", sampler="Euler a", steps=3, cfg_scale=7, seed=11, width=64,
    height=64, count=1,
)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    app = start_studio(tmp_path_factory.mktemp("faults-studio"))
    client = Client(app.url, verbose=False)
    yield app, client
    client.close()
    app.close()


def wait_for_history(store, count: int, timeout: float = 120) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = store.history()
        if len(entries) >= count:
            return entries
        time.sleep(0.1)
    raise TimeoutError(f"history has {len(store.history())} entries, expected {count}")


def engine_idle(app, timeout: float = 120) -> None:
    """Wait until no generation holds the engine (the run lock is free)."""
    lock = app.controller.engine._run_lock
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.acquire(timeout=0.1):
            lock.release()
            return
    raise TimeoutError("the engine is still busy")


# ---- a client that goes away -----------------------------------------------------------------------------------------
@pytest.mark.browser
def test_browser_closed_mid_run_still_saves_and_shows_in_history(studio, browser, page):
    app, _ = studio
    before = len(app.controller.store.history())
    open_studio(page, app.url)
    panel = page.locator("#tab-txt2img")
    type_prompt(page, "txt2img", "a lantern left burning")
    for label, value in (("Width", 64), ("Height", 64), ("Steps", 60), ("Image count", 2)):
        set_number(panel, label, value)
    set_seed(panel, 4100)
    page.locator("#txt2img-generate").click()
    # The run has started (the page shows steps) — then the tab is closed: its connection goes away.
    page.wait_for_function(
        "() => /step \\d+\\/120/.test(document.querySelector('#txt2img-gallery [data-testid=status-tracker]')"
        "?.innerText || '')",
        timeout=60_000,
    )
    page.context.close()

    entries = wait_for_history(app.controller.store, before + 2)
    made = [e for e in entries if e.seed in (4100, 4101)]
    assert sorted(e.seed for e in made) == [4100, 4101]
    assert all(Path(e.path).is_file() for e in made)

    # A new visitor sees them in History.
    context = browser.new_context()
    try:
        fresh = context.new_page()
        open_studio(fresh, app.url)
        open_tab(fresh, "History")
        captions = fresh.locator("#history-gallery .caption-label")
        captions.first.wait_for()
        assert {"txt2img · seed 4100", "txt2img · seed 4101"} <= set(captions.all_inner_texts())
    finally:
        context.close()


def test_api_client_that_drops_its_stream_mid_run_still_saves(studio):
    """The same over the raw gradio queue protocol: join, read the stream until progress, hang up."""
    app, client = studio
    before = len(app.controller.store.history())
    config = requests.get(f"{app.url}config", timeout=10).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "txt2img")
    session = uuid.uuid4().hex[:11]
    data = api_values(txt2img, **{**VALID, "steps": 60, "count": 2, "seed": 5200})  # raw protocol: every value
    join = requests.post(
        f"{app.url}gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
        timeout=10,
    )
    assert join.status_code == 200, join.text
    stream = requests.get(f"{app.url}gradio_api/queue/data", params={"session_hash": session}, stream=True, timeout=60)
    seen = []
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            message = json.loads(line[5:])
            seen.append(message.get("msg"))
            if message.get("msg") == "progress":
                break
    stream.close()  # hang up mid-run
    assert "process_starts" in seen and seen[-1] == "progress", seen

    entries = wait_for_history(app.controller.store, before + 2)
    assert sorted(e.seed for e in entries if e.seed in (5200, 5201)) == [5200, 5201]
    # The history API lists them too, and the studio still serves.
    gallery = client.predict(api_name="/history")
    assert {"txt2img · seed 5200", "txt2img · seed 5201"} <= {item["caption"] for item in gallery}
    assert client.predict(*VALID.values(), api_name="/txt2img")[1]["seeds"] == [11]


# ---- load ------------------------------------------------------------------------------------------------------------
def test_five_concurrent_users_all_complete_in_queue_order(studio):
    app, _ = studio
    engine_idle(app)
    clients = [Client(app.url, verbose=False) for _ in range(5)]
    try:
        jobs = []
        for index, client in enumerate(clients):
            job = client.submit(*{**VALID, "steps": 20, "seed": 6000 + index}.values(), api_name="/txt2img")
            # Submit the next one only once this one is in the queue, so the submission order is the queue order.
            deadline = time.monotonic() + 30
            while job.status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.monotonic() < deadline:
                time.sleep(0.01)
            jobs.append(job)
        # Watch what each user is told while waiting.
        ranks: list[set[int]] = [set() for _ in jobs]
        deadline = time.monotonic() + 180
        while not all(job.done() for job in jobs) and time.monotonic() < deadline:
            for seen, job in zip(ranks, jobs, strict=True):
                update = job.status()
                if update.code == Status.IN_QUEUE and update.rank is not None:
                    seen.add(update.rank)
            time.sleep(0.02)
        results = [job.result(timeout=10) for job in jobs]
    finally:
        for client in clients:
            client.close()

    assert [info["seeds"] for _, info in results] == [[6000 + i] for i in range(5)]
    assert all(len(gallery) == 1 for gallery, _ in results)
    # Files get running numbers as they are saved: saved (finished) in the order the users joined the queue.
    numbers = [int(Path(info["paths"][0]).name.split("-")[0]) for _, info in results]
    assert numbers == sorted(numbers), numbers
    # Waiting users were told their place in the queue (the last one was behind others).
    assert any(rank > 0 for rank in ranks[-1]), ranks


# ---- injected engine faults ------------------------------------------------------------------------------------------
def test_exception_inside_a_step_is_a_clear_error_and_the_app_keeps_running(studio, monkeypatch):
    app, client = studio
    unet = app.controller.engine.pipelines[Task.TXT2IMG].unet
    calls = {"n": 0}
    forward = unet.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault in the UNet at step 2")
        return forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", failing_forward)
    before = len(app.controller.store.history())
    with pytest.raises(AppError) as caught:
        client.predict(*{**VALID, "steps": 4}.values(), api_name="/txt2img")
    assert caught.value.title == "Generation failed"
    assert "generation failed (RuntimeError): injected fault in the UNet at step 2" in str(caught.value)
    assert len(app.controller.store.history()) == before  # nothing half-made was saved as if it were fine

    monkeypatch.undo()
    assert client.predict(*VALID.values(), api_name="/txt2img")[1]["seeds"] == [11]
    assert app.controller.status().loaded and app.controller.status().error is None


def test_nan_output_is_a_clear_error_and_the_app_keeps_running(studio, monkeypatch):
    app, client = studio
    vae = app.controller.engine.pipelines[Task.TXT2IMG].vae
    decode = vae.decode

    def nan_decode(latents, *args, **kwargs):
        out = decode(latents, *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        sample.fill_(float("nan"))
        return out

    monkeypatch.setattr(vae, "decode", nan_decode)
    before = len(app.controller.store.history())
    with pytest.raises(AppError) as caught:
        client.predict(*VALID.values(), api_name="/txt2img")
    assert caught.value.title == "Generation failed" and "NaN" in str(caught.value)
    assert len(app.controller.store.history()) == before  # a black/NaN image is never saved

    monkeypatch.undo()
    assert client.predict(*VALID.values(), api_name="/txt2img")[1]["seeds"] == [11]


def test_nan_from_an_fp16_vae_is_decoded_again_in_fp32():
    """The GPU path (fp16 VAE overflowing to NaN) is retried with the VAE in fp32; simulated on CPU."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from studio.engines.generation import decode_fp32

    class HalfVae:
        config = SimpleNamespace(scaling_factor=0.5)

        def __init__(self):
            self.dtype = torch.float16
            self.moves: list[torch.dtype] = []

        def to(self, dtype):
            self.dtype = dtype
            self.moves.append(dtype)
            return self

        def decode(self, latents, return_dict=False):
            assert self.dtype == torch.float32 and latents.dtype == torch.float32
            return (torch.zeros(1, 3, 16, 16),)  # mid-grey in [-1, 1]

    pipe = SimpleNamespace(vae=HalfVae(), image_processor=VaeImageProcessor())
    nan = np.full((16, 16, 3), np.nan, dtype=np.float32)
    fixed = decode_fp32(pipe, torch.zeros(1, 4, 2, 2, dtype=torch.float16), nan)
    assert np.isfinite(fixed).all() and np.allclose(fixed, 0.5)
    assert pipe.vae.moves == [torch.float32, torch.float16]  # back to fp16 afterwards

    # Without latents (or already fp32) there is nothing to retry: a clear error instead of a black image.
    with pytest.raises(EngineError, match="NaN"):
        decode_fp32(pipe, None, nan)


def test_stop_from_another_tab_of_the_same_user_does_not_stop_others(studio):
    """Stop is per session: one user's Stop never cancels another user's run."""
    app, _ = studio
    engine_idle(app)
    runner = Client(app.url, verbose=False)
    try:
        job = runner.submit(*{**VALID, "steps": 80, "count": 2, "seed": 7100}.values(), api_name="/txt2img")
        deadline = time.monotonic() + 60
        while job.status().code != Status.PROGRESS and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.controller.stop("some-other-session") is False
        _, info = job.result(timeout=180)
        assert info["seeds"] == [7100, 7101] and "stopped" not in info
    finally:
        runner.close()


# ---- SageMaker faults reach the user through the studio -------------------------------------------------------------
@pytest.fixture(scope="module")
def sagemaker_studio(tmp_path_factory):
    """A studio on the sagemaker backend: moto for the control plane and S3, the runtime stand-in in front of a
    serving app whose engine fails like a GPU out of memory."""
    import boto3

    from studio.config import ServingSettings
    from studio.serving.app import create_app
    from studio.testing.sagemaker_standin import SageMakerRuntimeStandin

    broken = FakeEngine(loaded=True, fail_with=EngineError("CUDA out of memory (tried to allocate 2.00 GiB)"))
    healthy = FakeEngine(loaded=True)
    with (
        UvicornThread(create_app(broken, settings=ServingSettings(), load=False)) as broken_server,
        UvicornThread(create_app(healthy, settings=ServingSettings(), load=False)) as healthy_server,
        MotoServer() as moto,
    ):
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket="studio-faults")
        with SageMakerRuntimeStandin(s3) as standin, aws_env(moto.url, runtime_url=standin.url):
            sagemaker = boto3.client("sagemaker")
            sagemaker.create_model(
                ModelName="sd-model",
                ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-studio:latest"},
            )
            variant = [
                {"VariantName": "AllTraffic", "ModelName": "sd-model", "InstanceType": "ml.g4dn.xlarge",
                 "InitialInstanceCount": 1}
            ]
            sagemaker.create_endpoint_config(EndpointConfigName="sd-config", ProductionVariants=variant)
            for name, url in (("sd-broken", broken_server.url), ("sd-healthy", healthy_server.url)):
                sagemaker.create_endpoint(EndpointName=name, EndpointConfigName="sd-config")
                standin.add_endpoint(name, url)
            app = start_studio(
                tmp_path_factory.mktemp("faults-sagemaker"), "--backend", "sagemaker", "--endpoint", "sd-healthy"
            )
            client = Client(app.url, verbose=False)
            try:
                yield app, client, standin
            finally:
                client.close()
                app.close()


def test_sagemaker_faults_reach_the_user_as_clear_errors(sagemaker_studio):
    app, client, standin = sagemaker_studio
    ok = client.predict(*VALID.values(), api_name="/txt2img")[1]
    assert ok["backend"] == "sagemaker" and ok["seeds"] == [11]

    # Throttled more times than the client retries (with quick retries for the test): a clear error that says so.
    from studio.remote import Backoff

    app.controller.engine.transport.backoff = Backoff(first=0.01, factor=1.0, jitter=0.0)
    standin.inject("sd-healthy", "ThrottlingException", times=20, message="Rate exceeded")
    with pytest.raises(AppError) as caught:
        client.predict(*VALID.values(), api_name="/txt2img")
    assert caught.value.title == "Generation failed"
    assert re.search(r"throttl", str(caught.value), re.I), str(caught.value)
    standin.endpoints["sd-healthy"].faults.clear()
    assert client.predict(*VALID.values(), api_name="/txt2img")[1]["seeds"] == [11]

    # The container's own message (a ModelError) reaches the user.
    client.predict("sagemaker", "sd-broken", api_name="/use_backend")
    with pytest.raises(AppError) as caught:
        client.predict(*VALID.values(), api_name="/txt2img")
    assert "CUDA out of memory" in str(caught.value), str(caught.value)
    client.predict("sagemaker", "sd-healthy", api_name="/use_backend")
    assert client.predict(*VALID.values(), api_name="/txt2img")[1]["seeds"] == [11]


def test_many_failures_in_a_row_leave_the_app_serving(studio, monkeypatch):
    """Twenty failing runs from four threads at once, then a normal one."""
    app, client = studio
    unet = app.controller.engine.pipelines[Task.TXT2IMG].unet

    def broken(*args, **kwargs):
        raise RuntimeError("injected: device lost")

    monkeypatch.setattr(unet, "forward", broken)
    errors: list[str] = []

    def user():
        c = Client(app.url, verbose=False)
        try:
            for _ in range(5):
                try:
                    c.predict(*VALID.values(), api_name="/txt2img")
                    errors.append("unexpected success")
                except AppError as err:
                    errors.append(str(err))
        finally:
            c.close()

    threads = [threading.Thread(target=user) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(errors) == 20 and all("device lost" in e for e in errors), errors[:3]
    monkeypatch.undo()
    assert client.predict(*VALID.values(), api_name="/txt2img")[1]["seeds"] == [11]
