"""Servers for tests, all on 127.0.0.1 free ports: the serving app (in a thread or a real process), a moto
server for S3 + the SageMaker control plane, and a fake engine. Other test modules may import these.

    from helpers.servers import ServingProcess, UvicornThread, MotoServer, FakeEngine, aws_env
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
# torch with 2 intra-op threads on 2 shared cores is 10-50x slower than 1 thread when another process is busy
# (OpenMP threads wait on each other); pixels are identical either way. Test servers run single-threaded.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """torch.set_num_threads(1) for the duration (restored after), for in-process engines in tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, *, status: int = 200, timeout: float = 60.0, alive: Any = None) -> requests.Response:
    """Poll GET `url` until it answers `status`; `alive()` returning False aborts (a crashed process)."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"server died while waiting for {url} ({last})")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == status:
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {timeout}s (last: {last})")


class UvicornThread:
    """Run an ASGI app with a real uvicorn server in a background thread (context manager)."""

    def __init__(self, app: Any, port: int | None = None, **config: Any):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> UvicornThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServingProcess:
    """`python -m studio.serving` in a child process on a free port; waits for /ping 200 (or fails loudly)."""

    def __init__(self, *args: str, model: str = "demo", env: dict[str, str] | None = None, ready_timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--model", model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", *args]
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **SINGLE_THREAD_ENV, **(env or {})}
        self.ready_timeout = ready_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="serving-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> ServingProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "studio.serving", *self.args],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> ServingProcess:
        """Block until /ping answers 200; on failure stop the process and raise with its log."""
        try:
            wait_for(f"{self.url}/ping", timeout=self.ready_timeout, alive=lambda: self.process.poll() is None)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"serving process failed to become ready: {exc}\n{self.output()[-4000:]}") from exc
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServingProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


class MotoServer:
    """moto's ThreadedMotoServer (S3, SageMaker control plane, ...) on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> MotoServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def aws_env(endpoint_url: str, *, runtime_url: str | None = None) -> Iterator[None]:
    """Point every boto3 client at `endpoint_url` (AWS_ENDPOINT_URL) and the SageMaker runtime at `runtime_url`
    (AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, boto3's service-specific variable), with dummy credentials."""
    values = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if runtime_url:
        values["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = runtime_url
    saved = {key: os.environ.get(key) for key in [*values, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_SESSION_TOKEN"]}
    os.environ.update(values)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    if not runtime_url:
        os.environ.pop("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class FakeEngine:
    """A fast, deterministic studio.engine.Engine: image i is a solid colour derived from its seed.

    `load_gate` (an Event) makes load() block until set; `load_error` makes it fail; `fail_with` makes
    generate() raise; `delay` sleeps per step (honouring cancel). Records the requests it saw.
    """

    backend = "local"

    def __init__(
        self,
        *,
        load_gate: threading.Event | None = None,
        load_error: str | None = None,
        fail_with: Exception | None = None,
        delay: float = 0.0,
        model: str = "fake",
        loaded: bool = False,
    ):
        self.load_gate = load_gate
        self.load_error = load_error
        self.fail_with = fail_with
        self.delay = delay
        self.model = model
        self.loaded = loaded
        self.loading = False
        self.error: str | None = None
        self.requests: list[Any] = []
        self.cancelled = threading.Event()

    def load(self) -> None:
        from studio.engine import ModelLoadError

        self.loading = True
        try:
            if self.load_gate is not None:
                self.load_gate.wait()
            if self.load_error:
                self.error = self.load_error
                raise ModelLoadError(self.load_error)
            self.loaded = True
        finally:
            self.loading = False

    def status(self) -> Any:
        from studio.engine import EngineStatus

        return EngineStatus(
            backend="local", model=self.model, loaded=self.loaded, loading=self.loading, error=self.error
        )

    def samplers(self) -> list[str]:
        from studio.samplers import sampler_names

        return sampler_names()

    def generate(self, request: Any, on_progress: Any = None, cancel: Any = None) -> Any:
        from PIL import Image

        from studio.engine import GenerationCancelled
        from studio.samplers import canonical_name
        from studio.types import GenerationResult

        request = request.validate(samplers=canonical_name).with_resolved_seed()
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        for step in range(request.steps):
            if cancel is not None and cancel.is_set():
                self.cancelled.set()
                raise GenerationCancelled()
            if self.delay:
                time.sleep(self.delay)
            if on_progress is not None:
                on_progress(step + 1, request.steps)
        images = []
        for seed in request.seeds():
            colour = (seed % 251, (seed * 7) % 253, (seed * 13) % 255)
            images.append(Image.new("RGB", (request.width, request.height), colour))
        infotexts = [f"{request.prompt}\nSteps: {request.steps}, Seed: {s}" for s in request.seeds()]
        return GenerationResult(
            images=images,
            seeds=request.seeds(),
            infotexts=infotexts,
            request=request,
            model=self.model,
            backend="local",
            timings={"generate": 0.001},
        )
