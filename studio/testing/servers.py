"""Servers for tests and the bench, all on 127.0.0.1 free ports: the serving app in a thread (any ASGI app) or in a
real process. AWS stand-ins are in studio.testing.moto and studio.testing.sagemaker_standin, fakes in .fakes.

    from studio.testing.servers import ServingProcess, UvicornThread, free_port, wait_for
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
